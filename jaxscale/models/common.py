"""What every model shares: construction from a config, parameter counts and FLOPs per token."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxscale.config import ModelConfig, default_heads


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int):
    if cfg.arch == "tiny":
        from jaxscale.models.tiny import TinyTransformer
        return TinyTransformer(cfg, vocab_size, seq_len)
    if cfg.arch == "llama":
        from jaxscale.models.llama import Llama
        return Llama(cfg, vocab_size, seq_len)
    raise ValueError(f"model.arch: {cfg.arch!r} is not one of tiny, llama")


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


EMBEDDING_PARAMS = ("tok_embed", "pos_embed", "lm_head")
SCANNED = "blocks"  # the scanned Llama's stacked blocks: every parameter under it has a leading layer axis
MLP_HIDDEN = "mlp_hidden"  # checkpoint_name of the MLP's first projections, kept by remat "mlp"

def _dots_and_fused_attention(prim, *args, **params) -> bool:
    """Matmuls without batch dimensions (the projections q, k, v, o, gate, up) and the fused (cuDNN)
    attention's output and softmax statistics, all linear in T. dots_saveable would also keep the
    [batch, heads, T, T] scores of XLA's attention (batched matmuls): the quadratic memory remat is for."""
    return (jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *args, **params)
            or prim.name == "dot_product_attention_fwd_wrapper")  # else its backward re-runs the forward kernel


# model.remat -> what jax.checkpoint keeps (None: nothing, the whole block is recomputed).
REMAT_POLICIES = {
    "full": None,
    "dots": _dots_and_fused_attention,
    "mlp": jax.checkpoint_policies.save_only_these_names(MLP_HIDDEN),
}


def remat(block: type[nn.Module], policy: str, scanned: bool = False) -> type[nn.Module]:
    """`block` recomputed in the backward pass as `policy` (model.remat) says. Under nn.scan the loop
    already keeps XLA from merging the recomputation with the forward pass, so prevent_cse is off there."""
    if policy == "none":
        return block
    if policy not in REMAT_POLICIES:
        raise ValueError(f"model.remat = {policy!r}: the model needs one of none, {', '.join(REMAT_POLICIES)}"
                         + ("; 'auto' must be resolved before the model is built" if policy == "auto" else ""))
    return nn.remat(block, policy=REMAT_POLICIES[policy], prevent_cse=not scanned)


def stacked_axes(path) -> int:
    """Leading layer axes of the parameter at `path` (a jax key path): 1 in the scanned Llama's blocks."""
    first = path[0] if path else None
    return int(getattr(first, "key", None) == SCANNED)


def heads(cfg: ModelConfig) -> int:
    return cfg.n_heads or default_heads(cfg)


def attention_impl(cfg: ModelConfig) -> str:
    """jax.nn.dot_product_attention's `implementation`: the config's, resolved for the devices by
    jaxscale.runtime.resolve; "auto" left unresolved is XLA's, which runs everywhere."""
    return "xla" if cfg.attention == "auto" else cfg.attention


def choose_attention(attention: str, platform: str, compute_capability: str, dtype: str, head_dim: int) -> str:
    """"auto": cuDNN's fused attention where it runs — an NVIDIA GPU of compute capability 8.0 or later,
    bfloat16, head_dim a multiple of 8 up to 128 — and XLA's elsewhere (JAX's own default, implementation=None,
    is always XLA's). "cudnn" off a GPU is a config error; on one, cuDNN itself rejects what it cannot run."""
    gpu = platform in ("gpu", "cuda")
    if attention == "cudnn" and not gpu:
        raise ValueError(f"model.attention = 'cudnn' needs an NVIDIA GPU with cuDNN; this process runs on "
                         f"{platform!r}: use 'auto' or 'xla'")
    if attention != "auto":
        return attention
    fits = gpu and dtype == "bfloat16" and head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if fits and float(compute_capability or 0) >= 8.0 else "xla"


def flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> int:
    """Training FLOPs per token counted matmul by matmul (forward + backward = 3 x forward):
    every dense layer, the output layer and causal attention (QK^T and AV, halved for the mask);
    the embedding lookup excluded. This is what MFU figures use; `6 * n_params` is what results.csv uses."""
    d, L = cfg.d_model, cfg.n_layers
    n_heads = heads(cfg)
    head_dim = d // n_heads
    kv = (cfg.n_kv_heads or n_heads) * head_dim
    if cfg.arch == "llama":
        mlp = 3 * d * cfg.d_mlp
    else:
        mlp = 2 * d * cfg.d_mlp
    per_layer = d * d + 2 * d * kv + d * d + mlp  # q, k, v, out projections and the MLP (MACs)
    attention = d * seq_len  # QK^T + AV: 2 * seq_len * d MACs, halved by the causal mask
    forward_macs = L * (per_layer + attention) + d * vocab_size
    return 6 * forward_macs
