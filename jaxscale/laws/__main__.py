"""python -m jaxscale.laws {fit,optimal,cost}: Chinchilla fits and inference-aware optima from the command line."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from jaxscale.laws.inference import (
    GPU_PEAK_FLOPS,
    CostModel,
    Hardware,
    InferenceDemand,
    chinchilla_style,
    chinchilla_style_cost,
    cost_optimal,
    inference_optimal,
)
from jaxscale.laws.law import HOFFMANN, ChinchillaLaw
from jaxscale.laws.table import InputError, numbers, ok_rows, read_csv, require_columns

ALL_DTYPES = sorted({dtype for dtypes in GPU_PEAK_FLOPS.values() for dtype in dtypes})


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _law_arguments(parser):
    for name in ("E", "A", "B", "alpha", "beta"):
        default = getattr(HOFFMANN, name)
        parser.add_argument(f"--{name}", type=float, default=default, help=f"law constant (default {default})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m jaxscale.laws", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    fit = commands.add_parser("fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla Approach 3)")
    fit.add_argument("csv", help="a table with a row per run, or a sweep directory (its results.csv, whose columns "
                     "the defaults name)")
    fit.add_argument("--params-col", default="n_params",
                     help="column with the parameter count N (default n_params); several, comma-separated (e.g. "
                          "n_params,n_params_nonembed), fit once per count and show the exponents side by side")
    source = fit.add_mutually_exclusive_group()
    source.add_argument("--tokens-col", help="column with the training tokens D (default tokens)")
    source.add_argument("--flops-col", help="column with training FLOPs C instead; D = C / (6N)")
    fit.add_argument("--loss-col", default="eval_loss", help="column with the final loss (nats per token; default "
                     "eval_loss). Where the table has a status column, only its \"ok\" rows are fitted")
    fit.add_argument("--drop-highest", type=int, default=0, metavar="K", help="drop the K highest-loss runs")
    fit.add_argument("--max-tokens-per-param", type=float, metavar="R", help="fit only runs with D/N <= R")
    fit.add_argument("--bootstrap", type=int, default=0, metavar="R", help="bootstrap resamples for intervals")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    fit.add_argument("--json", action="store_true", help="print JSON instead of a table")

    optimal = commands.add_parser("optimal", help="least lifetime compute for a loss and an inference demand; or, "
                                  "with --sweep, least FLOPs, time or energy on the hardware the sweep ran on")
    optimal.add_argument("--loss", type=float, required=True, help="target loss")
    optimal.add_argument("--inference-tokens", type=float, help="lifetime inference tokens (without --sweep)")
    optimal.add_argument("--sweep", help="a sweep directory: its law and measured cost per token")
    optimal.add_argument("--objective", default="flops", choices=("flops", "time", "energy"),
                         help="with --sweep: what to minimise (default flops)")
    _law_arguments(optimal)

    cost = commands.add_parser("cost", help="least lifetime dollar cost for a loss and an inference demand")
    cost.add_argument("--loss", type=float, required=True, help="target loss")
    cost.add_argument("--requests", type=float, required=True, help="lifetime inference requests")
    cost.add_argument("--input-tokens", type=float, required=True, help="input (prefill) tokens per request")
    cost.add_argument("--output-tokens", type=float, required=True, help="output (decode) tokens per request")
    for stage in ("train", "inference"):
        cost.add_argument(f"--{stage}-gpu", required=True, choices=sorted(GPU_PEAK_FLOPS))
        cost.add_argument(f"--{stage}-dtype", required=True, choices=ALL_DTYPES)
        cost.add_argument(f"--{stage}-dollars-per-hour", type=float, required=True, metavar="X")
    for stage in ("train", "prefill", "decode"):
        cost.add_argument(f"--{stage}-mfu", type=float, required=True, metavar="U", help="model FLOPs utilisation")
    _law_arguments(cost)
    return parser


def _law(args) -> ChinchillaLaw:
    """The law of --E --A --B --alpha --beta, checked, and --loss checked against it."""
    for name in ("E", "A", "B", "alpha", "beta"):
        value, positive = getattr(args, name), name != "E"
        if not ((0 < value) if positive else (0 <= value)) or not value < math.inf:
            raise InputError(f"--{name}: {value} is not a finite number {'> 0' if positive else '>= 0'}")
    law = ChinchillaLaw(E=args.E, A=args.A, B=args.B, alpha=args.alpha, beta=args.beta)
    if not args.loss < math.inf:
        raise InputError(f"--loss: {args.loss} is not a finite number")
    params, tokens = law.chinchilla_for_loss(args.loss)  # raises for a loss at or below E
    if not (params >= 1 and tokens >= 1):
        raise InputError(f"--loss: the law reaches {args.loss} with less than one parameter or token "
                         f"(N = {params:.3g}, D = {tokens:.3g}); give a loss closer to E = {law.E}")
    return law


def run_fit(args) -> dict:
    """One fit; with several --params-col, {"conventions": {column: fit}} (the same runs, N counted each way)."""
    if Path(args.csv).is_dir():  # a sweep directory: its results.csv
        args.csv = str(Path(args.csv) / "results.csv")
    columns, rows = read_csv(args.csv)
    counts = [c.strip() for c in args.params_col.split(",") if c.strip()]
    if not counts:
        raise InputError(f"--params-col {args.params_col!r}: names no column (e.g. n_params, or "
                         "n_params,n_params_nonembed)")
    if len(counts) == 1:
        return _run_fit(args, columns, rows, counts[0])
    return {"conventions": {column: _run_fit(args, columns, rows, column) for column in counts}}


def _run_fit(args, columns: list[str], rows: list[dict[str, str]], params_col: str) -> dict:
    from jaxscale.laws.chinchilla import fit_chinchilla

    tokens_col = args.tokens_col or (None if args.flops_col else "tokens")
    require_columns(args.csv, columns, [params_col, tokens_col or args.flops_col, args.loss_col])
    not_ok = 0
    if "status" in columns:  # a sweep's results.csv: failed runs have no final loss
        ok = ok_rows(rows)
        rows, not_ok = ok, len(rows) - len(ok)
    params = numbers(args.csv, rows, params_col, positive=True)
    if tokens_col:
        tokens = numbers(args.csv, rows, tokens_col, positive=True)
    else:
        tokens = numbers(args.csv, rows, args.flops_col, positive=True) / (6.0 * params)
    loss = numbers(args.csv, rows, args.loss_col, positive=True)
    if args.drop_highest < 0 or args.bootstrap < 0:
        raise InputError("--drop-highest and --bootstrap must be >= 0")
    try:
        fit = fit_chinchilla(
            params,
            tokens,
            loss,
            drop_highest=args.drop_highest,
            max_tokens_per_param=args.max_tokens_per_param,
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
    except ValueError as error:
        raise InputError(f"{args.csv}: {error}") from None
    if not args.json:
        left_out = f" ({not_ok} with a status other than ok left out)" if not_ok else ""
        print(f"Chinchilla Approach-3 fit, N = {params_col}: {fit.n_runs} runs of {args.csv}{left_out}, "
              f"{fit.n_starts} starts ({fit.n_diverged} diverged, dropped)")
    return {**fit.as_dict(), **_fit_warnings(fit, params, tokens)}


def _fit_warnings(fit, params, tokens) -> dict:
    """{"warnings": [...]} where the runs cannot pin the fit (see jaxscale.laws.pinning); {} where they can."""
    from jaxscale.laws.pinning import interval_warning, range_warning

    flops = float(np.max(6.0 * params * tokens))
    optimum = fit.law.compute_optimal(flops)
    warnings = [interval_warning(fit.ci),
                range_warning(f"The compute-optimal model at the table's largest compute (C = {flops:.3g})",
                              *optimum, params, tokens)]
    warnings = [w for w in warnings if w]
    return {"warnings": warnings} if warnings else {}


def run_optimal(args) -> dict:
    if args.sweep:
        from jaxscale.laws.hardware import sweep_optimum

        return sweep_optimum(args.sweep, args.objective, args.loss)
    if args.inference_tokens is None:
        raise InputError("--inference-tokens is required (or give --sweep DIR)")
    if not 0 <= args.inference_tokens < math.inf:
        raise InputError(f"--inference-tokens: {args.inference_tokens} is not a finite number >= 0")
    law = _law(args)
    return {
        "optimal": inference_optimal(law, args.loss, args.inference_tokens).as_dict(),
        "chinchilla": chinchilla_style(law, args.loss, args.inference_tokens).as_dict(),
    }


def run_cost(args) -> dict:
    law = _law(args)
    prices = CostModel(
        Hardware(args.train_gpu, args.train_dtype, args.train_dollars_per_hour),
        Hardware(args.inference_gpu, args.inference_dtype, args.inference_dollars_per_hour),
        args.train_mfu,
        args.prefill_mfu,
        args.decode_mfu,
    )
    demand = InferenceDemand(args.requests, args.input_tokens, args.output_tokens)
    return {
        "optimal": cost_optimal(law, args.loss, demand, prices).as_dict(),
        "chinchilla": chinchilla_style_cost(law, args.loss, demand, prices).as_dict(),
    }


def format_fit(result: dict) -> str:
    if "conventions" in result:
        fits = result["conventions"]
        lines = [f"{'':10}" + "".join(f"{'N = ' + column:>24}" for column in fits)]
        lines += [f"{key:10}" + "".join(f"{fit[key]:24.5g}" for fit in fits.values())
                  for key in ("E", "A", "B", "alpha", "beta", "a", "b")]
        lines += [f"warning (N = {column}): {w}" for column, fit in fits.items() for w in fit.get("warnings", [])]
        return "\n".join(lines)
    ci = result.get("ci")
    lines = [f"{'':10}{'value':>14}" + (f"{'95% interval':>30}" if ci else "")]
    for key in ("E", "A", "B", "alpha", "beta", "a", "b"):
        line = f"{key:10}{result[key]:14.5g}"
        if ci:
            line += f"{'[' + format(ci[key][0], '.5g') + ', ' + format(ci[key][1], '.5g') + ']':>30}"
        lines.append(line)
    lines.append(f"{'objective':10}{result['objective']:14.6e}  (summed Huber, delta 1e-3)")
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)


def format_sweep_optimum(result: dict) -> str:
    keys = [k for k in ("params", "tokens", "flops", "time", "energy") if k in result["optimal"]]
    header = {"params": "N", "tokens": "D", "flops": "FLOPs", "time": "seconds", "energy": "joules"}
    per_token = ", ".join(f"{name} {c['coefficient']:.3g}·N^{c['exponent']:.3f}" for name, c in result["per_token"].items())
    lines = [f"loss {result['loss']:g}, least {result['objective']} on the sweep's hardware (per token: {per_token})",
             f"{'':14}" + "".join(f"{header[k]:>14}" for k in keys)]
    for name in ("optimal", "flop_optimal"):
        lines.append(f"{name:14}" + "".join(f"{result[name][k]:14.4g}" for k in keys))
    return "\n".join(lines + [f"warning: {w}" for w in result.get("warnings", [])])


def format_comparison(result: dict) -> str:
    if "flop_optimal" in result:
        return format_sweep_optimum(result)
    keys = [k for k in ("params", "train_tokens", "total_flops", "total_cost") if k in result["optimal"]]
    header = {"params": "params", "train_tokens": "train tokens", "total_flops": "total FLOPs", "total_cost": "total $"}
    lines = [f"{'':12}" + "".join(f"{header[k]:>15}" for k in keys)]
    for name in ("optimal", "chinchilla"):
        lines.append(f"{name:12}" + "".join(f"{result[name][k]:15.4g}" for k in keys))
    ratios = ", ".join(f"{header[k]} {100 * result['optimal'][k] / result['chinchilla'][k]:.1f}%" for k in keys)
    lines.append(f"optimal as a share of the Chinchilla-style model of equal loss: {ratios}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fit":
            result, text = run_fit(args), format_fit
        elif args.command == "optimal":
            result, text = run_optimal(args), format_comparison
        else:
            result, text = run_cost(args), format_comparison
    except (InputError, ValueError) as error:
        print(f"python -m jaxscale.laws {args.command}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else text(result))
    return 0


if __name__ == "__main__":
    from jaxscale import runtime

    runtime.start()
    sys.exit(main())
