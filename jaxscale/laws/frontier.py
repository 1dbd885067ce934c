"""The compute frontier of an N x D sweep (study 2) and the power laws N_opt ∝ C^a, D_opt ∝ C^b.

Frontier runs are the runs no cheaper run beats: sorted by compute, each has a lower loss than every run with less
compute. The envelope interpolates each model's loss linearly in log compute and takes the lowest model at each
compute. The compute-optimal points are the envelope at each run's compute level where two or more models have data:
N_opt is the model with the lowest interpolated loss there and D_opt = C / (6 N_opt). (Regressing on the frontier runs
themselves is biased: a model stays on the frontier for several budgets, which flattens the slope.) Exponents come
from least squares in log-log space with t-based confidence intervals. The IsoFLOP variant fits a parabola in log N
to the runs of each compute level that has at least three model sizes and takes its vertex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient · x^exponent, fitted in log space."""

    exponent: float
    coefficient: float
    exponent_ci: tuple[float, float]  # nan when fewer than 3 points
    r_squared: float
    n_points: int
    confidence: float = 0.95

    def __call__(self, x):
        return self.coefficient * np.asarray(x, float) ** self.exponent


def fit_power_law(x, y, confidence: float = 0.95) -> PowerLaw:
    log_x, log_y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    n = len(log_x)
    if n < 2 or np.ptp(log_x) == 0:
        raise ValueError(f"a power law needs at least 2 points with distinct x; got {n}")
    slope, intercept = np.polyfit(log_x, log_y, 1)
    residuals = log_y - (slope * log_x + intercept)
    total = np.sum((log_y - log_y.mean()) ** 2)
    r_squared = 1.0 - np.sum(residuals**2) / total if total > 0 else 1.0
    ci = (np.nan, np.nan)
    if n > 2:
        stderr = np.sqrt(np.sum(residuals**2) / (n - 2) / np.sum((log_x - log_x.mean()) ** 2))
        half = stats.t.ppf(0.5 + confidence / 2, n - 2) * stderr
        ci = (float(slope - half), float(slope + half))
    return PowerLaw(float(slope), float(np.exp(intercept)), ci, float(r_squared), n, confidence)


@dataclass(frozen=True)
class Frontier:
    """Points (runs, or envelope choices) sorted by compute."""

    flops: np.ndarray
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    index: np.ndarray  # rows of the input (frontier runs) or of the compute levels (compute-optimal points)
    # compute-optimal points: the level's model is the smallest or largest of those covering it, so the optimum
    # there may lie outside the sizes trained (always so where only two models cover a level)
    at_edge: np.ndarray | None = None


def frontier_points(flops, params, tokens, loss) -> Frontier:
    flops, params, tokens, loss = (np.asarray(v, float) for v in (flops, params, tokens, loss))
    order = np.lexsort((loss, flops))
    keep, best = [], np.inf
    for i in order:
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    index = np.array(keep, int)
    return Frontier(flops[index], params[index], tokens[index], loss[index], index)


@dataclass(frozen=True)
class Envelope:
    flops: np.ndarray  # log-spaced grid
    loss: np.ndarray  # lowest interpolated loss at each grid point
    params: np.ndarray  # N of the model that attains it


def _model_curves(flops, params, loss):
    for n in np.unique(params):
        mine = params == n
        order = np.argsort(flops[mine])
        yield n, np.log(flops[mine][order]), loss[mine][order]


def _lowest_model(flops, params, loss, at_flops):
    """(loss, N, number of models covering, whether N is the smallest or largest covering) of the lowest
    interpolated model curve at each compute in at_flops."""
    at = np.log(at_flops)
    best = np.full(at.size, np.inf)
    best_params = np.full(at.size, np.nan)
    covering = np.zeros(at.size, int)
    smallest, largest = np.full(at.size, np.inf), np.full(at.size, -np.inf)
    for n, log_c, curve_loss in _model_curves(flops, params, loss):
        inside = (at >= log_c[0]) & (at <= log_c[-1])
        curve = np.interp(at, log_c, curve_loss)
        better = inside & (curve < best)
        best[better], best_params[better] = curve[better], n
        covering += inside
        smallest[inside], largest[inside] = np.minimum(smallest[inside], n), np.maximum(largest[inside], n)
    return best, best_params, covering, (best_params == smallest) | (best_params == largest)


def envelope(flops, params, loss, points: int = 200) -> Envelope:
    """Lower envelope of per-model curves (a model = one parameter count), linear in log compute."""
    flops, params, loss = (np.asarray(v, float) for v in (flops, params, loss))
    grid = np.geomspace(flops.min(), flops.max(), points)
    best, best_params, _, _ = _lowest_model(flops, params, loss, grid)
    return Envelope(grid, best, best_params)


def compute_optimal_points(flops, params, loss, flops_per_token=None) -> Frontier:
    """The envelope's choice at every distinct run compute that two or more model curves cover. D_opt is C divided
    by the chosen model's compute per token: `flops_per_token` (one per run), else 6 N."""
    flops, params, loss = (np.asarray(v, float) for v in (flops, params, loss))
    levels = np.unique(flops)
    best, best_params, covering, at_edge = _lowest_model(flops, params, loss, levels)
    keep = covering >= 2
    levels, best, best_params, at_edge = levels[keep], best[keep], best_params[keep], at_edge[keep]
    if flops_per_token is None:
        per_token = 6.0 * best_params
    else:
        of_model = dict(zip(params, np.asarray(flops_per_token, float)))
        per_token = np.array([of_model[n] for n in best_params])
    return Frontier(levels, best_params, levels / per_token, best, np.flatnonzero(keep), at_edge)


@dataclass(frozen=True)
class IsoFlopOptimum:
    flops: float  # geometric mean compute of the level
    params: float  # vertex of the parabola in log N
    loss: float
    n_runs: int


def isoflop_optima(flops, params, loss, level_width_decades: float = 0.1) -> list[IsoFlopOptimum]:
    """Parabola vertices for compute levels (runs within level_width_decades of each other) with >= 3 sizes."""
    flops, params, loss = (np.asarray(v, float) for v in (flops, params, loss))
    order = np.argsort(flops)
    log_c = np.log10(flops[order])
    out = []
    start = 0
    while start < len(order):
        stop = start
        while stop < len(order) and log_c[stop] - log_c[start] <= level_width_decades:
            stop += 1
        rows = order[start:stop]
        if len(np.unique(params[rows])) >= 3:
            x = np.log(params[rows])
            curvature, slope, offset = np.polyfit(x, loss[rows], 2)
            vertex = -slope / (2 * curvature) if curvature > 0 else np.nan
            if np.isfinite(vertex) and x.min() <= vertex <= x.max():
                out.append(
                    IsoFlopOptimum(
                        float(np.exp(np.mean(np.log(flops[rows])))),
                        float(np.exp(vertex)),
                        float(offset + slope * vertex + curvature * vertex**2),
                        len(rows),
                    )
                )
        start = stop
    return out
