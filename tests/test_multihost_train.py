"""`python -m jaxscale.train` as two processes (4 CPU devices each, jax.distributed on localhost) trains a
small Llama on a (2, 2, 2) mesh to the losses of one process with 8 devices; only process 0 writes."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from conftest import ROOT

CONFIG = """
[data]
seq_len = 16
[tokenizer]
vocab_size = 256
[model]
arch = "llama"
d_model = 32
d_mlp = 64
n_layers = 1
n_heads = 4
n_kv_heads = 2
[train]
batch_size = 8
tokens = 2048
eval_tokens = 256
[checkpoint]
every = 8
[mesh]
data = 2
fsdp = 2
tensor = 2
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(config, out):
    return [sys.executable, "-m", "jaxscale.train", "--config", str(config), "--out", str(out), "--quiet"]


def losses(out):
    (run,) = [p for p in out.iterdir() if (p / "metrics.jsonl").is_file()]
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_with_eight_devices(tmp_path):
    config = tmp_path / "mp.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    one = subprocess.run(command(config, tmp_path / "one"), cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert one.returncode == 0, one.stderr
    port = free_port()
    procs = [subprocess.Popen(command(config, tmp_path / "two"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                                              "JAXSCALE_COORDINATOR": f"127.0.0.1:{port}",
                                              "JAXSCALE_NUM_PROCESSES": "2", "JAXSCALE_PROCESS_ID": str(i)})
             for i in range(2)]
    logs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    reference, distributed = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(reference) == 16
    np.testing.assert_allclose(distributed, reference, atol=1e-5)
    assert "results in" in logs[0][0]
    assert (tmp_path / "two" / "results.csv").read_text().count("\n") == 2
