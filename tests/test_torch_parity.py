"""The PyTorch twins in benchmarks/torch_models.py compute what jaxscale computes: the same loss from the
same weights (to 1e-4), and the same losses over a few AdamW steps. Skipped without torch
(`pip install 'jaxscale[bench]'`)."""
import dataclasses
import importlib.util

import jax
import numpy as np
import pytest

from jaxscale.config import ModelConfig, TrainConfig
from jaxscale.models import build_model
from jaxscale.models.llama import unstack_blocks
from jaxscale.step import compiled_steps, init_state, loss_fn, step_key

from conftest import ROOT

torch = pytest.importorskip("torch")


def torch_models():
    spec = importlib.util.spec_from_file_location("torch_models", ROOT / "benchmarks" / "torch_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VOCAB, SEQ, BATCH, STEPS = 1000, 16, 4, 4
MODELS = {
    "tiny": ModelConfig(d_model=32, d_mlp=64, n_layers=2),
    "tiny-untied-4heads": ModelConfig(d_model=64, d_mlp=128, n_layers=1, n_heads=4, tie_embeddings=False),
    "llama-gqa": ModelConfig(arch="llama", d_model=64, d_mlp=128, n_layers=2, n_heads=4, n_kv_heads=2),
}
TRAIN = TrainConfig(lr=3e-3, warmup_frac=0.25, loss="blocked", loss_chunk=1024)


def load(tm, cfg, params):
    """The PyTorch twin holding jaxscale's weights; it reads the unrolled layout (block_0, block_1, ...)."""
    return tm.load_jax_params(tm.build_model(cfg, VOCAB, SEQ), unstack_blocks(params) if "blocks" in params else params)


def batches():
    return np.random.default_rng(0).integers(0, VOCAB, (STEPS, BATCH, SEQ + 1)).astype(np.int32)


@pytest.mark.parametrize("name", MODELS)
def test_same_loss_from_the_same_weights(name):
    tm = torch_models()
    cfg = MODELS[name]
    model = build_model(cfg, VOCAB, SEQ)
    state = init_state(model, TRAIN, STEPS, SEQ, jax.random.key(0))
    batch = batches()[0]
    jax_loss = float(loss_fn(model, TRAIN, state.params, batch))
    jax_plain = float(loss_fn(model, dataclasses.replace(TRAIN, loss="full"), state.params, batch))

    twin = load(tm, cfg, state.params)
    tokens = torch.from_numpy(batch).long()
    with torch.no_grad():
        torch_loss = float(twin(tokens[:, :-1], tokens[:, 1:]))
    assert abs(jax_loss - torch_loss) < 1e-4
    assert abs(jax_plain - torch_loss) < 1e-4
    assert abs(torch_loss - np.log(VOCAB)) < 0.5  # a fresh model: about uniform


@pytest.mark.parametrize("name", ["tiny", "llama-gqa"])
def test_same_losses_over_adamw_steps(name):
    tm = torch_models()
    cfg = MODELS[name]
    model = build_model(cfg, VOCAB, SEQ)
    state = init_state(model, TRAIN, STEPS, SEQ, jax.random.key(1))
    step, _ = compiled_steps(model, step_key(TRAIN))
    twin = load(tm, cfg, state.params)
    opt = tm.optimizer(twin, TRAIN)
    jax_losses, torch_losses = [], []
    for i, batch in enumerate([batches()[0]] * STEPS):  # one batch again and again: the loss must fall
        state, metrics = step(state, batch)
        jax_losses.append(float(metrics["loss"]))
        torch_losses.append(tm.train_step(twin, twin, opt, torch.from_numpy(batch).long(), i, TRAIN, STEPS))
    np.testing.assert_allclose(jax_losses, torch_losses, atol=1e-4)
    assert jax_losses[-1] < jax_losses[0]


def test_same_learning_rate_schedule():
    import jax.numpy as jnp

    from jaxscale.step import learning_rate, schedule_array

    tm = torch_models()
    for steps in (4, 9, 97):
        schedule = schedule_array(TRAIN, steps)
        ours = [float(learning_rate(jnp.int32(s), schedule)) for s in range(steps)]
        np.testing.assert_allclose(ours, [tm.learning_rate(s, TRAIN, steps) for s in range(steps)], rtol=1e-6)
