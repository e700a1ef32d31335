"""Statistics for comparing RL results over seeds: IQM, bootstrap confidence intervals, default vs tuned,
the probability of improvement, and hyperparameter importances with intervals.

The IQM and its intervals are computed with :mod:`scipy.stats`, importances with Optuna's evaluators;
this module only fixes the conventions:

* the interquartile mean (IQM) is the mean of the middle 50 % (``trim_mean`` with 25 % cut on each
  side), the aggregate recommended by rliable (Agarwal et al., 2021) for few-seed RL results;
* confidence intervals are **percentile** bootstrap intervals. BCa is second-order accurate for
  smooth statistics, but the IQM is a trimmed (non-smooth) statistic, and with the handful of seeds
  an RL validation has, BCa's jackknife acceleration is erratic and turns NaN whenever the jackknife
  values tie (e.g. a few equal returns of a solved CartPole). The percentile interval never leaves
  the range of the bootstrap distribution, needs no jackknife, and is what rliable uses;
* two groups (default config vs tuned config, each trained on its own seeds) are independent, so
  the bootstrap of their difference resamples each group separately (stratified by group).

* the probability of improvement P(X > Y) counts ties as one half and averages over tasks; its
  interval comes from resampling every task's two samples on their own;
* an importance's interval comes from refitting the evaluator on resamples of the trials, and its
  rank stability is the share of resamples that keep its rank.

Results are deterministic given ``seed``. Non-finite values are rejected: a crashed or diverged
seed must be dealt with explicitly by the caller, not averaged in as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import optuna
from scipy import stats as sps

IQM_CUT = 0.25  # proportion trimmed from each end
DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0

Statistic = Callable[[np.ndarray], float]


def iqm(values: npt.ArrayLike) -> float:
    """Interquartile mean: the mean of ``values`` after cutting 25 % from each end (rliable's IQM).

    ``scipy.stats.trim_mean`` cuts ``floor(0.25 * n)`` values at each end, so 8 values lose the two
    lowest and two highest, 5 values lose one at each end, and 1–3 values are kept whole.

    Raises:
        ValueError: ``values`` is empty, not one-dimensional, or holds a non-finite value.
    """
    return float(_iqm_along(_as_sample(values), axis=-1))


def bootstrap_ci(
    values: npt.ArrayLike,
    statistic: Statistic = iqm,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` of ``statistic`` over ``values``.

    Args:
        values: a one-dimensional sample, e.g. the final return of each seed.
        statistic: maps a 1-D array to a float; the IQM by default (computed vectorised).
        confidence: the interval's confidence level, in (0, 1).
        n_resamples: number of bootstrap resamples.
        seed: seed of the resampling generator; the same seed gives the same interval.

    Degenerate samples: if all values are equal every resample is the sample itself, so the
    interval is ``(s, s)`` with ``s = statistic(values)``. A single value says nothing about the
    spread, so ``(nan, nan)`` is returned rather than a zero-width interval that would claim
    certainty.

    Raises:
        ValueError: ``values`` is empty, not one-dimensional or not finite, or ``confidence`` or
            ``n_resamples`` is out of range.
    """
    sample = _as_sample(values)
    _check_settings(confidence, n_resamples)
    if sample.size == 1:
        return (math.nan, math.nan)
    if np.all(sample == sample[0]):
        point = _point(statistic, sample)
        return (point, point)
    result = sps.bootstrap(
        (sample,),
        _iqm_along if statistic is iqm else statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def stratified_bootstrap_ci(
    groups: Sequence[npt.ArrayLike],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the IQM of all ``groups`` pooled, resampling within each group.

    rliable's stratified bootstrap for an aggregate over tasks: each group (e.g. the normalized final
    scores of one environment's seeds) is resampled on its own (``scipy.stats.bootstrap`` with several
    unpaired samples), so every resample keeps every task with its number of runs, and the IQM is taken
    over the pooled resample. Groups with a single value or all-equal values are kept fixed (every
    resample of them is themselves). ``(nan, nan)`` if every group has one value.

    Raises:
        ValueError: no groups, a group empty or non-finite, or settings out of range.
    """
    samples = [_as_sample(group) for group in groups]
    if not samples:
        raise ValueError("expected at least one group")
    _check_settings(confidence, n_resamples)
    resampled = [sample for sample in samples if sample.size > 1 and not np.all(sample == sample[0])]
    fixed = [sample for sample in samples if not any(sample is r for r in resampled)]
    pooled = np.concatenate(samples)
    if all(sample.size == 1 for sample in samples):
        return (math.nan, math.nan)
    if not resampled:  # every group constant: each resample is the sample itself
        point = iqm(pooled)
        return (point, point)

    def pooled_iqm(*drawn: np.ndarray, axis: int = -1) -> np.ndarray:
        shape = drawn[0].shape[:-1]
        constants = [np.broadcast_to(sample, (*shape, sample.size)) for sample in fixed]
        return _iqm_along(np.concatenate([*drawn, *constants], axis=-1), axis=-1)

    result = sps.bootstrap(
        tuple(resampled),
        pooled_iqm,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        paired=False,  # each group (stratum) resampled on its own
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def stratified_difference_ci(
    baseline_groups: Sequence[npt.ArrayLike],
    candidate_groups: Sequence[npt.ArrayLike],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of IQM(candidate pooled) − IQM(baseline pooled), each group of each
    side resampled on its own (the stratified bootstrap of :func:`stratified_bootstrap_ci`, applied to
    two independent sets of runs, e.g. a tuned and a published preset on the same tasks).

    ``(nan, nan)`` when every group of both sides has a single value.

    Raises:
        ValueError: a side without groups, a group empty or non-finite, or settings out of range.
    """
    sides = [[_as_sample(g) for g in groups] for groups in (baseline_groups, candidate_groups)]
    if not all(sides):
        raise ValueError("expected at least one group on each side")
    _check_settings(confidence, n_resamples)
    if all(sample.size == 1 for side in sides for sample in side):
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    iqms = []
    for side in sides:
        drawn = [sample[rng.integers(0, sample.size, (n_resamples, sample.size))] for sample in side]
        iqms.append(_iqm_along(np.concatenate(drawn, axis=1), axis=1))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(iqms[1] - iqms[0], [alpha, 1.0 - alpha])
    return (float(low), float(high))


def performance_profile(scores: npt.ArrayLike, thresholds: npt.ArrayLike) -> np.ndarray:
    """Share of runs whose (normalized) score exceeds each threshold τ: rliable's performance profile.

    Returns an array shaped like ``thresholds``; it falls from 1 towards 0 as τ grows.
    """
    sample = _as_sample(scores)
    taus = np.asarray(thresholds, dtype=float)
    return (sample[None, :] > taus.reshape(-1, 1)).mean(axis=1).reshape(taus.shape)


def probability_of_improvement(
    candidates: Sequence[npt.ArrayLike], baselines: Sequence[npt.ArrayLike]
) -> float:
    """P(X > Y) averaged over tasks (Agarwal et al., NeurIPS 2021): for each task, the share of
    (candidate run, baseline run) pairs in which the candidate scores higher, ties counting one half
    (the Mann–Whitney U statistic over n·m); then the mean over tasks. Identical samples give 0.5,
    samples where every candidate beats every baseline give 1.

    Args:
        candidates: per task, the candidate's scores (e.g. the tuned config's held-out returns).
        baselines: per task, the baseline's scores, in the same task order.
    """
    pairs = _task_pairs(candidates, baselines)
    return float(np.mean([_poi_along(x, y) for x, y in pairs]))


def probability_of_improvement_ci(
    candidates: Sequence[npt.ArrayLike],
    baselines: Sequence[npt.ArrayLike],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`probability_of_improvement`, stratified: every task's
    candidate and baseline samples are resampled on their own (rliable's stratified bootstrap)."""
    pairs = _task_pairs(candidates, baselines)
    _check_settings(confidence, n_resamples)
    if all(x.size == 1 and y.size == 1 for x, y in pairs):
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    resampled = np.zeros(n_resamples)
    for x, y in pairs:  # each sample drawn with replacement, n_resamples times at once
        xs = x[rng.integers(x.size, size=(n_resamples, x.size))]
        ys = y[rng.integers(y.size, size=(n_resamples, y.size))]
        resampled += _poi_along(xs, ys)
    resampled /= len(pairs)
    tail = (1 - confidence) / 2
    return (float(np.quantile(resampled, tail)), float(np.quantile(resampled, 1 - tail)))


def mean_difference_ci(
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(``first``) − mean(``second``), each sample resampled on its
    own; a single value in one sample stays fixed while the other varies (e.g. the generalisation gap:
    the best trial's tuning seeds against the tuned config's held-out seeds)."""
    a, b = _as_sample(first), _as_sample(second)
    _check_settings(confidence, n_resamples)
    rng = np.random.default_rng(seed)
    draws = a[rng.integers(a.size, size=(n_resamples, a.size))].mean(axis=1) - b[
        rng.integers(b.size, size=(n_resamples, b.size))
    ].mean(axis=1)
    tail = (1 - confidence) / 2
    return (float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail)))


def _poi_along(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + ½ P(X = Y) over the last axis of ``x`` (n) and ``y`` (m); leading axes are batches."""
    greater = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    equal = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * equal


def _task_pairs(
    candidates: Sequence[npt.ArrayLike], baselines: Sequence[npt.ArrayLike]
) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(candidates) != len(baselines) or not candidates:
        raise ValueError(
            f"expected the same number (>= 1) of candidate and baseline tasks, got {len(candidates)} "
            f"and {len(baselines)}"
        )
    return [(_as_sample(x), _as_sample(y)) for x, y in zip(candidates, baselines, strict=True)]


@dataclass(frozen=True)
class ImportanceInterval:
    """One hyperparameter's importance with a bootstrap interval, and how stable its rank is."""

    name: str
    importance: float
    """Optuna's importance of the parameter on all the trials (they sum to 1 over parameters)."""
    low: float
    high: float
    """Percentile bootstrap interval of the importance over resamples of the trials."""
    rank: int
    """Its rank on all the trials (1: the most important)."""
    rank_held: float
    """Share of the resamples in which the parameter has that same rank."""
    ranked_first: float
    """Share of the resamples in which it is the most important."""


def importance_intervals(
    trials: Sequence[optuna.trial.FrozenTrial],
    evaluator: Callable[[int], optuna.importance.BaseImportanceEvaluator] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 200,
    seed: int = DEFAULT_SEED,
) -> list[ImportanceInterval]:
    """Hyperparameter importances of completed ``trials`` with bootstrap intervals: Optuna's evaluator
    (``evaluator(seed)``, default fANOVA) refitted on ``n_resamples`` resamples of the trials drawn with
    replacement (a resample whose objective values are all equal is left out). Sorted by importance on
    all the trials, most important first. ValueError when the objective does not vary."""
    _check_settings(confidence, n_resamples)
    if len(trials) < 2:
        raise ValueError(f"expected at least 2 completed trials, got {len(trials)}")
    make = evaluator or (lambda s: optuna.importance.FanovaImportanceEvaluator(seed=s))
    full = _importances(trials, make(seed))
    if full is None:
        raise ValueError("the trials' objective does not vary: no parameter has an importance")
    names = list(full)  # most important first
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(n_resamples):
        resample = [trials[i] for i in rng.integers(len(trials), size=len(trials))]
        importances = _importances(resample, make(seed + 1 + b))
        if importances is not None:  # a resample of equal objectives ranks nothing: left out
            rows.append([importances.get(name, 0.0) for name in names])
    if not rows:
        raise ValueError("no resample of the trials has a varying objective")
    draws = np.array(rows)
    ranks = (-draws).argsort(axis=1).argsort(axis=1) + 1  # 1 = most important in that resample
    tail = (1 - confidence) / 2
    return [
        ImportanceInterval(
            name=name,
            importance=full[name],
            low=float(np.quantile(draws[:, j], tail)),
            high=float(np.quantile(draws[:, j], 1 - tail)),
            rank=j + 1,
            rank_held=float(np.mean(ranks[:, j] == j + 1)),
            ranked_first=float(np.mean(ranks[:, j] == 1)),
        )
        for j, name in enumerate(names)
    ]


def _importances(
    trials: Sequence[optuna.trial.FrozenTrial], evaluator: optuna.importance.BaseImportanceEvaluator
) -> dict[str, float] | None:
    """Optuna's importances of the trials' params, most important first (a fresh in-memory study);
    None when their objective values are all equal (fANOVA has nothing to apportion)."""
    if len({t.values[0] for t in trials}) < 2:
        return None
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True))


@dataclass(frozen=True)
class Comparison:
    """Held-out validation of a candidate (tuned) config against a baseline (default) config.

    Each config was trained on its own seeds; the two samples are independent. IQMs and intervals
    are computed by :func:`compare`; ``difference`` is candidate − baseline.
    """

    n_baseline: int
    n_candidate: int
    baseline_iqm: float
    baseline_ci: tuple[float, float]
    candidate_iqm: float
    candidate_ci: tuple[float, float]
    difference: float
    difference_ci: tuple[float, float]
    significant: bool  # the difference's interval excludes 0
    p_value: float  # two-sided Mann–Whitney U, a rank-based second opinion
    baseline_mean: float
    baseline_std: float  # sample standard deviation (ddof=1); NaN for a single value
    candidate_mean: float
    candidate_std: float
    confidence: float


def compare(
    baseline: npt.ArrayLike,
    candidate: npt.ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Compare two independent samples (e.g. final returns of K seeds each) by their IQMs.

    Args:
        baseline: the reference sample, e.g. the default config's returns.
        candidate: the sample under test, e.g. the tuned config's returns.
        confidence: confidence level of all three intervals, in (0, 1).
        n_resamples: bootstrap resamples per interval.
        seed: seed of the resampling; the same inputs and seed give the same result.

    The difference of IQMs (candidate − baseline) gets a percentile bootstrap interval in which
    each group is resampled on its own (a stratified bootstrap, as the groups are independent).
    ``significant`` is true when that interval lies strictly above or strictly below 0; with a
    single value in either group there is no interval and the result is never significant. The
    two-sided Mann–Whitney U p-value (scipy's default exact or asymptotic method) is reported as a
    second opinion.

    Raises:
        ValueError: as :func:`bootstrap_ci`.
    """
    base = _as_sample(baseline)
    cand = _as_sample(candidate)
    _check_settings(confidence, n_resamples)
    base_iqm, cand_iqm = iqm(base), iqm(cand)
    difference_ci = _difference_ci(base, cand, confidence, n_resamples, seed)
    low, high = difference_ci
    p_value = float(sps.mannwhitneyu(cand, base, alternative="two-sided").pvalue)
    return Comparison(
        n_baseline=int(base.size),
        n_candidate=int(cand.size),
        baseline_iqm=base_iqm,
        baseline_ci=bootstrap_ci(base, confidence=confidence, n_resamples=n_resamples, seed=seed),
        candidate_iqm=cand_iqm,
        candidate_ci=bootstrap_ci(cand, confidence=confidence, n_resamples=n_resamples, seed=seed + 1),
        difference=cand_iqm - base_iqm,
        difference_ci=difference_ci,
        significant=bool(low > 0 or high < 0),  # False for NaN bounds
        p_value=p_value,
        baseline_mean=float(np.mean(base)),
        baseline_std=_std(base),
        candidate_mean=float(np.mean(cand)),
        candidate_std=_std(cand),
        confidence=confidence,
    )


def _difference_ci(
    base: np.ndarray, cand: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    if base.size == 1 or cand.size == 1:
        return (math.nan, math.nan)
    if np.all(base == base[0]) and np.all(cand == cand[0]):
        constant = float(cand[0] - base[0])
        return (constant, constant)

    def iqm_difference(b: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
        return _iqm_along(c, axis) - _iqm_along(b, axis)

    result = sps.bootstrap(
        (base, cand),
        iqm_difference,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        paired=False,  # each group resampled separately
        vectorized=True,
        rng=np.random.default_rng(seed + 2),
    )
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def _iqm_along(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """IQM along ``axis``; the vectorised form handed to ``scipy.stats.bootstrap``."""
    return np.asarray(sps.trim_mean(values, IQM_CUT, axis=axis))


def _as_sample(values: npt.ArrayLike) -> np.ndarray:
    sample = np.asarray(values, dtype=float)
    if sample.ndim != 1 or sample.size == 0:
        raise ValueError(f"expected a non-empty one-dimensional sample, got shape {sample.shape}")
    if not np.all(np.isfinite(sample)):
        raise ValueError(f"the sample holds non-finite values: {sample[~np.isfinite(sample)].tolist()}")
    return sample


def _check_settings(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")


def _point(statistic: Statistic, sample: np.ndarray) -> float:
    return iqm(sample) if statistic is iqm else float(statistic(sample))


def _std(sample: np.ndarray) -> float:
    return float(np.std(sample, ddof=1)) if sample.size > 1 else math.nan
