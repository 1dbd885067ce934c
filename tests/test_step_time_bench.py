"""benchmarks/step_time.py end to end on the smoke config (tiny shapes, a small vocabulary), float32
and bfloat16, and the published GPU peaks it takes MFU against. Host memory is left as glibc has it
(--host-memory default): retaining it would change allocation for the rest of the test session."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import step_time  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_published_peaks_are_nvidias_dense_bfloat16_figures():
    # NVIDIA datasheets: H100 SXM and H200 1,979 TFLOP/s bf16 with 2:4 sparsity, H100 PCIe 1,513, A100 312 dense
    assert step_time.published_peak("NVIDIA H200", "bfloat16")[0] == pytest.approx(1979e3 / 2, rel=1e-3)
    assert step_time.published_peak("NVIDIA H100 80GB HBM3", "bfloat16")[0] == pytest.approx(1979e3 / 2, rel=1e-3)
    assert step_time.published_peak("NVIDIA H100 PCIe", "bfloat16")[0] == pytest.approx(1513e3 / 2, rel=1e-3)
    assert step_time.published_peak("NVIDIA A100-SXM4-80GB", "bfloat16")[0] == 312e3
    assert step_time.published_peak("NVIDIA H200", "float32") is None  # TF32 or not: measured instead
    assert step_time.published_peak("cpu", "bfloat16") is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_step_time_runs_both_frameworks_in_the_models_dtype(dtype, capsys):
    frameworks = "jax,torch_eager" if HAS_TORCH else "jax"
    code = step_time.main(["--config", str(ROOT / "configs" / "smoke.toml"), "--vocab", "512", "--steps", "4",
                           "--rounds", "2", "--warmup", "1", "--models", "d16-l1", "--frameworks", frameworks,
                           "--set", f"model.dtype={dtype}", "--host-memory", "default", "--no-write", "--json"])
    assert code == 0
    captured = capsys.readouterr()
    (row,) = json.loads(captured.out)
    assert row["model"] == "d16-l1" and row["jax_ms"] > 0 and 0 < row["jax_mfu"] < 1
    if HAS_TORCH:
        assert row["torch_eager_ms"] > 0 and math.isfinite(row["speedup_vs_eager"])
    assert f"4096^3 {dtype} matmul" in captured.err
