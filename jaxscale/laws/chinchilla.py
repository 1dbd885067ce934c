"""Chinchilla Approach 3: fit L(N, D) = E + A/N^alpha + B/D^beta by Huber regression on log-loss.

Objective (Hoffmann et al. 2022; Epoch's replication): sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e)
- log L_i) with delta = 1e-3, A = e^a, B = e^b, E = e^e, minimised by L-BFGS from each of the 4,500 grid starts; the
best is kept. The sum (not the mean) matters: a mean-scaled objective trips the stopping rules early.

The optimisation vector is (alpha, beta, e, a, b). All starts run in float32 as one batch (lbfgs.minimize_many, with
L-BFGS-B's stopping rules); the 32 best distinct end points are then continued in float64 until no step makes
progress, because float32 cannot resolve the objective's last relative 1e-6 and the valley along (a, alpha) is flat.
A start whose objective is not finite is dropped and counted. Bootstrap resamples reuse the batched optimiser with
multinomial counts as per-run weights.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.laws.law import ChinchillaLaw
from jaxscale.laws.lbfgs import compile_ahead, minimize_many

HUBER_DELTA = 1e-3
GRID_ALPHA = GRID_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_A = GRID_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
POLISHED_CANDIDATES = 32
BOOTSTRAP_STARTS = 1  # each resample starts from the full-data optimum
_TO_CONVERGENCE = dict(ftol=0.0, gtol=0.0, max_evals=3000)  # stop only when no step makes progress
_ROW_PAD = 64  # pad runs to a multiple of this (weight 0) so tables of similar size share one compilation


def start_grid() -> np.ndarray:
    """The published 4,500 starts, rows of (alpha, beta, e, a, b)."""
    return np.array(list(itertools.product(GRID_ALPHA, GRID_BETA, GRID_E, GRID_A, GRID_B)), float)


@dataclass(frozen=True)
class HuberLogLoss:
    """Batched objective and exact gradient: x (S,5), weights (S,n), data = (log N, log D, log L) each (n,)."""

    delta: float = HUBER_DELTA

    def __call__(self, x, weights, data):
        log_n, log_d, log_l = data
        alpha, beta, e, a, b = (x[:, i : i + 1] for i in range(5))
        t_n, t_d = a - alpha * log_n, b - beta * log_d
        t_e = jnp.broadcast_to(e, t_n.shape)
        top = jnp.maximum(jnp.maximum(t_n, t_d), t_e)
        x_n, x_d, x_e = jnp.exp(t_n - top), jnp.exp(t_d - top), jnp.exp(t_e - top)
        total = x_n + x_d + x_e
        r = top + jnp.log(total) - log_l
        abs_r = jnp.abs(r)
        huber = jnp.where(abs_r <= self.delta, 0.5 * r * r, self.delta * (abs_r - 0.5 * self.delta))
        dr = weights * jnp.clip(r, -self.delta, self.delta) / total
        g_n, g_d = dr * x_n, dr * x_d
        grad = jnp.stack(
            [-(g_n * log_n).sum(1), -(g_d * log_d).sum(1), (dr * x_e).sum(1), g_n.sum(1), g_d.sum(1)], axis=1
        )
        return (weights * huber).sum(1), grad


def huber_objective_np(x, params, tokens, loss, delta: float = HUBER_DELTA) -> float:
    """The objective in float64 numpy, for reporting and for checks."""
    alpha, beta, e, a, b = np.asarray(x, float)
    terms = np.stack([a - alpha * np.log(params), b - beta * np.log(tokens), np.full(len(params), e)])
    top = terms.max(0)
    r = top + np.log(np.exp(terms - top).sum(0)) - np.log(loss)
    return float(np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum())


@dataclass(frozen=True)
class ChinchillaFit:
    law: ChinchillaLaw
    objective: float
    n_runs: int
    n_starts: int
    n_diverged: int
    ci: dict[str, tuple[float, float]] | None = None
    confidence: float = 0.95
    n_resamples: int = 0
    minima: np.ndarray = field(default=None, repr=False, compare=False)  # distinct end points, best first

    @property
    def a(self) -> float:
        return self.law.a

    @property
    def b(self) -> float:
        return self.law.b

    def as_dict(self) -> dict:
        out = {**self.law.as_dict(), "objective": self.objective, "a": self.a, "b": self.b}
        if self.ci is not None:
            out["ci"] = {k: list(v) for k, v in self.ci.items()}
        return out


def select_runs(params, tokens, loss, *, drop_highest: int = 0, max_tokens_per_param: float | None = None):
    """The runs a fit uses: finite positive rows under the tokens-per-parameter cut-off (if any), minus the k with the
    highest loss among those."""
    params, tokens, loss = (np.asarray(v, float) for v in (params, tokens, loss))
    keep = np.isfinite(params) & np.isfinite(tokens) & np.isfinite(loss) & (params > 0) & (tokens > 0) & (loss > 0)
    if max_tokens_per_param is not None:
        keep &= tokens / np.where(params > 0, params, 1.0) <= max_tokens_per_param
    index = np.flatnonzero(keep)
    if drop_highest:
        index = index[np.argsort(loss[index], kind="stable")[: max(len(index) - drop_highest, 0)]]
        index.sort()
    return params[index], tokens[index], loss[index]


def _padded_data(params, tokens, loss):
    n = len(params)
    size = -(-n // _ROW_PAD) * _ROW_PAD
    pad = lambda v: np.concatenate([v, np.zeros(size - n)])
    return (pad(np.log(params)), pad(np.log(tokens)), pad(np.log(loss))), size


def _run(x0, weights, data, objective, *, float64: bool, **options):
    dtype = np.float64 if float64 else np.float32
    with jax.enable_x64(float64):
        return minimize_many(objective, x0, weights, data, dtype=dtype, **options)


def _compile_float64(objective, data, size):
    with jax.enable_x64(True):
        compile_ahead(objective, data, size, n_params=5, dtype=np.float64)


def _distinct(points: np.ndarray, values: np.ndarray, limit: int) -> np.ndarray:
    """Up to `limit` finite end points, best first, skipping any within 1e-3 (max-norm) of one already chosen."""
    chosen: list[np.ndarray] = []
    for i in np.argsort(values):
        if not np.isfinite(values[i]):
            break
        if all(np.max(np.abs(points[i] - c)) > 1e-3 for c in chosen):
            chosen.append(points[i])
        if len(chosen) == limit:
            break
    return np.array(chosen)


def _law(x) -> ChinchillaLaw:
    alpha, beta, e, a, b = (float(v) for v in x)
    return ChinchillaLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha, beta=beta)


def fit_chinchilla(
    params,
    tokens,
    loss,
    *,
    drop_highest: int = 0,
    max_tokens_per_param: float | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    delta: float = HUBER_DELTA,
    starts: np.ndarray | None = None,
) -> ChinchillaFit:
    """Approach-3 fit over the start grid; with bootstrap > 0, percentile intervals over resampled runs."""
    params, tokens, loss = select_runs(
        params, tokens, loss, drop_highest=drop_highest, max_tokens_per_param=max_tokens_per_param
    )
    if len(params) < 5:
        raise ValueError(f"a Chinchilla fit needs at least 5 runs; {len(params)} remain after filtering")
    x0 = start_grid() if starts is None else np.asarray(starts, float)
    objective = HuberLogLoss(delta)
    data, size = _padded_data(params, tokens, loss)
    ones = np.zeros((1, size))
    ones[0, : len(params)] = 1.0
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Compile the float64 refinement while the float32 grid runs: it hides most of a second compilation.
        ahead = pool.submit(_compile_float64, objective, data, size)
        coarse = _run(x0, np.broadcast_to(ones, (len(x0), size)), data, objective, float64=False)
        ahead.result()
    finite = np.isfinite(coarse.f)
    if not finite.any():
        raise ValueError("every start diverged; check that losses, parameters and tokens are positive and finite")

    candidates = _distinct(coarse.x, coarse.f, POLISHED_CANDIDATES)
    fine = _run(
        candidates,
        np.broadcast_to(ones, (len(candidates), size)),
        data,
        objective,
        float64=True,
        **_TO_CONVERGENCE,
    )
    exact = np.array([huber_objective_np(x, params, tokens, loss, delta) for x in fine.x])
    exact[~np.isfinite(fine.f)] = np.inf
    order = np.argsort(exact)
    if not np.isfinite(exact[order[0]]):
        raise ValueError("the float64 refinement diverged from every candidate")
    best = fine.x[order[0]]
    minima = _distinct(fine.x, exact, BOOTSTRAP_STARTS)
    fit = ChinchillaFit(
        law=_law(best),
        objective=float(exact[order[0]]),
        n_runs=len(params),
        n_starts=len(x0),
        n_diverged=int((~finite).sum()),
        confidence=confidence,
        minima=minima,
    )
    if bootstrap <= 0:
        return fit
    ci = bootstrap_intervals(params, tokens, loss, fit, n_resamples=bootstrap, seed=seed, confidence=confidence,
                             delta=delta)  # fmt: skip
    return replace(fit, ci=ci, n_resamples=bootstrap)


def bootstrap_intervals(
    params, tokens, loss, fit: ChinchillaFit, *, n_resamples: int = 4000, seed: int = 0, confidence: float = 0.95,
    delta: float = HUBER_DELTA,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals from refits on resampled runs (the runs `fit` used), each started at fit's optimum.

    A resample is a multinomial count per run, used as weights in the summed objective. The refits run in float64
    without an early stop: along the flat (a, alpha) valley a float32 or loosely stopped refit barely leaves its
    start, which shrinks the intervals to nothing.
    """  # fmt: skip
    data, size = _padded_data(params, tokens, loss)
    n_runs = len(params)
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_resamples, size))
    weights[:, :n_runs] = rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=n_resamples)
    k = len(fit.minima)
    result = _run(np.tile(fit.minima, (n_resamples, 1)), np.repeat(weights, k, axis=0), data, HuberLogLoss(delta),
                  float64=True, **_TO_CONVERGENCE)  # fmt: skip
    f = np.where(np.isfinite(result.f), result.f, np.inf).reshape(n_resamples, k)
    x = result.x.reshape(n_resamples, k, -1)[np.arange(n_resamples), np.argmin(f, axis=1)]
    alpha, beta, e, a, b = x[np.isfinite(f).any(1)].T
    samples = {
        "E": np.exp(e),
        "A": np.exp(a),
        "B": np.exp(b),
        "alpha": alpha,
        "beta": beta,
        "a": beta / (alpha + beta),
        "b": alpha / (alpha + beta),
    }
    tail = 100 * (1 - confidence) / 2
    return {k: tuple(float(q) for q in np.percentile(v, [tail, 100 - tail])) for k, v in samples.items()}
