"""python -m jaxscale.laws {fit,optimal,cost}: JSON keys and values, readable tables, one-line errors with exit 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxscale.laws.__main__ import main
from jaxscale.laws.law import ChinchillaLaw

COST_ARGS = [
    "cost", "--loss", "1.947", "--requests", "1e10", "--input-tokens", "70", "--output-tokens", "215",
    "--train-gpu", "H100", "--train-dtype", "bf16", "--train-dollars-per-hour", "2",
    "--inference-gpu", "H100", "--inference-dtype", "fp8", "--inference-dollars-per-hour", "2",
    "--train-mfu", "0.5", "--prefill-mfu", "0.5", "--decode-mfu", "0.01",
]  # fmt: skip


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def runs_csv(tmp_path):
    law = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e10, 8), np.geomspace(1e9, 1e12, 8)))
    loss = law.loss(n, d) * np.exp(np.random.default_rng(0).normal(0, 0.002, n.size))
    path = tmp_path / "runs.csv"
    lines = ["name,N,D,C,final loss"] + [f"r{i},{a},{b},{6 * a * b},{c}" for i, (a, b, c) in enumerate(zip(n, d, loss))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_optimal_json_matches_the_published_example(capsys):
    code, out, _ = run(capsys, "optimal", "--loss", "1.947", "--inference-tokens", "2e12", "--json")
    result = json.loads(out)
    assert code == 0 and set(result) == {"optimal", "chinchilla"}
    assert set(result["optimal"]) == set(result["chinchilla"]) == {"params", "train_tokens", "total_flops"}
    assert result["optimal"]["params"] == pytest.approx(2.418e10, rel=5e-4)
    assert result["chinchilla"]["total_flops"] == pytest.approx(5.065e23, rel=5e-4)


def test_optimal_accepts_other_constants_and_prints_a_table(capsys):
    code, out, _ = run(capsys, "optimal", "--loss", "2.5", "--inference-tokens", "1e12", "--E", "1.8", "--alpha", "0.35")
    assert code == 0 and "optimal" in out and "chinchilla" in out and "%" in out


def test_cost_json_has_costs_and_the_optimum_is_cheaper(capsys):
    code, out, _ = run(capsys, *COST_ARGS, "--json")
    result = json.loads(out)
    assert code == 0
    assert set(result["optimal"]) == {"params", "train_tokens", "total_flops", "total_cost"}
    assert result["optimal"]["total_cost"] < result["chinchilla"]["total_cost"]


def test_fit_json_keys_with_bootstrap(capsys, runs_csv):
    code, out, err = run(capsys, "fit", str(runs_csv), "--params-col", "N", "--tokens-col", "D",
                         "--loss-col", "final loss", "--bootstrap", "40", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"E", "A", "B", "alpha", "beta", "objective", "a", "b", "ci"}
    assert set(result["ci"]) == {"E", "A", "B", "alpha", "beta", "a", "b"}
    assert result["alpha"] == pytest.approx(0.34, rel=0.03)


def test_fit_from_flops_column_with_options_prints_a_table(capsys, runs_csv):
    code, out, _ = run(capsys, "fit", str(runs_csv), "--params-col", "N", "--flops-col", "C", "--loss-col",
                       "final loss", "--drop-highest", "2", "--max-tokens-per-param", "1e4")  # fmt: skip
    table = np.genfromtxt(runs_csv, delimiter=",", names=True)
    expected = int(np.sum(table["D"] / table["N"] <= 1e4)) - 2
    assert expected < 62
    assert code == 0 and f"{expected} runs" in out and "objective" in out and "alpha" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["fit", "missing.csv", "--params-col", "N", "--tokens-col", "D", "--loss-col", "L"], "file not found: missing.csv"),
        (["fit", "{csv}", "--params-col", "N", "--tokens-col", "tokens", "--loss-col", "final loss"],
         "no column 'tokens'; available columns: name, N, D, C, final loss"),
        (["optimal", "--loss", "1.5", "--inference-tokens", "1e12"], "must exceed the irreducible loss E = 1.69"),
        ([a if a != "fp8" else "int4" for a in COST_ARGS], "invalid choice: 'int4'"),
        (COST_ARGS[:-2] + ["--decode-mfu", "0"], "decode mfu must be in (0, 1]"),
        (["optimal", "--loss", "2", "--inference-tokens", "1e12", "--alpha", "0"], "--alpha: 0.0 is not a finite number > 0"),
        (["optimal", "--loss", "2", "--inference-tokens", "1e12", "--E", "nan"], "--E: nan is not a finite number >= 0"),
        (["optimal", "--loss", "1e300", "--inference-tokens", "1e12"], "--loss: the law reaches 1e+300 with less than one"),
        (["optimal", "--loss", "2", "--inference-tokens", "inf"], "--inference-tokens: inf is not a finite number >= 0"),
        (["fit", "{csv}", "--params-col", ","], "--params-col ',': names no column"),
        (["fit", "{binary}"], "not a CSV table of UTF-8 text"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, runs_csv, argv, expected):
    binary = runs_csv.with_name("binary.csv")
    binary.write_bytes(b"N,D\n\xff\xfe\x00\n")
    argv = [a.replace("{csv}", str(runs_csv)).replace("{binary}", str(binary)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err and "\n" not in err


def test_module_entry_point_and_cost_dtype_check(tmp_path):
    args = list(COST_ARGS)
    args[args.index("--inference-gpu") + 1] = "A100"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache")}  # keep the test out of ~/.cache
    done = subprocess.run([sys.executable, "-m", "jaxscale.laws", *args], capture_output=True, text=True, check=False,
                          env=env)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "python -m jaxscale.laws cost: error: dtype 'fp8' has no peak listed for A100; allowed: bf16, fp16, int8"
    )


def test_fit_with_two_parameter_counts_side_by_side(capsys, tmp_path):
    """Losses from a law in the count without embeddings (a fixed 2e7-parameter embedding added for the other):
    fitted with that count the law's exponents come back, with the other they move."""
    law = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e6, 1e9, 8), np.geomspace(1e9, 1e12, 8)))
    loss = law.loss(n, d) * np.exp(np.random.default_rng(1).normal(0, 0.002, n.size))
    path = tmp_path / "two.csv"
    rows = [f"{a + 2e7},{a},{b},{c}" for a, b, c in zip(n, d, loss)]
    path.write_text("n_params,n_params_nonembed,tokens,loss\n" + "\n".join(rows) + "\n")
    code, out, _ = run(capsys, "fit", str(path), "--params-col", "n_params,n_params_nonembed", "--tokens-col", "tokens",
                       "--loss-col", "loss", "--json")
    fits = json.loads(out[out.index("{"):])["conventions"]
    assert code == 0 and set(fits) == {"n_params", "n_params_nonembed"}
    assert fits["n_params_nonembed"]["alpha"] == pytest.approx(0.34, abs=0.02)
    assert fits["n_params_nonembed"]["beta"] == pytest.approx(0.28, abs=0.02)
    assert abs(fits["n_params"]["alpha"] - 0.34) > 0.05
    code, out, _ = run(capsys, "fit", str(path), "--params-col", "n_params,n_params_nonembed", "--tokens-col", "tokens",
                       "--loss-col", "loss")
    assert code == 0 and "N = n_params_nonembed" in out and out.count("alpha") == 1


def test_fit_reads_a_sweeps_results_csv_with_no_column_flags(capsys, tmp_path):
    """The defaults are results.csv's columns (n_params, tokens, eval_loss); a failed run (no loss) is left out."""
    law = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e10, 8), np.geomspace(1e9, 1e12, 8)))
    loss = law.loss(n, d) * np.exp(np.random.default_rng(2).normal(0, 0.002, n.size))
    rows = [f"{i:03d},{a:.0f},{b:.0f},{c},ok" for i, (a, b, c) in enumerate(zip(n, d, loss))]
    path = tmp_path / "results.csv"
    path.write_text("run_id,n_params,tokens,eval_loss,status\n" + "\n".join(rows) + "\n064,1e8,1e10,,failed\n")
    code, out, err = run(capsys, "fit", str(path), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["alpha"] == pytest.approx(0.34, rel=0.03) and result["beta"] == pytest.approx(0.28, rel=0.03)
    code, out, _ = run(capsys, "fit", str(tmp_path))  # the sweep directory
    assert code == 0 and "64 runs of" in out and "1 with a status other than ok left out" in out
