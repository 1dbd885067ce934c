"""Llama (as TinyLlama-1.1B): pre-norm RMSNorm, rotary positions, grouped-query causal attention,
SwiGLU MLP, untied embeddings, no biases. Parameters are float32; compute runs in `cfg.dtype`.

Every parameter carries logical axis names (jaxscale.sharding.RULES map them onto the mesh);
activations are pinned by name too, which does nothing unless a step is traced under the rules
(jaxscale.sharding.in_mesh). With `cfg.scan_layers` the blocks are one nn.scan: their parameters live
under `blocks`, stacked on a leading "layers" axis (stack_blocks / unstack_blocks convert the layouts).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxscale.config import ModelConfig
from jaxscale.models.attention import attention_impl
from jaxscale.models.common import MLP_HIDDEN, SCANNED, heads, remat
from jaxscale.sharding import constrain

INIT_STD = 0.02  # Llama's initializer_range


def _init(names, stddev=INIT_STD):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=stddev), names)


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],))
        return recomputed(_rms_norm, static=(2, 3))(x, scale, self.eps, self.dtype)


def recomputed(fn, static=()):
    """`fn` whose intermediates the backward pass recomputes from its inputs instead of keeping them. For the
    elementwise parts of a block (norms, SwiGLU): under nn.scan every intermediate the backward needs is
    otherwise stacked over the layers (a norm's float32 copies of x, silu's sigmoid), where an unrolled program
    fuses them away; with bfloat16 compute they were most of TinyLlama's activation memory (gpu_plan.md)."""
    return jax.checkpoint(fn, prevent_cse=False, static_argnums=static)


def _rms_norm(x, scale, eps, dtype):
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return (x * scale).astype(dtype)


def _swiglu(gate, up):
    return nn.silu(gate) * up


def rope(x, theta: float):
    """Rotary embedding, Llama's "rotate half" layout: dims i and i + head_dim/2 form a pair.
    x [B, T, heads, head_dim]; positions 0..T-1."""
    half = x.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * freqs  # [T, half]
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Linear(nn.Module):
    """x contracted with a bias-free kernel over x's last `n_in` axes; kernel shape [*in, *out]."""
    shape: tuple[int, ...]
    names: tuple[str, ...]  # logical axis names of the kernel
    dtype: jnp.dtype
    n_in: int = 1

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _init(self.names), self.shape)
        return jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.n_in)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        d, n_heads = cfg.d_model, heads(cfg)
        n_kv, head_dim = cfg.n_kv_heads or n_heads, d // n_heads
        q = Linear((d, n_heads, head_dim), ("embed", "heads", "head_dim"), dtype, name="q")(x)
        k = Linear((d, n_kv, head_dim), ("embed", "kv_heads", "head_dim"), dtype, name="k")(x)
        v = Linear((d, n_kv, head_dim), ("embed", "kv_heads", "head_dim"), dtype, name="v")(x)
        q, k = rope(q, cfg.rope_theta), rope(k, cfg.rope_theta)
        q = constrain(q, ("act_batch", "act_len", "act_heads", None))
        # GQA: n_heads a multiple of n_kv
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=attention_impl(cfg))
        return Linear((n_heads, head_dim, d), ("heads", "head_dim", "embed"), dtype, n_in=2, name="o")(out)


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        d, m = cfg.d_model, cfg.d_mlp
        gate = checkpoint_name(Linear((d, m), ("embed", "mlp"), dtype, name="gate")(x), MLP_HIDDEN)
        up = checkpoint_name(Linear((d, m), ("embed", "mlp"), dtype, name="up")(x), MLP_HIDDEN)
        h = constrain(recomputed(_swiglu)(gate, up), ("act_batch", "act_len", "act_mlp"))
        return Linear((m, d), ("mlp", "embed"), dtype, name="down")(h)


class Block(nn.Module):
    cfg: ModelConfig
    scanned: bool = False  # the body of nn.scan: (carry, _) -> (carry, None)

    @nn.compact
    def __call__(self, x, _=None):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        x = x + Attention(cfg, name="attn")(RMSNorm(cfg.norm_eps, dtype, name="attn_norm")(x))
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.norm_eps, dtype, name="mlp_norm")(x))
        x = constrain(x, ("act_batch", "act_len", "act_embed"))
        return (x, None) if self.scanned else x


def blocks(cfg: ModelConfig, x):
    """The n_layers blocks: one nn.scan over a block whose parameters are stacked on a leading "layers"
    axis (compiled once, whatever the depth), or an unrolled loop of block_0 ... block_{n-1}."""
    if not cfg.scan_layers:
        block = remat(Block, cfg.remat)
        for i in range(cfg.n_layers):
            x = block(cfg, name=f"block_{i}")(x)
        return x
    stack = nn.scan(remat(Block, cfg.remat, scanned=True), variable_axes={"params": 0}, split_rngs={"params": True},
                    length=cfg.n_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    return stack(cfg, scanned=True, name=SCANNED)(x, None)[0]


class Llama(nn.Module):
    cfg: ModelConfig
    vocab_size: int
    seq_len: int

    @nn.compact
    def __call__(self, tokens):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        embed = self.param("tok_embed", _init(("vocab", "embed")), (self.vocab_size, cfg.d_model))
        # Gather the table's fsdp shards before the lookup (the gather cannot follow the batch split).
        x = jnp.take(constrain(embed, ("vocab", None)), tokens, axis=0).astype(dtype)
        x = constrain(x, ("act_batch", "act_len", "act_embed"))
        x = blocks(cfg, x)
        x = RMSNorm(cfg.norm_eps, dtype, name="norm")(x)
        lm_head = self.param("lm_head", _init(("vocab", "embed")), (self.vocab_size, cfg.d_model))
        return x, constrain(lm_head, ("vocab", None)).astype(dtype)  # whole rows for the loss, as for the lookup


def stack_blocks(params):
    """Unrolled parameters (block_0 ... block_{n-1}) -> the scanned layout (`blocks`, stacked on axis 0)."""
    names = sorted((k for k in params if k.startswith("block_")), key=lambda k: int(k.removeprefix("block_")))
    rest = {k: v for k, v in params.items() if k not in names}
    return {**rest, SCANNED: jax.tree.map(lambda *layers: jnp.stack(layers), *(params[k] for k in names))}


def unstack_blocks(params):
    """The scanned layout -> unrolled parameters; the inverse of stack_blocks."""
    stacked = params[SCANNED]
    n_layers = jax.tree.leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in params.items() if k != SCANNED}
    return {**rest, **{f"block_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n_layers)}}
