"""Which attention kernel a model uses: chosen once from the devices (jaxscale.runtime.resolve), read by the models."""
from __future__ import annotations

from jaxscale.config import ModelConfig


def attention_impl(cfg: ModelConfig) -> str:
    """jax.nn.dot_product_attention's `implementation`: the config's, resolved for the devices by
    jaxscale.runtime.resolve; "auto" left unresolved is XLA's, which runs everywhere."""
    return "xla" if cfg.attention == "auto" else cfg.attention


def choose_attention(attention: str, platform: str, compute_capability: str, dtype: str, head_dim: int,
                     seq_len: int = 0) -> str:
    """"auto": cuDNN's fused attention where it runs — an NVIDIA GPU of compute capability 8.0 or later,
    bfloat16, head_dim a multiple of 8 up to 128, an even sequence length (its backward pass needs one) — and XLA's
    elsewhere (JAX's own default, implementation=None, is always XLA's). "cudnn" off a GPU is a config error; on
    one, cuDNN itself rejects what it cannot run."""
    gpu = platform in ("gpu", "cuda")
    if attention == "cudnn" and not gpu:
        raise ValueError(f"model.attention = 'cudnn' needs an NVIDIA GPU with cuDNN; this process runs on "
                         f"{platform!r}: use 'auto' or 'xla'")
    if attention != "auto":
        return attention
    fits = gpu and dtype == "bfloat16" and head_dim % 8 == 0 and head_dim <= 128 and seq_len % 2 == 0
    return "cudnn" if fits and float(compute_capability or 0) >= 8.0 else "xla"
