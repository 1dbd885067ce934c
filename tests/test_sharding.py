"""Sharded training equals single-device training: 8 CPU devices in one process, and 2 processes x 4.

XLA_FLAGS must be set before jax starts, so the work runs in subprocesses (this file run as a
script); the test process itself stays single-device.
"""
import dataclasses
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxscale import sharding
from jaxscale.config import MeshConfig, ModelConfig, TrainConfig
from jaxscale.models import build_model
from jaxscale.sharding import initialize_distributed, mesh_shape
from jaxscale.step import compiled_steps, init_state, state_shardings, step_key

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
STEPS, BATCH, SEQ, VOCAB = 10, 8, 32, 256
MODEL = ModelConfig(arch="llama", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=128)  # scanned
TRAIN = TrainConfig(lr=1e-2, warmup_frac=0.2, loss="blocked", loss_chunk=128)  # 256 tokens a batch: the blocked loss
STORED = dataclasses.replace(TRAIN, loss="stored")
# Unoptimised XLA CPU code compiles ~4x faster; every run in a worker uses the same flags.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def batches() -> np.ndarray:
    """Fixed synthetic rows that count up from a random start: learnable, so the loss falls."""
    starts = np.random.default_rng(0).integers(0, VOCAB, (STEPS, BATCH, 1))
    return ((starts + np.arange(SEQ + 1)) % VOCAB).astype(np.int32)


def initial_state(mesh):
    return init_state(build_model(MODEL, VOCAB, SEQ), TRAIN, STEPS, SEQ, jax.random.key(0), mesh=mesh)


def train_losses(mesh, state, train=TRAIN):
    """10 steps from `state` on fixed batches; the mesh None is the single-device reference."""
    step, _ = compiled_steps(build_model(MODEL, VOCAB, SEQ), step_key(train), mesh)
    losses = []
    for batch in batches():
        if mesh is not None:  # this process's rows, strided as jaxscale.data.loader hands them out
            index, count = sharding.data_shard(mesh)
            batch = sharding.shard_batch(batch[index::count], mesh)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, state, batch


def describe(state, batch) -> dict:
    """Sharding specs and per-device shard shapes of a few arrays; the blocks' are stacked [layers, ...]."""
    p = state.params
    mu = state.opt_state[1].mu  # chain(clip, adam, decay): Adam's first moment
    arrays = {"q": p["blocks"]["attn"]["q"]["kernel"], "k": p["blocks"]["attn"]["k"]["kernel"],
              "down": p["blocks"]["mlp"]["down"]["kernel"], "lm_head": p["lm_head"], "norm": p["norm"]["scale"],
              "block_norm": p["blocks"]["mlp_norm"]["scale"], "mu_lm_head": mu["lm_head"],
              "mu_q": mu["blocks"]["attn"]["q"]["kernel"], "batch": batch}
    return {name: {"spec": [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec],
                   "shard": list(x.addressable_shards[0].data.shape)} for name, x in arrays.items()}


def worker_meshes():
    start = jax.device_get(initial_state(None))  # host copy: the step donates its input
    result = {"reference": train_losses(None, jax.device_put(start))[0],
              "stored_reference": train_losses(None, jax.device_put(start), STORED)[0]}
    for shape in MESHES:
        mesh = sharding.make_mesh(MeshConfig(*shape))
        placed = jax.device_put(start, state_shardings(build_model(MODEL, VOCAB, SEQ), TRAIN, mesh))
        if shape == MESHES[-1]:  # created sharded; the same values as the single-device init
            state = initial_state(mesh)
            result["same_init"] = all(jax.tree.leaves(jax.tree.map(np.array_equal, jax.device_get(state), start)))
            result["stored"] = train_losses(mesh, placed, STORED)[0]  # the stored-tiles loss, from the same start
        else:  # compiling init once per mesh would only cost test time
            state = placed
        losses, state, batch = train_losses(mesh, state)
        result[str(shape)] = {"losses": losses, "arrays": describe(state, batch)}
    print(json.dumps(result))


def worker_process():
    """One of two processes; joins through the JAXSCALE_* environment variables."""
    assert initialize_distributed()
    mesh = sharding.make_mesh(MeshConfig(2, 2, 2))
    losses, state, batch = train_losses(mesh, initial_state(mesh))
    print(json.dumps({"process": jax.process_index(), "count": jax.process_count(), "devices": jax.device_count(),
                      "shard": sharding.data_shard(mesh), "losses": losses}))


def run_worker(mode: str, devices: int, extra_env=None, wait=True):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
               JAX_PLATFORMS="cpu", **(extra_env or {}))
    proc = subprocess.Popen([sys.executable, __file__, mode], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc if not wait else finish(proc)


def finish(proc) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def eight_devices():
    return run_worker("meshes", 8)


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_losses_equal_single_device(eight_devices, shape):
    reference = np.array(eight_devices["reference"])
    losses = np.array(eight_devices[str(shape)]["losses"])
    assert reference[-1] < reference[0] - 0.1  # it trains
    np.testing.assert_allclose(losses, reference, rtol=0, atol=1e-5)


def test_stored_loss_sharded_equals_single_device(eight_devices):
    stored = np.array(eight_devices["stored"])
    np.testing.assert_allclose(stored, eight_devices["stored_reference"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(stored, eight_devices["reference"], rtol=0, atol=1e-4)  # the same loss as the tiles


def test_sharded_init_equals_single_device_init(eight_devices):
    assert eight_devices["same_init"] is True


def test_parameters_and_optimizer_state_are_really_sharded(eight_devices):
    layers, d, heads, kv, head_dim, mlp = MODEL.n_layers, 64, 4, 2, 16, 128  # the stacked layer axis: never split
    pure_data = eight_devices[str((8, 1, 1))]["arrays"]
    assert pure_data["q"]["shard"] == [layers, d, heads, head_dim]  # replicated: each device holds it whole
    assert pure_data["batch"]["spec"] == [["data", "fsdp"]] and pure_data["batch"]["shard"] == [1, SEQ + 1]

    fsdp = eight_devices[str((2, 4, 1))]["arrays"]
    assert fsdp["q"]["spec"][:2] == [None, "fsdp"] and fsdp["q"]["shard"] == [layers, d // 4, heads, head_dim]
    assert fsdp["lm_head"]["shard"] == [VOCAB, d // 4]
    assert fsdp["mu_lm_head"]["shard"] == [VOCAB, d // 4]
    assert fsdp["down"]["shard"] == [layers, mlp, d // 4]

    both = eight_devices[str((2, 2, 2))]["arrays"]
    assert both["q"]["spec"] == [None, "fsdp", "tensor", None]
    assert both["q"]["shard"] == [layers, d // 2, heads // 2, head_dim]
    assert both["k"]["shard"] == [layers, d // 2, kv // 2, head_dim]
    assert both["down"]["spec"] == [None, "tensor", "fsdp"] and both["down"]["shard"] == [layers, mlp // 2, d // 2]
    assert both["lm_head"]["spec"] == ["tensor", "fsdp"] and both["lm_head"]["shard"] == [VOCAB // 2, d // 2]
    assert both["mu_q"]["shard"] == both["q"]["shard"]
    assert both["norm"]["shard"] == [d] and both["block_norm"]["shard"] == [layers, d]  # norms replicated
    assert both["batch"]["shard"] == [BATCH // 4, SEQ + 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_with_eight_devices(eight_devices):
    port = free_port()
    procs = [run_worker("process", 4, {"JAXSCALE_COORDINATOR": f"127.0.0.1:{port}", "JAXSCALE_NUM_PROCESSES": "2",
                                       "JAXSCALE_PROCESS_ID": str(i)}, wait=False) for i in range(2)]
    results = sorted((finish(p) for p in procs), key=lambda r: r["process"])
    assert [(r["process"], r["count"], r["devices"]) for r in results] == [(0, 2, 8), (1, 2, 8)]
    assert [r["shard"] for r in results] == [[0, 2], [1, 2]]  # each process feeds its own half of the batch
    one_process = np.array(eight_devices[str((2, 2, 2))]["losses"])
    for r in results:
        np.testing.assert_allclose(r["losses"], one_process, rtol=0, atol=1e-5)
    np.testing.assert_allclose(results[0]["losses"], eight_devices["reference"], rtol=0, atol=1e-5)


def test_mesh_shape_fills_the_free_axis_and_rejects_bad_sizes():
    assert mesh_shape(MeshConfig(), 8) == (8, 1, 1)
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    assert mesh_shape(MeshConfig(data=1, fsdp=1, tensor=1), 1) == (1, 1, 1)
    for bad in [MeshConfig(data=3), MeshConfig(data=-1, fsdp=-1), MeshConfig(data=2, fsdp=2, tensor=1)]:
        with pytest.raises(ValueError, match="mesh"):
            mesh_shape(bad, 8)


def test_initialize_distributed_is_a_no_op_for_one_process(monkeypatch):
    for name in ("JAXSCALE_COORDINATOR", "JAXSCALE_NUM_PROCESSES", "JAXSCALE_PROCESS_ID", "SLURM_JOB_ID",
                 "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    assert initialize_distributed() is False
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_NTASKS", "4")  # an sbatch script: one process, whatever --ntasks says
    assert initialize_distributed() is False
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # srun with one task
    assert initialize_distributed() is False
    assert initialize_distributed(num_processes=1) is False


if __name__ == "__main__":
    {"meshes": worker_meshes, "process": worker_process}[sys.argv[1]]()
