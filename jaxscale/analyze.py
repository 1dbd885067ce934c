"""python -m jaxscale.analyze SWEEP_DIR: read SWEEP_DIR/results.csv, write SWEEP_DIR/report.md and plots/*.png.

Only rows with status "ok" are analysed. Sections that need more data than the sweep has are skipped with the reason
written in the report. Energy that was not measured stays "unavailable"; it is never read as zero.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxscale.files import write_atomic
from jaxscale.laws import efficiency, plots
from jaxscale.laws.chinchilla import fit_chinchilla
from jaxscale.laws.frontier import compute_optimal_points, envelope, fit_power_law, frontier_points, isoflop_optima
from jaxscale.laws.inference import chinchilla_style, inference_optimal
from jaxscale.laws.law import HOFFMANN, ChinchillaLaw
from jaxscale.laws.pinning import interval_warning, range_warning
from jaxscale.laws.stats import paired_tests, rm_anova
from jaxscale.laws.table import InputError, numbers, ok_rows, read_csv, require_columns

REQUIRED_COLUMNS = ["model", "n_params", "tokens", "flops", "status"]
NUMERIC_COLUMNS = [
    "n_params", "n_params_nonembed", "tokens", "flops", "train_loss", "eval_loss", "wall_s", "step_s_median",
    "tokens_per_s", "energy_j", "power_mean_w", "power_peak_w", "duration_s", "steps_energy_j", "steps_s",
    "eval_energy_j", "eval_s", "vocab_size", "flops_per_token_matmul", "compute_tokens",
]  # fmt: skip
MIN_RUNS_FOR_LAW_FIT = 8
UNAVAILABLE = "unavailable"
PLOTTED_PER_BUDGET = ("energy (kJ)", "duration", "loss", "energy-aware")  # metric names starting with these


@dataclass(frozen=True)
class Runs:
    """The "ok" rows of results.csv."""

    model: np.ndarray
    repetition: np.ndarray
    values: dict[str, np.ndarray]  # numeric columns (nan where empty or absent)
    energy_sources: list[str]
    loss_column: str
    n_failed: int  # status other than "ok"
    n_incomplete: int  # "ok" but without a positive N, D, C or loss

    @property
    def params(self):
        return self.values["n_params"]

    @property
    def tokens(self):
        return self.values["tokens"]

    @property
    def flops(self):
        return self.values["flops"]

    @property
    def loss(self):
        return self.values[self.loss_column]

    @property
    def trained_tokens(self):
        """The tokens each run's own steps trained (what its steps_s and steps_energy_j measured): a branched
        sweep's cooldown branch trains only `compute_tokens` of its budget."""
        own = self.values["compute_tokens"]
        return np.where(np.isfinite(own) & (own > 0), own, self.tokens)


def load_runs(sweep_dir: Path) -> Runs:
    path = Path(sweep_dir) / "results.csv"
    columns, rows = read_csv(path)
    require_columns(path, columns, REQUIRED_COLUMNS)
    if "eval_loss" not in columns and "train_loss" not in columns:
        raise InputError(f"{path}: no loss column; expected 'eval_loss' or 'train_loss'")
    ok = ok_rows(rows)
    values = {c: numbers(path, ok, c) if c in columns else np.full(len(ok), np.nan) for c in NUMERIC_COLUMNS}
    # held-out loss wherever a run has one (a run without it is then not analysed), else training loss
    loss_column = "eval_loss" if np.isfinite(values["eval_loss"]).any() else "train_loss"
    usable = np.ones(len(ok), bool)
    for column in ("n_params", "tokens", "flops", loss_column):
        usable &= np.isfinite(values[column]) & (values[column] > 0)
    ok = [row for row, keep in zip(ok, usable) if keep]
    return Runs(
        model=np.array([row["model"] for row in ok], dtype=object),
        repetition=np.array([(row.get("repetition") or "0").strip() for row in ok], dtype=object),
        values={c: v[usable] for c, v in values.items()},
        energy_sources=sorted({(row.get("energy_source") or "").strip() or UNAVAILABLE for row in ok}),
        loss_column=loss_column,
        n_failed=len(rows) - len(usable),
        n_incomplete=int((~usable).sum()),
    )


def _fmt(x, spec: str = ".4g") -> str:
    """A number; nan (not measured) reads "unavailable", an infinite statistic (no within-level spread) "∞"."""
    if x is None or np.isnan(x):
        return UNAVAILABLE
    return ("-∞" if x < 0 else "∞") if np.isinf(x) else format(x, spec)


def _interval(low, high) -> str:
    return f"[{_fmt(low)}, {_fmt(high)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _aggregate(runs: Runs) -> dict[str, np.ndarray]:
    """One cell per (model, tokens), smallest model first: mean loss over repetitions."""
    size = {m: runs.params[runs.model == m].min() for m in set(runs.model)}
    keys = sorted({(m, t) for m, t in zip(runs.model, runs.tokens)}, key=lambda k: (size[k[0]], str(k[0]), k[1]))
    cells = [(runs.model == m) & (runs.tokens == t) for m, t in keys]
    mean = lambda values: np.array([values[c].mean() for c in cells])
    return {
        "model": np.array([m for m, _ in keys], dtype=object),
        "params": mean(runs.params),
        "tokens": mean(runs.tokens),
        "flops": mean(runs.flops),
        "loss": mean(runs.loss),
        "loss_sd": np.array([runs.loss[c].std(ddof=1) if c.sum() > 1 else np.nan for c in cells]),
        "count": np.array([c.sum() for c in cells]),
    }


def summary_section(runs: Runs, sweep_dir: Path) -> list[str]:
    cells = _aggregate(runs)
    loss_note = " (held-out)." if runs.loss_column == "eval_loss" else " (training loss: eval_loss is missing)."
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(runs.model)} runs analysed; not analysed: {runs.n_failed} failed"
        + (f", {runs.n_incomplete} with status ok but no positive N, D, C or {runs.loss_column}. "
           if runs.n_incomplete else ". ")
        + f"Loss: `{runs.loss_column}` in nats per token{loss_note} "
        "N is `n_params` (all parameters, embeddings included), the count behind `flops` = 6·N·D.",
        f"Energy sources: {', '.join(runs.energy_sources)}.",
        "",
        "## Runs",
        "",
    ]
    rows = []
    for i in range(len(cells["model"])):
        sd = _fmt(cells["loss_sd"][i]) if cells["count"][i] > 1 else "—"
        rows.append([str(cells["model"][i])] + [f"{cells[k][i]:.4g}" for k in ("params", "tokens", "flops")]
                    + [_fmt(cells["loss"][i]), sd, str(cells["count"][i])])  # fmt: skip
    return lines + _table(["model", "N", "tokens D", "FLOPs C", "loss (mean)", "loss sd", "runs"], rows)


def frontier_section(runs: Runs, plots_dir: Path, law: ChinchillaLaw | None) -> list[str]:
    lines = ["## Compute frontier (loss vs compute)", ""]
    cells = _aggregate(runs)
    if len(cells["flops"]) < 2 or np.ptp(np.log(cells["flops"])) == 0:
        return lines + ["Skipped: the frontier needs runs at two or more compute levels.", ""]
    flops, params, tokens, loss = cells["flops"], cells["params"], cells["tokens"], cells["loss"]
    frontier = frontier_points(flops, params, tokens, loss)
    env = envelope(flops, params, loss)
    optimal = compute_optimal_points(flops, params, loss)
    fits = len(optimal.flops) >= 3 and np.ptp(optimal.params) > 0
    n_law, d_law, loss_law = (fit_power_law(optimal.flops, y) if fits else None
                              for y in (optimal.params, optimal.tokens, optimal.loss))  # fmt: skip
    curves = {}
    for name in dict.fromkeys(cells["model"]):  # smallest model first
        mine = np.flatnonzero(cells["model"] == name)
        mine = mine[np.argsort(flops[mine])]
        curves[str(name)] = (flops[mine], loss[mine])
    shown_law = law if _usable(law) else None
    plots.loss_vs_compute(plots_dir / "loss_vs_compute.png", curves, frontier, env, loss_law, shown_law)
    lines += [
        "![loss vs compute](plots/loss_vs_compute.png)",
        "",
        "Frontier runs have a lower loss than every cheaper run (losses are means over repetitions). The envelope "
        "interpolates each model's loss linearly in log compute; at each run's compute level covered by two or more "
        "models, the envelope's model gives N_opt and D_opt = C / (6·N_opt), the points the power laws are fitted to.",
        "",
    ]
    rows = [[str(cells["model"][i])] + [f"{cells[k][i]:.4g}" for k in ("params", "tokens", "flops", "loss")]
            for i in frontier.index]  # fmt: skip
    lines += _table(["model", "N", "D", "C", "loss"], rows)
    if not fits:
        return lines + [
            "Skipped the power laws N_opt ∝ C^a and D_opt ∝ C^b: they need 3 or more compute levels covered by two "
            f"or more models, and more than one winning model; this sweep has {len(optimal.flops)} such level(s) and "
            f"{len(np.unique(optimal.params))} winning model(s).",
            "",
        ]
    plots.compute_optimal_allocation(plots_dir / "compute_optimal_allocation.png", optimal, n_law, d_law)
    named = (("a (N_opt ∝ C^a)", n_law), ("b (D_opt ∝ C^b)", d_law), ("envelope loss ∝ C^k", loss_law))
    rows = [[name, f"{fit.exponent:.4f}", _interval(*fit.exponent_ci), f"{fit.coefficient:.4g}", f"{fit.r_squared:.3f}",
             str(fit.n_points)] for name, fit in named]  # fmt: skip
    lines += ["![compute-optimal allocation](plots/compute_optimal_allocation.png)", ""]
    lines += _table(["exponent", "value", "95% CI", "coefficient", "R²", "points"], rows)
    if edges := int(optimal.at_edge.sum()):
        lines += [f"{edges} of {len(optimal.flops)} compute levels are won by the smallest or largest model covering "
                  "them (as is every level only two models cover): the optimum there may lie outside the sizes "
                  "trained. The more such levels, the more a and b follow the grid's shape rather than the losses, "
                  "and the intervals (which treat the levels as independent points) are then too narrow.", ""]
    optima = isoflop_optima(flops, params, loss)
    if len(optima) >= 2:
        iso = fit_power_law([o.flops for o in optima], [o.params for o in optima])
        return lines + [f"IsoFLOP parabolas ({len(optima)} compute levels): a = {iso.exponent:.4f}, "
                        f"95% CI {_interval(*iso.exponent_ci)}.", ""]  # fmt: skip
    return lines + [
        f"IsoFLOP parabolas skipped: {len(optima)} compute level(s) have three or more model sizes within 0.1 decade "
        "of compute and a minimum inside the sampled sizes; the method needs two.",
        "",
    ]


def hardware_section(runs: Runs, law: ChinchillaLaw | None) -> list[str]:
    """The allocation reaching the sweep's best loss for the least time or energy on this hardware (see
    jaxscale.laws.hardware), beside the FLOP-optimal one."""
    from jaxscale.laws.hardware import cheapest, measured_costs

    lines = ["## Cheapest on this hardware: time and energy beside FLOPs", ""]
    if not _usable(law):
        return lines + ["Skipped: it needs a Chinchilla law fitted to this sweep.", ""]
    target = float(runs.loss.min())
    costs, why_not = measured_costs(runs)
    missing = [f"{name}: {err}" for name, err in why_not.items()]
    try:
        optima = {name: cheapest(law, target, cost) for name, cost in costs.items()}
    except ValueError as err:
        return lines + [f"Skipped: {err}.", ""]
    lines += [f"To reach loss {target:.4g} (the sweep's best), with the cost of a training token fitted across the "
              "models as c·N^k: " + ", ".join(f"{n} {c.coefficient:.3g}·N^{c.exponent:.3f}" for n, c in costs.items())
              + ".", ""]  # fmt: skip
    header = ["least", "N", "D"] + [f"{n} ({u})" for n, u in (("FLOPs", "FLOP"), ("time", "s"), ("energy", "J"))
                                    if n.lower() in costs]  # fmt: skip
    rows = [[name, f"{o.params:.4g}", f"{o.tokens:.4g}"] + [f"{float(c(o.params) * o.tokens):.4g}" for c in costs.values()]
            for name, o in optima.items()]  # fmt: skip
    lines += _table(header, rows)
    return lines + [f"Not available: {m}." for m in missing] + ([""] if missing else [])


def conventions_section(runs: Runs) -> list[str]:
    """The allocation exponents and the law's exponents under each way of counting N and C: at tiny scale the
    embeddings are most of N, and this choice alone moves the exponents (Pearce & Song 2024; Porian et al. 2024)."""
    lines = ["## Counting conventions: N with or without embeddings, C as 6ND or as matmul FLOPs", ""]
    v = runs.values
    if not (np.isfinite(v["n_params_nonembed"]).all() and np.isfinite(v["flops_per_token_matmul"]).all()):
        return lines + ["Skipped: these results have no `n_params_nonembed` or `flops_per_token_matmul` column.", ""]
    counts = {"all parameters": runs.params, "without embeddings": v["n_params_nonembed"]}
    rows = []
    for n_name, n in counts.items():
        for c_name, per_token in (("6ND", 6.0 * n), ("matmul FLOPs", v["flops_per_token_matmul"])):
            exponents = _allocation_exponents(runs, n, per_token)
            rows.append([n_name, c_name] + exponents)
    lines += _table(["N counts", "C counts", "a (N_opt ∝ C^a)", "b (D_opt ∝ C^b)"], rows)
    law_rows = []
    for n_name, n in counts.items():
        if len(np.unique(n)) < 2 or len(np.unique(runs.tokens)) < 2 or len(n) < MIN_RUNS_FOR_LAW_FIT:
            law_rows.append([n_name, "skipped", "", ""])
            continue
        law = fit_chinchilla(n, runs.tokens, runs.loss, bootstrap=0).law
        law_rows.append([n_name, f"{law.alpha:.4f}", f"{law.beta:.4f}", f"{law.beta / (law.alpha + law.beta):.4f}"])
    lines += ["Chinchilla law fitted with each parameter count (no bootstrap); its compute-optimal a = β/(α+β):", ""]
    return lines + _table(["N counts", "α", "β", "a from the law"], law_rows)


def _allocation_exponents(runs: Runs, n: np.ndarray, per_token: np.ndarray) -> list[str]:
    """[a, b] with 95% intervals from the compute-optimal points under one convention, or why not."""
    keys = sorted({(float(a), float(t)) for a, t in zip(n, runs.tokens)})
    cells = [(n == a) & (runs.tokens == t) for a, t in keys]
    params = np.array([a for a, _ in keys])
    per = np.array([per_token[c][0] for c in cells])
    flops = np.array([t for _, t in keys]) * per
    loss = np.array([runs.loss[c].mean() for c in cells])
    optimal = compute_optimal_points(flops, params, loss, per)
    if len(optimal.flops) < 3 or np.ptp(optimal.params) == 0:
        return ["too few compute levels", ""]
    return [f"{fit.exponent:.4f} {_interval(*fit.exponent_ci)}"
            for fit in (fit_power_law(optimal.flops, optimal.params), fit_power_law(optimal.flops, optimal.tokens))]


def chinchilla_section(runs: Runs, plots_dir: Path, bootstrap: int, seed: int):
    """(report lines, fitted law or None)."""
    lines = ["## Chinchilla law L(N, D) = E + A/N^α + B/D^β", ""]
    n_sizes, n_budgets = len(np.unique(runs.params)), len(np.unique(runs.tokens))
    if n_sizes < 2 or n_budgets < 2 or len(runs.params) < MIN_RUNS_FOR_LAW_FIT:
        return lines + [
            f"Skipped: fitting five constants needs at least 2 model sizes, 2 token budgets and "
            f"{MIN_RUNS_FOR_LAW_FIT} runs; this sweep has {n_sizes} size(s), {n_budgets} budget(s), "
            f"{len(runs.params)} run(s).",
            "",
        ], None
    fit = fit_chinchilla(runs.params, runs.tokens, runs.loss, bootstrap=bootstrap, seed=seed)
    plots.loss_vs_params_and_tokens(plots_dir / "loss_vs_params_and_tokens.png", runs.params, runs.tokens, runs.loss,
                                    fit.law)  # fmt: skip
    ci, values = fit.ci or {}, fit.as_dict()
    names = {"E": "E", "A": "A", "B": "B", "α": "alpha", "β": "beta", "a = β/(α+β)": "a", "b = α/(α+β)": "b"}
    rows = [[label, f"{values[key]:.5g}", _interval(*ci[key]) if key in ci else "—"] for label, key in names.items()]
    intervals = f"Intervals: {fit.n_resamples} bootstrap resamples of the runs, 95% percentile." if ci else ""
    lines += [
        f"Approach 3 (Huber δ = 1e-3 on log loss, L-BFGS from {fit.n_starts} starts, {fit.n_diverged} diverged) on "
        f"{fit.n_runs} runs; objective {fit.objective:.6g}. {intervals}",
        "",
    ]
    lines += _table(["constant", "fit", "95% CI"], rows)
    if warning := interval_warning(fit.ci):
        lines += [f"**Warning:** {warning}", ""]
    return lines + ["![loss vs N and D](plots/loss_vs_params_and_tokens.png)", ""], fit.law


def _usable(law: ChinchillaLaw | None) -> bool:
    return law is not None and min(law.alpha, law.beta) > 1e-3 and np.isfinite([law.E, law.A, law.B]).all()


def inference_section(runs: Runs, plots_dir: Path, law: ChinchillaLaw | None) -> list[str]:
    lines = ["## Inference-aware optimum vs inference demand", ""]
    source = "law fitted to this sweep"
    if not _usable(law):
        law, source = HOFFMANN, "Hoffmann et al. constants (no usable fit from this sweep)"
    target = float(law.loss(*law.compute_optimal(np.max(runs.flops))))
    chin_params, chin_tokens = law.chinchilla_for_loss(target)

    def versus_chinchilla(ratio):
        best = inference_optimal(law, target, ratio * chin_tokens)
        base = chinchilla_style(law, target, ratio * chin_tokens)
        shares = (best.params / base.params, best.train_tokens / base.train_tokens, best.total_flops / base.total_flops)
        return best, shares

    ratios = np.geomspace(1e-2, 1e3, 61)
    shares = np.array([versus_chinchilla(r)[1] for r in ratios])
    plots.inference_optimum(plots_dir / "inference_optimum.png", ratios, *shares.T, target, source)
    rows, optima = [], []
    for ratio in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0):
        best, (_, _, flops_share) = versus_chinchilla(ratio)
        optima.append((best.params, best.train_tokens))
        rows.append([f"{ratio:g}", f"{best.params:.4g}", f"{best.train_tokens:.4g}",
                     f"{best.train_tokens / best.params:.3g}", f"{100 * flops_share:.1f}%"])  # fmt: skip
    lines += [
        f"Target loss {target:.4g}: the loss of the compute-optimal model at this sweep's largest compute "
        f"({np.max(runs.flops):.3g} FLOPs), using the {source}. Chinchilla-style model of that loss: "
        f"N = {chin_params:.4g}, D = {chin_tokens:.4g}. Lifetime compute = 6·N·D_train + 2·N·D_inference.",
        "",
    ]
    header = ["inference tokens / D_chinchilla", "N", "D_train", "D/N", "lifetime FLOPs vs Chinchilla-style"]
    lines += _table(header, rows)
    params, tokens = np.array(optima).T
    if warning := range_warning("The inference-aware optimum", [params.min(), params.max()],
                                [tokens.min(), tokens.max()], runs.params, runs.tokens):
        lines += [f"**Warning:** {warning}", ""]
    return lines + ["![inference-aware optimum](plots/inference_optimum.png)", ""]


def measured_phase(runs: Runs, include_eval: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """(energy J, duration s, what they cover) per run: the training steps by default (compile, evaluation and
    start-up excluded: only a process's first run compiles), evaluation added on request. Results written before
    the steps had their own columns give the whole run, and say so."""
    v = runs.values
    if np.isfinite(v["steps_s"]).any():
        if include_eval:
            return (v["steps_energy_j"] + np.nan_to_num(v["eval_energy_j"]), v["steps_s"] + np.nan_to_num(v["eval_s"]),
                    "training steps and evaluation (compile excluded)")  # fmt: skip
        return v["steps_energy_j"], v["steps_s"], "training steps only (compile and evaluation excluded)"
    if np.isfinite(v["duration_s"]).any():
        return v["energy_j"], v["duration_s"], "whole runs, compile included (these results have no steps_s column)"
    return v["energy_j"], v["wall_s"], "whole runs (wall_s; no energy window recorded)"


def _metrics(runs: Runs, vocab_size, include_eval: bool = False) -> dict[str, np.ndarray]:
    loss = runs.loss
    joules, duration, _ = measured_phase(runs, include_eval)
    return {
        "energy (kJ)": np.where(joules > 0, joules / 1e3, np.nan),
        "duration (s)": duration,
        "mean power (W)": np.where(duration > 0, joules / duration, np.nan),
        "loss": loss,
        "perplexity": efficiency.perplexity(loss),
        "param. efficiency (1/ppl per M params)": efficiency.parameter_efficiency(loss, runs.params),
        "energy-aware param. efficiency (per kWh)":
            efficiency.energy_aware_parameter_efficiency(loss, runs.params, joules),
        "tokens per joule": efficiency.tokens_per_joule(runs.tokens, joules),
        "loss reduction per kWh (nats)": efficiency.loss_reduction_per_kwh(loss, joules, vocab_size),
    }


def _repeated_design(runs: Runs, model) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(budgets, row index per (repetition, budget), reason to skip or None) for one model."""
    mine = runs.model == model
    budgets = np.unique(runs.tokens[mine])
    shared = set.intersection(*(set(runs.repetition[mine & (runs.tokens == b)]) for b in budgets))
    if len(budgets) < 2 or len(shared) < 2:
        reason = f"has {len(budgets)} budget(s), {len(shared)} repetition(s) present at every budget"
        return budgets, np.empty((0, 0), int), reason
    subjects = sorted(shared, key=str)
    where = lambda s, b: np.flatnonzero(mine & (runs.tokens == b) & (runs.repetition == s))[0]
    return budgets, np.array([[where(s, b) for b in budgets] for s in subjects]), None


def _model_block(model, budgets, index, metrics, vocab_note: str, plots_dir: Path) -> list[str]:
    lines = [f"### {model}: {len(index)} repetitions × {len(budgets)} token budgets", "",
             f"Efficiency metrics use {vocab_note} for the uniform-predictor loss ln V; see the README "
             "for their definitions.", ""]  # fmt: skip
    summary, anova, pairs, panels = [], [], [], {}
    levels = [f"{b:.3g}" for b in budgets]
    for name, values in metrics.items():
        table = values[index]  # repetitions x budgets
        complete = np.isfinite(table).all()
        summary.append([name] + [f"{_fmt(c.mean())} ± {_fmt(c.std(ddof=1), '.2g')}" if np.isfinite(c).all()
                                 else UNAVAILABLE for c in table.T])  # fmt: skip
        if complete:
            result = rm_anova(table)
            anova.append([name, f"F({result.df_levels}, {result.df_error}) = {_fmt(result.f)}", _fmt(result.p, ".3g"),
                          f"{_fmt(result.p_gg, '.3g')} (ε {result.epsilon_gg:.3f})",
                          f"{_fmt(result.p_hf, '.3g')} (ε {result.epsilon_hf:.3f})",
                          _fmt(result.generalized_eta_squared, ".3f")])  # fmt: skip
            pairs += [[name, f"{t.level_a} vs {t.level_b}", _fmt(t.mean_difference), f"t({t.df}) = {_fmt(t.t, '.3g')}",
                       _fmt(t.p_bonferroni, ".3g"), _fmt(t.p_holm, ".3g")] for t in paired_tests(table, levels)]  # fmt: skip
        else:
            anova.append([name, UNAVAILABLE, "", "", "", ""])
        if name.startswith(PLOTTED_PER_BUDGET) and not name.startswith("loss reduction"):
            reason = "not measured" if not np.isfinite(table).any() else "missing in some runs"
            panels[name] = list(table.T) if complete else f"{UNAVAILABLE}\n({reason})"
    lines += _table(["metric (mean ± sd)"] + [f"D = {level}" for level in levels], summary)
    lines += ["One-way repeated-measures ANOVA (subjects: repetitions). Sphericity is doubtful where the spread grows "
              "with the budget, as energy's does: read the Greenhouse–Geisser (GG) or Huynh–Feldt (HF) corrected "
              "p-value, not the uncorrected one.", ""]  # fmt: skip
    lines += _table(["metric", "F", "p (uncorrected)", "p (GG)", "p (HF)", "η²_G"], anova)
    if pairs:
        lines += ["Paired t-tests over the pairs of budgets, corrected for the number of pairs (Holm is uniformly "
                  "more powerful than Bonferroni):", ""]  # fmt: skip
        lines += _table(["metric", "pair", "mean difference", "t", "p (Bonferroni)", "p (Holm)"], pairs)
    plot_name = "repeated_" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(model)) + ".png"
    plots.repeated_runs(plots_dir / plot_name, budgets, panels, f"{model}: per token budget")
    return lines + [f"![repeated runs of {model}](plots/{plot_name})", ""]


def vocabulary(runs: Runs, override: int | None) -> tuple[np.ndarray | int, str]:
    """Each run's vocabulary size V (results.csv's vocab_size), unless given; GPT-2's where neither says."""
    if override:
        return override, f"vocabulary size {override} (given)"
    sizes = runs.values["vocab_size"]
    if np.isfinite(sizes).all():
        distinct = sorted({int(x) for x in sizes})
        return sizes, f"vocabulary size {', '.join(map(str, distinct))} (from the results)"
    return efficiency.GPT2_VOCAB_SIZE, (f"vocabulary size {efficiency.GPT2_VOCAB_SIZE} (GPT-2's: these results have "
                                        "no vocab_size; give --vocab-size)")  # fmt: skip


def repeated_section(runs: Runs, plots_dir: Path, vocab_size: int | None = None,
                     include_eval: bool = False) -> list[str]:
    vocab, vocab_note = vocabulary(runs, vocab_size)
    covers = measured_phase(runs, include_eval)[2]
    lines = ["## Repeated runs: energy, duration and efficiency per token budget", "",
             f"Energy, duration and power cover the {covers}.", ""]
    metrics = _metrics(runs, vocab, include_eval)
    analysed = 0
    for model in sorted(set(runs.model), key=str):
        budgets, index, reason = _repeated_design(runs, model)
        if reason is None:
            lines += _model_block(model, budgets, index, metrics, vocab_note, plots_dir)
            analysed += 1
        elif max(Counter(runs.tokens[runs.model == model]).values()) > 1:  # it was repeated, just not analysable
            lines += [f"{model}: skipped, it needs 2 or more repetitions at each of 2 or more token budgets "
                      f"({reason}).", ""]  # fmt: skip
    if not analysed:
        lines += ["Skipped: no model has two or more repetitions at each of two or more token budgets.", ""]
    return lines


def write_report(sweep_dir: Path, *, bootstrap: int = 4000, seed: int = 0, vocab_size: int | None = None,
                 include_eval: bool = False) -> Path:  # fmt: skip
    """Write SWEEP_DIR/report.md and SWEEP_DIR/plots/*.png from SWEEP_DIR/results.csv; returns the report path."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    report = sweep_dir / "report.md"
    if len(runs.model) == 0:
        write_atomic(report, f"# Sweep report: {sweep_dir.name}\n\nNo runs with status ok ({runs.n_failed} failed, "
                             f"{runs.n_incomplete} incomplete): nothing to analyse.\n")  # fmt: skip
        return report
    plots_dir = sweep_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    law_lines, law = chinchilla_section(runs, plots_dir, bootstrap, seed)  # the frontier plot draws the law too
    lines = summary_section(runs, sweep_dir)
    lines += frontier_section(runs, plots_dir, law)
    lines += law_lines
    lines += inference_section(runs, plots_dir, law)
    lines += hardware_section(runs, law)
    lines += conventions_section(runs)
    lines += repeated_section(runs, plots_dir, vocab_size, include_eval)
    write_atomic(report, "\n".join(lines).rstrip() + "\n")  # two workers finishing together may both write it
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxscale.analyze", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--bootstrap", type=int, default=4000, help="resamples for the law's intervals (default 4000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="vocabulary size V for the loss reduction from ln V (default: each run's, from "
                             "results.csv; GPT-2's 50,257 where it has none)")  # fmt: skip
    parser.add_argument("--include-eval", action="store_true",
                        help="repeated runs: add evaluation's energy and time to the training steps'")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, bootstrap=args.bootstrap, seed=args.seed,
                              vocab_size=args.vocab_size, include_eval=args.include_eval)  # fmt: skip
    except InputError as error:
        print(f"python -m jaxscale.analyze: error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    from jaxscale import runtime

    runtime.start()
    sys.exit(main())
