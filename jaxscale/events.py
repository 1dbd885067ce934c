"""TensorBoard event files for each run — training loss, learning rate, tokens/s, step energy and held-out loss —
written through tensorboardX where it is installed (`pip install -e '.[tensorboard]'`); without it, none.
`tensorboard --logdir runs/NAME` shows a sweep, one run per directory.

Lines are written at the loop's boundaries (evaluation, checkpoint, stop, end) from the records kept anyway,
so the step itself never waits on the writer.
"""
from __future__ import annotations

from pathlib import Path


class RunEvents:
    def __init__(self, run_dir: Path, written: int):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(run_dir), flush_secs=30)
        self.written = written  # records already in event files (an earlier segment wrote them)

    def write(self, records: list[dict]) -> None:
        """The records not written yet."""
        for r in records[self.written:]:
            step = r["step"]
            for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("train/tokens_per_s", "tokens_per_s"),
                             ("energy/step_j", "energy_j"), ("eval/loss", "eval_loss")):
                if r.get(key) is not None:
                    self.writer.add_scalar(tag, r[key], step)
        self.written = len(records)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


def open_events(run_dir: Path, written: int) -> RunEvents | None:
    try:
        return RunEvents(run_dir, written)
    except ImportError:
        return None
