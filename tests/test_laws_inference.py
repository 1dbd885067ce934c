"""Chinchilla law, inference-aware and cost-optimal allocations against the published numbers (REFERENCES.md)."""

import numpy as np
import pytest

from jaxscale.laws.inference import (
    CostModel,
    Hardware,
    InferenceDemand,
    chinchilla_style,
    chinchilla_style_cost,
    cost_optimal,
    inference_optimal,
    lifetime_flops,
)
from jaxscale.laws.law import HOFFMANN, ChinchillaLaw


def sig3(x):
    return float(f"{x:.3e}")


def test_loss_of_70b_on_1t_tokens():
    assert HOFFMANN.loss(70e9, 1e12) == pytest.approx(1.9473, abs=5e-5)


def test_published_inference_aware_example():
    best = inference_optimal(HOFFMANN, 1.947, 2e12)
    assert (sig3(best.params), sig3(best.train_tokens), sig3(best.total_flops)) == (2.418e10, 2.657e12, 4.823e23)
    base = chinchilla_style(HOFFMANN, 1.947, 2e12)
    assert (sig3(base.params), sig3(base.train_tokens), sig3(base.total_flops)) == (3.408e10, 1.810e12, 5.065e23)


def test_optimum_lies_on_the_loss_curve_and_is_a_minimum():
    law, loss, demand = HOFFMANN, 2.1, 5e13
    best = inference_optimal(law, loss, demand)
    assert law.loss(best.params, best.train_tokens) == pytest.approx(loss, rel=1e-12)
    for factor in (0.9, 0.99, 1.01, 1.1):  # move along the iso-loss curve: lifetime compute only grows
        tokens = best.train_tokens * factor
        assert lifetime_flops(law.params_for_loss(loss, tokens), tokens, demand) > best.total_flops


def test_no_inference_gives_the_chinchilla_model():
    best, base = inference_optimal(HOFFMANN, 2.0, 0.0), chinchilla_style(HOFFMANN, 2.0, 0.0)
    assert best.params == pytest.approx(base.params, rel=1e-10)
    assert best.train_tokens == pytest.approx(base.train_tokens, rel=1e-10)


def test_chinchilla_for_loss_agrees_with_compute_optimal():
    law = ChinchillaLaw(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)
    params, tokens = law.chinchilla_for_loss(2.3)
    n_opt, d_opt = law.compute_optimal(6 * params * tokens)
    assert (n_opt, d_opt) == pytest.approx((params, tokens), rel=1e-10)
    assert law.a + law.b == pytest.approx(1.0)


def test_large_demand_shrinks_the_model_and_lengthens_training():
    small, large = (inference_optimal(HOFFMANN, 2.0, t) for t in (1e11, 1e15))
    assert large.params < small.params and large.train_tokens > small.train_tokens


def test_loss_at_or_below_e_is_rejected():
    with pytest.raises(ValueError, match="must exceed the irreducible loss"):
        inference_optimal(HOFFMANN, 1.69, 1e12)


def test_cost_reduces_to_flops_when_every_flop_costs_the_same():
    same = Hardware("H100", "bf16", 2.0)
    prices = CostModel(same, same, 0.4, 0.4, 0.4)
    demand = InferenceDemand(1e9, 100, 300)
    priced = cost_optimal(HOFFMANN, 1.947, demand, prices)
    flops = inference_optimal(HOFFMANN, 1.947, demand.input_tokens + demand.output_tokens)
    assert priced.params == pytest.approx(flops.params, rel=1e-9)
    assert priced.total_cost == pytest.approx(flops.total_flops * 2.0 / (3600 * 989e12) / 0.4, rel=1e-9)


def test_cost_optimal_beats_chinchilla_style_and_prices_each_stage():
    prices = CostModel(Hardware("H100", "bf16", 2.0), Hardware("H100", "fp8", 2.0), 0.5, 0.5, 0.01)
    demand = InferenceDemand(1e10, 70, 215)
    best = cost_optimal(HOFFMANN, 1.947, demand, prices)
    base = chinchilla_style_cost(HOFFMANN, 1.947, demand, prices)
    assert best.total_cost < base.total_cost
    assert HOFFMANN.loss(best.params, best.train_tokens) == pytest.approx(1.947, rel=1e-12)
    train = 6 * base.params * base.train_tokens * 2.0 / (3600 * 989e12) / 0.5
    prefill = 2 * base.params * 7e11 * 2.0 / (3600 * 1979e12) / 0.5
    decode = 2 * base.params * 2.15e12 * 2.0 / (3600 * 1979e12) / 0.01
    assert base.total_cost == pytest.approx(train + prefill + decode, rel=1e-12)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Hardware("V100", "bf16", 1.0), "allowed: A100, H100"),
        (lambda: Hardware("A100", "fp8", 1.0), "allowed: bf16, fp16, int8"),
        (lambda: CostModel(Hardware("A100", "bf16", 1.0), Hardware("A100", "bf16", 1.0), 0.0, 0.5, 0.5), "train mfu"),
        (lambda: InferenceDemand(-1, 1, 1), "requests"),
    ],
)
def test_bad_cost_inputs_say_what_is_allowed(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_peak_table_matches_references():
    assert Hardware("A100", "bf16", 1).peak_flops == 312e12 and Hardware("A100", "int8", 1).peak_flops == 624e12
    assert Hardware("H100", "bf16", 1).peak_flops == 989e12 and Hardware("H100", "fp8", 1).peak_flops == 1979e12
    assert np.isclose(Hardware("H100", "bf16", 3.6).dollars_per_flop, 3.6 / (3600 * 989e12))
