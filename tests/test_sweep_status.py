"""tools/sweep_status.py: each run's state as a worker would find it, read without writing."""
import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, dead_pid

from jaxscale.config import expand
from jaxscale.sweep import Sweep

RAW = {"name": "status", "data": {"seq_len": 16}, "tokenizer": {"vocab_size": 256},
       "train": {"tokens": [512, 1024, 2048, 4096, 8192], "batch_size": 4}}


def status(out, *extra):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "sweep_status.py"), str(out), *extra],
                          capture_output=True, text=True, timeout=120)


def test_every_state_a_worker_would_see(tmp_path):
    raw = RAW
    runs = expand(raw)
    out = tmp_path / "out"
    sweep = Sweep(out, raw, runs)
    done, failed, live, died, untouched = (r.run_id for r in runs)
    for run_id, summary in ((done, {"status": "ok", "eval_loss": 4.5, "wall_s": 12.0}),
                            (failed, {"status": "failed", "failed_step": 7, "reason": "loss is nan"})):
        sweep.run_dir(run_id).mkdir()
        sweep.summary_path(run_id).write_text(json.dumps(summary))
    for run_id, pid in ((live, os.getpid()), (died, dead_pid())):
        (sweep.claims / f"{run_id}.claim").write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
        (sweep.run_dir(run_id) / "checkpoints" / "40").mkdir(parents=True)
        (sweep.run_dir(run_id) / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 43)))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    report = json.loads(status(out, "--json").stdout)
    rows = {r["run_id"]: r for r in report["runs"]}
    assert report["counts"] == {"ok": 1, "failed": 1, "running": 1, "interrupted": 1, "pending": 1}
    assert (rows[done]["state"], rows[done]["eval_loss"]) == ("ok", 4.5)
    assert (rows[failed]["state"], rows[failed]["failed_step"]) == ("failed", 7)
    assert rows[live]["state"] == "running" and not rows[live]["claim"]["stale"]
    assert rows[died]["state"] == "interrupted" and rows[died]["claim"]["stale"]
    assert rows[died]["checkpoint_step"] == 40 and rows[died]["logged_step"] == 43
    assert rows[untouched] == {"run_id": untouched, "state": "pending"}

    text = status(out).stdout.splitlines()
    assert text[0].endswith("5 runs: 1 ok, 1 failed, 1 running, 1 interrupted, 1 pending")
    died_line = next(line for line in text if line.startswith(died))
    assert "checkpoint at step 40" in died_line and "STALE" in died_line
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written, nothing moved


@pytest.mark.parametrize("marker", [None, "{", '{"runs": 5}', '{"runs": ["../outside"]}'])
def test_a_directory_that_is_no_sweep_is_a_one_line_error(tmp_path, marker):
    if marker is not None:
        (tmp_path / "sweep.json").write_text(marker)
    done = status(tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "sweep.json" in done.stderr and "not a jaxscale sweep directory" in done.stderr
