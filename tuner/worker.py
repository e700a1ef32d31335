"""A worker: claims the study's waiting trials one at a time and runs them until none is left.

``python -m tuner.worker [same overrides as tuner.tune]`` (``make worker``) joins an existing study from
any machine that reaches its storage; ``tuner.tune`` starts ``tune.n_workers`` of these locally.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable

import optuna
from omegaconf import DictConfig
from optuna.storages import RDBStorage

from tuner.app import hydra_app
from tuner.objective import TrialOutcome, TrialSetup, run_trial
from tuner.population import run_population
from tuner.prepare import Prepared, join_study
from tuner.study import (
    Heartbeat,
    TuneSettings,
    budget_status,
    claim_trial,
    fail_and_retry,
    time_left,
    trial_id,
)
from tuner.tracking import interrupts_raise

log = logging.getLogger(__name__)

INTERRUPTED_HINT = (
    "finished trials are kept and running ones go back to the queue; run the same command again to resume"
)


def run_worker(
    study: optuna.Study,
    storage: RDBStorage,
    setup: TrialSetup,
    settings: TuneSettings,
    on_outcome: Callable[[TrialOutcome], None] | None = None,
) -> list[TrialOutcome]:
    """Claim and run trials until the budget is used up (or ``tune.timeout`` passed); returns outcomes.

    With ``tune.population`` set, the trials train K seeds at a time (:mod:`tuner.population`).

    While other workers still run the last trials, this one waits: a trial whose worker dies comes back
    as a retry once its heartbeat is stale, and any live worker picks it up.
    """
    if settings.population:
        return run_population(study, storage, setup, settings, on_outcome)
    outcomes: list[TrialOutcome] = []
    # Signals raise only while a trial learns or the worker sleeps (signals.allowed()); during claims,
    # reports and MLflow writes they wait, so that no database write is cut off halfway.
    with interrupts_raise() as signals:
        while time_left(study, settings.timeout):
            with warnings.catch_warnings():  # heartbeat handling is marked experimental in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            trial = claim_trial(study, storage)
            if trial is None:
                status = budget_status(study)
                if status.waiting == 0 and status.running == 0:
                    break
                with signals.allowed():
                    time.sleep(settings.heartbeat_interval)
                continue
            with Heartbeat(storage, trial_id(trial), settings.heartbeat_interval):
                try:
                    outcome = run_trial(study, trial, setup, signals)
                except BaseException:
                    # Interrupted or a bug: the trial must not stay RUNNING; it goes back to the queue.
                    fail_and_retry(storage, study, trial)
                    raise
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    return outcomes


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
