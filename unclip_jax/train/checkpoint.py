"""Training checkpoints: an Orbax `CheckpointManager` in `WORKDIR/checkpoints`.

Each step directory holds composite items:
  state   the `TrainState` (StandardSave; restored with the *target's* shardings, so a run can
          resume on a different mesh or number of processes)
  config  the run's config (JSON)
  data    the input iterator's state (JSON)
  extras  stage extras fitted before training (JSON; e.g. AR-prior PCA and quantiser)
Saves are asynchronous. The last `train.keep` checkpoints and every `train.keep_every`-th
step are kept. A step directory that is half-written (no commit metadata, or a missing item)
is skipped with a warning and the previous one is used. Any other failure to restore — another
config, another model, a damaged file, non-finite values — stops with a `CheckpointError`
naming the difference, and deletes nothing.
"""
from __future__ import annotations

import json
import logging
import warnings
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp

from unclip_jax import paths
from unclip_jax.export import extras_from_json, extras_to_json
from unclip_jax.errors import CheckpointError

log = logging.getLogger(__name__)

ITEMS = ("state", "config", "data", "extras")
COMMIT_FILE = "_CHECKPOINT_METADATA"   # Orbax writes it when a step is finalised
# On gs:// Orbax writes steps in place (no atomic rename) and marks a finished one with this
# file (its CommitFileTemporaryPath); a step without it is unfinished and Orbax removes it.
GCS_COMMIT_FILE = "commit_success.txt"


class Checkpointer:
    """Save/restore `(state, config, data_state, extras)` under `workdir/checkpoints`."""

    def __init__(self, workdir: str, train_cfg, *, async_save: bool = True):
        self.directory = paths.join(paths.resolve(workdir, "workdir"), "checkpoints")
        keep_every = int(train_cfg.get("keep_every", 0) or 0)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(int(train_cfg.get("keep", 3) or 1), 1),
            keep_period=keep_every if keep_every > 0 else None,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any, config: mlc.ConfigDict, data_state: dict,
             extras: dict | None = None) -> None:
        """Start an asynchronous save of `step` (returns before the write completes)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
            data=ocp.args.JsonSave(data_state),
            extras=ocp.args.JsonSave(extras_to_json(extras)),
        )
        self.manager.save(int(step), args=args, force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # --------------------------------------------------------------- restore
    def steps(self) -> list[int]:
        """Steps known to Orbax plus any step-named directories (finalised or not)."""
        self.manager.reload()
        found = set(self.manager.all_steps())
        found |= {int(d) for d in paths.listdir(self.directory) if d.isdigit()}
        return sorted(found)

    def _finalized(self, step: int) -> bool:
        step_dir = paths.join(self.directory, str(step))
        if paths.is_remote(step_dir) and not paths.isfile(paths.join(step_dir, GCS_COMMIT_FILE)):
            return False
        return paths.isfile(paths.join(step_dir, COMMIT_FILE)) and all(
            paths.isdir(paths.join(step_dir, item)) for item in ITEMS)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict, dict]:
        """`(state, config_dict, data_state, extras)` of `step`, state placed per the
        shardings in `abstract_state` (a tree of `jax.ShapeDtypeStruct(sharding=...)`)."""
        if not self._finalized(step):
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is half-written "
                                  "(no commit metadata or missing items)")
        out = self.manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            config=ocp.args.JsonRestore(),
            data=ocp.args.JsonRestore(),
            extras=ocp.args.JsonRestore(),
        ))
        return out["state"], out["config"], out["data"], extras_from_json(out["extras"])

    def restore_latest(self, abstract_state: Any, config: mlc.ConfigDict | None = None):
        """Newest checkpoint as `(step, state, config_dict, data_state, extras)`, or None.

        Only a provably half-written step (no commit metadata or a missing item: a save that
        never finished) is skipped with a warning and removed. A finalised step that does not
        restore — another config, another model, a damaged file, an I/O or memory error — or
        that holds non-finite values stops with a CheckpointError that names the mismatch
        (config key and both values, or tree path and both shapes); nothing is deleted.
        `config` is the run's config, used only to name a mismatch."""
        for step in reversed(self.steps()):
            if not self._finalized(step):
                warnings.warn(f"skipping half-written checkpoint step {step} in "
                              f"{self.directory} (no commit metadata or missing items: its save "
                              "never finished); it will be removed and overwritten",
                              RuntimeWarning, stacklevel=2)
                self._discard(step)
                continue
            try:
                saved_tree = self._saved_tree(step)
            except Exception:   # unreadable tree metadata: the restore below says why
                saved_tree = None
            if saved_tree is not None and tree_differences(saved_tree, abstract_state):
                # checked before restoring: a failed Orbax restore leaves asyncio tasks whose
                # errors are printed at exit, burying the one-line message
                raise CheckpointError(self._explain(step, abstract_state, config, None))
            try:
                restored = self.restore(step, abstract_state)
            except Exception as e:
                raise CheckpointError(self._explain(step, abstract_state, config, e)) from e
            bad = non_finite_paths(restored[0])
            if bad:
                more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} holds non-finite values "
                    f"({bad[0]}{more}); it is damaged — {self._fix(step)}")
            return (step, *restored)
        return None

    def _fix(self, step: int) -> str:
        older = [s for s in self.steps() if s < step]
        where = (f"to resume from step {older[-1]}" if older else "to start from scratch")
        return (f"move {paths.join(self.directory, str(step))} aside {where}, or use a new "
                "--workdir (nothing was deleted)")

    def _explain(self, step: int, abstract_state: Any, config, error: Exception | None) -> str:
        """One line naming why `step` did not restore: tree/shape and config differences
        when they can be read, else the first line of `error`."""
        config_parts, tree_parts = [], []
        if config is not None:
            try:
                config_parts = config_differences(self.saved_config(step),
                                                  json.loads(config.to_json_best_effort()))
            except Exception:   # unreadable config item: name what else can be read
                pass
        try:
            tree_parts = tree_differences(self._saved_tree(step), abstract_state)
        except Exception:
            pass
        # config keys first (they say what to change back), then the first tree difference
        parts = config_parts[:2] + tree_parts[:1] if tree_parts else config_parts[:3]
        if not tree_parts and (error is None or not _is_mismatch(error)):
            parts = []          # the trees agree: the files, not the settings, are at fault
        hidden = len(config_parts) + len(tree_parts) - len(parts)
        where = f"checkpoint step {step} in {self.directory}"
        if parts:
            shown = "; ".join(parts) + (f"; and {hidden} more differences" if hidden else "")
            return (f"cannot resume from {where}: it was written by another config or model "
                    f"({shown}); rerun with the settings it was written with, or use a new "
                    "--workdir (nothing was deleted)")
        msg = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"cannot restore {where} ({type(error).__name__}: {msg}); {self._fix(step)}"

    def _saved_tree(self, step: int) -> dict[str, tuple]:
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)   # an item directory has no step metadata: Orbax says so
        try:
            with ocp.StandardCheckpointer() as ckptr:
                meta = ckptr.metadata(paths.join(self.directory, str(step), "state"))
        finally:
            absl.setLevel(level)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        if not tree:
            raise CheckpointError(f"no readable tree metadata in step {step}")
        return {path_name(p): tuple(getattr(m, "shape", ()) or ())
                for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]}

    def saved_config(self, step: int) -> dict:
        """The config saved with `step` (its JSON item, read through Orbax); CheckpointError
        for a half-written step."""
        if not self._finalized(step):
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is half-written "
                                  "(no commit metadata or missing items)")
        out = self.manager.restore(int(step), args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))
        return dict(out["config"])

    def _discard(self, step: int) -> None:
        """Remove an unusable step so that a later save of the same step can succeed."""
        if jax.process_index() == 0:
            paths.rmtree(paths.join(self.directory, str(step)))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"discard_checkpoint_{step}")
        self.manager.reload()


# ------------------------------------------------------------------ naming a mismatch
def path_name(path) -> str:
    """A key path → 'params.fc1.kernel' (dict keys, attribute names, sequence indices)."""
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return ".".join(out)


def tree_differences(saved: dict[str, tuple], abstract_state: Any) -> list[str]:
    """'PATH has shape A in the checkpoint and B now' / 'PATH is only in ...' lines."""
    now = {path_name(p): tuple(getattr(x, "shape", ()) or ())
           for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    out = []
    for name in sorted(saved.keys() & now.keys()):
        if saved[name] != now[name]:
            out.append(f"{name} has shape {saved[name]} in the checkpoint and {now[name]} now")
    for name in sorted(saved.keys() - now.keys()):
        out.append(f"{name} is in the checkpoint but not in this model")
    for name in sorted(now.keys() - saved.keys()):
        out.append(f"{name} is in this model but not in the checkpoint")
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


# keys a resumed run may change (how long, how often to log/save): never named as the cause
RESUMABLE_KEYS = ("train.steps", "train.log_every", "train.ckpt_every", "train.keep",
                  "train.keep_every", "train.sample_every")


def config_differences(saved: dict, now: dict) -> list[str]:
    """'config KEY is A in the checkpoint and B now' for every key that differs (model and
    diffusion keys first: they are the usual cause of a failed restore)."""
    a, b = _flat(saved), _flat(now)
    for k in RESUMABLE_KEYS:
        a.pop(k, None)
        b.pop(k, None)
    missing = object()
    keys = sorted(a.keys() | b.keys(),
                  key=lambda k: (not k.startswith(("model.", "diffusion.", "stage")), k))
    out = []
    for k in keys:
        x, y = a.get(k, missing), b.get(k, missing)
        if x != y:
            show = lambda v: "unset" if v is missing else json.dumps(v)
            out.append(f"config {k} is {show(x)} in the checkpoint and {show(y)} now")
    return out


def _is_mismatch(error: Exception) -> bool:
    """Whether Orbax's error says the requested tree/shapes differ from the stored ones."""
    text = str(error)
    return any(s in text for s in ("not compatible with the stored shape",
                                   "tree structures do not match", "Requested shape"))


def non_finite_paths(tree: Any) -> list[str]:
    """Paths of the floating-point arrays of `tree` that hold a NaN or an infinity (works on
    sharded, multi-process arrays: the test runs on device, only booleans come back)."""
    flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
    if not flat:
        return []
    ok = jax.jit(lambda xs: jax.numpy.stack([jax.numpy.isfinite(x).all() for x in xs]))(
        [x for _, x in flat])
    if ok.is_fully_replicated:
        ok = np.asarray(ok.addressable_data(0))
    else:
        from jax.experimental import multihost_utils
        ok = np.asarray(multihost_utils.process_allgather(ok, tiled=True))
    return [path_name(p) for (p, _), good in zip(flat, ok) if not good]
