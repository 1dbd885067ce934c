"""Models. Every model maps tokens [B, T] to (hidden [B, T, d_model], unembed [V, d_model]):
the output layer is applied by the loss (jaxscale.loss), so the full logits need never exist."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxscale.config import ModelConfig
from jaxscale.models.common import EMBEDDING_PARAMS, flops_per_token
from jaxscale.models.llama import Llama
from jaxscale.models.tiny import TinyTransformer

ARCHITECTURES = {"tiny": TinyTransformer, "llama": Llama}


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int):
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"model.arch: {cfg.arch!r} is not one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[cfg.arch](cfg, vocab_size, seq_len)


def abstract_params(cfg: ModelConfig, vocab_size: int, seq_len: int):
    """Parameter shapes without allocating them (works for billion-parameter models on a laptop);
    plain ShapeDtypeStructs, without the logical-axis boxes that the Llama's init returns."""
    model = build_model(cfg, vocab_size, seq_len)
    tokens = jax.ShapeDtypeStruct((1, min(seq_len, 8)), jnp.int32)
    return nn.unbox(jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)["params"])


def count_params(cfg: ModelConfig, vocab_size: int, seq_len: int) -> tuple[int, int]:
    """(all parameters, parameters without embeddings): token and position embeddings and an
    untied output layer are embeddings; a tied output layer is counted once."""
    params = abstract_params(cfg, vocab_size, seq_len)
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    embed = sum(math.prod(x.shape) for name in EMBEDDING_PARAMS if name in params
                for x in jax.tree.leaves(params[name]))
    return total, total - embed


__all__ = ["ARCHITECTURES", "abstract_params", "build_model", "count_params", "flops_per_token"]
