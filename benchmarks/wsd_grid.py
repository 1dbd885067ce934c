"""Compare a cosine grid with its trunk-and-cooldown (WSD, sweep.branch) twin: tokens trained, wall time, each
run's held-out loss, and the frontier exponents a, b with bootstrap intervals from each grid.

    python benchmarks/wsd_grid.py COSINE_SWEEP WSD_SWEEP [--cosine-wall S --wsd-wall S] [--out FILE.md]

Both sweeps must be finished (results.csv with every run). Prints a last JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jaxscale.analyze import load_runs  # noqa: E402
from jaxscale.laws.frontier import compute_optimal_points, fit_power_law  # noqa: E402
from jaxscale.laws.table import read_csv  # noqa: E402


CONVENTIONS = {"with embeddings": "n_params", "without embeddings": "n_params_nonembed"}  # N; compute 6ND


def cells(runs, params_column: str):
    """{(model, tokens): (params, loss)}"""
    return {(m, float(t)): (float(n), float(loss))
            for m, t, n, loss in zip(runs.model, runs.tokens, runs.values[params_column], runs.loss)}


def exponents(table: dict, bootstrap: int, seed: int = 0):
    """(a, b) of the compute-optimal points, their 95% percentile intervals over resampled cells, the resamples used."""
    keys = sorted(table)

    def fit(sample):
        params = np.array([table[k][0] for k in sample])
        tokens = np.array([k[1] for k in sample])
        loss = np.array([table[k][1] for k in sample])
        optimal = compute_optimal_points(6 * params * tokens, params, loss)
        if len(optimal.flops) < 3 or np.ptp(optimal.params) == 0:
            return np.nan, np.nan
        return (fit_power_law(optimal.flops, optimal.params).exponent,
                fit_power_law(optimal.flops, optimal.tokens).exponent)

    point = fit(keys)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        # cells drawn with replacement; a repeated cell adds nothing to an envelope, so duplicates drop out
        sample = [keys[i] for i in rng.integers(0, len(keys), len(keys))]
        draws.append(fit(sorted(set(sample))))
    draws = np.array(draws, float)
    ok = np.isfinite(draws).all(axis=1)
    intervals = [tuple(np.percentile(draws[ok, j], [2.5, 97.5])) for j in range(2)]
    return point, intervals, int(ok.sum())


def summary(fit) -> dict:
    (a, b), (a_ci, b_ci), resamples = fit
    return {"a": float(a), "b": float(b), "a_ci": [float(x) for x in a_ci], "b_ci": [float(x) for x in b_ci],
            "resamples": resamples}


def inside(fits) -> dict:
    """Whether WSD's point estimates of a and b fall inside cosine's bootstrap intervals."""
    return {k: bool(fits["cosine"][1][i][0] <= fits["wsd"][0][i] <= fits["cosine"][1][i][1]) for i, k in enumerate("ab")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cosine", type=Path)
    parser.add_argument("wsd", type=Path)
    parser.add_argument("--cosine-wall", type=float, help="measured wall time of the cosine sweep (s)")
    parser.add_argument("--wsd-wall", type=float, help="measured wall time of the WSD sweep (s)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    grids = {"cosine": load_runs(args.cosine), "wsd": load_runs(args.wsd)}
    trained = {}
    for name, path in (("cosine", args.cosine), ("wsd", args.wsd)):
        columns, rows = read_csv(path / "results.csv")
        column = "compute_tokens" if "compute_tokens" in columns and all(r["compute_tokens"] for r in rows) else "tokens"
        trained[name] = sum(float(r[column]) for r in rows)
    by_convention = {label: {name: cells(runs, column) for name, runs in grids.items()}
                     for label, column in CONVENTIONS.items()}
    tables = by_convention["with embeddings"]  # the headline: N as results.csv's n_params counts it
    shared = sorted(set(tables["cosine"]) & set(tables["wsd"]))
    diffs = np.array([tables["wsd"][k][1] - tables["cosine"][k][1] for k in shared])
    fits_by_convention = {label: {name: exponents(table, args.bootstrap) for name, table in ts.items()}
                          for label, ts in by_convention.items()}
    fits = fits_by_convention["with embeddings"]
    walls = {"cosine": args.cosine_wall, "wsd": args.wsd_wall}
    result = {
        "runs": len(shared), "tokens_trained": trained, "tokens_saved": 1 - trained["wsd"] / trained["cosine"],
        "wall_s": walls, "loss_diff_mean": float(diffs.mean()), "loss_diff_abs_max": float(np.abs(diffs).max()),
        "loss_diff_sd": float(diffs.std(ddof=1)),
        "exponents": {name: summary(f) for name, f in fits.items()},
    }
    result["conventions"] = {label: {name: summary(f) for name, f in fs.items()} | {"wsd_inside": inside(fs)}
                             for label, fs in fits_by_convention.items()}
    result["wsd_inside_cosine_intervals"] = inside(fits)
    if args.out:
        args.out.write_text(report(result, shared, tables, diffs))
    print(json.dumps(result))
    return 0


def report(r: dict, shared, tables, diffs) -> str:
    fmt = lambda x: "not measured" if x is None else f"{x / 60:.1f} min"  # noqa: E731
    e = r["exponents"]
    lines = [
        f"| | cosine grid | WSD trunks + cooldowns |", "|---|---|---|",
        f"| tokens trained | {r['tokens_trained']['cosine']:,.0f} | {r['tokens_trained']['wsd']:,.0f} "
        f"({100 * r['tokens_saved']:.1f}% fewer) |",
        f"| wall time | {fmt(r['wall_s']['cosine'])} | {fmt(r['wall_s']['wsd'])} |",
        f"| a (N_opt ∝ C^a) | {e['cosine']['a']:.3f} [{e['cosine']['a_ci'][0]:.3f}, {e['cosine']['a_ci'][1]:.3f}] | "
        f"{e['wsd']['a']:.3f} [{e['wsd']['a_ci'][0]:.3f}, {e['wsd']['a_ci'][1]:.3f}] |",
        f"| b (D_opt ∝ C^b) | {e['cosine']['b']:.3f} [{e['cosine']['b_ci'][0]:.3f}, {e['cosine']['b_ci'][1]:.3f}] | "
        f"{e['wsd']['b']:.3f} [{e['wsd']['b_ci'][0]:.3f}, {e['wsd']['b_ci'][1]:.3f}] |",
        "",
        f"Held-out loss, WSD minus cosine, over the {r['runs']} runs: mean {r['loss_diff_mean']:+.4f}, sd "
        f"{r['loss_diff_sd']:.4f}, largest |difference| {r['loss_diff_abs_max']:.4f} nats.",
        f"WSD's a inside cosine's interval: {r['wsd_inside_cosine_intervals']['a']}; "
        f"b: {r['wsd_inside_cosine_intervals']['b']}.",
        "", "The same exponents with N counted with and without embeddings (compute 6ND either way):", "",
        "| N counted | grid | a [95%] | b [95%] | WSD inside cosine's (a, b) |", "|---|---|---|---|---|",
    ]
    for label, c in r["conventions"].items():
        for name in ("cosine", "wsd"):
            x = c[name]
            lines.append(f"| {label} | {name} | {x['a']:.3f} [{x['a_ci'][0]:.3f}, {x['a_ci'][1]:.3f}] | "
                         f"{x['b']:.3f} [{x['b_ci'][0]:.3f}, {x['b_ci'][1]:.3f}] | "
                         + (f"{c['wsd_inside']['a']}, {c['wsd_inside']['b']}" if name == "wsd" else "") + " |")
    lines += [
        "", "| model | tokens | cosine | WSD | difference |", "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {m} | {t:,.0f} | {tables['cosine'][(m, t)][1]:.4f} | {tables['wsd'][(m, t)][1]:.4f} | {d:+.4f} |"
              for (m, t), d in zip(shared, diffs)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
