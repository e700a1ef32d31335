"""tuner.stats against small hand-checked examples."""

import dataclasses
import math

import numpy as np
import optuna
import pytest

from tuner import stats
from tuner.curves import normalize

FAST = 2000  # resamples: enough for stable intervals in these tests, a fraction of a second each


def test_iqm_of_eight_values_drops_two_at_each_end() -> None:
    # 1 2 | 3 4 5 6 | 7 8 -> (3 + 4 + 5 + 6) / 4
    assert stats.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)


def test_iqm_of_five_values_drops_one_at_each_end() -> None:
    # 1 | 2 3 10 | 1000 -> (2 + 3 + 10) / 3: the outlier does not count
    assert stats.iqm([10, 1000, 2, 1, 3]) == pytest.approx(5.0)


def test_iqm_keeps_small_samples_whole() -> None:
    assert stats.iqm([7]) == 7.0
    assert stats.iqm([1, 2, 6]) == pytest.approx(3.0)


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, math.nan], [1.0, math.inf]])
def test_iqm_rejects_empty_nested_or_non_finite_samples(bad: list) -> None:
    with pytest.raises(ValueError):
        stats.iqm(bad)


def test_ci_contains_the_iqm_and_shrinks_with_more_data() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.normal(10, 2, size=10), rng.normal(10, 2, size=200)
    low_s, high_s = stats.bootstrap_ci(small, n_resamples=FAST)
    low_l, high_l = stats.bootstrap_ci(large, n_resamples=FAST)
    assert low_s < stats.iqm(small) < high_s
    assert low_l < stats.iqm(large) < high_l
    assert high_l - low_l < (high_s - low_s) / 2
    assert low_l < 10 < high_l


def test_ci_narrows_with_lower_confidence() -> None:
    sample = np.arange(20.0)
    low95, high95 = stats.bootstrap_ci(sample, n_resamples=FAST)
    low50, high50 = stats.bootstrap_ci(sample, confidence=0.5, n_resamples=FAST)
    assert low95 < low50 < high50 < high95


def test_ci_of_an_all_equal_sample_has_zero_width() -> None:
    assert stats.bootstrap_ci([3.5] * 6) == (3.5, 3.5)
    assert stats.bootstrap_ci([2.0, 2.0], statistic=lambda x: float(np.mean(x) * 2)) == (4.0, 4.0)


def test_ci_of_a_single_value_is_undefined() -> None:
    low, high = stats.bootstrap_ci([42.0])
    assert math.isnan(low) and math.isnan(high)


def test_ci_with_another_statistic() -> None:
    low, high = stats.bootstrap_ci([1, 2, 3, 4, 5], statistic=lambda x: float(np.max(x)), n_resamples=500)
    assert 1 <= low <= high == 5


def test_ci_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_ci([1, 2, 3], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        stats.bootstrap_ci([1, 2, 3], n_resamples=0)


def test_ci_is_deterministic_given_the_seed() -> None:
    sample = np.random.default_rng(2).normal(size=12)
    first = stats.bootstrap_ci(sample, n_resamples=FAST, seed=7)
    assert stats.bootstrap_ci(sample, n_resamples=FAST, seed=7) == first
    assert stats.bootstrap_ci(sample, n_resamples=FAST, seed=8) != first


def test_clearly_separated_groups_differ_significantly() -> None:
    rng = np.random.default_rng(3)
    baseline, candidate = rng.normal(0, 1, size=10), rng.normal(5, 1, size=10)
    result = stats.compare(baseline, candidate, n_resamples=FAST)
    assert (result.n_baseline, result.n_candidate) == (10, 10)
    assert result.difference == pytest.approx(stats.iqm(candidate) - stats.iqm(baseline))
    low, high = result.difference_ci
    assert 3.5 < low < result.difference < high < 6.5
    assert result.significant
    assert result.p_value < 0.001  # every candidate value ranks above every baseline value
    assert result.baseline_ci[0] < result.baseline_iqm < result.baseline_ci[1]
    assert result.candidate_ci[0] < result.candidate_iqm < result.candidate_ci[1]
    assert result.baseline_mean == pytest.approx(np.mean(baseline))
    assert result.candidate_std == pytest.approx(np.std(candidate, ddof=1))
    assert result.confidence == 0.95


def test_worse_candidate_is_significant_with_a_negative_difference() -> None:
    result = stats.compare([10, 11, 12, 13, 14, 15], [0, 1, 2, 3, 4, 5], n_resamples=FAST)
    assert result.difference == pytest.approx(-10.0)
    assert result.difference_ci[1] < 0
    assert result.significant


def test_identical_samples_do_not_differ() -> None:
    sample = [1.0, 4.0, 2.0, 8.0, 5.0, 7.0]
    result = stats.compare(sample, sample, n_resamples=FAST)
    assert result.difference == 0.0
    assert result.difference_ci[0] < 0 < result.difference_ci[1]
    assert not result.significant
    assert result.p_value == pytest.approx(1.0)


def test_all_equal_groups() -> None:
    same = stats.compare([500.0] * 4, [500.0] * 4)
    assert same.difference_ci == (0.0, 0.0)
    assert not same.significant
    assert same.p_value == pytest.approx(1.0)
    apart = stats.compare([9.0] * 5, [500.0] * 5)
    assert apart.difference_ci == (491.0, 491.0)
    assert apart.significant


def test_a_single_value_per_group_is_never_significant() -> None:
    result = stats.compare([0.0], [100.0])
    assert result.difference == 100.0
    assert all(math.isnan(bound) for bound in result.difference_ci)
    assert not result.significant
    assert math.isnan(result.baseline_std)


def test_compare_is_deterministic_given_the_seed() -> None:
    rng = np.random.default_rng(4)
    baseline, candidate = rng.normal(0, 1, size=8), rng.normal(0.5, 1, size=8)
    first = stats.compare(baseline, candidate, n_resamples=FAST, seed=11)
    assert stats.compare(baseline, candidate, n_resamples=FAST, seed=11) == first
    assert stats.compare(baseline, candidate, n_resamples=FAST, seed=12).difference_ci != first.difference_ci


def test_comparison_is_frozen() -> None:
    result = stats.compare([1, 2, 3], [2, 3, 4], n_resamples=100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.significant = True  # type: ignore[misc]


# --- normalisation, probability of improvement, importance intervals ----------------------------------
def test_normalized_score_by_hand() -> None:
    """The card normalises with :func:`tuner.curves.normalize`, as the benchmark reports do."""
    assert normalize(150.0, random_score=20.0, reference_score=500.0) == pytest.approx(130 / 480)
    assert normalize(-1200.0, random_score=-1200.0, reference_score=-150.0) == 0.0
    assert normalize(-150.0, random_score=-1200.0, reference_score=-150.0) == 1.0
    with pytest.raises(ValueError, match="equals the random score"):
        normalize(1.0, random_score=5.0, reference_score=5.0)


def test_probability_of_improvement_by_hand() -> None:
    # x=[1,2,3] vs y=[2,2]: 1 loses twice, 2 ties twice (1/2 each), 3 wins twice → (0 + 1 + 2) / 6.
    assert stats.probability_of_improvement([[1, 2, 3]], [[2, 2]]) == pytest.approx(0.5)
    # [3, 4] vs [1, 3.5]: three of four pairs won → 0.75; with a second, fully separated task → mean.
    assert stats.probability_of_improvement([[3, 4]], [[1, 3.5]]) == pytest.approx(0.75)
    assert stats.probability_of_improvement([[3, 4], [9, 8]], [[1, 3.5], [1, 2]]) == pytest.approx(0.875)


def test_probability_of_improvement_on_known_samples() -> None:
    same = [[-200.0, -180.0, -150.0, -210.0, -190.0]]
    assert stats.probability_of_improvement(same, same) == 0.5
    low, high = stats.probability_of_improvement_ci(same, same, n_resamples=2000)
    assert low < 0.5 < high
    separated = ([[10.0, 11.0, 12.0], [5.0, 6.0]], [[1.0, 2.0, 3.0], [0.0, 1.0]])
    assert stats.probability_of_improvement(*separated) == 1.0
    assert stats.probability_of_improvement_ci(*separated, n_resamples=2000) == (1.0, 1.0)
    reversed_low, reversed_high = stats.probability_of_improvement_ci(separated[1], separated[0])
    assert reversed_low == reversed_high == 0.0
    with pytest.raises(ValueError, match="same number"):
        stats.probability_of_improvement([[1.0]], [[1.0], [2.0]])


def test_importance_intervals_find_the_one_parameter_that_matters() -> None:
    """A study whose objective depends on x only: x ranks first in at least 95 % of the resamples and
    its interval lies above the others'."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: -((t.suggest_float("x", 0, 1) - 0.3) ** 2) + 0 * t.suggest_float("y", 0, 1)
        + 0 * t.suggest_float("z", 0, 1),
        n_trials=60,
    )  # fmt: skip
    intervals = stats.importance_intervals(
        study.trials,
        evaluator=lambda seed: optuna.importance.FanovaImportanceEvaluator(n_trees=16, seed=seed),
        n_resamples=100,
    )
    first, *others = intervals
    assert first.name == "x" and first.rank == 1
    assert first.ranked_first >= 0.95 and first.rank_held == first.ranked_first
    assert all(first.low > other.high for other in others)
    assert sum(i.importance for i in intervals) == pytest.approx(1.0)


# --- the difference of two aggregates, stratified by task --------------------------------------------
def test_stratified_difference_of_constant_groups_is_exact() -> None:
    baseline = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]  # pooled IQM: [0, 0, 1, 1] -> 0.5
    candidate = [[0.5, 0.5, 0.5], [1.5, 1.5, 1.5]]  # pooled IQM 1.0
    assert stats.stratified_difference_ci(baseline, candidate) == (0.5, 0.5)


def test_stratified_difference_separates_a_shifted_candidate_and_not_an_identical_one() -> None:
    rng = np.random.default_rng(0)
    baseline = [rng.normal(0.0, 1.0, 5), rng.normal(5.0, 1.0, 5), rng.normal(-3.0, 1.0, 5)]
    shifted = [group + 3.0 for group in baseline]
    low, high = stats.stratified_difference_ci(baseline, shifted)
    point = stats.iqm(np.concatenate(shifted)) - stats.iqm(np.concatenate(baseline))
    assert 0.0 < low <= point <= high
    low, high = stats.stratified_difference_ci(baseline, baseline)
    assert low < 0.0 < high
    assert stats.stratified_difference_ci(baseline, shifted, seed=3) == stats.stratified_difference_ci(
        baseline, shifted, seed=3
    )


def test_stratified_difference_of_single_values_is_undefined() -> None:
    low, high = stats.stratified_difference_ci([[1.0], [2.0]], [[3.0], [4.0]])
    assert math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="at least one group on each side"):
        stats.stratified_difference_ci([], [[1.0]])
