"""Kill, corrupt and share sweeps; the rerun of the same command must finish them exactly."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT

CONFIG = """
[data]
seq_len = 16
[tokenizer]
vocab_size = 256
[model]
d_model = 16
d_mlp = 32
n_layers = 1
[train]
batch_size = 4
tokens = {tokens}
lr = 3e-3
eval_tokens = 256
[checkpoint]
every = {every}
final = true
"""


def write_config(tmp_path, tokens=64 * 400, every=25, name="resume.toml"):
    path = tmp_path / name
    path.write_text(CONFIG.format(tokens=tokens, every=every))
    return path


def start(config, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "jaxscale.train", "--config", str(config), "--out", str(out),
                             "--quiet", *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(config, out, *extra):
    proc = start(config, out, *extra)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return stderr


def wait_for_steps(run_dir, steps, proc, timeout=120):
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"{metrics} never reached {steps} steps")


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_params(run_dir):
    manager = ocp.CheckpointManager((run_dir / "checkpoints").absolute())
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]["params"]


def results(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    out = tmp / "sweep"
    finish(write_config(tmp), out)
    return out / "000-resume"


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path, uninterrupted):
    config, out = write_config(tmp_path), tmp_path / "sweep"
    proc = start(config, out)
    wait_for_steps(out / "000-resume", 60, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "000-resume" / "summary.json").exists()
    stderr = finish(config, out)
    assert "resuming at step" in stderr
    assert losses(out / "000-resume") == losses(uninterrupted)
    a, b = final_params(out / "000-resume"), final_params(uninterrupted)
    for x, y in zip(jax_leaves(a), jax_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def test_sigterm_checkpoints_and_exits_quickly(tmp_path):
    config, out = write_config(tmp_path, every=0), tmp_path / "sweep"
    proc = start(config, out)
    wait_for_steps(out / "000-resume", 30, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert proc.returncode == 143
    assert "Rerun the same command to resume" in stderr
    saved = [p.name for p in (out / "000-resume" / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and int(saved[0]) >= 30
    assert json.loads((out / "manifest.json").read_text())["runs"][0]["state"] == "interrupted"


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, uninterrupted):
    config, out = write_config(tmp_path, every=20), tmp_path / "sweep"
    proc = start(config, out)
    wait_for_steps(out / "000-resume", 70, proc)
    checkpoints = out / "000-resume" / "checkpoints"
    saved = lambda: sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())  # noqa: E731
    # kill between saves: a save finalises its step before it removes the oldest, so for a moment there are three
    deadline = time.monotonic() + 30
    while len(saved()) != 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = saved()
    assert len(steps) == 2
    for f in (checkpoints / str(steps[-1]) / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    stderr = finish(config, out)
    assert f"checkpoint {checkpoints / str(steps[-1])} is unreadable" in stderr
    assert f"resuming at step {steps[0]}" in stderr
    assert losses(out / "000-resume") == losses(uninterrupted)


SWEEP = CONFIG.replace("tokens = {tokens}", "tokens = [1024, 2048, 4096, 6144]")


def test_sweep_killed_between_and_mid_run_finishes_each_run_once(tmp_path):
    config, out = tmp_path / "sweep.toml", tmp_path / "sweep"
    config.write_text(SWEEP.format(every=10))
    proc = start(config, out)
    wait_for_steps(out / "002-tokens4096", 30, proc)  # runs 0 and 1 done, run 2 part-way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {r["run_id"] for r in results(out)} == {"000-tokens1024", "001-tokens2048"}
    finish(config, out)
    rows = results(out)
    assert [r["run_id"] for r in rows] == ["000-tokens1024", "001-tokens2048", "002-tokens4096", "003-tokens6144"]
    assert all(r["status"] == "ok" for r in rows)
    assert json.loads(rows and (out / "002-tokens4096" / "summary.json").read_text())["resumed_at_steps"]


def test_two_workers_share_a_sweep_without_training_a_run_twice(tmp_path):
    config, out = tmp_path / "sweep.toml", tmp_path / "sweep"
    config.write_text(SWEEP.format(every=0))
    procs = [start(config, out) for _ in range(2)]
    logs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    trained = [{line.split()[2] for line in err.splitlines() if line.startswith("run ")} for _, err in logs]
    assert trained[0].isdisjoint(trained[1])
    assert trained[0] | trained[1] == {r["run_id"] for r in results(out)}
    assert len(results(out)) == 4


def test_worker_split_balances_the_tokens(tmp_path):
    # one model, budgets 1,024 / 2,048 / 4,096 / 6,144 tokens dealt largest first to the less loaded worker:
    # 6,144 + 1,024 and 4,096 + 2,048 (7,168 each), where every other run would give worker 1 8,192 against 5,120
    config, out = tmp_path / "sweep.toml", tmp_path / "sweep"
    config.write_text(SWEEP.format(every=0))
    finish(config, out, "--worker", "1/2")
    assert [r["run_id"] for r in results(out)] == ["001-tokens2048", "002-tokens4096"]


def test_diverging_run_is_marked_failed_and_the_sweep_goes_on(tmp_path):
    config, out = tmp_path / "sweep.toml", tmp_path / "sweep"
    config.write_text(SWEEP.format(every=0).replace("lr = 3e-3", "lr = [3e-3, 1e30]").replace(
        "tokens = [1024, 2048, 4096, 6144]", "tokens = 2048"))
    finish(config, out)
    rows = {r["run_id"]: r for r in results(out)}
    assert rows["000-lr0.003"]["status"] == "ok"
    bad = rows["001-lr1e+30"]
    assert bad["status"] == "failed" and int(bad["failed_step"]) >= 1 and "loss became nan" in bad["reason"]
