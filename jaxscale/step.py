"""The pure train and eval steps: (state, batch) -> (state, metrics), jit-compiled once per shape.

The learning-rate schedule is data, not code: its numbers (peak, warmup, total steps) travel in the
state, so runs that differ only in budget or learning rate share one compiled step.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxscale.config import TrainConfig
from jaxscale.loss import cross_entropy


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar
    schedule: jax.Array  # float32 [peak_lr, warmup_steps, total_steps, min_lr_ratio]


def schedule_array(train: TrainConfig, steps: int) -> jax.Array:
    warmup = -(-int(train.warmup_frac * steps * 1000) // 1000)  # ceil without float noise
    return jnp.array([train.lr, warmup, steps, train.min_lr_ratio], jnp.float32)


def learning_rate(step, schedule):
    """Linear warmup to the peak, then cosine decay to peak * min_ratio at the last step."""
    peak, warmup, total, min_ratio = schedule[0], schedule[1], schedule[2], schedule[3]
    step = step.astype(jnp.float32)
    warm = peak * (step + 1) / jnp.maximum(warmup, 1)
    progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup - 1, 1), 0, 1)
    cosine = peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * progress)))
    return jnp.where(step < warmup, warm, cosine)


def optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """AdamW without its learning rate (applied by the step): clip, Adam, decoupled decay on matrices."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    parts = [optax.scale_by_adam(b1=train.beta1, b2=train.beta2), optax.add_decayed_weights(train.weight_decay, decay_mask)]
    if train.grad_clip > 0:
        parts.insert(0, optax.clip_by_global_norm(train.grad_clip))
    return optax.chain(*parts)


def init_state(model, train: TrainConfig, steps: int, seq_len: int, rng, mesh=None) -> TrainState:
    """A fresh state; with a mesh, each array is created already placed by the sharding rules."""
    params = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
    return TrainState(params=params, opt_state=optimizer(train).init(params), step=jnp.zeros((), jnp.int32),
                      schedule=schedule_array(train, steps))


def loss_fn(model, loss_chunk: int, params, batch):
    hidden, unembed = model.apply({"params": params}, batch[:, :-1])
    return cross_entropy(hidden, unembed, batch[:, 1:], loss_chunk)


def train_step(model, tx, loss_chunk: int, state: TrainState, batch):
    loss, grads = jax.value_and_grad(functools.partial(loss_fn, model, loss_chunk))(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    lr = learning_rate(state.step, state.schedule)
    params = jax.tree.map(lambda p, u: p - lr * u.astype(p.dtype), state.params, updates)
    new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
    return new_state, {"loss": loss, "lr": lr, "grad_norm": optax.tree.norm(grads)}


def eval_step(model, loss_chunk: int, params, batch):
    return loss_fn(model, loss_chunk, params, batch)


@functools.lru_cache(maxsize=None)
def compiled_steps(model, train: TrainConfig, mesh=None):
    """jitted (train_step, eval_step) for a model and the optimizer settings that shape the step.
    Cached: every run with the same model (a hashable config) and optimizer reuses the compilation."""
    tx = optimizer(train)
    step = jax.jit(functools.partial(train_step, model, tx, train.loss_chunk), donate_argnums=0)
    evaluate = jax.jit(functools.partial(eval_step, model, train.loss_chunk))
    return step, evaluate


def step_key(train: TrainConfig) -> TrainConfig:
    """The part of the train config the compiled step depends on: budget, lr, seed etc. are data."""
    return TrainConfig(beta1=train.beta1, beta2=train.beta2, weight_decay=train.weight_decay,
                       grad_clip=train.grad_clip, loss_chunk=train.loss_chunk)
