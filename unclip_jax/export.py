"""Inference checkpoints, end to end: one directory per stage, written by training's export
(`unclip_jax.train.loop.export_from_workdir`), the converters and packaging, read by sampling
(`unclip_jax.sample`) and evaluation. Only JSON and Orbax array files are read; nothing in a
directory is executed.

Layout of `DIR`:
  config.json   the stage's full config (`ConfigDict.to_json_best_effort()`), with `stage`
  params/       Orbax PyTree checkpoint of the parameters (plain arrays, no optimizer state)
  extra.json    optional: where the weights came from (source, step, component) and the
                stage's fitted extras — the prior's embedding statistics, the AR prior's codec —
                with their arrays encoded by `extras_to_json` (`extras_from_json` decodes them)
  params.sha256.json
                the sha256 of every parameter array's bytes as stored (C order, stored dtype),
                with its dtype and shape; `load` verifies each array against it (a directory
                without it loads with a warning that its weights are unverified). A packaged
                model's MANIFEST records the sha256 of this file per stage, checked too.

`checkpoint_identity(DIR)` is a short hash of everything a stage computes with (config,
extras, parameter checksums); sidecars record it.

Writes are atomic and do not clobber: the export is built in a temporary sibling directory
and moved into place; an existing export is replaced only with `overwrite=True`. Other
entries of `DIR` (e.g. a tokenizer/ copied there) are kept.

Training checkpoints (train state, iterator state) live under a workdir and are handled by
`unclip_jax.train.checkpoint`; `unclip_jax.train.loop.export_from_workdir` turns one of those
into this format.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp

from unclip_jax import atomic, paths
from unclip_jax.errors import CheckpointError, UserError
from unclip_jax.jsonio import read_json_object

CHECKSUMS = "params.sha256.json"
MANIFEST = "MANIFEST.json"          # of a packaged model directory (`unclip_jax.package`)
_ENTRIES = ("params", "config.json", "extra.json", CHECKSUMS)


def _path_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def array_checksums(params: Any) -> dict[str, dict]:
    """{tree path: {'sha256', 'dtype', 'shape'}} of every array of `params`, hashing the
    C-order bytes in the array's own dtype."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        out[_path_name(path)] = {"sha256": hashlib.sha256(a.tobytes()).hexdigest(),
                                 "dtype": str(a.dtype), "shape": list(a.shape)}
    return out


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_destination(directory: str, overwrite: bool = False) -> str:
    """UserError unless `directory` can receive an export: not a file, and not already
    holding one unless `overwrite`. Call before long work (training, converting)."""
    directory = atomic.check_output_path(directory, overwrite=True, what="export directory",
                                         is_dir=True)
    if paths.is_remote(directory):
        directory = paths.resolve(directory, "export directory")
        held = any(paths.exists(paths.join(directory, e)) for e in _ENTRIES)
    else:
        held = any(os.path.lexists(os.path.join(directory, e)) for e in _ENTRIES)
    if not overwrite and held:
        raise UserError(f"{directory} already holds an exported checkpoint; pass --overwrite "
                        "to replace it or choose another directory")
    return directory


def save(directory: str, params: Any, config: mlc.ConfigDict, extra: dict | None = None,
         dtype: str | None = None, overwrite: bool = False) -> str:
    """Write params (optionally cast, e.g. dtype='float16' for shipping), their checksums
    and config to `directory` (atomically; an existing export only with `overwrite`).
    A gs:// `directory` gets the export built locally and uploaded, config.json last."""
    directory = check_destination(directory, overwrite)
    if paths.is_remote(directory):
        with tempfile.TemporaryDirectory(prefix="unclip-export-") as local:
            save(os.path.join(local, "export"), params, config, extra, dtype)
            for name in ("config.json", *_ENTRIES):      # readers look for config.json first
                paths.rmtree(paths.join(directory, name))
            paths.copy_tree(os.path.join(local, "export"), directory, last=("config.json",))
        return directory
    if dtype is not None:
        params = jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
    params = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), params)
    tmp = atomic.temp_dir(directory)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, "params"), params)
        atomic.write_text(os.path.join(tmp, "config.json"), config.to_json_best_effort(indent=2))
        if extra is not None:
            atomic.write_json(os.path.join(tmp, "extra.json"), extra)
        atomic.write_json(os.path.join(tmp, CHECKSUMS),
                          {"algorithm": "sha256 of each array's C-order bytes in its stored "
                                        "dtype", "arrays": array_checksums(params)})
        _move_in(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _move_in(tmp: str, directory: str) -> None:
    """Move the complete export in `tmp` into `directory`: a new directory is one rename;
    into an existing one each entry replaces its old version (other entries are kept)."""
    if not os.path.isdir(directory):
        os.replace(tmp, directory)
        return
    for name in _ENTRIES:
        src, dst = os.path.join(tmp, name), os.path.join(directory, name)
        if os.path.isdir(src):
            atomic.replace_dir(src, dst)
        elif os.path.isfile(src):
            os.replace(src, dst)
        elif os.path.lexists(dst):              # e.g. no extra.json this time
            shutil.rmtree(dst) if os.path.isdir(dst) else os.unlink(dst)


def load_config(directory: str) -> mlc.ConfigDict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{directory} is not an unclip-jax checkpoint (no config.json); pass the directory "
            "written by `unclip-jax train`, `convert-clip` or `convert-karlo`")
    return mlc.ConfigDict(_read_json(path))


def _read_json(path: str) -> dict:
    return read_json_object(path, "restore it from the original export", CheckpointError)


def verify(directory: str, params: Any) -> bool:
    """Check every array of `params` (as stored, before any cast) against the directory's
    `params.sha256.json`, and that file against the MANIFEST of a packaged model around it.
    True when verified; False (with a warning) when the directory has no checksums; raises
    CheckpointError naming the first array (or file) that does not match."""
    path = os.path.join(directory, CHECKSUMS)
    if not os.path.isfile(path):
        warnings.warn(f"{directory} has no {CHECKSUMS}: its weights are unverified "
                      "(re-export it to add checksums)", UserWarning, stacklevel=3)
        return False
    manifest = os.path.join(os.path.dirname(os.path.abspath(directory)), MANIFEST)
    stage = os.path.basename(os.path.abspath(directory))
    if os.path.isfile(manifest):
        try:
            entry = _read_json(manifest).get("stages", {}).get(stage, {})
        except CheckpointError:
            entry = {}
        want = entry.get("params_sha256") if isinstance(entry, dict) else None
        if want is not None and want != file_sha256(path):
            raise CheckpointError(f"{path} does not match the checksum recorded for {stage!r} "
                                  f"in {manifest}; the model directory was modified — "
                                  "re-package or re-download it")
    recorded = _read_json(path).get("arrays")
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{path} has no 'arrays' mapping; re-export the checkpoint")
    actual = array_checksums(params)
    for name in sorted(recorded.keys() | actual.keys()):
        r, a = recorded.get(name), actual.get(name)
        if r is None or a is None:
            where = "the checksums" if a is None else "the params"
            raise CheckpointError(f"{directory}: array {name} is missing from {where} "
                                  f"(params/ and {CHECKSUMS} disagree); re-export the checkpoint")
        if r.get("sha256") != a["sha256"]:
            raise CheckpointError(f"{directory}: array {name} does not match its checksum in "
                                  f"{CHECKSUMS} (damaged weights); re-export or re-download "
                                  "the checkpoint")
    return True


def load(directory: str, expect_stage: str | tuple[str, ...] | None = None,
         dtype: str | None = "float32") -> tuple[Any, mlc.ConfigDict, dict]:
    """Read `(params, config, extra)`; params are host numpy arrays cast to `dtype`.

    Raises CheckpointError when the directory is missing, not a checkpoint, or of another stage.
    A gs:// directory is downloaded to a temporary directory and read from there.
    """
    if paths.is_remote(directory):
        directory = paths.resolve(directory, "checkpoint directory")
        if not paths.isdir(directory):
            raise CheckpointError(f"checkpoint directory {directory} does not exist")
        with paths.local_copy(directory) as local:
            try:
                return load(local, expect_stage, dtype)
            except CheckpointError as e:
                raise CheckpointError(str(e).replace(local, directory)) from None
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config = load_config(directory)
    if expect_stage is not None:
        stages = (expect_stage,) if isinstance(expect_stage, str) else tuple(expect_stage)
        if config.get("stage") not in stages:
            raise CheckpointError(
                f"{directory} holds a {config.get('stage')!r} checkpoint but a "
                f"{' or '.join(stages)} checkpoint is needed here")
    params_dir = os.path.join(os.path.abspath(directory), "params")
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{directory} has no params/ (half-written checkpoint?)")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(params_dir)
    except Exception as e:      # damaged or truncated array files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read the parameters in {params_dir} "
                              f"({type(e).__name__}: {msg}); re-export or re-download the "
                              "checkpoint") from None
    params = jax.tree.map(lambda a: np.asarray(a), params)
    verify(directory, params)
    if dtype is not None:
        params = jax.tree.map(lambda a: a.astype(dtype), params)
    extra = {}
    if os.path.isfile(os.path.join(directory, "extra.json")):
        extra = _read_json(os.path.join(directory, "extra.json"))
    return params, config, extra


# --------------------------------------------------------------------------- extra.json arrays

def extras_to_json(extras: dict | None) -> dict:
    """numpy arrays → {'__array__': nested lists, 'dtype': str}; exact for float32/int."""
    def enc(v):
        if isinstance(v, (np.ndarray, np.generic, jax.Array)):
            a = np.asarray(v)
            return {"__array__": a.tolist(), "dtype": str(a.dtype)}
        if isinstance(v, dict):
            return {k: enc(x) for k, x in v.items()}
        return v
    return enc(dict(extras or {}))


# keys of extra.json that say where the weights came from, not what the stage computes with
PROVENANCE_KEYS = ("source", "step", "component")


def fitted_extras(extra: dict) -> dict:
    """The stage's fitted extras of an extra.json (arrays decoded), without its provenance."""
    return extras_from_json({k: v for k, v in extra.items() if k not in PROVENANCE_KEYS})


def extras_from_json(blob: dict | None) -> dict:
    """The inverse of `extras_to_json`: {'__array__', 'dtype'} entries → numpy arrays."""
    def dec(v):
        if isinstance(v, dict) and "__array__" in v:
            return np.asarray(v["__array__"], dtype=v["dtype"])
        if isinstance(v, dict):
            return {k: dec(x) for k, x in v.items()}
        return v
    return dec(dict(blob or {}))


# --------------------------------------------------------------------------- identity

def checkpoint_identity(directory: str) -> str:
    """sha256 (hex, 16 chars) of what a stage checkpoint or tokenizer directory computes
    with: config.json, extra.json, the params' tree metadata and the parameter bytes — the
    per-array checksums in `params.sha256.json` when the export has them (verified against
    the arrays on load), else every file under params/ — and, for any other directory
    (a tokenizer), every file in it. Changes whenever a weight or a tokenizer file does."""
    h = hashlib.sha256()
    for rel in _identity_files(directory):
        h.update(rel.encode() + b"\0")
        with open(os.path.join(directory, rel), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _identity_files(directory: str) -> list[str]:
    if not os.path.isfile(os.path.join(directory, "config.json")):      # e.g. a tokenizer
        walk = [os.path.relpath(os.path.join(r, f), directory)
                for r, _, fs in os.walk(directory) for f in fs]
        return sorted(walk)
    rels = ["config.json", "extra.json", os.path.join("params", "_METADATA")]
    if os.path.isfile(os.path.join(directory, CHECKSUMS)):
        rels.append(CHECKSUMS)
    else:
        pdir = os.path.join(directory, "params")
        rels += sorted(os.path.relpath(os.path.join(r, f), directory)
                       for r, _, fs in os.walk(pdir) for f in fs)
    return [r for r in dict.fromkeys(rels) if os.path.isfile(os.path.join(directory, r))]
