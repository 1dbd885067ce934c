import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.config import ModelConfig
from jaxscale.models import build_model, count_params, flops_per_token


def closed_form_params(d, d_mlp, layers, vocab, seq_len):
    """GPT-2-style block with biases and LayerNorms, tied embeddings, learned positions."""
    block = (2 * 2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (d * d_mlp + d_mlp) + (d_mlp * d + d)
    embeddings = vocab * d + seq_len * d
    return embeddings + layers * block + 2 * d, layers * block + 2 * d


def test_parameter_counts_match_the_closed_form():
    for d, d_mlp, layers in [(16, 64, 1), (48, 192, 2), (128, 512, 4)]:
        cfg = ModelConfig(d_model=d, d_mlp=d_mlp, n_layers=layers)
        assert count_params(cfg, 50257, 64) == closed_form_params(d, d_mlp, layers, 50257, 64)


def test_model_is_causal():
    cfg = ModelConfig(d_model=32, d_mlp=64, n_layers=2)
    model = build_model(cfg, vocab_size=100, seq_len=16)
    tokens = jax.random.randint(jax.random.key(0), (1, 16), 0, 100)
    params = model.init(jax.random.key(1), tokens)["params"]
    hidden, unembed = model.apply({"params": params}, tokens)
    assert hidden.shape == (1, 16, 32) and unembed.shape == (100, 32)
    changed = tokens.at[0, 10].set((tokens[0, 10] + 1) % 100)
    hidden2, _ = model.apply({"params": params}, changed)
    np.testing.assert_array_equal(hidden[0, :10], hidden2[0, :10])
    assert not jnp.allclose(hidden[0, 10:], hidden2[0, 10:])


def test_flops_per_token_counts_the_forward_matmuls_three_times():
    cfg = ModelConfig(d_model=64, d_mlp=256, n_layers=2)
    model = build_model(cfg, vocab_size=1000, seq_len=32)
    tokens = jnp.zeros((1, 32), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["params"]
    forward = lambda p, t: jnp.einsum("btd,vd->btv", *model.apply({"params": p}, t))  # noqa: E731
    xla = jax.jit(forward).lower(params, tokens).compile().cost_analysis()
    xla_flops = xla["flops"] if isinstance(xla, dict) else xla[0]["flops"]
    # XLA counts the full (unmasked) attention and elementwise work; ours halves attention for the mask
    ours = flops_per_token(cfg, 1000, 32) / 3 * 32
    assert 0.9 * xla_flops < ours < 1.02 * xla_flops


def test_cudnn_attention_off_gpu_is_a_clear_config_error(tmp_path, capsys):
    """Resolved before anything runs (jaxscale.runtime.resolve): exit 2 with the key, not a trace-time failure."""
    import pytest

    from conftest import ROOT
    from jaxscale.train import main
    if jax.default_backend() == "gpu":
        pytest.skip("cuDNN may run here")
    out = tmp_path / "sweep"
    assert main(["--config", str(ROOT / "configs" / "smoke.toml"), "--out", str(out), "model.attention=cudnn"]) == 2
    assert "model.attention = 'cudnn' needs an NVIDIA GPU" in capsys.readouterr().err
    assert not (out / "000-d16-l1-tokens2048").exists()


def test_auto_attention_is_cudnn_only_where_cudnns_fused_kernel_runs():
    from jaxscale.models.attention import choose_attention
    # cuDNN's fused attention: compute capability >= 8.0, fp16/bf16, head_dim a multiple of 8 up to 128
    assert choose_attention("auto", "gpu", "9.0", "bfloat16", 64) == "cudnn"
    assert choose_attention("auto", "gpu", "8.0", "bfloat16", 128) == "cudnn"
    assert choose_attention("auto", "gpu", "9.0", "float32", 64) == "xla"
    assert choose_attention("auto", "gpu", "7.0", "bfloat16", 64) == "xla"
    assert choose_attention("auto", "gpu", "9.0", "bfloat16", 12) == "xla"
    assert choose_attention("auto", "gpu", "9.0", "bfloat16", 256) == "xla"
    assert choose_attention("auto", "gpu", "9.0", "bfloat16", 64, seq_len=2047) == "xla"  # cuDNN's backward: even T
    assert choose_attention("auto", "gpu", "9.0", "bfloat16", 64, seq_len=2048) == "cudnn"
    assert choose_attention("auto", "cpu", "", "bfloat16", 64) == "xla"
    assert choose_attention("xla", "gpu", "9.0", "bfloat16", 64) == "xla"
    assert choose_attention("cudnn", "gpu", "7.0", "float32", 12) == "cudnn"  # insisted on: cuDNN's own error
