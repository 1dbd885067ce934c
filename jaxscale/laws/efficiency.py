"""Efficiency metrics of a training run. Losses are in nats per token; missing energy is nan, never 0.

    perplexity                       = exp(loss)
    parameter efficiency             = (1 / perplexity) / (params / 1e6)          per million parameters
    energy-aware parameter efficiency = parameter efficiency / (energy_J / 3.6e6)  per million parameters per kWh
    tokens per joule                 = training tokens / energy_J
    loss reduction per kWh           = (ln(vocab_size) - loss) / (energy_J / 3.6e6)
                                       (from the uniform predictor's loss, ln V, to the run's loss)
"""

from __future__ import annotations

import numpy as np

JOULES_PER_KWH = 3.6e6
GPT2_VOCAB_SIZE = 50_257


def _energy_kwh(energy_j):
    energy = np.asarray(energy_j, float)
    # A zero or negative reading is a failed measurement, not a free run.
    return np.where(energy > 0, energy / JOULES_PER_KWH, np.nan)


def perplexity(loss):
    return np.exp(np.asarray(loss, float))


def parameter_efficiency(loss, params):
    """Inverse perplexity per million parameters."""
    return 1.0 / perplexity(loss) / (np.asarray(params, float) / 1e6)


def energy_aware_parameter_efficiency(loss, params, energy_j):
    """Parameter efficiency per kWh of measured energy."""
    return parameter_efficiency(loss, params) / _energy_kwh(energy_j)


def tokens_per_joule(tokens, energy_j):
    return np.asarray(tokens, float) / (_energy_kwh(energy_j) * JOULES_PER_KWH)


def loss_reduction_per_kwh(loss, energy_j, vocab_size: int = GPT2_VOCAB_SIZE):
    """Nats per token gained over the uniform predictor, per kWh."""
    return (np.log(vocab_size) - np.asarray(loss, float)) / _energy_kwh(energy_j)
