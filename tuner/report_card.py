"""The "did tuning help?" report card of a sweep, from its held-out validation runs.

For each env and, when every env has a random and a reference score, for the aggregate of normalised
scores: the IQM of default and tuned with 95 % bootstrap intervals (stratified over envs for the
aggregate); the probability of improvement P(tuned > default) with its interval (Agarwal et al., 2021);
the generalisation gap, the best trial's mean on its tuning seeds minus the tuned config's mean on the
held-out seeds, which shows how much of the "best" was seed luck; the study's cost; and hyperparameter
importances with bootstrap intervals and rank stability. Written as ``report_card.md`` with two figures
(``performance_profile.png``, ``importance.png``); :func:`card_summary` is its short form for the
console.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from matplotlib.figure import Figure
from optuna.trial import TrialState

from tuner import stats
from tuner.curves import normalize
from tuner.multienv import NORMALIZED_ATTR
from tuner.study import best_trial
from tuner.trial_record import SEED_RETURNS_ATTR

CARD_MD = "report_card.md"
PROFILE_PNG = "performance_profile.png"
IMPORTANCE_PNG = "importance.png"
IMPORTANCE_RESAMPLES = 100
"""Refits of the importance evaluator (each on a resample of the completed trials)."""
AGGREGATE = "aggregate (normalised)"


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95 % interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass(frozen=True)
class StudyCost:
    """What a study spent: trials by state, budgeted env steps, summed trial time and wall time."""

    complete: int
    pruned: int
    failed: int
    env_steps: int
    """Budget × seeds of each complete trial, plus last reported step × seeds of each pruned one."""
    trial_seconds: float
    """Sum of the trials' durations (each trial trains with one torch thread a process)."""
    wall_seconds: float
    """From the first trial's start to the last one's end."""


@dataclass(frozen=True)
class ReportCard:
    """Everything the card shows (see the module docstring)."""

    default: dict[str, Interval]
    tuned: dict[str, Interval]
    improvement: Interval
    gap: Interval | None
    cost: StudyCost
    importances: list[stats.ImportanceInterval]
    normalised: dict[str, dict[str, list[float]]]
    """Per label (default, tuned), the scores the performance profile plots (normalised if possible)."""


def build_card(
    default: Mapping[str, Sequence[float]],
    tuned: Mapping[str, Sequence[float]],
    study: optuna.Study,
    n_seeds: int,
    budget_steps: int,
    scores: Mapping[str, tuple[float, float]] | None = None,
) -> ReportCard:
    """The card of ``study`` from its held-out returns ``default`` and ``tuned`` (env → one return per
    seed); ``scores``: env → (random score, reference score), for the normalised aggregate."""
    envs = list(default)
    default_by_env = {env: _iqm_interval(default[env]) for env in envs}
    tuned_by_env = {env: _iqm_interval(tuned[env]) for env in envs}
    normalised = {"default": dict(default), "tuned": dict(tuned)}
    if scores is not None and all(env in scores for env in envs):
        normalised = {
            label: {env: normalize(values[env], *scores[env]).tolist() for env in envs}
            for label, values in (("default", default), ("tuned", tuned))
        }
        for label, by_env in (("default", default_by_env), ("tuned", tuned_by_env)):
            groups = list(normalised[label].values())
            by_env[AGGREGATE] = Interval(
                stats.iqm(np.concatenate(groups)), *stats.stratified_bootstrap_ci(groups)
            )
    candidates, baselines = [tuned[e] for e in envs], [default[e] for e in envs]
    improvement = Interval(
        stats.probability_of_improvement(candidates, baselines),
        *stats.probability_of_improvement_ci(candidates, baselines),
    )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return ReportCard(
        default_by_env,
        tuned_by_env,
        improvement,
        _gap(
            study,
            [v for env in envs for v in tuned[env]],
            [v for env in envs for v in normalised["tuned"][env]],
        ),
        study_cost(study, n_seeds, budget_steps),
        _importances(complete),
        {label: {env: list(v) for env, v in by_env.items()} for label, by_env in normalised.items()},
    )


def _iqm_interval(values: Sequence[float]) -> Interval:
    return Interval(stats.iqm(values), *stats.bootstrap_ci(values))


def _gap(study: optuna.Study, held_out: Sequence[float], normalised: Sequence[float]) -> Interval | None:
    """Best trial's mean over its tuning seeds minus the tuned config's held-out mean (``held_out``), with
    the bootstrap interval of that difference of means; in normalised scores (``normalised``, the
    held-out ones) for a multi-env study, whose envs' returns are on different scales."""
    best = best_trial(study)
    tuning = best.user_attrs.get(SEED_RETURNS_ATTR, []) if best is not None else []
    if best is not None and NORMALIZED_ATTR in best.user_attrs:
        tuning, held_out = best.user_attrs[NORMALIZED_ATTR], normalised
    if not tuning or not held_out:
        return None
    return Interval(float(np.mean(tuning) - np.mean(held_out)), *stats.mean_difference_ci(tuning, held_out))


def study_cost(study: optuna.Study, n_seeds: int, budget_steps: int) -> StudyCost:
    """The study's :class:`StudyCost` from its trials."""
    trials = study.get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state == s] for s in (TrialState.COMPLETE, TrialState.PRUNED)}
    steps = len(by_state[TrialState.COMPLETE]) * n_seeds * budget_steps + sum(
        max(t.intermediate_values, default=0) * n_seeds for t in by_state[TrialState.PRUNED]
    )
    timed = [t for t in trials if t.datetime_start is not None and t.datetime_complete is not None]
    wall = (
        (max(t.datetime_complete for t in timed) - min(t.datetime_start for t in timed)).total_seconds()
        if timed
        else 0.0
    )
    return StudyCost(
        complete=len(by_state[TrialState.COMPLETE]),
        pruned=len(by_state[TrialState.PRUNED]),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        env_steps=int(steps),
        trial_seconds=sum(t.duration.total_seconds() for t in timed if t.duration is not None),
        wall_seconds=wall,
    )


def _importances(complete: Sequence[optuna.trial.FrozenTrial]) -> list[stats.ImportanceInterval]:
    """Importances with intervals, or none when the trials are too few or vary too little."""
    if len(complete) < 3 or len({t.values[0] for t in complete}) < 2:
        return []
    return stats.importance_intervals(
        complete,
        evaluator=lambda seed: optuna.importance.FanovaImportanceEvaluator(n_trees=16, seed=seed),
        n_resamples=IMPORTANCE_RESAMPLES,
    )


# --- output ----------------------------------------------------------------------------------------
def card_summary(card: ReportCard) -> str:
    """The card's short form: default vs tuned IQM (aggregate if any, else each env), POI and gap."""
    rows = [AGGREGATE] if AGGREGATE in card.tuned else [k for k in card.tuned]
    lines = [
        f"did tuning help? {row}: default {card.default[row]} vs tuned {card.tuned[row]}" for row in rows
    ]
    lines.append(f"P(tuned > default) {card.improvement}")
    if card.gap is not None:
        lines.append(f"generalisation gap (best trial's tuning seeds − tuned held-out seeds) {card.gap}")
    return "\n".join(lines)


def card_markdown(card: ReportCard) -> str:
    """The whole card as markdown (the figures next to it, by file name)."""
    lines = [
        "# Did tuning help?",
        "",
        "| env | default IQM [95 % CI] | tuned IQM [95 % CI] |",
        "|---|---|---|",
    ]
    lines += [f"| {env} | {card.default[env]} | {card.tuned[env]} |" for env in card.tuned]
    lines += ["", f"- Probability of improvement P(tuned > default): {card.improvement}"]
    if card.gap is not None:
        lines.append(
            f"- Generalisation gap (best trial's tuning-seed mean − tuned held-out mean): {card.gap}"
        )
    cost = card.cost
    lines += [
        f"- Cost: {cost.complete} complete, {cost.pruned} pruned, {cost.failed} failed trials; "
        f"{cost.env_steps:,} budgeted env steps; {cost.trial_seconds:.0f} trial-seconds; "
        f"{cost.wall_seconds:.0f} s wall time",
        "",
        f"![performance profile]({PROFILE_PNG})",
    ]
    if card.importances:
        lines += [
            "",
            "| parameter | importance [95 % CI] | rank | rank held | ranked first |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {i.name} | {i.importance:.3f} [{i.low:.3f}, {i.high:.3f}] | {i.rank} | {i.rank_held:.0%} | "
            f"{i.ranked_first:.0%} |"
            for i in card.importances
        ]
        lines += ["", f"![importance]({IMPORTANCE_PNG})"]
    return "\n".join(lines) + "\n"


def write_card(card: ReportCard, directory: str | Path) -> list[Path]:
    """Write the markdown card and its figures into ``directory``; the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / CARD_MD, directory / PROFILE_PNG]
    paths[0].write_text(card_markdown(card), encoding="utf-8")
    profile_figure(card).savefig(paths[1])
    if card.importances:
        paths.append(directory / IMPORTANCE_PNG)
        importance_figure(card.importances).savefig(paths[-1])
    return paths


def profile_figure(card: ReportCard) -> Figure:
    """Performance profiles of default and tuned: the share of runs scoring above τ, against τ."""
    pooled = {label: np.concatenate([np.asarray(v, dtype=float) for v in by_env.values()])
              for label, by_env in card.normalised.items()}  # fmt: skip
    everything = np.concatenate(list(pooled.values()))
    taus = np.linspace(everything.min(), everything.max(), 200)
    fig = Figure(figsize=(6, 4), dpi=72, layout="constrained")
    ax = fig.subplots()
    for label, values in pooled.items():
        ax.plot(taus, stats.performance_profile(values, taus), label=label)
    normalised = AGGREGATE in card.tuned
    ax.set_xlabel("normalised score τ" if normalised else "return τ")
    ax.set_ylabel("share of held-out runs scoring > τ")
    ax.set_title("performance profile")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def importance_figure(importances: Sequence[stats.ImportanceInterval]) -> Figure:
    """Importances with their intervals, labelled with how often each rank held over resamples."""
    fig = Figure(figsize=(6, 0.5 + 0.4 * len(importances)), dpi=72, layout="constrained")
    ax = fig.subplots()
    names = [i.name for i in importances][::-1]
    values = np.array([i.importance for i in importances][::-1])
    errors = np.array([[i.importance - i.low, i.high - i.importance] for i in importances][::-1]).T
    ax.barh(names, values, xerr=np.clip(errors, 0, math.inf), color="tab:blue", capsize=3)
    for y, item in enumerate(importances[::-1]):
        ax.text(item.high, y, f"  rank {item.rank} held {item.rank_held:.0%}", va="center", fontsize="small")
    ax.set_xlabel("importance (fANOVA), 95 % bootstrap interval")
    return fig
