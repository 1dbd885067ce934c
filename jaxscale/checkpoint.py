"""Run checkpoints with Orbax: train state, Grain iterator position and the run's bookkeeping
(metrics written so far, timing and energy accumulators) saved together, newest first on restore."""
from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger("jaxscale")


class RunCheckpoints:
    """Every `every` steps (asynchronously: the arrays are copied before the next step may donate
    them), keeping the newest `keep`; `restore` skips an unreadable newest checkpoint for an older one."""

    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True))

    def save(self, step: int, state, iterator, meta: dict, wait: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator),
            meta=ocp.args.JsonSave(meta)), force=True)
        if wait:
            self.manager.wait_until_finished()

    def restore(self, state_like, iterator):
        """(state, meta) from the newest readable checkpoint, or None when there is none.
        `iterator` is moved to the saved position."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(iterator),
                    meta=ocp.args.JsonRestore()))
            except Exception as err:  # a torn or corrupted checkpoint: any error means "not usable"
                aside = self.directory.with_name(f"{self.directory.name}-unreadable") / str(step)
                warnings.warn(f"checkpoint {self.directory / str(step)} is unreadable ({type(err).__name__}: "
                              f"{str(err)[:200]}); moved to {aside}, trying the previous one", stacklevel=2)
                aside.parent.mkdir(exist_ok=True)
                shutil.rmtree(aside, ignore_errors=True)
                (self.directory / str(step)).rename(aside)  # kept for inspection, out of the manager's way
                self.manager.reload()
                continue
            return restored["state"], restored["meta"]
        return None

    def close(self, remove: bool = False) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)
