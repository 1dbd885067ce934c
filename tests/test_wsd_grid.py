"""benchmarks/wsd_grid.py on two made-up sweeps whose answers are known without it: the tokens each trained,
a constant loss offset, and exponents that a constant offset cannot move."""
import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import wsd_grid  # noqa: E402

SIZES = [1e5, 3e5, 1e6, 3e6, 1e7]
BUDGETS = [1e6, 3e6, 1e7, 3e7, 1e8, 3e8]


def loss(n, d):
    return 1.7 + 400 / n**0.34 + 410 / d**0.28  # a Chinchilla-style surface


def write_sweep(path: Path, offset: float, compute_share: float | None):
    path.mkdir()
    columns = ["model", "n_params", "n_params_nonembed", "tokens", "flops", "status", "eval_loss", "compute_tokens"]
    with open(path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for i, n in enumerate(SIZES):
            for d in BUDGETS:
                own = d if compute_share is None or d == BUDGETS[-1] else compute_share * d
                writer.writerow({"model": f"m{i}", "n_params": n, "n_params_nonembed": n / 4, "tokens": d,
                                 "flops": 6 * n * d, "status": "ok", "eval_loss": loss(n, d) + offset,
                                 "compute_tokens": own})


def test_tokens_offsets_and_exponents(tmp_path, capsys):
    write_sweep(tmp_path / "cosine", 0.0, None)
    write_sweep(tmp_path / "wsd", 0.05, 0.2)  # every branch trains a fifth of its budget; the trunk its whole
    out = tmp_path / "wsd.md"
    assert wsd_grid.main([str(tmp_path / "cosine"), str(tmp_path / "wsd"), "--bootstrap", "50", "--out", str(out),
                          "--cosine-wall", "600", "--wsd-wall", "300"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    total = sum(BUDGETS) * len(SIZES)
    wsd_total = (0.2 * sum(BUDGETS[:-1]) + BUDGETS[-1]) * len(SIZES)
    assert result["tokens_trained"] == pytest.approx({"cosine": total, "wsd": wsd_total})
    assert result["tokens_saved"] == pytest.approx(1 - wsd_total / total)
    assert result["loss_diff_mean"] == pytest.approx(0.05) and result["loss_diff_sd"] == pytest.approx(0, abs=1e-12)
    for convention in result["conventions"].values():  # a constant offset leaves every envelope's choice alone
        assert convention["wsd"]["a"] == pytest.approx(convention["cosine"]["a"])
        assert convention["wsd"]["b"] == pytest.approx(convention["cosine"]["b"])
        assert convention["wsd_inside"] == {"a": True, "b": True}
    with_embed, without = result["conventions"]["with embeddings"], result["conventions"]["without embeddings"]
    assert with_embed["cosine"] == result["exponents"]["cosine"]
    # N / 4 here: a constant factor in N (and so in C = 6ND) moves no exponent
    assert without["cosine"]["a"] == pytest.approx(with_embed["cosine"]["a"])
    assert without["cosine"]["b"] == pytest.approx(with_embed["cosine"]["b"])
    text = out.read_text()
    assert "| wall time | 10.0 min | 5.0 min |" in text and "| without embeddings | wsd |" in text
