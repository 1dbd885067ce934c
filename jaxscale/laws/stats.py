"""One-way repeated-measures ANOVA with generalised eta squared and sphericity corrections, and paired t-tests
corrected for multiple comparisons (Bonferroni and Holm).

Data is a (subjects x levels) table: one subject per repetition, one level per condition (e.g. token budget).
Sums of squares: SS_level = n·Σ_j (mean_j - grand)², SS_subject = k·Σ_i (mean_i - grand)², SS_error = SS_total -
SS_level - SS_subject; F = (SS_level / (k-1)) / (SS_error / ((k-1)(n-1))). Generalised eta squared for a design whose
only factor is measured within subjects is SS_level / (SS_level + SS_subject + SS_error) (Olejnik & Algina 2003;
Bakeman 2005).

Sphericity (equal variances of every pairwise difference) rarely holds when the spread grows with the level, as
energy's does with the token budget. Greenhouse–Geisser's epsilon, from the double-centred covariance matrix S_c of
the levels, is ε = tr(S_c)² / ((k-1)·tr(S_c²)) (1/(k-1) ≤ ε ≤ 1; 1 under sphericity); Huynh–Feldt's, less
conservative, is min(1, (n(k-1)ε - 2) / ((k-1)(n-1-(k-1)ε))). A corrected p-value uses the same F on ε·df.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class RmAnova:
    f: float
    df_levels: int
    df_error: int
    p: float
    generalized_eta_squared: float
    ss_levels: float
    ss_subjects: float
    ss_error: float
    epsilon_gg: float  # Greenhouse–Geisser
    epsilon_hf: float  # Huynh–Feldt
    p_gg: float
    p_hf: float


def sphericity_epsilons(data: np.ndarray) -> tuple[float, float]:
    """(Greenhouse–Geisser, Huynh–Feldt) epsilon of a (subjects x levels) table; both 1 for two levels."""
    n, k = data.shape
    if k == 2:
        return 1.0, 1.0
    centre = np.eye(k) - 1.0 / k
    s = centre @ np.cov(data, rowvar=False) @ centre
    if np.trace(s @ s) == 0:
        return 1.0, 1.0
    gg = np.trace(s) ** 2 / ((k - 1) * np.trace(s @ s))
    hf = (n * (k - 1) * gg - 2) / ((k - 1) * (n - 1 - (k - 1) * gg))
    return float(gg), float(min(1.0, hf)) if hf > 0 else float(gg)


def rm_anova(table) -> RmAnova:
    data = np.asarray(table, float)
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 2:
        raise ValueError(f"repeated-measures ANOVA needs >= 2 subjects and >= 2 levels; got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("repeated-measures ANOVA needs a complete table (no missing values)")
    n, k = data.shape
    grand = data.mean()
    ss_levels = n * np.sum((data.mean(0) - grand) ** 2)
    ss_subjects = k * np.sum((data.mean(1) - grand) ** 2)
    ss_error = max(np.sum((data - grand) ** 2) - ss_levels - ss_subjects, 0.0)
    df_levels, df_error = k - 1, (k - 1) * (n - 1)
    gg, hf = sphericity_epsilons(data)
    if ss_error > 0:
        f = (ss_levels / df_levels) / (ss_error / df_error)
        p, p_gg, p_hf = (float(stats.f.sf(f, e * df_levels, e * df_error)) for e in (1.0, gg, hf))
    else:
        f, p = (np.inf, 0.0) if ss_levels > 0 else (np.nan, np.nan)
        p_gg = p_hf = p
    total = ss_levels + ss_subjects + ss_error
    ges = ss_levels / total if total > 0 else np.nan
    return RmAnova(float(f), df_levels, df_error, p, float(ges), float(ss_levels), float(ss_subjects), float(ss_error),
                   gg, hf, p_gg, p_hf)


@dataclass(frozen=True)
class PairedTest:
    level_a: object
    level_b: object
    mean_difference: float  # a - b
    t: float
    df: int
    p: float
    p_bonferroni: float
    p_holm: float


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest p times (m - i), made monotone, capped at 1 (NaN stays)."""
    p = np.asarray(p_values, float)
    finite = np.flatnonzero(np.isfinite(p))
    ordered = finite[np.argsort(p[finite])]
    adjusted = np.full(p.shape, np.nan)
    running = 0.0
    for rank, i in enumerate(ordered):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def paired_tests(table, levels) -> list[PairedTest]:
    """Paired t-test for every pair of levels (columns), Bonferroni- and Holm-corrected over all pairs."""
    data = np.asarray(table, float)
    pairs = list(itertools.combinations(range(data.shape[1]), 2))
    rows = []
    for i, j in pairs:
        difference = data[:, i] - data[:, j]
        if np.all(difference == difference[0]):  # no spread: t is undefined
            t, p = (np.nan, np.nan) if difference[0] == 0 else (np.inf * np.sign(difference[0]), 0.0)
        else:
            t, p = stats.ttest_rel(data[:, i], data[:, j])
        rows.append((levels[i], levels[j], float(difference.mean()), float(t), len(difference) - 1, float(p)))
    adjusted = holm([row[-1] for row in rows])
    return [PairedTest(*row, min(1.0, row[-1] * len(pairs)) if np.isfinite(row[-1]) else float("nan"), p_holm)
            for row, p_holm in zip(rows, adjusted)]
