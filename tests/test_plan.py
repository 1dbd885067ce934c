"""`python -m jaxscale.plan`: figures for a config's model, batch and mesh, from abstract shapes only."""
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import ROOT, needs_cuda_plugin

from jaxscale.config import ModelConfig
from jaxscale.plan import activation_bytes, known_targets, load_target, main

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


def test_the_default_peak_follows_the_compute_dtype(capsys):
    """Without --peak-tflops: a bf16 model at the H100 SXM's dense bf16 peak, 989 TFLOP/s; a float32 one at its
    dense TF32 peak, 494.5 (NVIDIA's datasheet: 989 with sparsity), since XLA runs float32 matmuls as TF32 there.
    A step under a millisecond is called launch-bound, its times a floor."""
    per_token = 6 * (22 * (2 * 2048**2 + 2 * 2048 * 256 + 3 * 2048 * 5632 + 2048 * 2048) + 2048 * 32000)
    for dtype, peak, words in (("bfloat16", 989, "bf16 peak)"), ("float32", 494.5, "TF32 peak: float32 matmuls")):
        main(["--config", str(TINYLLAMA), "--no-xla", "tokenizer.path=does/not/exist.model", f"model.dtype={dtype}"])
        out = capsys.readouterr().out
        step_s = per_token * 16384 / (peak * 1e12 * 0.5)
        assert f"{step_s * 1e3:.3g} ms a step at {peak:g} TFLOP/s (H100 SXM dense {words}" in out
        assert "bound by kernel launches" not in out
    main(["--config", str(ROOT / "configs" / "smoke.toml"), "--no-xla"])
    out = capsys.readouterr().out
    assert "TF32 peak" in out and "a step this small is bound by kernel launches and the host, not FLOPs" in out


def test_targets_carry_the_published_dense_peaks():
    # NVIDIA's datasheets: A100 SXM 312 bf16 / 156 TF32; H100 and H200 SXM 989 / 494.5 (TF32 quoted as 989 sparse)
    peaks = {name: (t.peak_tflops, t.peak_tf32_tflops) for name in known_targets() if (t := load_target(name))}
    assert peaks == {"a100-80": (312, 156), "h100": (989, 494.5), "h200": (989, 494.5)}


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


SMALL_LLAMA = ["model.n_layers=2", "model.d_model=256", "model.n_heads=4", "model.n_kv_heads=2", "model.d_mlp=512",
               "data.seq_len=256"]


def plan_cli(*args):
    # as a user types it: --target must work without JAX_PLATFORMS on a machine with the plugin and no GPU
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run([sys.executable, "-m", "jaxscale.plan", "--config", str(TINYLLAMA), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def gb(text: str) -> float:
    value, unit = text.split()
    return float(value) * (1e-3 if unit == "MB" else 1.0)


@needs_cuda_plugin
def test_plan_for_an_h100_compiles_cudnn_attention_and_says_it_fits():
    code, out, err = plan_cli("--target", "h100", *SMALL_LLAMA)
    assert code == 0, err[-2000:]
    assert "on h100 (compile-only)" in out and "(h100, compile-only)" in out
    # bf16, head_dim 64, compute capability 9.0: cuDNN; 2,048 tokens x 32,000 x 8 bytes << 85 GB / 16: full logits
    assert "choices     attention cudnn, loss full, remat none" in out
    assert "cuDNN fused attention (custom call __cudnn$fmha) compiled" in out
    matmuls = re.search(r"matmuls     (\d+) compiled: (.*)", out)
    assert int(matmuls[1]) >= 14 and matmuls[2] == f"{matmuls[1]} bf16 x bf16"  # 7 projections x 2 layers, at least
    total = gb(re.search(r"total ([\d.]+ [MG]B) per device \(gpu backend\)", out)[1])
    headroom = gb(re.search(r"fits, ([\d.]+ [MG]B) headroom of 84.98 GB", out)[1])
    assert headroom == pytest.approx(84.978434048 - total, abs=0.011)  # the H100 file's device_memory_size


def test_matmul_operand_types_are_read_from_the_compiled_hlo():
    from jaxscale.plan import matmul_line, matmul_operand_types
    hlo = """
  %p.1 = bf16[64,32]{1,0} parameter(0), metadata={op_name="h"}
  %p.2 = bf16[32,16]{1,0} parameter(1)
  %cvt.3 = f32[32,16]{1,0} convert(%p.2)
  %dot.4 = f32[64,16]{1,0} dot(%p.1, %p.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %dot.5 = f32[64,16]{0,1} dot(%cvt.3, %cvt.3), lhs_contracting_dims={0}, rhs_contracting_dims={0}
  %dot_general.6 = bf16[64,64]{1,0} dot(%p.1, %p.1), lhs_contracting_dims={1}, rhs_contracting_dims={1}
"""
    types = matmul_operand_types(hlo)
    assert types == {("bf16", "bf16"): 2, ("f32", "f32"): 1}
    assert matmul_line(types) == "3 compiled: 2 bf16 x bf16, 1 f32 x f32"


@needs_cuda_plugin
def test_plan_says_when_xla_attention_was_compiled_instead():
    code, out, err = plan_cli("--target", "a100-80", *SMALL_LLAMA, "model.attention=xla")
    assert code == 0, err[-2000:]
    assert "no cuDNN custom call: XLA's attention" in out and "cuDNN fused attention" not in out


@needs_cuda_plugin
def test_a_gpu_too_small_gets_what_to_change(tmp_path):
    spec = (ROOT / "jaxscale" / "targets" / "h100.txtpb").read_text()
    small = tmp_path / "tiny-gpu.txtpb"
    small.write_text(re.sub(r"device_memory_size: \d+", "device_memory_size: 100000000", spec))  # 0.1 GB
    code, out, err = plan_cli("--target-spec", str(small), *SMALL_LLAMA)
    assert code == 0, err[-2000:]
    total = gb(re.search(r"total ([\d.]+ [MG]B) per device", out)[1])
    short = gb(re.search(r"does not fit by ([\d.]+ [MG]B) \(of 0.10 GB\)", out)[1])
    assert short == pytest.approx(total - 0.1, abs=0.011)
    assert "try model.remat=full, mesh.fsdp=2, a smaller train.batch_size" in out
    # with the memory this small, the full logits are not kept
    assert "loss blocked" in out


@pytest.mark.parametrize("args, message", [
    (["--mfu", "0"], "--mfu: 0.0 is not a fraction in (0, 1]"),
    (["--mfu", "nan"], "--mfu: nan is not a fraction"),
    (["--peak-tflops", "-5"], "--peak-tflops: -5.0 is not a finite number >= 0"),
    (["--devices", "-1"], "--devices: -1 is negative"),
    (["tokenizer.path=" + __file__], "is neither a Hugging Face tokenizer.json nor a SentencePiece .model"),
])
def test_bad_numbers_and_files_are_one_line_errors(capsys, args, message):
    assert main(["--config", str(TINYLLAMA), "--no-xla", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_target_and_bad_spec_are_one_line_errors(tmp_path):
    code, out, err = plan_cli("--target", "h900")
    assert code == 2 and "--target 'h900': not one of a100-80, h100, h200" in err
    bad = tmp_path / "bad.txtpb"
    bad.write_text("not a proto")
    code, _, err = plan_cli("--target-spec", str(bad))
    assert code == 2 and "not a GPU description" in err and "Traceback" not in err


def test_a_program_above_jaxs_default_pool_is_said_to_need_more_of_the_device():
    from jaxscale.plan import fit_line

    line = fit_line(70_000_000_000, 85_000_000_000, None, None, pool=63_750_000_000)
    assert line.startswith("fits, 15.00 GB headroom of 85.00 GB; above JAX's default pool of 63.75 GB")
    assert "pool" not in fit_line(40_000_000_000, 85_000_000_000, None, None, pool=63_750_000_000)
