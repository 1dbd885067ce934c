"""Benchmark: the 4,500-start Chinchilla fit on a 250-run table, and 4,000 bootstrap resamples.

Targets (issue 6, on the 2-core development machine): fit under 5 s, bootstrap under 60 s. Each phase is timed cold
(first call in a fresh process, JAX compilation included; the persistent compilation cache is off) and warm.
Writes benchmarks/results/laws_fit.md. Optional --scipy times scipy's L-BFGS-B over the same starts for scale.

    .venv/bin/python benchmarks/laws_fit.py [--scipy]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

# scipy's L-BFGS-B makes tiny BLAS calls; threaded OpenBLAS spins on them and multiplies the reference's CPU time.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "laws_fit.md"
SHARED_TABLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "scaling-laws"
CHINCHILLA_TABLE = SHARED_TABLES / "chinchilla-figure4-extracted.csv"
# Epoch AI's replication of Chinchilla's Approach 3, used to draw a realistic 250-run table.
REPLICATION = dict(E=1.82, A=482.0, B=2085.0, alpha=0.348, beta=0.366)


def synthetic_table(runs=250, seed=0):
    from jaxscale.laws.law import ChinchillaLaw

    rng = np.random.default_rng(seed)
    params = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), runs))
    tokens = params * np.exp(rng.uniform(np.log(2.0), np.log(2000.0), runs))
    loss = ChinchillaLaw(**REPLICATION).loss(params, tokens) * np.exp(rng.normal(0, 0.01, runs))
    return params, tokens, loss


def chinchilla_table():
    """Chinchilla's Figure 4 runs (N, D = C / 6N, loss), 5 highest losses dropped as in Epoch's replication."""
    import csv

    from jaxscale.laws.chinchilla import select_runs

    with CHINCHILLA_TABLE.open() as handle:
        rows = list(csv.DictReader(handle))
    params = np.array([float(r["Model Size"]) for r in rows])
    tokens = np.array([float(r["Training FLOP"]) for r in rows]) / (6 * params)
    return select_runs(params, tokens, np.array([float(r["loss"]) for r in rows]), drop_highest=5)


class Timing:
    def __init__(self, wall: float, cpu: float):
        self.wall, self.cpu = wall, cpu

    def __lt__(self, other):
        return self.wall < other.wall

    def __str__(self):
        return f"{self.wall:.2f} s ({self.cpu:.2f} s CPU)"


def timed(function, *args, **kwargs):
    """(Timing, result): wall-clock and this process's CPU time, which on a busy shared machine is the better guide
    to the wall time an idle one would give."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), result


def scipy_seconds(params, tokens, loss):
    from scipy.optimize import minimize

    from jaxscale.laws.chinchilla import start_grid

    log_n, log_d, log_l = np.log(params), np.log(tokens), np.log(loss)

    def objective(x):
        alpha, beta, e, a, b = x
        terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
        top = terms.max(0)
        w = np.exp(terms - top)
        total = w.sum(0)
        r = top + np.log(total) - log_l
        value = np.where(np.abs(r) <= 1e-3, 0.5 * r * r, 1e-3 * (np.abs(r) - 5e-4)).sum()
        dr = np.clip(r, -1e-3, 1e-3) / total
        g_n, g_d = dr * w[0], dr * w[1]
        return value, np.array([-(g_n * log_n).sum(), -(g_d * log_d).sum(), (dr * w[2]).sum(), g_n.sum(), g_d.sum()])

    return timed(lambda: min(minimize(objective, x0, jac=True, method="L-BFGS-B").fun for x0 in start_grid()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scipy", action="store_true", help="also time scipy L-BFGS-B over the 4,500 starts")
    parser.add_argument("--resamples", type=int, default=4000)
    args = parser.parse_args()
    load_before = os.getloadavg()

    import jax

    from jaxscale.laws import bootstrap_intervals, fit_chinchilla

    params, tokens, loss = synthetic_table()
    fit_cold, fit = timed(fit_chinchilla, params, tokens, loss)
    fit_warm = min(timed(fit_chinchilla, params, tokens, loss)[0] for _ in range(3))
    boot_cold, ci = timed(bootstrap_intervals, params, tokens, loss, fit, n_resamples=args.resamples, seed=0)
    boot_warm, _ = timed(bootstrap_intervals, params, tokens, loss, fit, n_resamples=args.resamples, seed=1)
    scipy = scipy_seconds(params, tokens, loss) if args.scipy else None
    real = None
    if CHINCHILLA_TABLE.is_file():  # same padded size (256 rows) as the synthetic table: already compiled
        real_runs = chinchilla_table()
        real = min((timed(fit_chinchilla, *real_runs) for _ in range(2)), key=lambda pair: pair[0])
    load_after = os.getloadavg()

    law = fit.law
    lines = [
        "# Chinchilla fit benchmark (`benchmarks/laws_fit.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}; "
        f"load average {load_before[0]:.1f} before and {load_after[0]:.1f} after (the cores are shared).",
        f"Table: {len(params)} synthetic runs from Epoch's replication constants ({REPLICATION}), 1% noise.",
        "",
        "Times are wall clock with this process's CPU time in brackets; with other jobs on the two cores the CPU time "
        "is the better guide to an idle machine's wall time.",
        "",
        "| phase | cold (first call, compiles) | warm | target |",
        "|---|---|---|---|",
        f"| fit, 4,500 starts (float32 grid + float64 refinement of the best 32) | {fit_cold} | {fit_warm} | < 5 s |",
        f"| bootstrap, {args.resamples:,} resamples (float64, to convergence) | {boot_cold} | {boot_warm} | < 60 s |",
    ]
    if real:
        lines.append(f"| fit, 4,500 starts, Chinchilla Figure 4 ({real[1].n_runs} runs) | | {real[0]} | < 5 s |")
    if scipy:
        lines.append(f"| scipy L-BFGS-B, 4,500 starts, exact gradients (reference) | {scipy[0]} | | |")
    lines += [
        "",
        f"Fit: E {law.E:.4g}, A {law.A:.4g}, B {law.B:.4g}, alpha {law.alpha:.4f}, beta {law.beta:.4f}, "
        f"objective {fit.objective:.6e}" + (f" (scipy's best: {scipy[1]:.6e})" if scipy else "") + ".",
        "Bootstrap 95% intervals: " + ", ".join(f"{k} [{lo:.4g}, {hi:.4g}]" for k, (lo, hi) in ci.items()) + ".",
    ]
    if real:
        fit_real = real[1].law
        lines.append(f"Chinchilla Figure 4 fit: E {fit_real.E:.4g}, A {fit_real.A:.4g}, B {fit_real.B:.4g}, alpha "
                     f"{fit_real.alpha:.4f}, beta {fit_real.beta:.4f}, objective {real[1].objective:.10e}.")  # fmt: skip
    lines.append("")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
