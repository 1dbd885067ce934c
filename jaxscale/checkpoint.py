"""Run checkpoints with Orbax: train state, Grain iterator position and the run's bookkeeping
(metrics written so far, timing and energy accumulators) saved together, newest first on restore."""
from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from pathlib import Path

import grain
import orbax.checkpoint as ocp

log = logging.getLogger("jaxscale")


class RunCheckpoints:
    """Every `every` steps (asynchronously: the arrays are copied before the next step may donate
    them), keeping the newest `keep`; `restore` skips an unreadable newest checkpoint for an older one."""

    def __init__(self, directory: Path, keep: int | None):
        self.directory, self.keep = Path(directory).absolute(), keep
        self.unreadable: list[Path] = []  # where the checkpoints `restore` could not read were moved
        self.manager = self._manager()
        self._closed = False

    def _manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, enable_async_checkpointing=True))

    def save(self, step: int, state, iterator, meta: dict, wait: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator),
            meta=ocp.args.JsonSave(meta)), force=True)
        if wait:
            self.manager.wait_until_finished()

    def restore(self, abstract_state, new_iterator, step: int | None = None):
        """(state, meta, iterator) from the newest readable checkpoint (or the one of `step`), or None when none
        can be read. `abstract_state`: shapes, dtypes and shardings to restore into (nothing is allocated twice).
        Each try restores into a fresh `new_iterator()`: a failed try may already have moved its iterator."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps if step is None else [s for s in steps if s == step]:
            iterator = new_iterator()
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(iterator),
                    meta=ocp.args.JsonRestore()))
            except Exception as err:  # a torn or corrupted checkpoint: any error means "not usable"
                self._set_aside(step, err)
                continue
            return restored["state"], restored["meta"], iterator
        return None

    def _set_aside(self, step: int, err: Exception) -> None:
        aside = self.directory.with_name(f"{self.directory.name}-unreadable") / str(step)
        warnings.warn(f"checkpoint {self.directory / str(step)} is unreadable ({type(err).__name__}: "
                      f"{str(err)[:200]}); moved to {aside}, trying the previous one", stacklevel=3)
        aside.parent.mkdir(exist_ok=True)
        shutil.rmtree(aside, ignore_errors=True)
        (self.directory / str(step)).rename(aside)  # kept for inspection, out of the manager's way
        self.unreadable.append(aside)
        # A manager whose restore failed can have shut its thread pool down (its next save would raise
        # "cannot schedule new futures after shutdown"): a new manager, not reload().
        with contextlib.suppress(Exception):
            self.manager.close()
        self.manager = self._manager()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.manager.wait_until_finished()
            self.manager.close()
