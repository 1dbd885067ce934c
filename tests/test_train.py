import csv
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from jaxscale.train import main

SMOKE = ROOT / "configs" / "smoke.toml"


def read_results(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "sweep"
    assert main(["--config", str(SMOKE), "--out", str(out), "--quiet"]) == 0
    return out


def test_smoke_sweep_writes_every_run(smoke_sweep):
    rows = read_results(smoke_sweep)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        steps = int(row["tokens"]) // (8 * 32)
        assert int(row["steps"]) == steps and len(losses(smoke_sweep / row["run_id"])) == steps
        assert int(row["flops"]) == 6 * int(row["n_params"]) * int(row["tokens"])
        assert float(row["eval_loss"]) < 6.3  # below the uniform guess log(512) = 6.24 + margin after training
        summary = json.loads((smoke_sweep / row["run_id"] / "summary.json").read_text())
        assert summary["epochs"] > 0 and summary["compile_s"] >= 0
    by_model = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append((int(row["tokens"]), float(row["eval_loss"])))
    for runs in by_model.values():  # more tokens, lower held-out loss
        runs.sort()
        assert runs[-1][1] < runs[0][1]


def test_same_config_gives_identical_losses(smoke_sweep, tmp_path):
    out = tmp_path / "again"
    assert main(["--config", str(SMOKE), "--out", str(out), "--quiet"]) == 0
    for row in read_results(smoke_sweep):
        assert losses(out / row["run_id"]) == losses(smoke_sweep / row["run_id"])


def test_rerun_skips_finished_runs(smoke_sweep):
    before = {p: p.stat().st_mtime_ns for p in smoke_sweep.glob("*/metrics.jsonl")}
    assert main(["--config", str(SMOKE), "--out", str(smoke_sweep), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in smoke_sweep.glob("*/metrics.jsonl")} == before
    assert len(read_results(smoke_sweep)) == 4


@pytest.mark.parametrize("override, message", [
    ("train.tokenz=5", "unknown key train.tokenz"),
    ("train.batch_size=-2", "train.batch_size: must be > 0, got -2"),
    ("data.path=/no/such/corpus", "data.path: corpus directory /no/such/corpus not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, override, message):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "jaxscale.train", "--config", str(SMOKE), "--out", str(out), override],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error: ")
    assert not out.exists()


def test_batches_the_mesh_cannot_split_stop_before_anything_is_written(tmp_path):
    """On 8 devices (data 8): a train batch of 4 rows, or a held-out split of 1 window, is refused up front; the
    corrected command then runs in the same directory."""
    env = {**__import__("os").environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = tmp_path / "out"
    base = [sys.executable, "-m", "jaxscale.train", "--config", str(SMOKE), "--out", str(out), "--quiet",
            "train.tokens=512"]
    for override, message in (("train.batch_size=4", "train.batch_size: 4 is not a multiple of mesh data x fsdp = 8"),
                              ("train.eval_tokens=32", "train.eval_tokens: 1 held-out window(s) of data.seq_len 32")):
        proc = subprocess.run(base + [override], capture_output=True, text=True, cwd=ROOT, env=env)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}"), proc.stderr
        assert not out.exists()
    assert subprocess.run(base, capture_output=True, cwd=ROOT, env=env).returncode == 0
    assert [r["status"] for r in read_results(out)] == ["ok", "ok"]


def test_existing_results_are_never_overwritten(smoke_sweep, tmp_path, capsys):
    before = (smoke_sweep / "results.csv").read_bytes()
    assert main(["--config", str(SMOKE), "--out", str(smoke_sweep), "train.lr=0.01"]) == 2
    assert "already holds other results (its sweep differs: train.lr 0.003 there, 0.01 now)" in capsys.readouterr().err
    assert (smoke_sweep / "results.csv").read_bytes() == before


def test_without_a_power_sensor_energy_is_unavailable_and_says_why(smoke_sweep):
    import shutil
    if shutil.which("nvidia-smi") or any(__import__("pathlib").Path("/sys/class/powercap").glob("intel-rapl*")):
        pytest.skip("this machine has a power sensor")
    for row in read_results(smoke_sweep):
        assert row["energy_source"] == "unavailable" and row["energy_j"] == "" and row["power_mean_w"] == ""
        assert "NVML" in row["energy_reason"] and "RAPL" in row["energy_reason"]
        assert float(row["eval_loss"]) > 0 and float(row["tokens_per_s"]) > 0 and float(row["wall_s"]) > 0
        run = smoke_sweep / row["run_id"]
        assert all(json.loads(line)["energy_j"] is None for line in (run / "metrics.jsonl").read_text().splitlines())
        assert (run / "power.csv").read_text().splitlines() == ["time_s,device,power_w,counter_j"]


def test_a_resumed_runs_energy_adds_its_segments_up():
    """Hand-written segments: windows and durations add, a window one segment never opened adds
    nothing, the peak is the highest, one unavailable energy makes the total unavailable."""
    from jaxscale.train import combine_energy
    first = {"energy_j": 100.0, "duration_s": 10.0, "power_peak_w": 30.0, "energy_above_idle_j": 40.0,
             "compile_energy_j": 20.0, "compile_s": 2.0, "steps_energy_j": 80.0, "steps_s": 8.0, "idle_power_w": 6.0}
    second = {"energy_j": 50.0, "duration_s": 4.0, "power_peak_w": 25.0, "energy_above_idle_j": 26.0,
              "compile_energy_j": 10.0, "compile_s": 1.0, "steps_energy_j": 30.0, "steps_s": 2.5,
              "eval_energy_j": 10.0, "eval_s": 0.5, "idle_power_w": 6.0}
    combined = combine_energy([first, second])
    assert combined["energy_j"] == 150.0 and combined["duration_s"] == 14.0
    assert combined["power_mean_w"] == pytest.approx(150.0 / 14.0) and combined["power_peak_w"] == 30.0
    assert combined["compile_energy_j"] == 30.0 and combined["steps_energy_j"] == 110.0 and combined["steps_s"] == 10.5
    assert combined["eval_energy_j"] == 10.0 and combined["energy_above_idle_j"] == 66.0
    assert combined["idle_power_w"] == 6.0 and combined["energy_segments"] == 2
    unavailable = combine_energy([first, {**second, "energy_j": None, "steps_energy_j": None, "power_peak_w": None}])
    assert unavailable["energy_j"] is None and unavailable["power_mean_w"] is None
    assert unavailable["steps_energy_j"] is None and unavailable["power_peak_w"] == 30.0
