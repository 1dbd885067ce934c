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


def test_levels_won_by_an_edge_of_the_models_covering_them_are_marked():
    """Study 2's grid, noise-free losses from two laws: one whose optimum lies inside the sizes trained (a = 1/3),
    one whose optimum lies below them at every compute (a = 1/2). Edges counted from the grid itself: the models
    whose budgets span each level."""
    sizes = np.array([808448, 1214976, 1635744, 2463136, 3293952, 5080800, 6824576.0])
    budgets = np.array([5e3, 1e4, 3e4, 5e4, 1e5, 3e5, 5e5, 1e6])
    params, tokens = (a.ravel() for a in np.meshgrid(sizes, budgets))
    inside = ChinchillaLaw(E=2.0, A=3.5623e4, B=300.0, alpha=0.6, beta=0.3)  # N_opt from 7.9e5 to 7.5e6 over the grid
    outside = ChinchillaLaw(E=2.0, A=200.0, B=200.0, alpha=0.35, beta=0.35)
    edges = {}
    for name, law in (("inside", inside), ("outside", outside)):
        optimal = compute_optimal_points(6 * params * tokens, params, law.loss(params, tokens))
        covering = [sizes[(6 * sizes * budgets[0] <= c) & (c <= 6 * sizes * budgets[-1])] for c in optimal.flops]
        expected = [n in (cover.min(), cover.max()) for n, cover in zip(optimal.params, covering)]
        assert optimal.at_edge.tolist() == expected
        edges[name] = (int(optimal.at_edge.sum()), len(optimal.flops))
    assert edges["outside"] == (54, 54) and edges["inside"][0] < 54 / 4
