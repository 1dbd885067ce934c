"""Progress display: run i of n, step of steps, tokens/s, loss. One updating line on a terminal,
plain lines (every few seconds and at the end of each run) otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, n_runs: int, quiet: bool = False, stream=None, every_s: float = 10.0):
        self.stream = stream or sys.stderr
        self.n_runs, self.quiet, self.every_s = n_runs, quiet, every_s
        self.tty = self.stream.isatty() and not quiet
        self.label, self.last = "", 0.0

    def begin_run(self, index: int, run_id: str) -> None:
        self.label = f"run {index}/{self.n_runs} {run_id}"
        self.last = time.monotonic()

    def step(self, step: int, steps: int, loss: float, tokens_per_s: float) -> None:
        if self.quiet:
            return
        line = f"{self.label}  step {step}/{steps}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s"
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif now - self.last >= self.every_s:
            print(line, file=self.stream, flush=True)
            self.last = now

    def end_run(self, summary: dict) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        detail = (f"eval_loss {summary['eval_loss']:.4f}  {summary['tokens_per_s']:,.0f} tok/s  {summary['wall_s']:.1f} s"
                  if summary["status"] == "ok" else summary["reason"])
        print(f"{self.label}  {summary['status']}  {detail}", file=self.stream, flush=True)
