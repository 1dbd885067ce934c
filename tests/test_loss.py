import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.loss import cross_entropy


def numpy_reference(h, w, y):
    """Loss and gradients written out by hand in float64: softmax(hW^T) - onehot."""
    h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
    logits = h @ w.T
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(y)), y]))
    g = p.copy()
    g[np.arange(len(y)), y] -= 1
    g /= len(y)
    return loss, g @ w, g.T @ h


@pytest.mark.parametrize("mode,chunk", [("full", 128), ("blocked", 8), ("blocked", 32), ("stored", 128), ("auto", 128)])
def test_loss_and_gradients_match_a_float64_reference(mode, chunk):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k1, (64, 24))
    w = jax.random.normal(k2, (1000, 24)) * 0.3
    y = jax.random.randint(k3, (64,), 0, 1000)
    loss, (dh, dw) = jax.value_and_grad(lambda h, w: cross_entropy(h, w, y, mode, chunk), argnums=(0, 1))(h, w)
    ref_loss, ref_dh, ref_dw = numpy_reference(h, w, np.asarray(y))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(dh, ref_dh, atol=1e-6)
    np.testing.assert_allclose(dw, ref_dw, atol=1e-6)


def test_fused_loss_scales_with_the_upstream_gradient():
    h = jax.random.normal(jax.random.key(1), (2, 16, 8))
    w = jax.random.normal(jax.random.key(2), (50, 8))
    y = jax.random.randint(jax.random.key(3), (2, 16), 0, 50)
    g_fused = jax.grad(lambda h: 3.0 * cross_entropy(h, w, y, "blocked", 8))(h)
    g_plain = jax.grad(lambda h: 3.0 * cross_entropy(h, w, y, "full"))(h)
    np.testing.assert_allclose(g_fused, g_plain, atol=1e-6)
    assert jnp.abs(g_fused).sum() > 0


def stable_reference(h, w, y):
    """numpy_reference with the loss as log-sum-exp minus the target logit, finite for huge logits."""
    with np.errstate(divide="ignore"):
        _, dh, dw = numpy_reference(h, w, y)
    logits = np.asarray(h, np.float64) @ np.asarray(w, np.float64).T
    m = logits.max(-1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(-1))
    return np.mean(lse - logits[np.arange(len(y)), y]), dh, dw


@pytest.mark.parametrize("token_block,vocab_block", [(64, 256), (16, 100), (24, 300), (7, 128), (64, 1000)])
@pytest.mark.parametrize("scale", [0.3, 30.0])
def test_blocked_loss_matches_the_reference_for_any_tiling(token_block, vocab_block, scale):
    """Vocabulary blocks with a leftover, several token blocks (an inner loop), token counts that need
    padding, and logits in the hundreds (the online log-sum-exp must rescale, not overflow)."""
    from jaxscale.loss import blocked_cross_entropy

    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    h = jax.random.normal(k1, (64, 24))
    w = jax.random.normal(k2, (1000, 24)) * scale
    y = jax.random.randint(k3, (64,), 0, 1000)
    loss, (dh, dw) = jax.jit(jax.value_and_grad(
        lambda h, w: blocked_cross_entropy(h, w, y, token_block, vocab_block), argnums=(0, 1)))(h, w)
    ref_loss, ref_dh, ref_dw = stable_reference(h, w, np.asarray(y))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    tol = 1e-6 * max(1.0, scale)
    np.testing.assert_allclose(dh, ref_dh, atol=tol)
    np.testing.assert_allclose(dw, ref_dw, atol=tol)


@pytest.mark.parametrize("vocab_block", [256, 100, 300, 1000])
@pytest.mark.parametrize("scale", [0.3, 30.0])
def test_stored_loss_matches_the_reference_for_any_tiling(vocab_block, scale):
    """Tiles with a narrower last one, a single tile, and logits in the hundreds: each stored tile is
    relative to a different running max, which the backward pass must undo exactly."""
    from jaxscale.loss import stored_cross_entropy

    k1, k2, k3 = jax.random.split(jax.random.key(9), 3)
    h = jax.random.normal(k1, (48, 24))
    w = jax.random.normal(k2, (1000, 24)) * scale
    y = jax.random.randint(k3, (48,), 0, 1000)
    loss, (dh, dw) = jax.jit(jax.value_and_grad(
        lambda h, w: stored_cross_entropy(h, w, y, vocab_block), argnums=(0, 1)))(h, w)
    ref_loss, ref_dh, ref_dw = stable_reference(h, w, np.asarray(y))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    tol = 1e-6 * max(1.0, scale)
    np.testing.assert_allclose(dh, ref_dh, atol=tol)
    np.testing.assert_allclose(dw, ref_dw, atol=tol)


def test_stored_loss_tile_count_is_bounded():
    from jaxscale.loss import MAX_STORED_TILES, stored_vocab_block
    assert stored_vocab_block(1024, 50257) == 4096  # 13 tiles, the last 1,105 wide
    assert -(-50257 // stored_vocab_block(1 << 16, 50257)) <= MAX_STORED_TILES  # 256-wide blocks would be 197 tiles


def test_blocked_loss_forward_alone_and_its_tile_sizes():
    from jaxscale.loss import blocked_cross_entropy, vocab_block_for

    h = jax.random.normal(jax.random.key(5), (2, 32, 16))
    w = jax.random.normal(jax.random.key(6), (777, 16))
    y = jax.random.randint(jax.random.key(7), (2, 32), 0, 777)
    ref = numpy_reference(h.reshape(-1, 16), w, np.asarray(y).reshape(-1))[0]
    np.testing.assert_allclose(jax.jit(lambda h: cross_entropy(h, w, y, "blocked", 1024))(h), ref, rtol=1e-5)
    np.testing.assert_allclose(blocked_cross_entropy(h.reshape(-1, 16), w, y.reshape(-1), 20, 64), ref, rtol=1e-5)
    assert vocab_block_for(1024, 50257) == 4096 and vocab_block_for(128, 50257) == 8192
    assert vocab_block_for(1 << 16, 50257) == 256 and vocab_block_for(1024, 300) == 300


def dot_operand_dtypes(jaxpr) -> list[tuple[str, ...]]:
    """The operand dtypes of every matmul in `jaxpr`, sub-jaxprs (custom VJPs, jit) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
        for value in eqn.params.values():
            sub = getattr(value, "jaxpr", value)
            if hasattr(sub, "eqns"):
                found += dot_operand_dtypes(sub)
    return found


def test_full_logits_in_bfloat16_backpropagate_through_bfloat16_matmuls():
    """The float32 logits' gradient is cast to bf16 before the two backward matmuls (they ran in float32)."""
    h = jax.random.normal(jax.random.key(4), (64, 32)).astype(jnp.bfloat16)
    w = (jax.random.normal(jax.random.key(5), (500, 32)) * 0.3).astype(jnp.bfloat16)
    y = jax.random.randint(jax.random.key(6), (64,), 0, 500)
    grad = jax.value_and_grad(lambda h, w: cross_entropy(h, w, y, "full"), argnums=(0, 1))
    dots = dot_operand_dtypes(jax.make_jaxpr(grad)(h, w).jaxpr)
    assert len(dots) >= 3 and all(d == ("bfloat16", "bfloat16") for d in dots)  # forward, dh, dW
    loss, (dh, dw) = grad(h, w)
    ref_loss, ref_dh, ref_dw = numpy_reference(h.astype(jnp.float32), w.astype(jnp.float32), np.asarray(y))
    assert loss.dtype == jnp.float32 and dh.dtype == dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)  # float32 logits: no bf16 rounding in the loss
    np.testing.assert_allclose(np.asarray(dh, np.float32), ref_dh, atol=2e-3)
    np.testing.assert_allclose(np.asarray(dw, np.float32), ref_dw, atol=2e-3)


@pytest.mark.parametrize("mode", ["blocked", "stored"])
def test_tiled_losses_in_bfloat16_stay_close(mode):
    k1, k2, k3 = jax.random.split(jax.random.key(8), 3)
    h = jax.random.normal(k1, (64, 32)).astype(jnp.bfloat16)
    w = (jax.random.normal(k2, (500, 32)) * 0.3).astype(jnp.bfloat16)
    y = jax.random.randint(k3, (64,), 0, 500)
    loss, (dh, dw) = jax.value_and_grad(lambda h, w: cross_entropy(h, w, y, mode, 16), argnums=(0, 1))(h, w)
    ref_loss, ref_dh, ref_dw = numpy_reference(h.astype(jnp.float32), w.astype(jnp.float32), np.asarray(y))
    assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-2)
    np.testing.assert_allclose(np.asarray(dh, np.float32), ref_dh, atol=2e-3)
    np.testing.assert_allclose(np.asarray(dw, np.float32), ref_dw, atol=2e-3)


def test_auto_mode_stores_the_tiles_only_for_wide_models_and_small_batches():
    from jaxscale.loss import choose_loss
    # CPU, freed memory handed back: faulting the tiles costs more than recomputing them
    assert choose_loss(16 * 64, 50257, 128, "cpu", freed_memory_reused=False) == "blocked"
    assert choose_loss(16 * 64, 50257, 128, "cpu", True) == "stored"  # the tiny grid's largest model: 206 MB of tiles
    assert choose_loss(16 * 64, 50257, 16, "cpu", True) == "stored"  # the tiny grid's narrowest model
    assert choose_loss(16 * 64, 50257, 8, "cpu", True) == "blocked"  # recomputing a narrower tile is cheaper
    assert choose_loss(8 * 2048, 32000, 2048, "cpu", True) == "blocked"  # TinyLlama's batch: 2.1 GB of logits


def test_auto_mode_on_a_gpu_keeps_full_logits_only_where_they_take_a_sixteenth_of_memory():
    from jaxscale.loss import choose_loss
    # TinyLlama's batch: 16,384 x 32,000 logits x 8 bytes (logits + gradient) = 4.19 GB
    assert choose_loss(8 * 2048, 32000, 2048, "gpu", True, memory_bytes=80 * 10**9) == "full"  # 5.0 GB share
    assert choose_loss(8 * 2048, 32000, 2048, "gpu", True, memory_bytes=40 * 10**9) == "blocked"  # 2.5 GB share
    assert choose_loss(16 * 64, 50257, 16, "gpu", True, memory_bytes=0) == "blocked"  # memory unknown: the safe loss


@pytest.mark.parametrize("n", [48, 300])
def test_the_blocked_bf16_output_gradient_is_not_rescaled_by_a_rounded_mean(n):
    """1/n rounded to bf16 is 1/n x 1.00195 at n = 48 and x 0.99792 at n = 300: applied once to the whole output-layer
    gradient it would bias it by that much. Against the float32 gradient, projected: within rounding noise."""
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(n, 32)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(200, 32)) * 0.3, jnp.bfloat16)
    y = rng.integers(0, 200, n)
    ref = jax.grad(lambda w: cross_entropy(h.astype(jnp.float32), w, y, "full"))(w.astype(jnp.float32))
    ours = jax.grad(lambda w: cross_entropy(h, w, y, "blocked", 128))(w).astype(jnp.float32)
    assert float(jnp.vdot(ours, ref) / jnp.vdot(ref, ref)) == pytest.approx(1.0, abs=1e-3)
