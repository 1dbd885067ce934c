"""One-way repeated-measures ANOVA with generalised eta squared, and Bonferroni-corrected paired t-tests.

Data is a (subjects x levels) table: one subject per repetition, one level per condition (e.g. token budget).
Sums of squares: SS_level = n·Σ_j (mean_j - grand)², SS_subject = k·Σ_i (mean_i - grand)², SS_error = SS_total -
SS_level - SS_subject; F = (SS_level / (k-1)) / (SS_error / ((k-1)(n-1))). Generalised eta squared for a design whose
only factor is measured within subjects is SS_level / (SS_level + SS_subject + SS_error) (Olejnik & Algina 2003;
Bakeman 2005). No sphericity correction is applied.
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
    if ss_error > 0:
        f = (ss_levels / df_levels) / (ss_error / df_error)
        p = float(stats.f.sf(f, df_levels, df_error))
    else:
        f, p = (np.inf, 0.0) if ss_levels > 0 else (np.nan, np.nan)
    total = ss_levels + ss_subjects + ss_error
    ges = ss_levels / total if total > 0 else np.nan
    return RmAnova(float(f), df_levels, df_error, p, float(ges), float(ss_levels), float(ss_subjects), float(ss_error))


@dataclass(frozen=True)
class PairedTest:
    level_a: object
    level_b: object
    mean_difference: float  # a - b
    t: float
    df: int
    p: float
    p_bonferroni: float


def paired_tests(table, levels) -> list[PairedTest]:
    """Paired t-test for every pair of levels (columns), Bonferroni-corrected over all pairs."""
    data = np.asarray(table, float)
    pairs = list(itertools.combinations(range(data.shape[1]), 2))
    out = []
    for i, j in pairs:
        difference = data[:, i] - data[:, j]
        if np.all(difference == difference[0]):  # no spread: t is undefined
            t, p = (np.nan, np.nan) if difference[0] == 0 else (np.inf * np.sign(difference[0]), 0.0)
        else:
            t, p = stats.ttest_rel(data[:, i], data[:, j])
        out.append(
            PairedTest(
                levels[i],
                levels[j],
                float(difference.mean()),
                float(t),
                len(difference) - 1,
                float(p),
                float(min(1.0, p * len(pairs))) if np.isfinite(p) else float("nan"),
            )
        )
    return out
