"""The step's optimizer: its own global-norm clip against optax's, alone and inside AdamW."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxscale.config import TrainConfig
from jaxscale.step import clip_by_global_norm, optimizer


def tree(scale):
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(50, 8)) * scale, jnp.float32),
            "b": jnp.asarray(rng.normal(size=(8,)) * scale, jnp.float32)}


@pytest.mark.parametrize("scale", [1e-3, 0.1, 10.0])  # norm ~0.02 (untouched), ~2 and ~200 (clipped)
def test_clip_matches_optax(scale):
    grads = tree(scale)
    ours, _ = clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    ref, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert float(optax.tree.norm(ours)) == pytest.approx(min(1.0, float(optax.tree.norm(grads))), rel=1e-6)


def test_zero_gradients_stay_zero():
    zeros = jax.tree.map(jnp.zeros_like, tree(1.0))
    ours, _ = clip_by_global_norm(1.0).update(zeros, optax.EmptyState())
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(ours))  # zeros, not NaN


def test_adamw_matches_the_optax_chain_over_clipped_steps():
    train = TrainConfig(grad_clip=1.0, weight_decay=0.1)
    decay = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(b1=train.beta1, b2=train.beta2),
                            optax.add_decayed_weights(0.1, decay))
    params = tree(1.0)
    ours, ref = optimizer(train), reference
    s_ours, s_ref = ours.init(params), ref.init(params)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)  # checkpoints keep their layout
    for step in range(5):
        grads = tree(5.0 * (step + 1))
        u_ours, s_ours = ours.update(grads, s_ours, params)
        u_ref, s_ref = ref.update(grads, s_ref, params)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_weight_decay_spares_every_bias_and_norm_whatever_its_rank():
    """The tiny model's fused qkv bias is [3, heads, head_dim]; a scanned Llama's norms are [layers, d]: neither
    is decayed. With zero gradients the decoupled decay's update is 0.1 x p exactly where p is decayed."""
    from jaxscale.config import ModelConfig
    from jaxscale.models import abstract_params

    for cfg in (ModelConfig(d_model=32, d_mlp=64, n_layers=1), ModelConfig(arch="llama", d_model=64, d_mlp=128,
                                                                          n_layers=2, n_heads=2)):
        params = jax.tree.map(lambda x: jnp.ones(x.shape, jnp.float32), abstract_params(cfg, 256, 16))
        opt = optimizer(TrainConfig(weight_decay=0.1, grad_clip=0.0))
        updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
        leaves = jax.tree_util.tree_leaves_with_path(updates)
        decayed = {jax.tree_util.keystr(path): bool(np.any(u)) for path, u in leaves}
        for name, was in decayed.items():  # kernels, token and position embeddings: yes; biases, norms: no
            assert was == (not name.endswith(("['bias']", "['scale']"))), name
        biases = [u.ndim for p, u in leaves if jax.tree_util.keystr(p).endswith("['bias']")]
        assert 3 in biases if cfg.arch == "tiny" else not biases  # the fused qkv bias is there, and spared
