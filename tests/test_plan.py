"""`python -m jaxscale.plan`: figures for a config's model, batch and mesh, from abstract shapes only."""
import re
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from jaxscale.config import ModelConfig
from jaxscale.plan import activation_bytes, main

TINYLLAMA = ROOT / "configs" / "tinyllama_tokens.toml"
TWIN = ROOT / "configs" / "tinyllama_tokens_cpu.toml"


def test_tinyllama_plan_figures(capsys):
    """Analytic part of the plan for TinyLlama-1.1B (XLA's compile is measured by hand: see the README)."""
    main(["--config", str(TINYLLAMA), "--no-xla", "--peak-tflops", "989", "--mfu", "0.5",
          "tokenizer.path=does/not/exist.model"])
    out = capsys.readouterr().out
    assert "tokenizer.path does/not/exist.model is not here; planning with tokenizer.vocab_size" in out
    assert "1,100,048,384 total, 968,976,384 without embeddings" in out
    assert "batch 8 x 2048 = 16,384 tokens/step" in out
    # 6 x (22 x (q,k,v,o + SwiGLU + causal attention) + output layer) MACs per token
    per_token = 6 * (22 * (2 * 2048**2 + 2 * 2048 * 256 + 3 * 2048 * 5632 + 2048 * 2048) + 2048 * 32000)
    assert f"({per_token:,} per token" in out
    assert f"{per_token * 16384 / 1e12:.2f} TFLOP analytic" in out
    assert "parameters 4.40 GB (float32) + optimizer 8.80 GB (Adam moments) + gradients 4.40 GB" in out
    step_s = per_token * 16384 / (989e12 * 0.5)
    assert f"{step_s * 1e3:.3g} ms a step at 989 TFLOP/s x MFU 0.5" in out
    for tokens, steps in [(500_000, 30), (1_000_000, 61), (2_000_000, 122)]:
        assert re.search(rf"tokens\s+{tokens:,}: {steps} steps, .* x 50 runs", out)
    assert "all 150 runs" in out


def test_cpu_twin_plan_runs_as_a_command_with_xla_figures():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxscale.plan", "--config", str(TWIN)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "data 1 x fsdp 1 x tensor 1 = 1 device(s) (cpu)" in out
    assert re.search(r"XLA\s+compiled in [\d.]+ s; cost analysis [\d.]+ [MGT]FLOP per device", out)
    assert re.search(r"XLA memory\s+arguments [\d.]+ MB, temporaries", out)
    assert "all 9 runs" in out
    assert time.perf_counter() - start < 60


def test_activation_estimate_shrinks_with_remat_tensor_and_fewer_tokens():
    cfg = ModelConfig(arch="llama", n_layers=22, d_model=2048, n_heads=32, n_kv_heads=4, d_mlp=5632, dtype="bfloat16")
    saved, probs = activation_bytes(cfg, 16384, 2048, tensor=1)
    # bf16: 22 layers x (4 d + 3 d + 3 kv + 4 mlp) values a token
    assert saved == 16384 * 2 * 22 * (7 * 2048 + 3 * 256 + 4 * 5632)
    assert probs == 16384 * 22 * 2 * 32 * 2048 * 4
    remat, _ = activation_bytes(ModelConfig(**{**cfg.__dict__, "remat": "full"}), 16384, 2048, tensor=1)
    assert remat < saved / 10
    assert activation_bytes(cfg, 16384, 2048, tensor=2)[0] < saved
    assert activation_bytes(cfg, 8192, 2048, tensor=1)[0] == pytest.approx(saved / 2)
