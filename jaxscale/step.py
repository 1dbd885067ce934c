"""The pure train and eval steps: (state, batch) -> (state, metrics), jit-compiled once per shape.

The learning-rate schedule is data, not code: its numbers (peak, warmup, total steps) travel in the
state, so runs that differ only in budget or learning rate share one compiled step.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxscale import sharding
from jaxscale.config import TrainConfig, cooldown_steps, warmup_steps
from jaxscale.loss import cross_entropy
from jaxscale.models.common import stacked_axes


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar
    schedule: jax.Array  # float32 [SCHEDULE_FIELDS]


SCHEDULE_FIELDS = ("peak_lr", "warmup_steps", "total_steps", "min_lr_ratio", "wsd", "cooldown_steps", "one_minus_sqrt")


def schedule_array(train: TrainConfig, steps: int, warmup: int | None = None) -> jax.Array:
    """`warmup`: steps, in place of the config's (runs branched off one trunk share the trunk's)."""
    warmup = warmup_steps(train, steps) if warmup is None else warmup
    return jnp.array([train.lr, warmup, steps, train.min_lr_ratio, float(train.schedule == "wsd"),
                      cooldown_steps(train, steps), float(train.cooldown_shape == "1-sqrt")], jnp.float32)


def learning_rate(step, schedule):
    """Linear warmup to the peak, then either cosine decay to peak * min_ratio at the last step, or (wsd:
    warmup-stable-decay) the peak held until the last `cooldown_steps`, which fall to peak * min_ratio at the last
    step, linearly or as 1 - sqrt(progress)."""
    peak, warmup, total, min_ratio, wsd, cooldown, one_minus_sqrt = (schedule[i] for i in range(len(SCHEDULE_FIELDS)))
    step = step.astype(jnp.float32)
    warm = peak * (step + 1) / jnp.maximum(warmup, 1)
    progress = _through(step, warmup, total - warmup)
    cosine = peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * progress)))
    start = total - cooldown
    down = _through(step, start, cooldown)
    fall = jnp.where(one_minus_sqrt > 0, jnp.sqrt(down), down)
    stable_decay = jnp.where(step < start, peak, peak * (min_ratio + (1 - min_ratio) * (1 - fall)))
    return jnp.where(step < warmup, warm, jnp.where(wsd > 0, stable_decay, cosine))


def _through(step, start, steps):
    """How far `step` is through a decay of `steps` steps from `start`: 0 at its first step (the peak), 1 at its
    last (the floor); a decay of one step is its last."""
    return jnp.where(steps > 1, jnp.clip((step - start) / jnp.maximum(steps - 1, 1), 0, 1), 1.0)


def decays(path, param) -> bool:
    """Weight decay on matrices (kernels, embeddings), never on biases or norm scales, whatever their rank: the tiny
    model's fused qkv bias is [3, heads, head_dim], a scanned model's norms are [layers, d]."""
    return getattr(path[-1], "key", None) not in ("bias", "scale") and param.ndim - stacked_axes(path) >= 2


def optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """AdamW without its learning rate (applied by the step): clip, Adam, decoupled decay on matrices."""
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(decays, params)  # noqa: E731
    parts = [optax.scale_by_adam(b1=train.beta1, b2=train.beta2), optax.add_decayed_weights(train.weight_decay, decay_mask)]
    if train.grad_clip > 0:
        parts.insert(0, clip_by_global_norm(train.grad_clip))
    return optax.chain(*parts)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm as one scalar factor, g * min(1, max_norm / |g|): XLA fuses the multiply into
    Adam's moment updates, where optax's select-and-divide became one more pass over every gradient (~2 ms of
    the d128 tiny model's 6.5 ms optimizer on CPU). Same (empty) state, so checkpoints are unaffected."""
    def clip(updates, params=None):
        factor = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))  # |g| = 0: factor 1, no NaN
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates)

    return optax.stateless(clip)


def init_state(model, train: TrainConfig, steps: int, seq_len: int, rng, mesh=None,
               warmup: int | None = None) -> TrainState:
    """A fresh state; with a mesh, each array is created already placed by the sharding rules."""
    return _initializer(model, step_key(train), seq_len, mesh)(rng, schedule_array(train, steps, warmup))


@functools.lru_cache(maxsize=None)
def _initializer(model, train: TrainConfig, seq_len: int, mesh):
    """Init as one compiled program, cached like the steps (eagerly it is hundreds of small ones)."""
    def make(rng, schedule):
        params = nn.unbox(model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"])
        return TrainState(params=params, opt_state=optimizer(train).init(params), step=jnp.zeros((), jnp.int32),
                          schedule=schedule)

    if mesh is None:
        return jax.jit(make)
    replicated = sharding.replicated(mesh)
    return jax.jit(make, in_shardings=(replicated, replicated), out_shardings=state_shardings(model, train, mesh))


def abstract_state(model, train: TrainConfig, seq_len: int, mesh=None) -> TrainState:
    """The state's shapes, dtypes and (with a mesh) shardings, allocating nothing: for lowering and planning."""
    init = _initializer(model, step_key(train), seq_len, mesh)
    return jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct((len(SCHEDULE_FIELDS),), jnp.float32))


def state_shardings(model, train: TrainConfig, mesh) -> TrainState:
    """Where each array of the state lives: parameters by the logical rules, each optimizer
    moment like its parameter, scalars (step, schedule, counts) replicated."""
    params = sharding.param_shardings(model, mesh)
    tx = optimizer(train)
    abstract = jax.eval_shape(tx.init, nn.unbox(sharding.abstract_boxed_params(model)))
    replicated = sharding.replicated(mesh)
    opt_state = optax.tree_map_params(tx, lambda _, s: s, abstract, params,
                                      transform_non_params=lambda _: replicated)
    return TrainState(params=params, opt_state=opt_state, step=replicated, schedule=replicated)


def loss_fn(model, train: TrainConfig, params, batch):
    hidden, unembed = model.apply({"params": params}, batch[:, :-1])
    return cross_entropy(hidden, unembed, batch[:, 1:], train.loss, train.loss_chunk)


def train_step(model, tx, train: TrainConfig, state: TrainState, batch):
    loss, grads = jax.value_and_grad(functools.partial(loss_fn, model, train))(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    lr = learning_rate(state.step, state.schedule)
    params = jax.tree.map(lambda p, u: p - lr * u.astype(p.dtype), state.params, updates)
    new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
    return new_state, {"loss": loss, "lr": lr, "grad_norm": optax.tree.norm(grads)}


def eval_step(model, train: TrainConfig, params, batch):
    return loss_fn(model, train, params, batch)


@functools.lru_cache(maxsize=None)
def compiled_steps(model, train: TrainConfig, mesh=None):
    """jitted (train_step, eval_step) for a model and the optimizer settings that shape the step.
    Cached: every run with the same model (a hashable config) and optimizer reuses the compilation.
    With a mesh: the state stays where `state_shardings` puts it, the batch (from
    sharding.shard_batch) is split over data x fsdp, metrics come back replicated."""
    tx = optimizer(train)
    train_fn = functools.partial(train_step, model, tx, train)
    eval_fn = functools.partial(eval_step, model, train)
    if mesh is None:
        return jax.jit(train_fn, donate_argnums=0), jax.jit(eval_fn)
    state = state_shardings(model, train, mesh)
    batch, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    step = jax.jit(sharding.in_mesh(train_fn, mesh), in_shardings=(state, batch),
                   out_shardings=(state, replicated), donate_argnums=0)
    evaluate = jax.jit(sharding.in_mesh(eval_fn, mesh), in_shardings=(state.params, batch), out_shardings=replicated)
    return step, evaluate


def step_key(train: TrainConfig) -> TrainConfig:
    """The part of the train config the compiled step depends on: budget, lr, seed etc. are data."""
    return TrainConfig(beta1=train.beta1, beta2=train.beta2, weight_decay=train.weight_decay,
                       grad_clip=train.grad_clip, loss=train.loss, loss_chunk=train.loss_chunk)
