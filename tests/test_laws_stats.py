"""Repeated-measures ANOVA (vs statsmodels' AnovaRM and an OLS decomposition), paired tests, efficiency metrics."""

import numpy as np
import pytest
from scipy import stats

from jaxscale.laws import efficiency
from jaxscale.laws.stats import paired_tests, rm_anova


def sample_table(seed=0, subjects=12, levels=3):
    rng = np.random.default_rng(seed)
    subject_effect = rng.normal(0, 2.0, (subjects, 1))
    level_effect = np.linspace(0, 1.5, levels)[None, :]
    return 10 + subject_effect + level_effect + rng.normal(0, 1.0, (subjects, levels))


def long_format(table):
    pandas = pytest.importorskip("pandas")
    n, k = table.shape
    return pandas.DataFrame(
        {"subject": np.repeat(np.arange(n), k), "level": np.tile(np.arange(k), n), "y": table.ravel()}
    )


@pytest.mark.parametrize("seed, levels", [(0, 3), (1, 4), (2, 2)])
def test_rm_anova_matches_statsmodels(seed, levels):
    anova_rm = pytest.importorskip("statsmodels.stats.anova").AnovaRM
    table = sample_table(seed, levels=levels)
    ours = rm_anova(table)
    theirs = anova_rm(long_format(table), "y", "subject", within=["level"]).fit().anova_table.iloc[0]
    assert ours.f == pytest.approx(theirs["F Value"], rel=1e-10)
    assert (ours.df_levels, ours.df_error) == (theirs["Num DF"], theirs["Den DF"])
    assert ours.p == pytest.approx(theirs["Pr > F"], rel=1e-8)


def test_generalized_eta_squared_from_an_independent_decomposition():
    smf = pytest.importorskip("statsmodels.formula.api")
    anova_lm = pytest.importorskip("statsmodels.stats.anova").anova_lm
    table = sample_table(3)
    sums = anova_lm(smf.ols("y ~ C(subject) + C(level)", data=long_format(table)).fit(), typ=1)["sum_sq"]
    ss_level, ss_subject, ss_error = sums["C(level)"], sums["C(subject)"], sums["Residual"]
    ours = rm_anova(table)
    assert ours.generalized_eta_squared == pytest.approx(ss_level / (ss_level + ss_subject + ss_error), rel=1e-10)
    assert (ours.ss_levels, ours.ss_subjects, ours.ss_error) == pytest.approx((ss_level, ss_subject, ss_error), rel=1e-10)


def test_paired_tests_are_bonferroni_corrected():
    table = sample_table(4, levels=3)
    tests = paired_tests(table, ["5e5", "1e6", "2e6"])
    assert [(t.level_a, t.level_b) for t in tests] == [("5e5", "1e6"), ("5e5", "2e6"), ("1e6", "2e6")]
    for test, (i, j) in zip(tests, [(0, 1), (0, 2), (1, 2)]):
        t, p = stats.ttest_rel(table[:, i], table[:, j])
        assert (test.t, test.p, test.df) == pytest.approx((t, p, table.shape[0] - 1))
        assert test.p_bonferroni == pytest.approx(min(1.0, 3 * p))
        assert test.mean_difference == pytest.approx(np.mean(table[:, i] - table[:, j]))


def heteroscedastic_table(seed, subjects=15, levels=4):
    """Spread that grows with the level, as energy's does with the budget: sphericity fails."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(1, 6, levels)[None, :]
    return 10 + rng.normal(0, 1, (subjects, 1)) + np.arange(levels) * 0.8 + rng.normal(0, 1, (subjects, levels)) * scale


@pytest.mark.parametrize("seed, subjects, levels", [(0, 15, 4), (1, 10, 3), (2, 50, 3), (3, 8, 5)])
def test_sphericity_corrections_match_pingouin(seed, subjects, levels):
    pingouin = pytest.importorskip("pingouin")
    table = heteroscedastic_table(seed, subjects, levels)
    ours = rm_anova(table)
    wide = long_format(table).pivot(index="subject", columns="level", values="y")
    theirs = pingouin.rm_anova(long_format(table), dv="y", within="level", subject="subject", correction=True)
    assert ours.epsilon_gg == pytest.approx(pingouin.epsilon(wide, correction="gg"), rel=1e-9)
    assert ours.epsilon_hf == pytest.approx(min(1.0, pingouin.epsilon(wide, correction="hf")), rel=1e-9)
    assert ours.epsilon_gg == pytest.approx(theirs["eps"].iloc[0], rel=1e-9)
    assert ours.p_gg == pytest.approx(theirs["p_GG_corr"].iloc[0], rel=1e-8)
    assert ours.p == pytest.approx(theirs["p_unc"].iloc[0], rel=1e-8)
    assert 1 / (levels - 1) <= ours.epsilon_gg <= ours.epsilon_hf <= 1


def test_two_levels_need_no_sphericity_correction():
    ours = rm_anova(heteroscedastic_table(4, levels=2))
    assert (ours.epsilon_gg, ours.epsilon_hf) == (1.0, 1.0) and ours.p_gg == ours.p == ours.p_hf


def test_holm_matches_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    table = heteroscedastic_table(5, subjects=12, levels=4)
    tests = paired_tests(table, list("abcd"))
    p = [t.p for t in tests]
    assert [t.p_holm for t in tests] == pytest.approx(list(multipletests(p, method="holm")[1]), rel=1e-12)
    assert [t.p_bonferroni for t in tests] == pytest.approx(list(multipletests(p, method="bonferroni")[1]), rel=1e-12)


def test_anova_rejects_incomplete_tables():
    table = sample_table(5)
    table[0, 1] = np.nan
    with pytest.raises(ValueError, match="complete"):
        rm_anova(table)
    with pytest.raises(ValueError, match="2 subjects"):
        rm_anova(table[:1])


def test_efficiency_definitions():
    loss, params, tokens, joules = np.log(20.0), 2e6, 1e6, 7.2e6  # perplexity 20, 2M params, 2 kWh
    assert efficiency.perplexity(loss) == pytest.approx(20.0)
    assert efficiency.parameter_efficiency(loss, params) == pytest.approx(1 / 20 / 2)
    assert efficiency.energy_aware_parameter_efficiency(loss, params, joules) == pytest.approx(1 / 20 / 2 / 2)
    assert efficiency.tokens_per_joule(tokens, joules) == pytest.approx(1e6 / 7.2e6)
    assert efficiency.loss_reduction_per_kwh(loss, joules, vocab_size=1000) == pytest.approx((np.log(1000) - loss) / 2)


@pytest.mark.parametrize("missing", [np.nan, 0.0, -1.0])
def test_missing_energy_stays_missing(missing):
    assert np.isnan(efficiency.energy_aware_parameter_efficiency(3.0, 1e6, missing))
    assert np.isnan(efficiency.tokens_per_joule(1e6, missing))
    assert np.isnan(efficiency.loss_reduction_per_kwh(3.0, missing))
