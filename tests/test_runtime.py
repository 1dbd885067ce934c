"""jaxscale.runtime: one start-up for every CLI; every `auto` resolved once, from the devices, into the run's record."""
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, needs_cuda_plugin

from jaxscale import runtime
from jaxscale.config import ConfigError, ModelConfig, expand, load_raw

TINYLLAMA = ROOT / "configs" / "tinyllama_tokens.toml"
H100 = runtime.Hardware("gpu", "NVIDIA H100 80GB HBM3", "9.0", 80 * 10**9, 1, True)
CPU = runtime.Hardware("cpu", "cpu", "", 0, 1, True)


def tinyllama():
    return expand(load_raw(TINYLLAMA))[0].config


def test_expected_platform_follows_jax_platforms_then_the_driver(tmp_path):
    assert runtime.expected_platform({"JAX_PLATFORMS": "cpu"}) == "cpu"
    assert runtime.expected_platform({"JAX_PLATFORMS": "cuda,cpu"}) == "gpu"
    assert runtime.expected_platform({}, nvidia_devices=(str(tmp_path / "none"),)) == "cpu"
    if runtime.has_cuda_plugin():  # plugin present and a driver node: a GPU is expected
        (tmp_path / "nvidiactl").touch()
        assert runtime.expected_platform({}, nvidia_devices=(str(tmp_path / "nvidiactl"),)) == "gpu"


def test_no_jax_plugin_at_all_means_cpu(monkeypatch, tmp_path):
    # `pip install jax` alone has no jax_plugins package, and find_spec of a submodule of a missing package raises
    # (Python's documented behaviour, mimicked here): start-up must read that as "no CUDA plugin", not crash.
    def find_spec(name, package=None):
        if name == "jax_plugins":
            return None
        if name.startswith("jax_plugins."):
            raise ModuleNotFoundError("No module named 'jax_plugins'", name="jax_plugins")
        return real_find_spec(name, package)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    (tmp_path / "nvidiactl").touch()  # even where a driver node exists
    assert not runtime.has_cuda_plugin()
    assert runtime.expected_platform({}, nvidia_devices=(str(tmp_path / "nvidiactl"),)) == "cpu"


def test_cpu_is_pinned_only_where_the_cuda_plugin_has_no_gpu_to_find(tmp_path):
    absent = (str(tmp_path / "nvidiactl"),)
    assert runtime.pin_cpu({}, absent) == runtime.has_cuda_plugin()
    assert not runtime.pin_cpu({"JAX_PLATFORMS": "cpu"}, absent)  # the user decided
    (tmp_path / "kfd").touch()
    assert not runtime.pin_cpu({}, (*absent, str(tmp_path / "kfd")))  # some GPU is there: JAX looks for it


@needs_cuda_plugin
@pytest.mark.skipif(any(os.path.exists(n) for n in runtime.GPU_DEVICE_NODES), reason="a GPU device node exists here")
def test_a_cpu_box_with_the_cuda_plugin_starts_without_the_plugins_traceback():
    # without the pin, JAX lets the plugin search for a GPU and logs "Jax plugin configuration error" with a
    # traceback on stderr (the gpu-plan extra has no cuFFT; a full jax[cuda12] finds no driver)
    code = "from jaxscale import runtime; runtime.start(); import jax; print(jax.devices()[0].platform)"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cpu"
    assert "Traceback" not in done.stderr and "plugin" not in done.stderr.lower(), done.stderr


def test_tinyllama_on_an_h100_gets_cudnn_attention_and_full_logits():
    config = tinyllama()
    resolved = runtime.resolve(config, H100, 32000)
    assert resolved.model.attention == "cudnn"  # bf16, head_dim 64, compute capability 9.0
    # 16,384 tokens x 32,000 x 8 bytes = 4.19 GB <= 80 GB / 16
    assert resolved.train.loss == "full"
    assert runtime.choices(config, resolved) == {"model.attention": "cudnn", "train.loss": "full"}
    on_a100_40 = runtime.resolve(config, dataclasses.replace(H100, memory_bytes=40 * 10**9, compute_capability="8.0"),
                                 32000)
    assert (on_a100_40.model.attention, on_a100_40.train.loss) == ("cudnn", "blocked")  # 2.5 GB share < 4.19 GB
    on_cpu = runtime.resolve(config, CPU, 32000)
    assert (on_cpu.model.attention, on_cpu.train.loss) == ("xla", "blocked")  # 2.1 GB of tiles: too many to store


def test_explicit_choices_are_kept_and_cudnn_off_a_gpu_is_a_config_error():
    config = tinyllama()
    kept = dataclasses.replace(config, model=dataclasses.replace(config.model, attention="xla"),
                               train=dataclasses.replace(config.train, loss="stored"))
    assert runtime.resolve(kept, H100, 32000) == kept
    assert runtime.choices(kept, kept) == {}
    cudnn = dataclasses.replace(config, model=dataclasses.replace(config.model, attention="cudnn"))
    with pytest.raises(ConfigError, match="model.attention = 'cudnn' needs an NVIDIA GPU"):
        runtime.resolve(cudnn, CPU, 32000)


def test_hardware_reads_the_devices():
    import jax
    hw = runtime.hardware(jax.devices("cpu"))
    assert hw.platform == "cpu" and hw.compute_capability == "" and hw.n_devices == len(jax.devices("cpu"))
    assert runtime.hardware(jax.devices("cpu"), memory_bytes=123).memory_bytes == 123


def test_unresolved_auto_traces_the_portable_path():
    from jaxscale.models.attention import attention_impl
    assert attention_impl(ModelConfig(attention="auto")) == "xla"
    assert attention_impl(ModelConfig(attention="cudnn")) == "cudnn"


START = ("import json, os, jax; from jaxscale import hostmem, runtime; p = runtime.start(); "
         "print(json.dumps({'platform': p, 'retained': hostmem.retained(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),"
         " 'cache': jax.config.jax_compilation_cache_dir}))")


@pytest.mark.parametrize("platforms", ["cpu", "cuda"])
def test_start_turns_on_the_cache_and_tunes_only_a_cpu_process(platforms, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": platforms, "JAXSCALE_CACHE": str(tmp_path), "XLA_FLAGS": ""}
    code = START if platforms == "cpu" else START.replace("import jax;", "import jax; jax.config.update('jax_platforms', 'cpu');")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cache"] == str(tmp_path / "jax")
    if platforms == "cpu":
        assert got["platform"] == "cpu" and got["retained"] is True
    else:  # a GPU process: glibc and XLA:CPU left as they are
        assert got["platform"] == "gpu" and got["retained"] is False and got["xla_flags"] == ""


def test_a_run_records_what_each_auto_became(tmp_path):
    from jaxscale.train import main
    out = tmp_path / "sweep"
    assert main(["--config", str(ROOT / "configs" / "smoke.toml"), "--out", str(out), "--quiet",
                 "train.tokens=2048"]) == 0
    run_dirs = [p for p in out.iterdir() if (p / "summary.json").exists()]
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        config = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        # on this CPU with freed memory kept (the CLI keeps it): d_model 16 and 32 store their 8 x 32 x 512 tiles
        expected = {"model.attention": "xla", "train.loss": "stored"}
        assert config["resolved"] == expected and summary["resolved"] == expected
        assert config["model"]["attention"] == "xla" and config["train"]["loss"] == "stored"
        assert (summary["attention"], summary["loss_mode"]) == ("xla", "stored")


class FakeDevice:
    platform, device_kind, compute_capability = "gpu", "NVIDIA H100 80GB HBM3", "9.0"

    def __init__(self, process_index: int, bytes_limit: int):
        self.process_index, self._limit = process_index, bytes_limit

    def memory_stats(self):
        if self.process_index != 0:  # as jax answers for another process's device
            raise RuntimeError("MemoryStats is only supported for addressable PjRt devices")
        return {"bytes_limit": self._limit}


def test_memory_is_read_from_a_device_of_this_process():
    """On process 0 of a two-host mesh whose first device is another process's (as every process but 0 sees it):
    the memory is this process's device's, so every process makes the same `auto` choices."""
    hw = runtime.hardware([FakeDevice(1, 0), FakeDevice(0, 63_733_825_536)])
    assert hw.memory_bytes == 63_733_825_536 and hw.n_devices == 2 and hw.platform == "gpu"


def test_the_plan_reads_the_pool_a_run_would_get():
    """JAX preallocates 75% of a GPU unless XLA_CLIENT_MEM_FRACTION (or the older XLA_PYTHON_CLIENT_MEM_FRACTION)
    says otherwise; `loss = auto` reads that pool. TinyLlama's logits and their gradient (8 x 16,384 x 32,000 bytes =
    4.19 GB) exceed 1/16 of an H100's default pool (3.98 GB): blocked; with 90% of it (4.78 GB): full."""
    from jaxscale.loss import choose_loss

    h100 = 84_978_434_048
    assert runtime.pool_bytes(h100, {}) == int(0.75 * h100)
    assert runtime.pool_bytes(h100, {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"}) == int(0.9 * h100)
    assert runtime.pool_bytes(h100, {"XLA_CLIENT_MEM_FRACTION": ".5", "XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"}) == h100 // 2
    logits = (16_384, 32_000, 2048, "gpu", True)
    assert choose_loss(*logits, runtime.pool_bytes(h100, {})) == "blocked"
    assert choose_loss(*logits, runtime.pool_bytes(h100, {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"})) == "full"
