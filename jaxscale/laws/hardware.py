"""The (N, D) that reaches a loss for the least wall time or energy on the hardware a sweep ran on, beside the
FLOP-optimal one.

A sweep measures what a training token costs each of its models: seconds (`steps_s` over the tokens the run's own
steps trained: its budget, or a branch's cooldown) and, where a meter exists, joules (`steps_energy_j` over them).
Fitted across the models as c·N^k (log-log least squares), the cost of reaching loss ℓ with N parameters is
c·N^k·D(N), where D(N) solves L(N, D) = ℓ. With x = A/N^α, setting the derivative in log N to zero gives
k·β·(ℓ - E - x) = α·x, so

    N* = (A·(α + kβ) / (kβ·(ℓ - E)))^(1/α),   D* = (B·(α + kβ) / (α·(ℓ - E)))^(1/β).

k = 1 (cost ∝ N per token, as FLOPs are) is the Chinchilla-style model of that loss. Small models use hardware
less well (k < 1), which moves the time- and energy-optimal model to more parameters and fewer tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from jaxscale.laws.frontier import fit_power_law
from jaxscale.laws.law import ChinchillaLaw

OBJECTIVES = ("flops", "time", "energy")
UNITS = {"flops": "FLOP", "time": "s", "energy": "J"}


@dataclass(frozen=True)
class PerTokenCost:
    """What one training token costs a model of N parameters: coefficient · N^exponent (in `unit`)."""
    objective: str
    coefficient: float
    exponent: float
    n_models: int  # how many model sizes the fit saw (0: by definition, as 6N FLOPs)

    def __call__(self, params):
        return self.coefficient * np.asarray(params, float) ** self.exponent


FLOPS_PER_TOKEN = PerTokenCost("flops", 6.0, 1.0, 0)


def fit_per_token_cost(objective: str, params, tokens, totals) -> PerTokenCost:
    """c·N^k through each model's median cost per token (runs with a finite, positive total)."""
    params, per_token = np.asarray(params, float), np.asarray(totals, float) / np.asarray(tokens, float)
    keep = np.isfinite(per_token) & (per_token > 0)
    sizes = np.unique(params[keep])
    if len(sizes) < 2:
        raise ValueError(f"{objective} per token needs 2 or more model sizes measured; found {len(sizes)}")
    medians = [np.median(per_token[keep & (params == n)]) for n in sizes]
    fit = fit_power_law(sizes, medians)
    if not fit.exponent > 0:
        raise ValueError(f"{objective} per token does not grow with the model size here (exponent {fit.exponent:.3g})")
    return PerTokenCost(objective, fit.coefficient, fit.exponent, len(sizes))


def measured_costs(runs) -> tuple[dict[str, PerTokenCost], dict[str, str]]:
    """(per-token costs: FLOPs by definition, time and energy where the sweep measured them; why not, for those it
    did not) from a sweep's runs (jaxscale.analyze.Runs)."""
    v, trained = runs.values, runs.trained_tokens
    seconds = v["steps_s"] if np.isfinite(v["steps_s"]).any() else trained / v["tokens_per_s"]
    costs, missing = {"flops": FLOPS_PER_TOKEN}, {}
    for name, totals in (("time", seconds), ("energy", v["steps_energy_j"])):
        try:
            costs[name] = fit_per_token_cost(name, runs.params, trained, totals)
        except ValueError as err:
            missing[name] = str(err)
    return costs, missing


@dataclass(frozen=True)
class Cheapest:
    objective: str
    params: float
    tokens: float
    cost: float  # in UNITS[objective]

    def as_dict(self) -> dict:
        return {**asdict(self), "unit": UNITS[self.objective]}


def cheapest(law: ChinchillaLaw, loss: float, cost: PerTokenCost) -> Cheapest:
    excess, k = law.excess_loss(loss), cost.exponent
    params = (law.A * (law.alpha + k * law.beta) / (k * law.beta * excess)) ** (1.0 / law.alpha)
    tokens = (law.B * (law.alpha + k * law.beta) / (law.alpha * excess)) ** (1.0 / law.beta)
    return Cheapest(cost.objective, float(params), float(tokens), float(cost(params) * tokens))


def sweep_optimum(sweep_dir, objective: str, loss: float) -> dict:
    """From a sweep's results.csv: its Chinchilla law, its per-token costs, and the allocation reaching `loss` for
    the least `objective` beside the FLOP-optimal one, each priced in every measured currency."""
    from jaxscale.analyze import load_runs
    from jaxscale.laws.chinchilla import fit_chinchilla
    from jaxscale.laws.pinning import range_warning
    from jaxscale.laws.table import InputError

    if objective not in OBJECTIVES:
        raise InputError(f"--objective {objective!r}: one of {', '.join(OBJECTIVES)}")
    runs = load_runs(sweep_dir)
    costs, missing = measured_costs(runs)
    if objective in missing:
        hint = "; --objective time uses the measured step times" if objective == "energy" else ""
        raise InputError(f"{sweep_dir}: {missing[objective]} (energy sources: {', '.join(runs.energy_sources)}){hint}")
    try:
        law = fit_chinchilla(runs.params, runs.tokens, runs.loss).law
        best, flop_optimal = cheapest(law, loss, costs[objective]), cheapest(law, loss, FLOPS_PER_TOKEN)
    except ValueError as err:
        raise InputError(f"{sweep_dir}: {err}") from None

    def priced(allocation: Cheapest) -> dict:
        return {"params": allocation.params, "tokens": allocation.tokens,
                **{name: float(cost(allocation.params) * allocation.tokens) for name, cost in costs.items()}}

    out = {"objective": objective, "loss": loss, "law": law.as_dict(),
           "per_token": {name: asdict(cost) for name, cost in costs.items()},
           "optimal": priced(best), "flop_optimal": priced(flop_optimal)}
    warning = range_warning(f"The {objective}-optimal model", [best.params], [best.tokens], runs.params, runs.tokens)
    return {**out, "warnings": [warning]} if warning else out
