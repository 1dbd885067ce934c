"""benchmarks/gpu_check.py at toy sizes on the CPU, so the GPU acceptance check cannot rot between GPU loans:
the report's structure, the MFU against an independent count, the energy section without NVML and over the
scripted NVML stand-in, and the targets' verdicts."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_cuda_plugin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
from jaxscale.testing.scripted_nvml import ScriptedGPU, ScriptedNVML, constant  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None
MISSING_ON_GPU_MACHINES = ("grain", "orbax", "tokenizers", "sentencepiece", "datasets")


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # As on the GPU machines, which lack grain (and may lack the tokenizers): the check must not need them.
    script = ROOT / "benchmarks" / "gpu_check.py"
    code = (f"import runpy, sys\nclass Missing:\n    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {MISSING_ON_GPU_MACHINES!r}:\n"
            f"            raise ImportError(name + ' is not installed')\n"
            f"sys.meta_path.insert(0, Missing())\nsys.argv = [{str(script)!r}, '--toy', '--out', {str(out)!r}]\n"
            f"runpy.run_path(sys.argv[0], run_name='__main__')\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=300)
    return json.loads((out / "cpu-toy.json").read_text()), (out / "cpu-toy.md").read_text()


def test_toy_report_is_labelled_and_has_every_section(toy_report):
    report, md = toy_report
    assert report["toy"] and "TOY RUN" in report["label"] and "TOY RUN" in md
    assert report["machine"]["backend"] == "cpu" and report["versions"]["jax"]
    assert list(report["sections"]) == ["tinyllama", "attention", "energy", "tiny_grid", "loop"]
    for name in ("tinyllama", "attention", "tiny_grid"):
        assert report["sections"][name]["status"] == "ok", report["sections"][name]
    for title in gpu_check.TITLES.values():
        assert title in md
    assert all(t["met"] is None and "toy" in t["note"] for t in report["targets"])  # no verdict from a toy


def test_mfu_matches_an_independent_count(toy_report):
    s = toy_report[0]["sections"]["tinyllama"]
    # the toy Llama: 1 layer, d 64, 4 heads of 16, 2 KV heads, SwiGLU 128, 64 positions, vocab 512
    d, kv, m, t, v = 64, 2 * 16, 128, 64, 512
    macs = (d * d + 2 * d * kv + d * d + 3 * d * m + d * t) + d * v  # projections, MLP, causal attention, output
    assert s["flops_per_token"] == 6 * macs and s["tokens_per_step"] == 2 * 64
    assert s["mfu"] == pytest.approx(6 * macs * 128 / s["step_s"] / s["peak_flops"], rel=1e-9)
    assert not s["peak_published"] and s["peak_flops"] > 0 and s["loss_finite"]
    assert s["compile_s"] > 0 and s["steps_timed"] == 3 and s["memory_plan"]["planned_bytes"] > 0
    assert s["peak_bytes"] is None  # the CPU keeps no device memory statistics: none invented
    (dots,) = s["remat_variants"]  # the config's remat is none: dots is timed beside it
    assert s["remat"] == "none" and dots["remat"] == "dots" and dots["status"] == "ok", dots
    assert dots["step_over_measured"] == pytest.approx(dots["step_s"] / s["step_s"])
    assert dots["planned_bytes"] < s["memory_plan"]["planned_bytes"]  # it keeps less for the backward pass


def test_attention_and_grid_sections(toy_report):
    report = toy_report[0]
    a = report["sections"]["attention"]
    assert a["cudnn"]["status"] == "unavailable" and a["xla"]["forward_s"] > 0 and a["xla"]["forward_backward_s"] > 0
    assert all(0 <= e < 0.05 for e in a["xla"]["max_abs_diff_vs_float32"].values())  # bfloat16 vs float32
    (row,) = report["sections"]["tiny_grid"]["shapes"]
    assert row["model"] == "d16-l1" and row["jax_steps_s"] == pytest.approx(1e3 / row["jax_ms"])
    if HAS_TORCH:
        assert row["speedup_vs_eager"] == pytest.approx(row["torch_eager_ms"] / row["jax_ms"])
    else:
        assert row["torch_eager_ms"] is None


def test_energy_without_nvml_is_unavailable_with_the_reason():
    budget = gpu_check.Budget(60)
    res = gpu_check.energy(gpu_check.TOY, budget, nvml=ScriptedNVML([], library_found=False))
    assert res == {"status": "unavailable", "reason": "NVML: NVML library not found (no NVIDIA driver on this machine)"}


def test_energy_over_the_scripted_stand_in_compares_counter_and_integral():
    nvml = ScriptedNVML([ScriptedGPU(constant(200.0))])
    res = gpu_check.energy(gpu_check.TOY, gpu_check.Budget(60), nvml=nvml)
    assert "not a measurement" in res["meter"] and nvml.initialised == 0
    assert set(res["windows"]) == {"compile", "steps", "eval", "run"} and res["steps"] > 0
    for name, w in res["windows"].items():
        assert w["counter_j"] == pytest.approx(200.0 * w["duration_s"], rel=0.01), name
        assert abs(w["integrated_vs_counter"]) < 0.01, name  # constant power: the trapezoid is exact
    o = res["overhead"]
    assert o["step_ms_off"] > 0 and o["step_ms_on"] > 0 and o["mark_us"] > 0 and o["read_us"] > 0
    md = "\n".join(gpu_check.md_energy(res))
    assert "| steps |" in md and "not a measurement" in md and "could not render" not in md


def grid(speedups):
    return {"status": "ok", "shapes": [{"model": f"m{i}", "speedup_vs_eager": x} for i, x in enumerate(speedups)]}


@pytest.mark.parametrize("mfu, speedups, efficiency, verdicts", [
    (0.60, [2.5] * 7, 0.93, (True, True, True)),
    (0.50, [2.5] * 6 + [1.9], 0.89, (False, False, False)),
    (0.60, [2.5] * 6, None, (True, None, None)),  # a shape missing, the loop not measured: no verdict
    (0.60, [2.5] * 6 + [None], 0.90, (True, None, True)),  # no PyTorch at a shape: no verdict
])
def test_targets(mfu, speedups, efficiency, verdicts):
    sections = {"tinyllama": {"mfu": mfu, "peak_published": True}, "tiny_grid": grid(speedups),
                "loop": {"loop_efficiency": efficiency} if efficiency else {"status": "unavailable", "reason": "r"}}
    assert tuple(t["met"] for t in gpu_check.targets(sections, toy=False)) == verdicts
    unpublished = {"tinyllama": {"mfu": mfu, "peak_published": False}, "tiny_grid": grid(speedups)}
    assert gpu_check.targets(unpublished, toy=False)[0]["met"] is None


def test_loop_section_without_grain_says_what_is_missing(toy_report):
    report, md = toy_report
    assert report["sections"]["loop"] == {"status": "unavailable", "wall_s": report["sections"]["loop"]["wall_s"],
                                          "reason": "jaxscale.train needs grain, orbax.checkpoint and tokenizers, not "
                                                    "installed here (see this script's docstring for bringing the wheels)"}
    assert "needs grain, orbax.checkpoint and tokenizers" in md


# What a GPU image may lack beyond what tools/gpu_wheels.sh brings (grain, tokenizers): jaxscale.train must not
# need them (safetensors is for Hugging Face checkpoints, matplotlib for the report, written or warned about).
NOT_BROUGHT = ("safetensors", "matplotlib", "sentencepiece", "tensorboardX", "datasets", "torch")


def test_the_loop_section_needs_nothing_the_wheels_do_not_bring(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.py"
    code = (f"import runpy, sys\nclass Missing:\n    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {NOT_BROUGHT!r}:\n"
            f"            raise ImportError(name + ' is not installed')\n"
            f"sys.meta_path.insert(0, Missing())\nsys.argv = [{str(script)!r}, '--toy', '--sections', 'loop', "
            f"'--out', {str(tmp_path)!r}]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=ROOT,
                   timeout=300)
    loop = json.loads((tmp_path / "cpu-toy.json").read_text())["sections"]["loop"]
    assert loop["status"] == "ok" and loop["loop_efficiency"] > 0, loop


def test_loop_section_runs_the_real_loop_where_grain_is():
    res = gpu_check.loop(gpu_check.TOY, gpu_check.Budget(60))
    assert res["loop_efficiency"] == pytest.approx(res["loop_steps_per_s"] / res["bare_steps_per_s"], abs=1e-3)
    assert len(res["rounds"]["loop"]) == 1 and res["backend"] == "cpu"
    assert "loop_efficiency" in "\n".join(gpu_check.md_loop(res))
    assert gpu_check.targets({"loop": res}, toy=True)[2]["met"] is None  # a toy run gives no verdict


def test_a_loop_below_its_target_is_timed_again_without_the_energy_meter(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "LOOP_TARGET", 2.0)  # no loop meets it
    res = gpu_check.loop(gpu_check.TOY, gpu_check.Budget(120))
    assert res["meter"] == "auto" and res["without_meter"]["meter"] == "none"
    # the option reaches the config the loop trains with
    import loop_overhead
    args = loop_overhead.argparse.Namespace(seq_len=8, d_model=16, batch=2, meter="none")
    assert 'meter = "none"' in loop_overhead.write_config(tmp_path, args, 4).read_text()
    assert "energy.meter = \"none\"" in "\n".join(gpu_check.md_loop(res))


def test_full_sizes_refuse_to_run_off_a_gpu():
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", "/nonexistent"])


def test_grid_skips_shapes_when_the_budget_is_spent():
    res = gpu_check.tiny_grid(gpu_check.FULL, gpu_check.Budget(0))
    assert [r["model"] for r in res["shapes"]] == ["d16-l1", "d24-l1", "d32-l2", "d48-l2", "d64-l3", "d96-l3", "d128-l4"]
    assert all("torch_eager_skipped" in r and "torch_compile_skipped" in r and "jax_ms" not in r for r in res["shapes"])
    assert gpu_check.targets({"tiny_grid": res}, toy=False)[1]["met"] is None
    assert "skipped: time budget" in "\n".join(gpu_check.md_grid(res))


@needs_cuda_plugin
def test_cudnn_attention_at_tinyllamas_shapes_lowers_for_cuda():
    """No GPU needed: JAX's own checks of the cuDNN call (GQA 32/4, head_dim 64, causal, bfloat16) run at trace
    time, so the GPU run's (a) cannot fail on the shapes themselves."""
    import jax
    import jax.numpy as jnp
    b, t, n, k, h = gpu_check.FULL.attention
    q, kv = jax.ShapeDtypeStruct((b, t, n, h), jnp.bfloat16), jax.ShapeDtypeStruct((b, t, k, h), jnp.bfloat16)
    forward, forward_backward = gpu_check.attention_programs("cudnn")
    for fn, args, calls in ((forward, (q, kv, kv), 1), (forward_backward, (q, kv, kv, q), 2)):
        text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("custom_call") == calls and "cudnn" in text


def test_gpu_only_figures_render(toy_report):
    """The paths only a GPU run fills (cuDNN's row, the cuDNN-XLA differences, device peak memory, the remat
    fallback) render, so a GPU run cannot lose its Markdown at the end."""
    report = json.loads(json.dumps(toy_report[0]))
    a, llama = report["sections"]["attention"], report["sections"]["tinyllama"]
    a["cudnn"] = dict(a["xla"])
    a["max_abs_diff_cudnn_vs_xla"] = a["xla"]["max_abs_diff_vs_float32"]
    llama |= {"peak_bytes": 3 * 2**30, "peak_over_planned": 1.1, "without_remat": "out of memory (...)"}
    md = gpu_check.markdown(report)
    assert "could not render" not in md and "| cudnn | " in md and "cuDNN vs XLA, largest" in md
    assert "3.00 GiB" in md and "out of memory" in md and "| dots | " in md
