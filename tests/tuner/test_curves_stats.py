"""Report statistics against hand-checked numbers: curve summaries, stratified bootstrap, profiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuner.curves import normalize, normalized_auc, time_to_threshold
from tuner.stats import bootstrap_ci, iqm, performance_profile, stratified_bootstrap_ci


def test_normalize_maps_random_to_zero_and_reference_to_one() -> None:
    np.testing.assert_allclose(normalize([-1200.0, -150.0, -675.0], -1200.0, -150.0), [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="reference score equals the random score"):
        normalize([1.0], 5.0, 5.0)


def test_time_to_threshold_is_the_first_evaluation_at_or_above_it() -> None:
    steps, returns = [10_000, 20_000, 30_000, 40_000], [100.0, 475.0, 300.0, 500.0]
    assert time_to_threshold(steps, returns, 475.0) == 20_000  # reached exactly; the later dip is ignored
    assert time_to_threshold(steps, returns, 480.0) == 40_000
    assert math.isnan(time_to_threshold(steps, returns, 501.0))


def test_normalized_auc_on_a_hand_computed_curve() -> None:
    # Points (0, 0) [start], (50, 0.5), (100, 1.0): trapezoids 12.5 + 37.5 = 50 over 100 steps.
    assert normalized_auc([50, 100], [0.5, 1.0], 100) == pytest.approx(0.5)
    # A budget of 200 extends the last value flat: (50 + 100) / 200.
    assert normalized_auc([50, 100], [0.5, 1.0], 200) == pytest.approx(0.75)
    # Faster learning, same final score: a larger area.
    assert normalized_auc([50, 100], [1.0, 1.0], 100) > normalized_auc([50, 100], [0.0, 1.0], 100)


def test_curve_summaries_reject_bad_curves() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        normalized_auc([], [], 10)
    with pytest.raises(ValueError, match="sorted"):
        time_to_threshold([20, 10], [1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="budget_steps"):
        normalized_auc([1], [1.0], 0)


def test_iqm_and_bootstrap_ci_on_a_hand_checked_sample() -> None:
    # IQM of four values keeps the middle two: (0 + 0) / 2. Resampling [0, 0, 0, 1] gives k ones with
    # probability Binom(4, 1/4): k <= 1 -> IQM 0 (p = 0.738), k = 2 -> 0.5 (p = 0.211), k >= 3 -> 1
    # (p = 0.051). The 2.5 % quantile is therefore 0 and the 97.5 % quantile 1.
    assert iqm([0.0, 0.0, 0.0, 1.0]) == 0.0
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0]) == (0.0, 1.0)


def test_stratified_bootstrap_on_a_hand_checked_example() -> None:
    # Env A [0, 0, 0, 1] and env B [5, 5, 5, 5] pooled: 8 values, the IQM is the mean of the middle 4.
    # B always contributes four 5s; with k ones resampled in A the middle four are (0, 0, 5, 5) for
    # k = 0 (IQM 2.5, p = 0.316), (0, 1, 5, 5) for k = 1 (2.75, p = 0.422), (1, 1, 5, 5) for k >= 2
    # (3.0, p = 0.262). So the point IQM is 2.75 and the 95 % interval (2.5, 3.0).
    groups = [[0.0, 0.0, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0]]
    assert iqm(np.concatenate(groups)) == 2.75
    assert stratified_bootstrap_ci(groups) == (2.5, 3.0)
    # Without strata a resample could draw fewer than four 5s, which widens the interval below 2.5.
    low, _ = bootstrap_ci(np.concatenate(groups))
    assert low < 2.5


def test_stratified_bootstrap_keeps_each_stratum_whole() -> None:
    # Constant strata: every resample is the sample itself, a zero-width interval at the IQM.
    assert stratified_bootstrap_ci([[0.0, 0.0], [1.0, 1.0]]) == (0.5, 0.5)
    assert all(math.isnan(v) for v in stratified_bootstrap_ci([[1.0], [2.0]]))
    assert stratified_bootstrap_ci([[0.0, 1.0, 2.0, 3.0]], seed=3) == stratified_bootstrap_ci(
        [[0.0, 1.0, 2.0, 3.0]], seed=3
    )
    with pytest.raises(ValueError, match="at least one group"):
        stratified_bootstrap_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        stratified_bootstrap_ci([[1.0, math.nan]])


def test_performance_profile_counts_runs_above_each_threshold() -> None:
    profile = performance_profile([0.2, 0.5, 1.0, 1.5], [0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(profile, [1.0, 0.5, 0.25, 0.0])
