"""Models. Every model maps tokens [B, T] to (hidden [B, T, d_model], unembed [V, d_model]):
the output layer is applied by the loss (jaxscale.loss), so the full logits need never exist."""
from jaxscale.models.common import build_model, count_params, flops_per_token

__all__ = ["build_model", "count_params", "flops_per_token"]
