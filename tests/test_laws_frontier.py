"""Compute frontier, envelope, power-law regressions and IsoFLOP parabolas on runs from a known law."""

import numpy as np
import pytest

from jaxscale.laws.frontier import compute_optimal_points, envelope, fit_power_law, frontier_points, isoflop_optima
from jaxscale.laws.law import ChinchillaLaw

LAW = ChinchillaLaw(E=1.7, A=400.0, B=400.0, alpha=0.34, beta=0.28)


def grid_runs(sizes=np.geomspace(1e6, 1e9, 13), budgets=np.geomspace(1e7, 1e12, 41)):
    n, d = (a.ravel() for a in np.meshgrid(sizes, budgets))
    return 6 * n * d, n, d, LAW.loss(n, d)


def test_power_law_fit_is_exact_on_a_power_law_and_covers_the_truth_with_noise():
    x = np.geomspace(1e15, 1e20, 12)
    exact = fit_power_law(x, 3.0 * x**0.46)
    assert (exact.exponent, exact.coefficient, exact.r_squared) == pytest.approx((0.46, 3.0, 1.0))
    noisy = fit_power_law(x, 3.0 * x**0.46 * np.exp(np.random.default_rng(0).normal(0, 0.1, x.size)))
    assert noisy.exponent_ci[0] < 0.46 < noisy.exponent_ci[1]
    assert np.isnan(fit_power_law(x[:2], x[:2]).exponent_ci[0])  # two points: no interval
    with pytest.raises(ValueError):
        fit_power_law([1.0], [2.0])


def test_frontier_runs_beat_every_cheaper_run():
    flops, n, d, loss = grid_runs()
    front = frontier_points(flops, n, d, loss)
    assert np.all(np.diff(front.flops) >= 0) and np.all(np.diff(front.loss) < 0)
    for c, l in zip(front.flops, front.loss):
        assert l <= loss[flops <= c].min()


def test_compute_optimal_exponents_follow_the_law():
    flops, n, d, loss = grid_runs()
    optimal = compute_optimal_points(flops, n, loss)
    assert np.all(optimal.tokens * optimal.params * 6 == pytest.approx(optimal.flops))
    a = fit_power_law(optimal.flops, optimal.params)
    b = fit_power_law(optimal.flops, optimal.tokens)
    assert a.exponent == pytest.approx(LAW.a, abs=0.02) and b.exponent == pytest.approx(LAW.b, abs=0.02)
    assert a.exponent + b.exponent == pytest.approx(1.0)  # C = 6ND


def test_envelope_is_the_lowest_model_curve():
    flops, n, d, loss = grid_runs(sizes=np.array([1e7, 1e8]), budgets=np.geomspace(1e8, 1e11, 7))
    env = envelope(flops, n, loss, points=50)
    assert np.all(np.isfinite(env.loss))
    for c, l, size in zip(env.flops, env.loss, env.params):
        mine = n == size
        assert l == pytest.approx(np.interp(np.log(c), np.log(flops[mine]), loss[mine]))
    assert np.all(np.diff(env.loss) <= 1e-12)


def test_isoflop_parabolas_find_the_compute_optimal_size():
    sizes = np.geomspace(1e7, 1e10, 25)
    flops = np.repeat([1e19, 1e20, 1e21], sizes.size)
    n = np.tile(sizes, 3)
    optima = isoflop_optima(flops, n, LAW.loss(n, flops / (6 * n)))
    assert len(optima) == 3
    for optimum in optima:
        expected, _ = LAW.compute_optimal(optimum.flops)
        assert optimum.params == pytest.approx(expected, rel=0.15)
