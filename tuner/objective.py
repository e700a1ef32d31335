"""One Optuna trial: sample a config, train it on each tuning seed, report, prune, record.

A trial is an MLflow run nested under the sweep run, and each seed a run nested under the trial
(``sweep → trial → seed``). The objective is the mean final evaluation return over the tuning seeds.
Seeds run one after another; after every evaluation the trial reports the mean of the finished seeds'
final returns and the current seed's latest one, at step ``seed_index * budget + env_step`` — so every
trial reports at the same steps and pruners compare like with like.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from algorithms import ConfigError, NonFiniteLossError, UnsupportedSpaceError
from tuner.compose import algorithm_config
from tuner.search import SearchSpace, to_overrides
from tuner.secrets import mask_secrets
from tuner.study import FAIL_REASON_ATTR, TRIAL_RUN_ATTR
from tuner.tracking import FAILED, RunSignals, open_run, start_run
from tuner.train import run_training

log = logging.getLogger(__name__)

OVERRIDES_ATTR = "overrides"  # trial user attr: Hydra overrides that replay the trial with tuner.train
VALUES_ATTR = "config_values"  # trial user attr: the sampled values as config fields (after reparams)
SEED_RETURNS_ATTR = "seed_returns"  # trial user attr: final eval return of each tuning seed


@dataclass(frozen=True)
class TrialSetup:
    """Everything a worker needs to run trials of one study.

    Attributes:
        base_config: the resolved training config (conf/train.yaml's keys) that sampled values override.
        base_overrides: the Hydra overrides of the tune command that also apply to tuner.train.
        space: the search space.
        seeds: tuning seeds; one training run each.
        budget_steps: env steps per seed.
        tracking: ``uri``, ``experiment`` and ``artifact_dir`` of the MLflow store.
        sweep_run_id: the MLflow run the trial runs nest under.
        multi_objective: report (mean return, wall-clock seconds) instead of the return alone.
    """

    base_config: Mapping[str, Any]
    base_overrides: tuple[str, ...]
    space: SearchSpace
    seeds: tuple[int, ...]
    budget_steps: int
    tracking: Mapping[str, str]
    sweep_run_id: str | None
    multi_objective: bool


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended, for the worker's log and progress display."""

    number: int
    state: TrialState
    value: float | None
    reason: str = ""


class PruningReporter:
    """The :data:`tuner.train.EvalHook` of one seed: reports to Optuna and asks whether to prune."""

    def __init__(self, trial: optuna.Trial, seed_index: int, budget_steps: int, finished: Sequence[float]):
        self.trial = trial
        self.offset = seed_index * budget_steps
        self.finished = list(finished)
        self.pruned_at: int | None = None

    def __call__(self, step: int, mean_return: float) -> bool:
        """Report the running objective at this evaluation; True when the trial should stop."""
        if not math.isfinite(mean_return):
            return False
        global_step = self.offset + step
        value = (sum(self.finished) + mean_return) / (len(self.finished) + 1)
        self.trial.report(value, global_step)
        if self.trial.should_prune():
            self.pruned_at = global_step
            return True
        return False


def trial_config(setup: TrialSetup, values: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The training config of one seed of a trial: base config + sampled algo values + seed + budget."""
    config = OmegaConf.to_container(OmegaConf.create(dict(setup.base_config)), resolve=True)
    assert isinstance(config, dict)
    config["algo"].update(values)
    config["seed"] = seed
    config["total_steps"] = setup.budget_steps
    return config


def trial_overrides(setup: TrialSetup, values: Mapping[str, Any]) -> list[str]:
    """Hydra overrides that make ``python -m tuner.train`` train this trial's config on its first seed."""
    return [
        *setup.base_overrides,
        *to_overrides(values),
        f"total_steps={setup.budget_steps}",
        f"seed={setup.seeds[0]}",
    ]


def run_trial(
    study: optuna.Study, trial: optuna.Trial, setup: TrialSetup, signals: RunSignals | None = None
) -> TrialOutcome:
    """Sample, train every seed, tell Optuna the result; returns how the trial ended.

    A sampled config the algorithm rejects, or a loss that turns non-finite, ends the trial FAIL with
    the reason in its ``fail_reason`` user attr and on its MLflow run; the study goes on. Anything
    else (a bug, KeyboardInterrupt) propagates after the trial's MLflow run is ended.

    ``signals`` is the worker's deferred signal block (:func:`tuner.tracking.interrupts_raise`): the
    trial's runs then leave signals to it, and they interrupt only the learning. None: each run handles
    them itself.
    """
    values = setup.space.suggest(trial)
    trial.set_user_attr(VALUES_ATTR, dict(values))
    overrides = mask_secrets(trial_overrides(setup, values))
    trial.set_user_attr(OVERRIDES_ATTR, overrides)
    try:
        algorithm_config(trial_config(setup, values, setup.seeds[0])["algo"])
    except ConfigError as exc:
        return fail_trial(study, trial, f"invalid sampled config: {exc}", setup)

    started = time.perf_counter()
    try:
        scores, pruned_at = _train_seeds(study, trial, setup, values, overrides, signals, started)
    except NonFiniteLossError as exc:
        return fail_trial(study, trial, f"training diverged: {exc}", None)
    except (ConfigError, UnsupportedSpaceError) as exc:
        return fail_trial(study, trial, f"invalid config: {exc}", None)

    trial.set_user_attr(SEED_RETURNS_ATTR, scores)
    if pruned_at is not None:
        study.tell(trial, state=TrialState.PRUNED)
        return TrialOutcome(trial.number, TrialState.PRUNED, None)
    objective = sum(scores) / len(scores)
    if setup.multi_objective:
        study.tell(trial, [objective, time.perf_counter() - started])
    else:
        study.tell(trial, objective)
    return TrialOutcome(trial.number, TrialState.COMPLETE, objective)


def _train_seeds(
    study: optuna.Study,
    trial: optuna.Trial,
    setup: TrialSetup,
    values: Mapping[str, Any],
    overrides: list[str],
    signals: RunSignals | None,
    started: float,
) -> tuple[list[float], int | None]:
    """Open the trial's MLflow run and train its seeds one after another, reporting to the pruner;
    (final return of each seed that finished, the step it was pruned at or None)."""
    scores: list[float] = []
    with start_run(
        **setup.tracking,
        run_name=f"trial-{trial.number}",
        tags=_trial_tags(study, trial),
        parent_run_id=setup.sweep_run_id,
        handle_signals=signals is None,
    ) as run:
        trial.set_user_attr(TRIAL_RUN_ATTR, run.run_id)
        run.log_params({"trial": {"number": trial.number}, "sampled": dict(values)})
        run.log_text("\n".join(overrides) + "\n", "overrides.txt")
        for index, seed in enumerate(setup.seeds):
            reporter = PruningReporter(trial, index, setup.budget_steps, scores)
            result = run_training(
                OmegaConf.create(trial_config(setup, values, seed)),
                parent_run_id=run.run_id,
                on_eval=None if setup.multi_objective else reporter,
                run_name=f"trial-{trial.number}-seed{seed}",
                signals=signals,
            )
            if result.stopped_early:  # pruned: the runs end normally, their state in a tag
                run.set_tags({"optuna_state": "PRUNED", "pruned_step": reporter.pruned_at})
                return scores, reporter.pruned_at
            scores.append(result.mean_return)
            run.log_metric("trial/seed_return", result.mean_return, index)
        objective = sum(scores) / len(scores)
        run.log_metrics({"trial/objective": objective, "trial/wall_time_s": time.perf_counter() - started}, 0)
        run.set_tags({"optuna_state": "COMPLETE"})
    return scores, None


def fail_trial(
    study: optuna.Study, trial: optuna.Trial, reason: str, setup: TrialSetup | None
) -> TrialOutcome:
    """End the trial FAIL with ``reason``; with ``setup``, also record it as a FAILED MLflow trial run."""
    log.warning("trial %d failed: %s", trial.number, reason)
    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    if setup is not None:  # no run exists yet: record one, so the MLflow view shows the failure too
        run = open_run(
            **setup.tracking,
            run_name=f"trial-{trial.number}",
            tags=_trial_tags(study, trial),
            parent_run_id=setup.sweep_run_id,
        )
        try:
            trial.set_user_attr(TRIAL_RUN_ATTR, run.run_id)
            run.set_tags({"optuna_state": "FAIL"})
        finally:
            run.end(FAILED, reason)
    study.tell(trial, state=TrialState.FAIL)
    return TrialOutcome(trial.number, TrialState.FAIL, None, reason)


def _trial_tags(study: optuna.Study, trial: optuna.Trial) -> dict[str, Any]:
    """Tags of a trial's MLflow run: which study and trial it belongs to."""
    return {"optuna_study": study.study_name, "optuna_trial": trial.number, "kind": "trial"}
