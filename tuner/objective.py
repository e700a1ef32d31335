"""One Optuna trial: sample a config, train it on each tuning seed, report, prune, record.

A trial is an MLflow run nested under the sweep run, and each seed a run nested under the trial
(``sweep → trial → seed``). The objective is the mean final evaluation return over the tuning seeds.
Seeds run one after another. An intermediate value is the mean evaluation return of the seeds that
have reached that env step, reported at the step itself (as a population trial reports, its seeds side
by side): a sequential trial reports while its first seed trains, so the pruner compares every trial's
first seed at the same env steps and decides then; the later seeds train to the end (Optuna keeps the
first value reported at a step, so they could not update it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import optuna
from omegaconf import OmegaConf

from algorithms import ConfigError, NonFiniteLossError, UnsupportedSpaceError
from tuner.compose import algorithm_config
from tuner.multienv import EnvTask
from tuner.search import to_overrides
from tuner.tracking import RunSignals
from tuner.train import run_training
from tuner.trial_record import TrialOutcome, TrialRecord, TrialSetup, record_sampled


class PruningReporter:
    """The :data:`tuner.train.EvalHook` of a trial's first seed: reports to Optuna and asks whether to
    prune."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.pruned_at: int | None = None

    def __call__(self, step: int, mean_return: float) -> bool:
        """Report this evaluation at its env step; True when the trial should stop."""
        if not math.isfinite(mean_return):
            return False
        self.trial.report(mean_return, step)
        if self.trial.should_prune():
            self.pruned_at = step
            return True
        return False


def trial_config(
    setup: TrialSetup, values: Mapping[str, Any], seed: int, task: EnvTask | None = None
) -> dict[str, Any]:
    """The training config of one seed of a trial: base config + sampled algo values + seed + budget
    (on ``task``'s env and budget, for one env of a multi-env study)."""
    config = OmegaConf.to_container(OmegaConf.create(dict(setup.base_config)), resolve=True)
    assert isinstance(config, dict)
    config["algo"].update(values)
    config["seed"] = seed
    config["total_steps"] = setup.budget_steps
    if task is not None:
        config["env"] = OmegaConf.to_container(OmegaConf.create(dict(task.env)))
        config["total_steps"] = task.budget_steps
    return config


def seed_config(
    setup: TrialSetup, values: Mapping[str, Any], seed: int, task: EnvTask | None = None
) -> dict[str, Any]:
    """:func:`trial_config` as a tuning seed trains it: keeping its model and learning curve only if
    ``tune.trial_artifacts`` says so (the held-out validation runs and exported presets keep theirs)."""
    config = trial_config(setup, values, seed, task)
    config["tracking"] = {
        **config["tracking"],
        "log_models": setup.trial_artifacts,
        "log_curves": setup.trial_artifacts,
    }
    return config


def trial_overrides(setup: TrialSetup, values: Mapping[str, Any]) -> list[str]:
    """Hydra overrides that make ``python -m tuner.train`` train this trial's config on its first seed
    (and, for a multi-env study, its first env)."""
    return [
        *setup.base_overrides,
        *([f"env={setup.tasks[0].name}"] if setup.tasks else []),
        *to_overrides(values),
        f"total_steps={setup.budget_steps}",
        f"seed={setup.seeds[0]}",
    ]


def run_trial(
    study: optuna.Study, trial: optuna.Trial, setup: TrialSetup, signals: RunSignals
) -> TrialOutcome:
    """Sample, train every seed, tell Optuna the result; returns how the trial ended.

    A sampled config the algorithm rejects, or a loss that turns non-finite, ends the trial FAIL with
    the reason in its ``fail_reason`` user attr and on its MLflow run; the study goes on. Anything
    else (a bug, KeyboardInterrupt) propagates after the trial's MLflow runs are ended.

    ``signals`` is the worker's deferred signal block (:func:`tuner.tracking.interrupts_raise`): the
    trial's runs leave signals to it, and they interrupt only the learning.
    """
    values = setup.space.suggest(trial)
    overrides = trial_overrides(setup, values)
    record_sampled(trial, values, overrides)
    try:
        algorithm_config(trial_config(setup, values, setup.seeds[0])["algo"])
    except ConfigError as exc:
        return open_record(study, trial, setup, values).fail(f"invalid sampled config: {exc}")

    started = time.perf_counter()
    with open_record(study, trial, setup, values) as record:
        try:
            if setup.tasks:
                return _train_envs(record, values, signals, started)
            scores, pruned_at = _train_seeds(record, values, signals)
        except NonFiniteLossError as exc:
            return record.fail(f"training diverged: {exc}")
        except (ConfigError, UnsupportedSpaceError) as exc:
            return record.fail(f"invalid config: {exc}")
        if pruned_at is not None:
            return record.prune(pruned_at, scores)
        return record.complete(scores, time.perf_counter() - started)


def open_record(
    study: optuna.Study, trial: optuna.Trial, setup: TrialSetup, values: Mapping[str, Any]
) -> TrialRecord:
    """The trial's :class:`TrialRecord`, with the overrides that replay its first seed."""
    return TrialRecord.open(study, trial, setup, values, trial_overrides(setup, values))


def _train_seeds(
    record: TrialRecord, values: Mapping[str, Any], signals: RunSignals
) -> tuple[list[float], int | None]:
    """Train the trial's seeds one after another under its run, reporting to the pruner; (final
    return of each seed that finished, the step it was pruned at or None)."""
    setup = record.setup
    scores: list[float] = []
    reporter = PruningReporter(record.trial)
    for index, seed in enumerate(setup.seeds):
        result = run_training(
            OmegaConf.create(seed_config(setup, values, seed)),
            parent_run_id=record.run.run_id,
            on_eval=reporter if index == 0 and not setup.multi_objective else None,
            run_name=record.seed_run_name(seed),
            signals=signals,
        )
        if result.stopped_early:  # pruned: the seed's run ends normally
            return scores, reporter.pruned_at
        scores.append(result.mean_return)
        record.seed_finished(index, result.mean_return)
    return scores, None


def _train_envs(
    record: TrialRecord, values: Mapping[str, Any], signals: RunSignals, started: float
) -> TrialOutcome:
    """Train the trial's seeds on every env of a multi-env study, in the study's order, and end the trial.

    After each env the trial reports its objective so far (the IQM of the normalised returns of the envs
    done) at the env steps a seed has trained by then, and the pruner may stop it before the next env;
    every trial reports at the same steps in the same order, so the pruner compares like with like.
    """
    setup = record.setup
    returns_by_env: dict[str, list[float]] = {}
    outcome = None
    for index, task in enumerate(setup.tasks):
        returns_by_env[task.name] = [
            run_training(
                OmegaConf.create(seed_config(setup, values, seed, task)),
                parent_run_id=record.run.run_id,
                run_name=record.seed_run_name(seed, task.name),
                signals=signals,
            ).mean_return
            for seed in setup.seeds
        ]
        outcome = record.env_finished(index, returns_by_env, time.perf_counter() - started)
        if outcome is not None:
            break
    assert outcome is not None  # the last env ends the trial
    return outcome
