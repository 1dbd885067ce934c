"""One device mesh (data, fsdp, tensor), logical-axis rules that place parameters and
activations on it, the batch split over data x fsdp, and multi-host initialisation.

The same code runs on one device and on many: a 1x1x1 mesh is just a mesh.
- data:   replicas; each holds whole parameters and a slice of the batch.
- fsdp:   also slices the batch, and shards every weight's embed dimension (gathered per use).
- tensor: shards attention heads, MLP width and the vocabulary (Megatron-style).
"""
from __future__ import annotations

import functools
import math
import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxscale.config import ConfigError, MeshConfig

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# Logical name -> mesh axes. Parameter names first, then activation names (act_*).
RULES = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),  # the scanned Llama's stacked blocks: every device holds every layer (of its shards)
    ("act_batch", BATCH),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
)


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes; one axis may be -1: whatever devices the others leave."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh: sizes {dict(zip(AXES, sizes))} must be positive, with at most one -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % fixed:
            raise ConfigError(f"mesh: {n_devices} devices are not a multiple of {fixed} (the fixed axes)")
        sizes[sizes.index(-1)] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise ConfigError(f"mesh: data x fsdp x tensor = {math.prod(sizes)}, but there are {n_devices} devices")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """The mesh over all devices of all processes (or `devices`)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(cfg, len(devices))
    # Auto axes: XLA propagates shardings from the parameters, batch and constraints.
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH))


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Leave a dimension unsharded where its mesh axes do not divide it (e.g. 4 KV heads on tensor=8)."""
    dims = []
    for i, size in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        dims.append(axes if size % math.prod(mesh.shape[a] for a in names) == 0 else None)
    return P(*dims)


def _leaf_sharding(leaf, mesh: Mesh) -> NamedSharding:
    if isinstance(leaf, nn.LogicallyPartitioned):
        spec, shape = nn.logical_to_mesh_axes(leaf.names, RULES), leaf.value.shape
    elif isinstance(leaf, nn.Partitioned):
        spec, shape = leaf.get_partition_spec(), leaf.value.shape
    else:  # an unannotated parameter: replicated
        spec, shape = P(), leaf.shape
    return NamedSharding(mesh, _fit(spec, shape, mesh))


@functools.lru_cache(maxsize=None)
def abstract_boxed_params(model):
    """The model's parameter shapes with their logical-axis boxes; nothing is allocated."""
    tokens = jax.ShapeDtypeStruct((1, min(model.seq_len, 8)), np.int32)
    return jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)["params"]


def param_shardings(model, mesh: Mesh):
    """NamedSharding for each (unboxed) parameter, from its logical axis names and RULES."""
    boxed = abstract_boxed_params(model)
    return jax.tree.map(functools.partial(_leaf_sharding, mesh=mesh), boxed,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def constrain(x, names: tuple[str | None, ...]):
    """Pin an activation's sharding by logical names (nn.with_logical_constraint, but leaving a
    dimension unsharded where its mesh axes do not divide it). A no-op outside `in_mesh`."""
    mesh, rules = jax.sharding.get_abstract_mesh(), nn.get_logical_axis_rules()
    if mesh.empty or not rules:
        return x
    return jax.lax.with_sharding_constraint(x, _fit(nn.logical_to_mesh_axes(names, rules), x.shape, mesh))


def in_mesh(fn, mesh: Mesh):
    """`fn` traced with the logical rules and the mesh in context, so the models' activation
    constraints (`constrain`) take effect; outside this they are no-ops."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with nn.logical_axis_rules(RULES), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)
    return wrapped


@functools.lru_cache(maxsize=None)
def data_shard(mesh: Mesh) -> tuple[int, int]:
    """(shard_index, shard_count) for the data loader: which of the batch's row shards this process
    feeds. (process_index, process_count) when every process holds its own slice of data x fsdp;
    fewer shards when processes share one (then they must feed the same rows). The global batch
    is the processes' rows concatenated in shard order: a row permutation of the single-process
    batch if the loader deals rows out strided, which leaves the (mean) loss unchanged."""
    n = batch_shards(mesh)
    index_map = batch_sharding(mesh).devices_indices_map((n,))
    rows = sorted({index_map[d][0].indices(n)[0] for d in mesh.local_devices})
    if rows != list(range(rows[0], rows[-1] + 1)):
        raise ValueError(f"process {jax.process_index()} holds non-contiguous batch slices {rows}; "
                         "order the mesh's devices by process")
    size = len(rows)
    return rows[0] // size, n // size


def batch_shards(mesh: Mesh) -> int:
    """How many pieces a batch's rows are split into (mesh data x fsdp): every batch's rows are a multiple."""
    return math.prod(mesh.shape[a] for a in BATCH)


def shard_batch(batch, mesh: Mesh) -> jax.Array:
    """This process's rows [b, ...] (numpy) -> the global batch [b * shard_count, ...], split over data x fsdp."""
    batch = np.asarray(batch)
    _, count = data_shard(mesh)
    global_shape = (batch.shape[0] * count,) + batch.shape[1:]
    shards = batch_shards(mesh)
    if global_shape[0] % shards:
        raise ConfigError(f"train.batch_size {global_shape[0]} is not a multiple of mesh data x fsdp = {shards}")
    if count == 1:  # one process: a plain transfer (make_array_from_process_local_data costs ~0.5 ms more a step)
        return jax.device_put(batch, batch_sharding(mesh))
    return jax.make_array_from_process_local_data(batch_sharding(mesh), batch, global_shape)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Join a multi-process run; call before anything else touches jax. Returns whether it did.

    Explicit arguments win, then JAXSCALE_COORDINATOR (host:port), JAXSCALE_NUM_PROCESSES and
    JAXSCALE_PROCESS_ID; failing those, an `srun` step with more than one task (jax reads SLURM_*
    itself: coordinator on the step's first node, process id = SLURM_PROCID). The batch script
    itself is one process even under --ntasks N, so SLURM_NTASKS alone starts nothing.
    One process: nothing to do.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator = coordinator or os.environ.get("JAXSCALE_COORDINATOR") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAXSCALE_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAXSCALE_PROCESS_ID")
    if coordinator or num_processes or process_id is not None:
        if num_processes == 1:
            return False
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if "SLURM_JOB_ID" in os.environ and (_env_int("SLURM_STEP_NUM_TASKS") or 1) > 1:
        jax.distributed.initialize()
        return True
    return False


def is_writer() -> bool:
    """Only process 0 writes shared files (results, checkpoints' metadata, reports)."""
    return jax.process_index() == 0

