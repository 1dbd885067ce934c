"""Learning-rate schedules against their closed forms at the corners: warmup's end, the stable phase, the
cooldown's start, middle and end; cosine and wsd share one compiled step."""
import math
import re

import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.config import ConfigError, TrainConfig, expand
from jaxscale.step import learning_rate, schedule_array, step_key


def lrs(train, steps):
    schedule = schedule_array(train, steps)
    return np.array([float(learning_rate(jnp.int32(s), schedule)) for s in range(steps)])


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_corners(shape):
    train = TrainConfig(lr=1e-3, min_lr_ratio=0.1, warmup_frac=0.1, schedule="wsd", cooldown_frac=0.2,
                        cooldown_shape=shape)
    lr = lrs(train, 101)  # warmup ceil(10.1) = 11 steps; cooldown ceil(20.2) = 21 steps: 80 .. 100
    np.testing.assert_allclose(lr[:11], 1e-3 * np.arange(1, 12) / 11, rtol=1e-6)  # linear warmup, as cosine's
    np.testing.assert_allclose(lr[10:81], 1e-3, rtol=1e-6)  # stable at the peak, cooldown's first step included
    assert lr[100] == pytest.approx(1e-4, rel=1e-6)  # the last step reaches peak * min_lr_ratio
    half = 1 - (0.5 if shape == "linear" else math.sqrt(0.5))  # step 90: half way through the cooldown
    assert lr[90] == pytest.approx(1e-3 * (0.1 + 0.9 * half), rel=1e-6)
    assert np.all(np.diff(lr[80:]) < 0)


def test_cosine_is_unchanged_by_the_wsd_fields():
    cosine = TrainConfig(lr=2e-3, min_lr_ratio=0.0, warmup_frac=0.0, cooldown_frac=0.5, cooldown_shape="linear")
    lr = lrs(cosine, 11)
    np.testing.assert_allclose(lr, 2e-3 * 0.5 * (1 + np.cos(np.pi * np.arange(11) / 10)), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_fixed_warmup_in_steps_is_the_same_at_every_budget(schedule):
    for steps in (10, 100):
        lr = lrs(TrainConfig(lr=1e-3, warmup_frac=0.5, warmup_steps=4, schedule=schedule), steps)
        np.testing.assert_allclose(lr[:4], 1e-3 * np.arange(1, 5) / 4, rtol=1e-6)  # warmup_frac is not used
        assert lr[4] == pytest.approx(1e-3, rel=1e-6)  # the decay (cosine) or the stable phase (wsd) starts at the peak


def test_cosine_and_wsd_runs_share_one_compiled_step():
    assert step_key(TrainConfig(schedule="wsd", cooldown_frac=0.1)) == step_key(TrainConfig())


@pytest.mark.parametrize("override, message", [
    ({"schedule": "step"}, "train.schedule: 'step' is not one of cosine, wsd"),
    ({"cooldown_frac": 0.0}, "train.cooldown_frac: must be > 0"),
    ({"schedule": "wsd", "warmup_frac": 0.5, "cooldown_frac": 0.6}, "together exceed the run"),
    ({"cooldown_shape": "cosine"}, "train.cooldown_shape: 'cosine' is not one of linear, 1-sqrt"),
    ({"tokens": 2048, "batch_size": 16, "warmup_steps": 2},  # 16 x data.seq_len 64 a step: 2 steps
     "train.warmup_steps: 2 warmup steps leave no room for a decay in a run of 2 steps (train.tokens 2048); "
     "allowed: at most 1"),
    ({"tokens": 10240, "batch_size": 16, "schedule": "wsd", "warmup_steps": 9, "cooldown_frac": 0.2},  # 10 steps
     "train.warmup_steps: 9 warmup steps leave no room for the cooldown's 2 in a run of 10 steps"),
    ({"warmup_steps": -2}, "train.warmup_steps: must be >= -1"),
])
def test_bad_schedules_are_named(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand({"name": "x", "train": override})


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_decay_of_one_step_ends_at_the_floor(schedule):
    """The tiny grid's 5e3-token budget: 4 steps, 3 of warmup, one left to decay (wsd: a cooldown of ceil(0.8) = 1)."""
    lr = lrs(TrainConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=3, schedule=schedule), 4)
    np.testing.assert_allclose(lr, [1e-3 / 3, 2e-3 / 3, 1e-3, 1e-4], rtol=1e-6)
    two = lrs(TrainConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=3, schedule=schedule, cooldown_frac=0.4), 5)
    np.testing.assert_allclose(two[3:], [1e-3, 1e-4], rtol=1e-6)  # two steps: from the peak to the floor
