"""The sweep report: synthetic results.csv fixtures (a study-2 grid, a tiny sweep, repeated runs with and without
energy), the sections and plots written, what is skipped and why, and one-line errors."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxscale.analyze import load_runs, main, write_report
from jaxscale.laws.law import ChinchillaLaw

COLUMNS = [
    "run_id", "model", "d_model", "d_mlp", "n_layers", "n_params", "n_params_nonembed", "tokens", "flops",
    "train_loss", "eval_loss", "wall_s", "step_s_median", "tokens_per_s", "status", "repetition", "seed",
]  # fmt: skip
ENERGY_COLUMNS = ["energy_j", "power_mean_w", "power_peak_w", "duration_s", "energy_source"]
GRID_MODELS = [(16, 64, 1), (24, 96, 1), (32, 128, 2), (48, 192, 2), (64, 256, 3), (96, 384, 3), (128, 512, 4)]
GRID_BUDGETS = [5e3, 1e4, 3e4, 5e4, 1e5, 3e5, 5e5, 1e6]
TOY_LAW = ChinchillaLaw(E=3.0, A=40.0, B=60.0, alpha=0.25, beta=0.25)


def n_params(d_model, d_mlp, n_layers, vocab=50_257, context=64):
    nonembed = n_layers * (4 * d_model * d_model + 2 * d_model * d_mlp)
    return vocab * d_model + context * d_model + nonembed, nonembed


def write_results(path: Path, rows: list[dict], energy: bool) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with (path / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS + (ENERGY_COLUMNS if energy else []))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_row(run_id, shape, tokens, loss, repetition=0, status="ok", **extra):
    d, mlp, layers = shape
    total, nonembed = n_params(d, mlp, layers)
    wall = 1e-3 * tokens * (1 + d / 64)
    row = dict(run_id=run_id, model=f"d{d}-l{layers}", d_model=d, d_mlp=mlp, n_layers=layers, n_params=total,
               n_params_nonembed=nonembed, tokens=int(tokens), flops=6 * total * tokens, train_loss=loss * 0.98,
               eval_loss=loss, wall_s=wall, step_s_median=wall / max(tokens // 1024, 1), tokens_per_s=tokens / wall,
               status=status, repetition=repetition, seed=repetition)  # fmt: skip
    return {**row, **extra}


def grid_sweep(path: Path, seed=0) -> Path:
    """Study 2's 7 x 8 grid with losses from a known law (1% noise) and one failed run."""
    rng = np.random.default_rng(seed)
    rows = []
    for shape in GRID_MODELS:
        for tokens in GRID_BUDGETS:
            loss = TOY_LAW.loss(n_params(*shape)[0], tokens) * np.exp(rng.normal(0, 0.01))
            rows.append(run_row(len(rows), shape, tokens, loss))
    rows[5].update(status="failed", eval_loss="", train_loss="")
    return write_results(path, rows, energy=False)


def repeated_sweep(path: Path, measured: bool, repetitions=6, seed=0) -> Path:
    """One model at three token budgets, repeated; energy measured (joules grow with tokens) or unavailable."""
    rng = np.random.default_rng(seed)
    rows = []
    for rep in range(repetitions):
        for tokens in (5e5, 1e6, 2e6):
            loss = TOY_LAW.loss(n_params(*GRID_MODELS[2])[0], tokens) * np.exp(rng.normal(0, 0.01))
            duration = 2e-4 * tokens * (1 + rng.normal(0, 0.05))
            power = 60 + 5 * np.log2(tokens / 5e5) + rng.normal(0, 2)
            energy = dict(energy_j=power * duration, power_mean_w=power, power_peak_w=power * 1.3, duration_s=duration,
                          energy_source="nvml") if measured else \
                dict(energy_j="", power_mean_w="", power_peak_w="", duration_s="", energy_source="unavailable")  # fmt: skip
            rows.append(run_row(len(rows), GRID_MODELS[2], tokens, loss, repetition=rep, **energy))
    return write_results(path, rows, energy=True)


def test_grid_report_has_every_section_and_plot(tmp_path):
    sweep = grid_sweep(tmp_path / "grid")
    report = write_report(sweep, bootstrap=50)
    assert report == sweep / "report.md"
    text = report.read_text()
    assert "55 runs analysed; not analysed: 1 failed." in text
    for heading in ("## Compute frontier", "## Chinchilla law", "## Inference-aware optimum", "## Repeated runs"):
        assert heading in text
    assert "a (N_opt ∝ C^a)" in text and "law fitted to this sweep" in text
    assert re.search(r"\d+ of \d+ compute levels are won by the smallest or largest model covering them", text)
    for name in ("loss_vs_compute", "compute_optimal_allocation", "loss_vs_params_and_tokens", "inference_optimum"):
        png = sweep / "plots" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{name}.png)" in text
    assert "Skipped: no model has two or more repetitions" in text


def test_failed_and_incomplete_runs_are_not_analysed(tmp_path):
    runs = load_runs(grid_sweep(tmp_path / "grid"))
    assert len(runs.model) == 55 and runs.n_failed == 1 and runs.loss_column == "eval_loss"
    rows = [run_row(0, GRID_MODELS[0], 5e3, 7.0), run_row(1, GRID_MODELS[0], 1e4, 6.5, eval_loss="", train_loss="")]
    sweep = write_results(tmp_path / "incomplete", rows, energy=False)
    runs = load_runs(sweep)
    assert len(runs.model) == 1 and runs.n_incomplete == 1
    assert "1 with status ok but no positive N, D, C or eval_loss" in write_report(sweep).read_text()


def test_one_run_without_a_held_out_loss_leaves_the_others_on_theirs(tmp_path):
    """The training losses are 2% below the held-out ones (run_row): analysing them would move every loss."""
    rows = [run_row(i, GRID_MODELS[0], tokens, 7.0 - i) for i, tokens in enumerate((5e3, 1e4, 3e4))]
    rows[1]["eval_loss"] = "nan"
    runs = load_runs(write_results(tmp_path / "sweep", rows, energy=False))
    assert runs.loss_column == "eval_loss" and runs.n_incomplete == 1
    assert runs.loss.tolist() == [7.0, 5.0]


def test_a_sweep_with_no_usable_runs_still_gets_a_report(tmp_path):
    sweep = write_results(tmp_path / "failed", [run_row(0, GRID_MODELS[0], 5e3, 7.0, status="failed")], energy=False)
    assert "nothing to analyse" in write_report(sweep).read_text()


def test_small_sweep_skips_what_it_cannot_support(tmp_path):
    rows = [run_row(i, shape, tokens, TOY_LAW.loss(n_params(*shape)[0], tokens))
            for i, (shape, tokens) in enumerate([(GRID_MODELS[0], 5e3), (GRID_MODELS[0], 1e4), (GRID_MODELS[1], 5e3)])]  # fmt: skip
    text = write_report(write_results(tmp_path / "small", rows, energy=False)).read_text()
    assert "Skipped the power laws" in text
    assert "Skipped: fitting five constants needs at least 2 model sizes, 2 token budgets and 8 runs" in text
    assert "Hoffmann et al. constants (no usable fit from this sweep)" in text
    assert (tmp_path / "small" / "plots" / "loss_vs_compute.png").is_file()
    assert not (tmp_path / "small" / "plots" / "loss_vs_params_and_tokens.png").exists()


def test_repeated_runs_with_energy_get_anova_and_efficiency(tmp_path):
    sweep = repeated_sweep(tmp_path / "energy", measured=True)
    text = write_report(sweep, bootstrap=0).read_text()
    section = text[text.index("## Repeated runs"):]
    assert "### d32-l2: 6 repetitions × 3 token budgets" in section
    assert "F(2, 10)" in section and "η²_G" in section and "Bonferroni" in section and "p (Holm)" in section
    assert "p (GG)" in section and "p (HF)" in section
    gg_epsilons = [float(e) for e in re.findall(r"\(ε (\d\.\d+)\)", section)]
    assert gg_epsilons and all(0.5 <= e <= 1 for e in gg_epsilons)  # 1/(k-1) <= epsilon <= 1 for 3 budgets
    energy_row = next(line for line in section.splitlines() if line.startswith("| energy (kJ)"))
    assert UNAVAILABLE not in energy_row
    assert (sweep / "plots" / "repeated_d32-l2.png").is_file()


UNAVAILABLE = "unavailable"


def test_unmeasured_energy_is_unavailable_not_zero(tmp_path):
    sweep = repeated_sweep(tmp_path / "no-energy", measured=False)
    text = write_report(sweep, bootstrap=0).read_text()
    assert "Energy sources: unavailable." in text
    section = text[text.index("## Repeated runs"):]
    for metric in ("energy (kJ)", "energy-aware param. efficiency", "tokens per joule", "loss reduction per kWh"):
        rows = [line for line in section.splitlines() if line.startswith(f"| {metric}")]
        assert rows and all(UNAVAILABLE in row for row in rows), metric
        assert all(" 0 ±" not in row and "| 0 |" not in row for row in rows)
    duration_row = next(line for line in section.splitlines() if line.startswith("| duration (s)"))
    assert UNAVAILABLE not in duration_row  # falls back to the measured wall time, and says so
    assert "cover the whole runs (wall_s; no energy window recorded)" in section


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.csv").write_text("run_id,model,tokens,flops,status,eval_loss\n1,d16-l1,5000,1e9,ok,7.0\n")
    assert main([str(bad)]) == 2
    message = capsys.readouterr().err.strip()
    assert "no column 'n_params'" in message and "available columns: run_id, model" in message and "\n" not in message


def test_module_entry_point(tmp_path):
    sweep = repeated_sweep(tmp_path / "cli", measured=True, repetitions=3)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache")}  # keep the test out of ~/.cache
    done = subprocess.run([sys.executable, "-m", "jaxscale.analyze", str(sweep), "--bootstrap", "0"],
                          capture_output=True, text=True, check=False, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == sweep / "report.md"


def phased_sweep(path: Path) -> tuple[Path, dict]:
    """Repeated runs whose results carry the training steps' energy apart; the first run of each repetition also
    compiled (a large extra in energy_j only). Vocabulary 32,000, written in the results."""
    rng = np.random.default_rng(3)
    rows, steps_kj = [], {5e5: [], 1e6: [], 2e6: []}
    for rep in range(5):
        for i, tokens in enumerate((5e5, 1e6, 2e6)):
            steps_s = 2e-4 * tokens * (1 + rng.normal(0, 0.05))
            steps_j = 300.0 * steps_s
            eval_s, compile_j = 3.0, (50_000.0 if i == 0 else 0.0)
            steps_kj[tokens].append(steps_j / 1e3)
            rows.append(run_row(len(rows), GRID_MODELS[2], tokens, 3.5 - 0.1 * i, repetition=rep,
                                energy_j=steps_j + 900.0 + compile_j, duration_s=steps_s + eval_s + 10,
                                steps_energy_j=steps_j, steps_s=steps_s, eval_energy_j=900.0, eval_s=eval_s,
                                energy_source="counter", vocab_size=32000, power_mean_w="", power_peak_w=""))
    path.mkdir(parents=True)
    columns = COLUMNS + ENERGY_COLUMNS + ["steps_energy_j", "steps_s", "eval_energy_j", "eval_s", "vocab_size"]
    with (path / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path, steps_kj


def energy_means(section: str) -> list[float]:
    row = next(line for line in section.splitlines() if line.startswith("| energy (kJ)"))
    return [float(cell.split("±")[0]) for cell in row.split("|")[2:-1]]


def test_the_report_analyses_training_step_energy_and_reads_the_vocabulary(tmp_path):
    sweep, steps_kj = phased_sweep(tmp_path / "phased")
    text = write_report(sweep, bootstrap=0).read_text()
    section = text[text.index("## Repeated runs"):]
    assert "cover the training steps only (compile and evaluation excluded)" in section
    assert energy_means(section) == pytest.approx([np.mean(steps_kj[t]) for t in (5e5, 1e6, 2e6)], rel=1e-3)
    assert "vocabulary size 32000 (from the results)" in section
    with_eval = write_report(sweep, bootstrap=0, include_eval=True).read_text()
    section = with_eval[with_eval.index("## Repeated runs"):]
    assert "training steps and evaluation (compile excluded)" in section
    assert energy_means(section) == pytest.approx([np.mean(steps_kj[t]) + 0.9 for t in (5e5, 1e6, 2e6)], rel=1e-3)
    assert main([str(sweep), "--bootstrap", "0", "--include-eval", "--vocab-size", "50257"]) == 0
    assert "vocabulary size 50257 (given)" in (sweep / "report.md").read_text()


def test_both_counting_conventions_side_by_side(tmp_path):
    """Losses from a known law in the non-embedding count: fitted that way the law's exponents come back; with the
    embeddings counted (most of N at this scale) they do not."""
    rng = np.random.default_rng(1)
    rows = []
    for shape in GRID_MODELS:
        total, nonembed = n_params(*shape)
        for tokens in GRID_BUDGETS:
            loss = TOY_LAW.loss(nonembed, tokens) * np.exp(rng.normal(0, 0.002))
            rows.append(run_row(len(rows), shape, tokens, loss, flops_per_token_matmul=6 * nonembed + 12 * 64 * shape[0]))
    sweep = tmp_path / "conventions"
    sweep.mkdir()
    with (sweep / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS + ["flops_per_token_matmul"])
        writer.writeheader()
        writer.writerows(rows)
    text = write_report(sweep, bootstrap=0).read_text()
    section = text[text.index("## Counting conventions"):]
    table = [line for line in section.splitlines() if line.startswith("| all parameters") or
             line.startswith("| without embeddings")]
    assert len(table) == 6  # 2 x 2 allocation rows, 2 law rows
    law = {line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:5]] for line in table[-2:]}
    alpha, beta, a = law["without embeddings"]
    assert (alpha, beta) == (pytest.approx(TOY_LAW.alpha, abs=0.02), pytest.approx(TOY_LAW.beta, abs=0.02))
    assert a == pytest.approx(TOY_LAW.beta / (TOY_LAW.alpha + TOY_LAW.beta), abs=0.03)
    assert abs(law["all parameters"][0] - TOY_LAW.alpha) > 0.05  # the embeddings move the exponent
    assert all("too few" not in line for line in table[:4])


def test_conventions_skip_without_the_columns(tmp_path):
    text = write_report(grid_sweep(tmp_path / "old"), bootstrap=0).read_text()
    assert "Skipped: these results have no `n_params_nonembed` or `flops_per_token_matmul` column." in text
