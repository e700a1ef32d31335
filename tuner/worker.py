"""A worker: claims the study's waiting trials one at a time and runs them until none is left.

``python -m tuner.worker [same overrides as tuner.tune]`` (``make worker``) joins an existing study from
any machine that reaches its storage; ``tuner.tune`` starts ``tune.n_workers`` of these locally.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable
from typing import Protocol

import optuna
from omegaconf import DictConfig
from optuna.storages import RDBStorage

from tuner.app import hydra_app
from tuner.objective import run_trial
from tuner.pbt_population import PBTExecutor
from tuner.population import PopulationExecutor
from tuner.population_envs import MultiEnvPopulationExecutor
from tuner.prepare import Prepared, join_study
from tuner.study import (
    TuneSettings,
    budget_status,
    claim_trial,
    fail_and_retry,
    heartbeat,
    time_left,
)
from tuner.tracking import RunSignals, interrupts_raise
from tuner.trial_record import TrialOutcome, TrialSetup

log = logging.getLogger(__name__)

# Seconds between an idle worker's looks at the study while other workers run its last trials: short,
# so that the worker, and the sweep waiting for it, end moments after the last trial does. (Stale trials
# are still found by their heartbeat clock, tune.grace_period.)
IDLE_POLL_S = 0.5
INTERRUPTED_HINT = (
    "finished trials are kept and running ones go back to the queue; run the same command again to resume"
)


class TrialExecutor(Protocol):
    """What trains the trials a worker claims: one at a time (:class:`SequentialExecutor`) or K seeds at
    once in a batched population (:class:`tuner.population.PopulationExecutor`). Finished trials go to
    the ``report`` callback the executor was built with."""

    def has_room(self) -> bool:
        """Whether a newly claimed trial can start now."""

    def start(self, trial: optuna.Trial, heartbeat: contextlib.ExitStack) -> None:
        """Take a claimed trial, and its running heartbeat, to close when the trial ends."""

    def busy(self) -> bool:
        """Whether trials are training."""

    def advance(self, signals: RunSignals) -> None:
        """Train: a whole trial, or one iteration of every member; signals raise only in the training."""

    def settle(self) -> bool:
        """With nothing training: tidy up (a drained population retires); whether there is work again
        without claiming."""

    def abandon(self, exc: BaseException) -> list[optuna.Trial]:
        """End the MLflow runs of the trials in hand as ``exc`` says; those trials, to retry."""

    def close(self) -> None:
        """Stop the heartbeats still running and free what the executor holds."""


class SequentialExecutor:
    """A :class:`TrialExecutor` that trains one trial at a time, every seed in turn (:func:`run_trial`)."""

    def __init__(
        self, study: optuna.Study, setup: TrialSetup, report: Callable[[TrialOutcome], None]
    ) -> None:
        self.study = study
        self.setup = setup
        self.report = report
        self.current: tuple[optuna.Trial, contextlib.ExitStack] | None = None

    def has_room(self) -> bool:
        return self.current is None

    def start(self, trial: optuna.Trial, heartbeat: contextlib.ExitStack) -> None:
        self.current = (trial, heartbeat)

    def busy(self) -> bool:
        return self.current is not None

    def advance(self, signals: RunSignals) -> None:
        assert self.current is not None
        trial, heartbeat = self.current
        outcome = run_trial(self.study, trial, self.setup, signals)
        self.current = None
        heartbeat.close()
        self.report(outcome)

    def settle(self) -> bool:
        return False

    def abandon(self, exc: BaseException) -> list[optuna.Trial]:
        return [] if self.current is None else [self.current[0]]

    def close(self) -> None:
        if self.current is not None:
            self.current[1].close()


def run_worker(
    study: optuna.Study,
    storage: RDBStorage,
    setup: TrialSetup,
    settings: TuneSettings,
    on_outcome: Callable[[TrialOutcome], None] | None = None,
) -> list[TrialOutcome]:
    """Claim and run trials until the budget is used up (or ``tune.timeout`` passed); returns outcomes.

    The claims, heartbeats, stale trials, waits and retries are this loop's; the training is the
    executor's: one trial at a time, or with ``tune.population`` set K seeds at a time.

    While other workers still run the last trials, this one waits: a trial whose worker dies comes back
    as a retry once its heartbeat is stale, and any live worker picks it up. On an interrupt or an error
    the trials in hand end their MLflow runs and go back to the queue.
    """
    outcomes: list[TrialOutcome] = []

    def report(outcome: TrialOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    executor: TrialExecutor
    if settings.method == "pbt":
        executor = PBTExecutor(study, setup, settings, report, storage)
    elif settings.population and setup.tasks:
        executor = MultiEnvPopulationExecutor(study, setup, settings, report)
    elif settings.population:
        executor = PopulationExecutor(study, setup, settings, report)
    else:
        executor = SequentialExecutor(study, setup, report)
    # Signals raise only while trials learn or the worker sleeps (signals.allowed()); during claims,
    # reports and MLflow writes they wait, so that no database write is cut off halfway.
    with interrupts_raise() as signals, contextlib.closing(executor):
        try:
            while True:
                if executor.has_room() and time_left(study, settings.timeout):
                    fail_stale_trials(study)
                    trial = claim_trial(study, storage)
                    if trial is not None:
                        executor.start(trial, heartbeat(storage, trial, settings.heartbeat_interval))
                        continue
                if executor.busy():
                    executor.advance(signals)
                elif not executor.settle():
                    if _nothing_left(study, settings):
                        break
                    with signals.allowed():
                        time.sleep(IDLE_POLL_S)
        except BaseException as exc:
            for trial in executor.abandon(exc):  # they must not stay RUNNING: back to the queue
                fail_and_retry(storage, study, trial)
            raise
    return outcomes


def _nothing_left(study: optuna.Study, settings: TuneSettings) -> bool:
    """Whether the worker is done: no trial waits or runs anywhere, or ``tune.timeout`` has passed."""
    status = budget_status(study)
    return (status.waiting == 0 and status.running == 0) or not time_left(study, settings.timeout)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped beating (each comes back as a retry)."""
    with warnings.catch_warnings():  # heartbeat handling is marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def describe(outcome: TrialOutcome) -> str:
    """One line for a finished trial."""
    value = "" if outcome.value is None else f" value {outcome.value:.2f}"
    reason = f" ({outcome.reason})" if outcome.reason else ""
    return f"trial {outcome.number} {outcome.state.name}{value}{reason}"


def work_and_report(prepared: Prepared, name: str) -> None:
    """Run trials of a joined study until its budget is used, printing a line per trial and a summary."""
    outcomes = run_worker(
        prepared.study,
        prepared.storage,
        prepared.setup,
        prepared.settings,
        on_outcome=lambda outcome: print(describe(outcome), flush=True),
    )
    print(f"{name} done: {len(outcomes)} trials", flush=True)


@hydra_app("tune", interrupted=INTERRUPTED_HINT)
def main(cfg: DictConfig) -> None:
    """``python -m tuner.worker``: join the study named by the config and work on it until its budget is
    used up; exit codes as in :mod:`tuner.app`."""
    work_and_report(join_study(cfg, "worker"), "worker")


if __name__ == "__main__":
    main()
