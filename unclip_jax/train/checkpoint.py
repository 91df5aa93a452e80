"""Training checkpoints: an Orbax `CheckpointManager` in `WORKDIR/checkpoints`.

Each step directory holds composite items:
  state   the `TrainState` (StandardSave; restored with the *target's* shardings, so a run can
          resume on a different mesh or number of processes)
  config  the run's config (JSON)
  data    the input iterator's state (JSON)
  extras  stage extras fitted before training (JSON; e.g. AR-prior PCA and quantiser)
Saves are asynchronous. The last `train.keep` checkpoints and every `train.keep_every`-th
step are kept. A step directory that is half-written (no commit metadata, or an item that
fails to restore) is skipped with a warning and the previous one is used.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp

from unclip_jax.errors import CheckpointError

log = logging.getLogger(__name__)

ITEMS = ("state", "config", "data", "extras")
COMMIT_FILE = "_CHECKPOINT_METADATA"   # Orbax writes it when a step is finalised


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


def extras_from_json(blob: dict | None) -> dict:
    def dec(v):
        if isinstance(v, dict) and "__array__" in v:
            return np.asarray(v["__array__"], dtype=v["dtype"])
        if isinstance(v, dict):
            return {k: dec(x) for k, x in v.items()}
        return v
    return dec(dict(blob or {}))


class Checkpointer:
    """Save/restore `(state, config, data_state, extras)` under `workdir/checkpoints`."""

    def __init__(self, workdir: str, train_cfg, *, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
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
        if os.path.isdir(self.directory):
            found |= {int(d) for d in os.listdir(self.directory) if d.isdigit()}
        return sorted(found)

    def _finalized(self, step: int) -> bool:
        step_dir = os.path.join(self.directory, str(step))
        return os.path.isfile(os.path.join(step_dir, COMMIT_FILE)) and all(
            os.path.isdir(os.path.join(step_dir, item)) for item in ITEMS)

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

    def restore_latest(self, abstract_state: Any):
        """Newest restorable checkpoint as `(step, state, config, data_state, extras)`, or
        None. Half-written or corrupt steps are skipped with a warning."""
        for step in reversed(self.steps()):
            try:
                return (step, *self.restore(step, abstract_state))
            except Exception as e:  # corrupt / truncated item: fall back to an older step
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                warnings.warn(f"skipping unusable checkpoint step {step} in {self.directory}: "
                              f"{msg}; it will be removed and overwritten", RuntimeWarning,
                              stacklevel=2)
                self._discard(step)
        return None

    def _discard(self, step: int) -> None:
        """Remove an unusable step so that a later save of the same step can succeed."""
        if jax.process_index() == 0:
            import shutil
            shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"discard_checkpoint_{step}")
        self.manager.reload()

    def read_extras(self, step: int) -> dict:
        out = self.manager.restore(int(step), args=ocp.args.Composite(
            extras=ocp.args.JsonRestore()))
        return extras_from_json(out["extras"])
