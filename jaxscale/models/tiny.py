"""The tiny transformer of the N-vs-D study: causal, pre-norm (LayerNorm), GELU MLP, learned
positions, tied input/output embeddings by default."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxscale.config import ModelConfig
from jaxscale.models.attention import attention_impl
from jaxscale.models.common import MLP_HIDDEN, heads, remat

INIT = nn.initializers.normal(stddev=0.02)


class Block(nn.Module):
    """x is [batch x seq_len, d]: tokens stay flat outside attention, so each weight's gradient is one
    plain 2-D matmul (x^T @ dy) instead of a contraction over (batch, seq) that XLA:CPU transposes first."""
    cfg: ModelConfig
    seq_len: int

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        n_heads = heads(cfg)
        d = x.shape[-1]
        out_init = nn.initializers.normal(stddev=0.02 / (2 * cfg.n_layers) ** 0.5)

        h = nn.LayerNorm(dtype=dtype, name="ln_attn")(x)
        qkv = nn.DenseGeneral((3, n_heads, d // n_heads), dtype=dtype, kernel_init=INIT, name="qkv")(h)
        qkv = qkv.reshape(-1, self.seq_len, *qkv.shape[1:])
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        att = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=attention_impl(cfg))
        att = att.reshape(x.shape[0], *att.shape[2:])
        x = x + nn.DenseGeneral(d, axis=(-2, -1), dtype=dtype, kernel_init=out_init, name="attn_out")(att)

        h = nn.LayerNorm(dtype=dtype, name="ln_mlp")(x)
        h = nn.gelu(checkpoint_name(nn.Dense(cfg.d_mlp, dtype=dtype, kernel_init=INIT, name="mlp_in")(h), MLP_HIDDEN))
        return x + nn.Dense(d, dtype=dtype, kernel_init=out_init, name="mlp_out")(h)


class TinyTransformer(nn.Module):
    cfg: ModelConfig
    vocab_size: int
    seq_len: int

    @nn.compact
    def __call__(self, tokens):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        embed = nn.Embed(self.vocab_size, cfg.d_model, embedding_init=INIT, name="tok_embed")
        pos = self.param("pos_embed", INIT, (self.seq_len, cfg.d_model))
        x = (embed(tokens) + pos[: tokens.shape[1]]).astype(dtype)
        x = x.reshape(-1, cfg.d_model)
        block = remat(Block, cfg.remat)
        for i in range(cfg.n_layers):
            x = block(cfg, tokens.shape[1], name=f"block_{i}")(x)
        x = nn.LayerNorm(dtype=dtype, name="ln_final")(x).reshape(*tokens.shape, cfg.d_model)
        unembed = embed.embedding if cfg.tie_embeddings else self.param(
            "lm_head", INIT, (self.vocab_size, cfg.d_model))
        return x, unembed.astype(dtype)
