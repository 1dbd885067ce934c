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


@pytest.mark.parametrize("chunk", [0, 8, 32])
def test_loss_and_gradients_match_a_float64_reference(chunk):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k1, (64, 24))
    w = jax.random.normal(k2, (1000, 24)) * 0.3
    y = jax.random.randint(k3, (64,), 0, 1000)
    loss, (dh, dw) = jax.value_and_grad(lambda h, w: cross_entropy(h, w, y, chunk), argnums=(0, 1))(h, w)
    ref_loss, ref_dh, ref_dw = numpy_reference(h, w, np.asarray(y))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(dh, ref_dh, atol=1e-6)
    np.testing.assert_allclose(dw, ref_dw, atol=1e-6)


def test_fused_loss_scales_with_the_upstream_gradient():
    h = jax.random.normal(jax.random.key(1), (2, 16, 8))
    w = jax.random.normal(jax.random.key(2), (50, 8))
    y = jax.random.randint(jax.random.key(3), (2, 16), 0, 50)
    g_fused = jax.grad(lambda h: 3.0 * cross_entropy(h, w, y, 8))(h)
    g_plain = jax.grad(lambda h: 3.0 * cross_entropy(h, w, y, 0))(h)
    np.testing.assert_allclose(g_fused, g_plain, atol=1e-6)
    assert jnp.abs(g_fused).sum() > 0
