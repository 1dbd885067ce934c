"""jaxscale.xla_cpu: the 512-bit vector flag is added only for AVX-512 CPUs, never over the user's own
setting, and XLA itself accepts it (an unknown or malformed XLA flag aborts the backend's start)."""
import os
import subprocess
import sys

from jaxscale import xla_cpu

AVX512 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512vl\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


def test_added_only_for_avx512_and_never_over_the_users_setting(tmp_path, monkeypatch):
    (tmp_path / "avx512").write_text(AVX512)
    (tmp_path / "avx2").write_text(AVX2)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert not xla_cpu.prefer_wide_vectors(str(tmp_path / "avx2"))
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    assert xla_cpu.prefer_wide_vectors(str(tmp_path / "avx512"))
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 --xla_cpu_prefer_vector_width=512"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=256")
    assert not xla_cpu.prefer_wide_vectors(str(tmp_path / "avx512"))
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_prefer_vector_width=256"
    assert not xla_cpu.prefer_wide_vectors(str(tmp_path / "missing"))


def test_xla_accepts_the_flag(tmp_path):
    (tmp_path / "cpuinfo").write_text(AVX512)
    code = (f"from jaxscale import xla_cpu; assert xla_cpu.prefer_wide_vectors({str(tmp_path / 'cpuinfo')!r}); "
            "import jax.numpy as jnp; print(float(jnp.arange(4.0).sum()))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "6.0"
