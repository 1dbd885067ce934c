"""The scanned Llama (model.scan_layers) is the unrolled one: the same loss, gradients and AdamW step from the
same weights, its stacked parameters named for the sharding rules. Each remat policy computes the same
gradients as none, and keeps what it says it keeps."""
import contextlib
import dataclasses
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_cuda_plugin

from jaxscale.config import ConfigError, ModelConfig, TrainConfig, expand
from jaxscale.models import build_model
from jaxscale.models import abstract_params
from jaxscale.models.llama import stack_blocks, unstack_blocks
from jaxscale.sharding import abstract_boxed_params
from jaxscale.step import loss_fn, optimizer

VOCAB, SEQ = 50, 8
UNROLLED = ModelConfig(arch="llama", n_layers=3, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=96, scan_layers=False)
SCANNED = dataclasses.replace(UNROLLED, scan_layers=True)
TRAIN = TrainConfig(loss="full", lr=1e-2, weight_decay=0.5, warmup_frac=0.0)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


@pytest.fixture(scope="module")
def weights():
    """Unrolled weights far from init (norm scales away from 1, large kernels) and one batch."""
    rng = np.random.default_rng(0)

    def weight(path, x):
        if "scale" in jax.tree_util.keystr(path):
            return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
        return rng.normal(0, 0.2, x.shape).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(weight, abstract_params(UNROLLED, VOCAB, SEQ))
    batch = rng.integers(0, VOCAB, (2, SEQ + 1)).astype(np.int32)
    return params, batch


# Unoptimised XLA CPU code compiles ~2x faster (as tests/test_sharding.py's FAST_COMPILE).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def loss_and_grads(cfg, params, batch):
    loss = lambda p: loss_fn(build_model(cfg, VOCAB, SEQ), TRAIN, p, batch)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss), compiler_options=FAST_COMPILE)(params)


@pytest.fixture(scope="module")
def unrolled_reference(weights):
    return loss_and_grads(UNROLLED, *weights)


def test_the_converters_are_inverse_and_match_the_scanned_shapes(weights):
    params, _ = weights
    stacked = stack_blocks(params)
    assert jax.tree.map(np.shape, stacked) == jax.tree.map(np.shape, abstract_params(SCANNED, VOCAB, SEQ))
    assert_trees_close(unstack_blocks(stacked), params, rtol=0, atol=0)


def test_scanned_and_unrolled_give_the_same_loss_and_gradients(weights, unrolled_reference):
    params, batch = weights
    loss, grads = unrolled_reference
    scan_loss, scan_grads = loss_and_grads(SCANNED, stack_blocks(params), batch)
    assert abs(float(loss) - np.log(VOCAB)) > 0.1  # weights far from uniform predictions
    np.testing.assert_allclose(scan_loss, loss, rtol=1e-6)
    assert_trees_close(unstack_blocks(scan_grads), grads)
    assert all(float(jnp.abs(g).max()) > 1e-4 for g in jax.tree.leaves(grads))  # every gradient is checked


def test_scanned_and_unrolled_take_the_same_adamw_update(weights, unrolled_reference):
    """Weight decay is for matrices: the scanned model's stacked [layers, d] norm scales are still vectors."""
    params, _ = weights
    grads = unrolled_reference[1]
    tx = optimizer(TRAIN)
    update = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0], compiler_options=FAST_COMPILE)
    unrolled = update(grads, params)
    assert_trees_close(unstack_blocks(update(stack_blocks(grads), stack_blocks(params))), unrolled)
    decay = TRAIN.weight_decay * params["block_0"]["attn_norm"]["scale"]  # what a decayed vector would add
    assert np.abs(unrolled["block_0"]["attn_norm"]["scale"] - decay).min() > 1e-3  # ... so it would be seen


@pytest.mark.parametrize("cfg, policy", [(SCANNED, "full"), (SCANNED, "dots"), (SCANNED, "mlp"), (UNROLLED, "full"),
                                         (UNROLLED, "dots")],
                         ids=["scanned-full", "scanned-dots", "scanned-mlp", "unrolled-full", "unrolled-dots"])
def test_remat_policies_give_the_same_loss_and_gradients(weights, unrolled_reference, cfg, policy):
    params, batch = weights
    loss, grads = unrolled_reference
    remat_loss, remat_grads = loss_and_grads(dataclasses.replace(cfg, remat=policy),
                                             stack_blocks(params) if cfg.scan_layers else params, batch)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    assert_trees_close(unstack_blocks(remat_grads) if cfg.scan_layers else remat_grads, grads)


def saved_residuals(policy, weights, cfg=SCANNED) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, shape) of what the backward pass of the scanned model keeps per layer (the stacked axis dropped)."""
    params, batch = weights
    model = build_model(dataclasses.replace(cfg, remat=policy), VOCAB, SEQ)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(lambda p: loss_fn(model, TRAIN, p, batch), stack_blocks(params))
    saved = [(line.split("[", 1)[0], tuple(int(n) for n in line.split("[", 1)[1].split("]")[0].split(",")))
             for line in out.getvalue().splitlines() if "output of scan" in line]
    return [(dtype, s[1:]) for dtype, s in saved if s[0] == cfg.n_layers]  # not the last block's output


def saved_shapes(policy, weights) -> list[tuple[int, ...]]:
    return [shape for _, shape in saved_residuals(policy, weights)]


def test_remat_policies_keep_what_they_say(weights):
    b, t, d, m = 2, SEQ, 64, 96
    scores = lambda shapes: [s for s in shapes if s[-2:] == (t, t)]  # noqa: E731 - attention's [.., T, T]
    projections = {(b, t, 4, 16), (b, t, 2, 16), (b, t, m)}  # q; k and v; gate and up
    none, full, dots, mlp = (saved_shapes(p, weights) for p in ("none", "full", "dots", "mlp"))
    assert scores(none) and projections <= set(none)
    assert full == [(b, t, d)]  # each block's input alone
    assert not scores(dots) and projections <= set(dots)
    assert sorted(mlp) == sorted([(b, t, d), (b, t, m), (b, t, m)])  # block input, gate, up


def test_scanned_blocks_recompute_their_elementwise_parts(weights):
    """With bfloat16 compute the unrecomputed (remat none) scanned block once kept four float32 copies of its
    [b, t, d] input (the norms' upcasts) and six [b, t, d_mlp] arrays (silu's intermediates): now its [b, t, d_mlp]
    residuals are gate, up and their SwiGLU product (the down projection's input) and nothing float32 is that big."""
    b, t, d, m = 2, SEQ, 64, 96
    saved = saved_residuals("none", weights, dataclasses.replace(SCANNED, dtype="bfloat16"))
    assert [dtype for dtype, shape in saved if shape == (b, t, m)] == ["bf16"] * 3
    assert not [shape for dtype, shape in saved if dtype == "f32" and shape in ((b, t, d), (b, t, m))]


def test_stacked_parameters_carry_the_layers_axis():
    boxed = abstract_boxed_params(build_model(SCANNED, VOCAB, SEQ))
    names = {jax.tree_util.keystr(path): leaf.names for path, leaf in jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]}
    assert names["['blocks']['attn']['q']['kernel']"] == ("layers", "embed", "heads", "head_dim")
    assert names["['blocks']['mlp_norm']['scale']"] == ("layers", "norm")
    assert names["['lm_head']"] == ("vocab", "embed")
    assert all(n[0] == "layers" for k, n in names.items() if k.startswith("['blocks']"))


def test_remat_accepts_old_booleans_and_rejects_unknown_policies():
    def remat_of(value):
        return expand({"model": {"arch": "llama", "remat": value}})[0].config.model.remat

    assert (remat_of(True), remat_of(False), remat_of("dots"), remat_of("auto")) == ("full", "none", "dots", "auto")
    with pytest.raises(ConfigError, match="model.remat"):
        remat_of("sometimes")
    assert ModelConfig().remat == "none" and ModelConfig().scan_layers
    with pytest.raises(ValueError, match="resolved before the model is built"):
        build_model(dataclasses.replace(SCANNED, remat="auto"), VOCAB, SEQ).init(
            jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))


@needs_cuda_plugin
@pytest.mark.parametrize("policy, forward_kernels", [("none", 1), ("full", 2), ("dots", 1)])
def test_dots_keeps_the_fused_attention(weights, monkeypatch, policy, forward_kernels):
    """With cuDNN's attention (traced here, not run), "dots" keeps its output instead of re-running the kernel."""
    import jaxscale.models.llama as llama
    monkeypatch.setattr(llama, "attention_impl", lambda cfg: "cudnn")
    params, batch = weights
    model = build_model(dataclasses.replace(SCANNED, remat=policy, dtype="bfloat16"), VOCAB, SEQ)
    grad = jax.grad(lambda p: loss_fn(model, TRAIN, p, batch))
    jaxpr = str(jax.make_jaxpr(grad)(stack_blocks(params)))
    assert jaxpr.count("dot_product_attention_fwd_wrapper[") == forward_kernels
    assert jaxpr.count("dot_product_attention_bwd_wrapper[") == 1
