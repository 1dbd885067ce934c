"""Two processes with two (scripted) GPUs each: each meters exactly its own GPUs, found by PCI bus id whatever
CUDA_VISIBLE_DEVICES and CUDA's fastest-first order do to the numbering, and the run's energy is the sum of all four."""
import csv
import json
import os
import re
import socket
import subprocess
import sys

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
batch_size = 8
tokens = 8192
eval_tokens = 256
[energy]
meter = "nvml"
hz = 20
[checkpoint]
every = 0
"""
# PCI order; CUDA enumerates the fastest first: ordinals 0, 1, 2, 3 are the GPUs at PCI positions 1, 2, 3, 0
GPUS = [{"watts": 100.0, "speed": 1}, {"watts": 200.0, "speed": 4}, {"watts": 400.0, "speed": 3},
        {"watts": 800.0, "speed": 2}]
VISIBLE = ["3,1", "0,2"]  # process 0: PCI positions 0 and 2 (500 W); process 1: positions 1 and 3 (1000 W)
BUS = "0000:{:02X}:00.0"  # the stand-in's bus id of PCI position i is 0x10 + i


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_process_meters_its_own_gpus_and_the_run_sums_them(tmp_path):
    config = tmp_path / "gpus.toml"
    config.write_text(CONFIG)
    port, out = free_port(), tmp_path / "sweep"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "SCRIPTED_GPUS": json.dumps(GPUS), "JAXSCALE_COORDINATOR": f"127.0.0.1:{port}",
           "JAXSCALE_NUM_PROCESSES": "2"}
    env.pop("CUDA_DEVICE_ORDER", None)
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "scripted_gpus_train.py"), "--config", str(config),
                               "--out", str(out), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**env, "JAXSCALE_PROCESS_ID": str(i), "CUDA_VISIBLE_DEVICES": VISIBLE[i]})
             for i in range(2)]
    logs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [log[1][-3000:] for log in logs]
    metered = [re.findall(r"0000:[0-9A-F]{2}:00\.0", next(line for line in err.splitlines() if "meters nvml" in line))
               for _, err in logs]
    assert metered == [[BUS.format(0x10 + 0), BUS.format(0x10 + 2)], [BUS.format(0x10 + 1), BUS.format(0x10 + 3)]]
    with open(out / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    summary = json.loads((out / row["run_id"] / "summary.json").read_text())
    assert summary["energy_processes"] == 2 and summary["energy_source"] == "counter"
    # constant powers: each process's windows at its own GPUs' power (500 W and 1000 W), the run's their sum
    mine = summary["by_process"]
    for process, watts in zip(mine, (500.0, 1000.0)):
        for window in ("steps", "compile"):
            assert process[f"{window}_energy_j"] == pytest.approx(watts * process[f"{window}_s"], rel=0.01)
    assert summary["steps_energy_j"] == pytest.approx(sum(p["steps_energy_j"] for p in mine), rel=1e-12)
    assert summary["energy_j"] == pytest.approx(sum(p["energy_j"] for p in mine), rel=1e-12)
    assert float(row["energy_j"]) == pytest.approx(summary["energy_j"]) and summary["energy_j"] > summary["steps_energy_j"]
