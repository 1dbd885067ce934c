"""TensorBoard event files for each run — training loss, learning rate, tokens/s, step energy and held-out loss —
written through tensorboardX where it is installed (`pip install -e '.[tensorboard]'`); without it, none.
`tensorboard --logdir runs/NAME` shows a sweep, one run per directory.

Lines are written at the loop's boundaries (evaluation, checkpoint, stop, end) from the records kept anyway,
so the step itself never waits on the writer.
"""
from __future__ import annotations

import time
from pathlib import Path


TAGS = (("train/loss", "loss"), ("train/lr", "lr"), ("train/tokens_per_s", "tokens_per_s"),
        ("energy/step_j", "energy_j"), ("eval/loss", "eval_loss"))


class RunEvents:
    """One event a step holding all its scalars, appended to the file directly: tensorboardX's SummaryWriter
    sends each scalar through a bounded multiprocessing queue to a writer thread, ~0.2 ms a step for three
    scalars (as long as a tiny model's whole step on a GPU); this is ~0.02 ms."""

    def __init__(self, run_dir: Path, written: int):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2, summary_pb2

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self.file = EventsWriter(str(run_dir / "events"))  # events.out.tfevents.<time>.<host>, as SummaryWriter's
        self.written = written  # records already in event files (an earlier segment wrote them)

    def _append(self, step: int, values: dict) -> None:
        summary = self._summary(value=[self._summary.Value(tag=t, simple_value=v) for t, v in values.items()])
        self.file.write_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def write(self, records: list[dict]) -> None:
        """The records not written yet."""
        for r in records[self.written:]:
            self._append(r["step"], {tag: r[key] for tag, key in TAGS if r.get(key) is not None})
        self.written = len(records)
        self.file.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._append(step, {tag: value})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def open_events(run_dir: Path, written: int) -> RunEvents | None:
    try:
        return RunEvents(run_dir, written)
    except ImportError:
        return None
