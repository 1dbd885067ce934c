"""What the models share: parameter names, remat policies, head counts and FLOPs per token."""
from __future__ import annotations

import flax.linen as nn
import jax

from jaxscale.config import ModelConfig, default_heads

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
