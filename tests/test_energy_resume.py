"""A real run metered through the scripted NVML stand-in (one GPU at a constant 250 W, its counter the exact
integral), stopped by SIGTERM, resumed, killed by SIGKILL, resumed again: its training-step energy is the
counter's increase over the training steps it kept (250 W x the steps' own timers), compile energy apart, and
every segment keeps its own power trace."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

WATTS = 250.0
CONFIG = """
[data]
seq_len = 32
[tokenizer]
vocab_size = 512
[model]
d_model = 64
d_mlp = 256
n_layers = 2
[train]
batch_size = 8
tokens = 256000
eval_tokens = 2048
[energy]
meter = "nvml"
hz = 20
[checkpoint]
every = 100
"""


def start(config, out):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SCRIPTED_GPUS": json.dumps([{"watts": WATTS, "speed": 1}])}
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "scripted_gpus_train.py"), "--config", str(config),
                             "--out", str(out), "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def saved_steps(run_dir):
    return [int(p.name) for p in (run_dir / "checkpoints").glob("[0-9]*")
            if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists()]


def wait_for_checkpoint_after(run_dir, step, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = saved_steps(run_dir)
        if steps and max(steps) > step:
            return max(steps)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after step {step} in {timeout} s")


def test_step_energy_survives_sigterm_and_sigkill_and_leaves_compile_out(tmp_path):
    config, out = tmp_path / "energy.toml", tmp_path / "sweep"
    config.write_text(CONFIG)
    run_dir = out / "000-energy"

    first = start(config, out)
    wait_for_checkpoint_after(run_dir, 0, first)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143, first.communicate()[1][-3000:]

    second = start(config, out)
    resumed_at = max(saved_steps(run_dir))
    wait_for_checkpoint_after(run_dir, resumed_at, second)
    time.sleep(0.3)  # past the checkpoint: these steps' energy and records are lost with the kill
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=60)

    third = start(config, out)
    _, err = third.communicate(timeout=600)
    assert third.returncode == 0, err[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == summary["steps"] == 1000 and summary["energy_segments"] == 3
    assert len(summary["resumed_at_steps"]) == 2
    kept_steps_s = sum(r["step_s"] for r in records)  # the loop's own timers, not the sampler's
    assert summary["energy_source"] == "counter"
    assert summary["steps_energy_j"] == pytest.approx(WATTS * kept_steps_s, rel=0.005)
    assert summary["steps_s"] == pytest.approx(kept_steps_s, rel=0.005)
    # three processes compiled; that energy is its own, not the steps'
    assert summary["compile_s"] > 0.5 and summary["compile_energy_j"] == pytest.approx(WATTS * summary["compile_s"], rel=0.01)
    assert summary["energy_j"] == pytest.approx(WATTS * summary["duration_s"], rel=0.01)
    assert summary["energy_j"] > summary["steps_energy_j"] + summary["compile_energy_j"]
    traces = sorted(p.name for p in run_dir.glob("power*.csv"))
    assert traces == ["power.1.csv", "power.2.csv", "power.csv"]
    assert all(len((run_dir / name).read_text().splitlines()) > 5 for name in traces)


def test_a_run_resumed_from_its_final_checkpoint_keeps_its_steps_energy(tmp_path):
    """checkpoint.final = true; the summary is then lost (a kill between the final checkpoint and summary.json, or
    a damaged summary retried): the run resumes at its last step, and its steps' energy is still the steps'."""
    config, out = tmp_path / "energy.toml", tmp_path / "sweep"
    config.write_text(CONFIG.replace("tokens = 256000", "tokens = 25600").replace("every = 100", "every = 0\nfinal = true"))
    run_dir = out / "000-energy"
    for _ in range(2):
        proc = start(config, out)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        if not (run_dir / "summary.damaged.json").exists():
            (run_dir / "summary.json").write_text('{"truncated')
    summary = json.loads((run_dir / "summary.json").read_text())
    kept_steps_s = sum(json.loads(line)["step_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert summary["resumed_at_steps"] == [100] and summary["energy_segments"] == 2
    assert summary["steps_s"] == pytest.approx(kept_steps_s, rel=0.005)
    assert summary["steps_energy_j"] == pytest.approx(WATTS * kept_steps_s, rel=0.005)
