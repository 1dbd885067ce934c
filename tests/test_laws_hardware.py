"""Time- and energy-optimal allocations: the closed form against a numerical minimisation, k = 1 against the
Chinchilla-style model of the same loss, and the per-token cost fit against its generating power law."""
import re

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from jaxscale.laws.hardware import FLOPS_PER_TOKEN, PerTokenCost, cheapest, fit_per_token_cost
from jaxscale.laws.law import HOFFMANN


@pytest.mark.parametrize("exponent", [0.4, 0.8, 1.0, 1.3])
def test_closed_form_is_the_numerical_minimum(exponent):
    cost, loss = PerTokenCost("time", 3e-12, exponent, 5), 2.1
    ours = cheapest(HOFFMANN, loss, cost)
    log_n_min = np.log((HOFFMANN.A / (loss - HOFFMANN.E)) ** (1 / HOFFMANN.alpha)) + 1e-6  # below: D would be infinite
    total = lambda log_n: np.log(cost(np.exp(log_n)) * (HOFFMANN.B / (loss - HOFFMANN.E - HOFFMANN.A * np.exp(-HOFFMANN.alpha * log_n))) ** (1 / HOFFMANN.beta))  # noqa: E731,E501
    best = minimize_scalar(total, bounds=(log_n_min, log_n_min + 20), method="bounded", options={"xatol": 1e-10})
    assert np.log(ours.params) == pytest.approx(best.x, abs=1e-4)
    assert HOFFMANN.loss(ours.params, ours.tokens) == pytest.approx(loss, rel=1e-9)
    assert np.log(ours.cost) == pytest.approx(best.fun, abs=1e-8)


def test_flops_objective_is_the_chinchilla_style_model():
    ours = cheapest(HOFFMANN, 2.0, FLOPS_PER_TOKEN)
    params, tokens = HOFFMANN.chinchilla_for_loss(2.0)
    assert (ours.params, ours.tokens) == (pytest.approx(params, rel=1e-9), pytest.approx(tokens, rel=1e-9))
    assert ours.cost == pytest.approx(6 * params * tokens, rel=1e-9)


def test_hardware_that_favours_large_models_moves_the_optimum_to_more_parameters():
    flops = cheapest(HOFFMANN, 2.0, FLOPS_PER_TOKEN)
    time = cheapest(HOFFMANN, 2.0, PerTokenCost("time", 1e-12, 0.6, 4))
    assert time.params > flops.params and time.tokens < flops.tokens


def test_per_token_cost_recovers_its_power_law():
    params = np.repeat([1e6, 4e6, 1.6e7, 6.4e7], 3)
    tokens = np.tile([1e5, 1e6, 1e7], 4)
    seconds = 2e-9 * params**0.7 * tokens * np.exp(np.random.default_rng(0).normal(0, 0.01, params.size))
    fit = fit_per_token_cost("time", params, tokens, seconds)
    assert fit.exponent == pytest.approx(0.7, abs=0.02) and fit.coefficient == pytest.approx(2e-9, rel=0.3)
    assert fit.n_models == 4
    with pytest.raises(ValueError, match="2 or more model sizes"):
        fit_per_token_cost("energy", params, tokens, np.full(params.size, np.nan))


def synthetic_sweep(path, energy: bool, branched: bool = False):
    """A 5 x 5 grid with losses from a known law and step times c·N^0.6 per token (energy: 300 W of it);
    `branched`: each model's smaller budgets are cooldown branches, their steps 20% of their tokens."""
    import csv

    from jaxscale.laws.law import ChinchillaLaw
    law = ChinchillaLaw(E=1.8, A=400.0, B=410.0, alpha=0.34, beta=0.28)
    rng = np.random.default_rng(2)
    rows = []
    for n in np.geomspace(1e6, 1e8, 5):
        for d in np.geomspace(1e8, 1e10, 5):
            trained = 0.2 * d if branched and d < 1e10 else d
            seconds = 1e-9 * n**0.6 * trained * np.exp(rng.normal(0, 0.01))
            rows.append({"model": f"n{n:.0f}", "n_params": n, "tokens": d, "flops": 6 * n * d, "status": "ok",
                         "compute_tokens": trained,
                         "eval_loss": law.loss(n, d) * np.exp(rng.normal(0, 0.001)), "steps_s": seconds,
                         "steps_energy_j": 300.0 * seconds if energy else "",
                         "energy_source": "counter" if energy else "unavailable"})
    path.mkdir()
    with open(path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return law


def test_optimal_from_a_sweep_in_time_and_energy(tmp_path, capsys):
    import json

    from jaxscale.laws.__main__ import main
    law = synthetic_sweep(tmp_path / "sweep", energy=True)
    expected = cheapest(law, 2.6, PerTokenCost("time", 1e-9, 0.6, 5))
    for objective in ("time", "energy"):
        assert main(["optimal", "--sweep", str(tmp_path / "sweep"), "--loss", "2.6", "--objective", objective,
                     "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["per_token"][objective]["exponent"] == pytest.approx(0.6, abs=0.02)
        assert result["optimal"]["params"] == pytest.approx(expected.params, rel=0.15)
        assert result["optimal"]["params"] > result["flop_optimal"]["params"]  # k < 1 favours larger models
        assert result["optimal"][objective] < result["flop_optimal"][objective]
        assert result["optimal"]["flops"] > result["flop_optimal"]["flops"]
    assert result["optimal"]["energy"] == pytest.approx(300.0 * result["optimal"]["time"], rel=0.05)


def test_a_branched_sweep_costs_each_token_its_own_steps_trained(tmp_path, capsys):
    """A branch's steps_s and steps_energy_j cover its cooldown (compute_tokens), not its whole budget."""
    import json

    from jaxscale.analyze import write_report
    from jaxscale.laws.__main__ import main
    synthetic_sweep(tmp_path / "sweep", energy=True, branched=True)
    assert main(["optimal", "--sweep", str(tmp_path / "sweep"), "--loss", "2.6", "--objective", "time", "--json"]) == 0
    time = json.loads(capsys.readouterr().out)["per_token"]["time"]
    assert time["coefficient"] == pytest.approx(1e-9, rel=0.2) and time["exponent"] == pytest.approx(0.6, abs=0.02)
    report = write_report(tmp_path / "sweep", bootstrap=0).read_text()
    coefficient, exponent = re.search(r"time (\S+)·N\^(\S+),", report).groups()
    assert float(coefficient) == pytest.approx(1e-9, rel=0.2) and float(exponent) == pytest.approx(0.6, abs=0.02)


def test_energy_objective_without_a_meter_says_so_and_offers_time(tmp_path, capsys):
    from jaxscale.laws.__main__ import main
    synthetic_sweep(tmp_path / "sweep", energy=False)
    assert main(["optimal", "--sweep", str(tmp_path / "sweep"), "--loss", "2.6", "--objective", "energy"]) == 2
    err = capsys.readouterr().err
    assert "energy sources: unavailable" in err and "--objective time" in err and err.count("\n") == 1
    assert main(["optimal", "--sweep", str(tmp_path / "sweep"), "--loss", "2.6", "--objective", "time"]) == 0
    assert "least time on the sweep's hardware" in capsys.readouterr().out


def test_the_report_has_the_hardware_section(tmp_path):
    from jaxscale.analyze import write_report
    synthetic_sweep(tmp_path / "sweep", energy=False)
    text = write_report(tmp_path / "sweep", bootstrap=0).read_text()
    section = text[text.index("## Cheapest on this hardware"):]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| flops")
            or line.startswith("| time")}
    assert set(rows) == {"flops", "time"} and "Not available: energy" in section
    n_flops, n_time = (float(rows[k].split("|")[2]) for k in ("flops", "time"))
    assert n_time > n_flops  # time per token grows as N^0.6: larger models are cheaper per FLOP here
