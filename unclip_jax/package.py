"""`unclip-jax package`: turn training workdirs into a shippable model directory.

    unclip-jax package --out model/ --stage clip=runs/clip --stage prior=runs/prior \\
        --stage decoder=runs/decoder --tokenizer runs/tokenizer [--dtype float16] \\
        [--commit SHA] [--dataset NAME] [--note decoder="retrained with 8 groups"] \\
        [--base bundled|MODEL] [--default-prior diffusion|ar]

Each stage's EMA parameters are exported (`unclip_jax.train.loop.export_from_workdir`) into
`OUT/<stage>/` in the inference format (`unclip_jax.export`), cast to `dtype` (they load back
as float32). `OUT/MANIFEST.json` records, per stage, the trained steps, batch size, planned
steps, the final loss (mean `loss` of the last `FINAL_ROWS` rows of the workdir's
`metrics.jsonl` logged at or before the exported step), the last such row, the size of the
exported directory, the run's name (`run_name`: no local path of the packaging machine, which
`strip_machine_paths` also blanks in each stage's config.json and extra.json), dtype, commit
and an optional note; at the top level the
commit, dataset, dtype and total size. Each stage entry also holds `params_sha256`, the
sha256 of the stage's `params.sha256.json` (its per-array checksums); both are verified when
the model loads. The layout is the one `UnCLIP.from_directory` reads.

Packaging into an existing OUT replaces only the named stages' subdirectories (and the
tokenizer when one is given) and merges the MANIFEST: other stages' entries and any other
top-level keys are kept. Every stage is first exported into a staging directory inside OUT,
so a failure (bad workdir, missing checkpoint) leaves OUT as it was.

`--base MODEL` (or `--base bundled`, the model shipped in the package) fills the stages and the
tokenizer that neither `--stage` nor OUT has by copying MODEL's directories as they are (their
MANIFEST entries marked `base`): one retrained stage becomes a complete model.

`--default-prior` writes the top-level `default_prior` ('diffusion' or 'ar'): the prior
`prior='auto'` loads when the model has both (`sample.loading.stage_directories`). It is
kept when OUT is packaged again without it, and not taken from `--base`.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import subprocess
import tempfile

from unclip_jax import atomic, export, paths
from unclip_jax.errors import CheckpointError, UserError
from unclip_jax.stages import STAGES
from unclip_jax.sample.loading import DEFAULT_PRIOR_KEY, PRIOR_DIRS
from unclip_jax.train.checkpoint import GCS_COMMIT_FILE
from unclip_jax.train.init_from import BUNDLED   # --base bundled: the model shipped in the package
DTYPES = ("float16", "float32", "bfloat16")
MANIFEST = "MANIFEST.json"
TOKENIZER = "tokenizer"
FINAL_ROWS = 5           # final_loss = mean loss of this many last logged rows
_STAGING_PREFIX = ".package-"


# ------------------------------------------------------------------ pure helpers
def parse_pairs(items: list[str] | None, flag: str, what: str) -> dict[str, str]:
    """['name=value', ...] → {name: value}; a missing '=', an empty side or a repeated name
    is a UserError naming `flag` (e.g. '--stage') and the expected form."""
    out: dict[str, str] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name or not value:
            raise UserError(f"{flag} {item!r}: write {flag} STAGE={what}, e.g. "
                            f"{flag} prior={'runs/prior' if what == 'WORKDIR' else 'text'}")
        if name in out:
            raise UserError(f"stage {name!r} is given twice ({flag} {name}={out[name]} and "
                            f"{flag} {item}); give each stage once")
        out[name] = value
    return out


def check_stage_names(names, flag: str = "stage") -> None:
    """UserError for a name that is not one of `STAGES`."""
    for name in names:
        if name not in STAGES:
            raise UserError(f"unknown {flag} {name!r}; choose from {', '.join(STAGES)}")


def final_loss(rows: list[dict], last: int = FINAL_ROWS) -> float | None:
    """Mean of the finite numeric 'loss' of the last `last` rows that have one (None if none).

    Rows are `metrics.jsonl` records; rows without 'loss' (or with a non-finite loss, which
    the metric writer stores as a string) are skipped before taking the last `last`."""
    losses = [float(r["loss"]) for r in rows
              if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    tail = losses[-last:]
    return sum(tail) / len(tail) if tail else None


def directory_bytes(path: str) -> int:
    """Total size in bytes of the regular files under `path` (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if os.path.isfile(p) and not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def human_bytes(n: int) -> str:
    """1536 → '1.5 KiB'."""
    if n < 1024:
        return f"{n} B"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


# ------------------------------------------------------------------ reading a workdir
def read_metrics(workdir: str, up_to_step: int | None = None) -> list[dict]:
    """Rows of `workdir/metrics.jsonl` (empty when absent), keeping only rows logged at or
    before `up_to_step` when given (a run may have logged past its last checkpoint)."""
    path = paths.join(workdir, "metrics.jsonl")
    if not paths.isfile(path):
        return []
    rows = []
    with paths.open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    if up_to_step is not None:
        rows = [r for r in rows if int(r.get("step", 0)) <= up_to_step]
    return rows


def repository_commit() -> str | None:
    """`git rev-parse HEAD` of the repository this package is imported from, or None when it
    is not a git checkout (e.g. an installed wheel) or git is unavailable."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                             timeout=30)
        return out.stdout.strip() if out.returncode == 0 else None
    try:
        top = git("rev-parse", "--show-toplevel")
        if top is None or not os.path.samefile(top, root):
            return None
        return git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None


def _export_stage(stage: str, workdir: str, dest: str, dtype: str) -> None:
    """Export `workdir`'s EMA params to `dest`; errors name the stage, the workdir and the fix."""
    from unclip_jax.train.loop import export_from_workdir
    fix = (f"pass --stage {stage}=WORKDIR with the --workdir that `unclip-jax train "
           f"--config ...:{stage}` wrote, after it saved a checkpoint")
    try:
        export_from_workdir(workdir, dest, dtype=dtype)
    except (CheckpointError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"stage {stage}: cannot export {workdir} ({msg}); {fix}") from e
    with open(os.path.join(dest, "config.json")) as f:
        trained = json.load(f).get("stage")
    if trained != stage:
        raise UserError(f"stage {stage}: {workdir} trained a {trained!r} model, not {stage!r}; "
                        f"pass it as --stage {trained}={workdir} or give the {stage} workdir")


# Inputs of the training config that name the packaging machine's files: meaningless where the
# model is copied to (the tokenizer ships beside the CLIP as OUT/tokenizer; the export a run
# started from, `train.init_from`, is said in MANIFEST.json's note), so not shipped.
MACHINE_PATH_KEYS = (("data", "data_dir"), ("data", "embeddings_dir"), ("model", "tokenizer"),
                     ("clip", "model", "tokenizer"), ("train", "init_from"))
KEPT_VALUES = (BUNDLED,)          # names, not paths (`train.init_from=bundled`)


def run_name(workdir: str) -> str:
    """How a model directory names a training run: a gs:// URI whole, a local directory by its
    own name only ('/home/me/runs/prior' → 'prior'), never the packaging machine's path."""
    if paths.is_remote(workdir):
        return str(workdir)
    return os.path.basename(os.path.normpath(os.path.expanduser(str(workdir))))


def strip_machine_paths(exported: str, workdir: str) -> None:
    """Rewrite an exported stage's config.json and extra.json without local paths of this
    machine: the config's input directories (`MACHINE_PATH_KEYS`, unless gs:// URIs) become ''
    and extra.json's `source` the run's name (`run_name`). Params and checksums are untouched;
    Orbax's `commit_success.txt`, which names the directory it was written to and marks a
    finished write only on gs:// (`train.checkpoint.GCS_COMMIT_FILE`), is dropped from a local
    export."""
    commit_file = os.path.join(exported, "params", GCS_COMMIT_FILE)
    if not paths.is_remote(exported) and os.path.isfile(commit_file):
        os.remove(commit_file)
    cfg_path = os.path.join(exported, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    for keys in MACHINE_PATH_KEYS:
        node = cfg
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        value = node.get(keys[-1]) if isinstance(node, dict) else None
        if value and value not in KEPT_VALUES and not paths.is_remote(value):
            node[keys[-1]] = ""
    _write_json(cfg_path, cfg)
    extra_path = os.path.join(exported, "extra.json")
    if os.path.isfile(extra_path):
        with open(extra_path) as f:
            extra = json.load(f)
        if "source" in extra:
            extra["source"] = run_name(workdir)
            _write_json(extra_path, extra)


def stage_entry(workdir: str, exported: str, dtype: str, commit: str | None,
                note: str | None = None) -> dict:
    """The MANIFEST entry of one exported stage (see the module docstring)."""
    with open(os.path.join(exported, "extra.json")) as f:
        step = int(json.load(f)["step"])
    with open(os.path.join(exported, "config.json")) as f:
        train_cfg = json.load(f).get("train", {})
    rows = read_metrics(workdir, up_to_step=step)
    entry = {
        "steps": step,
        "batch_size": train_cfg.get("batch_size"),
        "planned_steps": train_cfg.get("steps"),
        "final_loss": final_loss(rows),
        "final_metrics": rows[-1] if rows else None,
        "size_bytes": directory_bytes(exported),
        "dtype": dtype,
        "workdir": run_name(workdir),
        "commit": commit,
        "params_sha256": export.file_sha256(os.path.join(exported, export.CHECKSUMS)),
    }
    if note is not None:
        entry["note"] = note
    return entry


# ------------------------------------------------------------------ the manifest
def read_manifest(out_dir: str) -> dict:
    """The existing `out_dir/MANIFEST.json`, or {} when there is none."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); fix or delete it, then package again")
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        raise UserError(f"{path} is not an unclip-jax MANIFEST (no 'stages' mapping); "
                        "delete it or package into another --out directory")
    return data


def _write_json(path: str, data: dict) -> None:
    atomic.write_json(path, data)


def merge_manifest(old: dict, new_stages: dict[str, dict], out_dir: str, *, commit, dataset,
                   dtype: str) -> dict:
    """`old` updated with `new_stages`: entries of stages still present in `out_dir` are kept
    (their size re-measured), other top-level keys kept, totals recomputed."""
    stages = {}
    for name in STAGES:
        if name in new_stages:
            stages[name] = new_stages[name]
        elif name in old.get("stages", {}) and os.path.isdir(os.path.join(out_dir, name)):
            stages[name] = dict(old["stages"][name],
                                size_bytes=directory_bytes(os.path.join(out_dir, name)))
    manifest = dict(old)
    dtypes = {e.get("dtype", dtype) for e in stages.values()}
    tok = os.path.join(out_dir, TOKENIZER)
    tok_bytes = directory_bytes(tok) if os.path.isdir(tok) else 0
    manifest.update(
        commit=commit,
        dataset=dataset if dataset is not None else old.get("dataset"),
        dtype=dtypes.pop() if len(dtypes) == 1 else "mixed",
        packaged=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        stages=stages,
        tokenizer_bytes=tok_bytes,
        total_size_bytes=sum(e["size_bytes"] for e in stages.values()) + tok_bytes,
    )
    return manifest


# ------------------------------------------------------------------ the command
def check_default_prior(name: str, stages, out_dir: str, base_dir: str | None) -> None:
    """UserError unless `name` is a prior ('diffusion', 'ar') the packaged model will hold:
    given as a --stage, already in `out_dir`, or copied from `base_dir`."""
    if name not in PRIOR_DIRS:
        raise UserError(f"--default-prior {name!r}; choose one of {', '.join(PRIOR_DIRS)}")
    sub = PRIOR_DIRS[name]
    if not (sub in stages or os.path.isdir(os.path.join(out_dir, sub))
            or (base_dir is not None and os.path.isdir(os.path.join(base_dir, sub)))):
        raise UserError(f"--default-prior {name}: the model will have no {sub}/; add "
                        f"--stage {sub}=WORKDIR (or --base a model that has one)")


def base_model_dir(base: str) -> str:
    """`--base` → a model directory: 'bundled' is the model shipped in the package."""
    if base == BUNDLED:
        from unclip_jax.sample.loading import BUNDLED_MODEL
        return BUNDLED_MODEL
    if not os.path.isdir(base):
        raise UserError(f"--base {base}: no such model directory; pass a directory with clip/, "
                        f"tokenizer/, prior/, ... (e.g. an earlier --out) or '{BUNDLED}'")
    return base


def _copy_base_stages(base: str, label: str, skip, out_dir: str, staging: str) -> dict:
    """Copy `base`'s stage directories not in `skip` and not already in `out_dir` into
    `staging`; → {stage: MANIFEST entry (base's, with 'base': label and the size here)}."""
    base_stages = read_manifest(base).get("stages", {})
    entries = {}
    for name in STAGES:
        src = os.path.join(base, name)
        if name in skip or not os.path.isdir(src) or os.path.isdir(os.path.join(out_dir, name)):
            continue
        dest = os.path.join(staging, name)
        shutil.copytree(src, dest)
        entries[name] = dict(base_stages.get(name, {}), base=label,
                             size_bytes=directory_bytes(dest))
    return entries


def package_model(stages: dict[str, str], out_dir: str, *, tokenizer: str | None,
                  dtype: str = "float16", commit: str | None = None,
                  dataset: str | None = None, notes: dict[str, str] | None = None,
                  base: str | None = None, default_prior: str | None = None) -> dict:
    """Export training workdirs into the model directory `out_dir` and return its MANIFEST.

    stages: {stage name (one of `STAGES`): training workdir}. tokenizer: a Hugging Face
    tokenizer directory copied to `out_dir/tokenizer` (None keeps whatever is there).
    dtype: storage dtype of the parameters ('float16', 'float32' or 'bfloat16'). commit:
    recorded as is; None → this repository's `git rev-parse HEAD` (null outside git).
    notes: {stage: text} stored in that stage's entry. base: a model directory (or 'bundled')
    whose other stages and tokenizer fill what neither `stages` nor `out_dir` has (copied as
    they are, their MANIFEST entries marked with 'base'). default_prior: 'diffusion' or 'ar',
    recorded as the MANIFEST's `default_prior` (None keeps OUT's).
    Raises UserError (nothing written) for an unknown stage, a missing workdir, tokenizer or
    checkpoint, a workdir of another stage, an unsupported dtype, a note for a stage that
    is not packaged, or a default prior the packaged model will not have.
    """
    notes = dict(notes or {})
    if not stages and tokenizer is None and base is None and default_prior is None:
        raise UserError("nothing to package; give at least one --stage STAGE=WORKDIR")
    base_dir = base_model_dir(base) if base is not None else None
    check_stage_names(stages)
    check_stage_names(notes, "--note stage")
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported; choose from {', '.join(DTYPES)}")
    for name in notes:
        if name not in stages:
            raise UserError(f"--note {name}=... is for a stage that is not being packaged; "
                            f"add --stage {name}=WORKDIR or drop the note")
    for name, work in stages.items():
        if not paths.isdir(work):
            raise UserError(f"stage {name}: workdir {work} does not exist; pass the --workdir "
                            f"used by `unclip-jax train` for the {name} stage")
    if tokenizer is not None and not os.path.isdir(tokenizer):
        raise UserError(f"tokenizer directory {tokenizer} does not exist; pass the Hugging Face "
                        "tokenizer directory the CLIP stage was trained with (--tokenizer DIR)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} is a file; pass a directory")
    if default_prior is not None:
        check_default_prior(default_prior, stages, out_dir, base_dir)
    old = read_manifest(out_dir) if os.path.isdir(out_dir) else {}
    commit = commit if commit is not None else repository_commit()

    created = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out_dir)
    try:
        entries = {}
        for name in STAGES:
            if name in stages:
                dest = os.path.join(staging, name)
                _export_stage(name, stages[name], dest, dtype)
                strip_machine_paths(dest, stages[name])
                entries[name] = stage_entry(stages[name], dest, dtype, commit, notes.get(name))
        if base_dir is not None:
            entries.update(_copy_base_stages(base_dir, base, stages, out_dir, staging))
            if tokenizer is None and not os.path.isdir(os.path.join(out_dir, TOKENIZER)) \
                    and os.path.isdir(os.path.join(base_dir, TOKENIZER)):
                tokenizer = os.path.join(base_dir, TOKENIZER)
        if tokenizer is not None:
            shutil.copytree(tokenizer, os.path.join(staging, TOKENIZER))
        for name in os.listdir(staging):          # all exported: swap them in
            atomic.replace_dir(os.path.join(staging, name), os.path.join(out_dir, name))
    except BaseException:
        if created:                               # a failed first packaging leaves no OUT
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest = merge_manifest(old, entries, out_dir, commit=commit, dataset=dataset, dtype=dtype)
    if default_prior is not None:
        manifest[DEFAULT_PRIOR_KEY] = default_prior
    _write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest
