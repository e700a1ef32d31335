"""Tune hyperparameters with Optuna, every trial and seed recorded in MLflow: ``python -m tuner.tune``.

    python -m tuner.tune algo=ppo env=cartpole search=ppo sampler=tpe pruner=median \\
        tune.n_trials=50 tune.n_seeds=3 tune.budget_steps=50000

compose (Hydra) → validate everything (search space, sampler, pruner, seeds, the base config and its
environment) → create or resume the study and top up its trial budget → open (or reopen) the sweep's
MLflow run → run ``tune.n_workers`` workers → trials table, Optuna plots and best params on the sweep
run → export the best trial as a preset → held-out validation of default vs tuned → summary tables.
Re-running the same command resumes the study; ``make worker`` joins it from other machines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich import get_console
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from algorithms import ConfigError
from tuner.app import CommandFailed, hydra_app
from tuner.prepare import Prepared, join_study, prepare, worker_index
from tuner.provenance import record_command
from tuner.secrets import mask_secrets
from tuner.study import (
    SWEEP_RUN_ATTR,
    BudgetStatus,
    best_trial,
    budget_status,
    enqueue_base,
    fail_reason,
    mark_started,
    objective_label,
    retried_numbers,
    study_lock,
    top_up_budget,
)
from tuner.sweep_finish import finish_sweep
from tuner.tracking import RunRecorder, RunSignals, interrupts_raise, start_run
from tuner.trial_record import TrialOutcome
from tuner.worker import INTERRUPTED_HINT, run_worker, work_and_report

log = logging.getLogger(__name__)


class SweepProgress:
    """Rich progress of the study (trials done / budget, best so far, pruned and failed counts, ETA).

    Re-reads the study, so it shows every worker's trials, and prints a line per finished trial (on a
    terminal above the bar; in a log, the lines are the record).
    """

    def __init__(self, study: optuna.Study, total: int, console: Console) -> None:
        self.study = study
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),  # takes the width the other columns leave
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            expand=True,
        )
        self.task = self.progress.add_task(study.study_name, total=total, info="")
        self._reported = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        self.refresh()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.refresh()
        self.progress.stop()

    def refresh(self) -> BudgetStatus:
        """Re-read the study, print newly finished trials and update the bar."""
        trials = self.study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        for trial in trials:
            if trial.state.is_finished() and trial.number not in self._reported:
                self._reported.add(trial.number)
                self.console.print(describe_trial(trial, retried, objective_label(self.study)))
        status = budget_status(self.study)
        best = best_value(self.study)
        shown = "-" if best is None else f"{best:.1f}"
        info = f"best {shown} · {status.pruned} pruned · {status.failed} failed"
        self.progress.update(self.task, completed=status.complete + status.pruned + status.failed, info=info)
        return status

    def outcome(self, outcome: TrialOutcome) -> None:
        """A trial of the in-process worker ended."""
        self.refresh()


def describe_trial(trial: optuna.trial.FrozenTrial, retried: set[int], label: str = "mean return") -> str:
    """One line for a finished trial: number, state, value (called ``label``) or reason (``retried``:
    the numbers of retried attempts, :func:`tuner.study.retried_numbers`), duration."""
    seconds = trial.duration.total_seconds() if trial.duration else float("nan")
    value = f" {label} {trial.values[0]:.2f}" if trial.values else ""
    reason = fail_reason(trial, retried)
    return (
        f"trial {trial.number} {trial.state.name}{value}{f' ({reason})' if reason else ''} in {seconds:.0f} s"
    )


def best_value(study: optuna.Study) -> float | None:
    """Best mean return so far (the first objective of a multi-objective study)."""
    best = best_trial(study)
    return None if best is None else best.values[0]


def run_local_workers(prepared: Prepared, overrides: Sequence[str], progress: SweepProgress) -> None:
    """Run ``tune.n_workers`` workers: in this process for one, as ``tuner.worker`` subprocesses otherwise."""
    settings = prepared.settings
    if settings.n_workers == 1:
        run_worker(prepared.study, prepared.storage, prepared.setup, settings, on_outcome=progress.outcome)
        return
    log_dir = Path(prepared.config["paths"]["runs_dir"]) / "logs" / settings.study_name
    log_dir.mkdir(parents=True, exist_ok=True)

    workers: list[subprocess.Popen[bytes]] = []
    with interrupts_raise() as signals:
        try:
            for index in range(settings.n_workers):
                log_file = (log_dir / f"worker-{index + 1}.log").open("ab")
                workers.append(
                    subprocess.Popen(
                        # worker=<index> gives each worker its own sampler seed (when one is fixed)
                        [sys.executable, "-m", "tuner.worker", *overrides, f"worker={index + 1}"],
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )
            progress.console.print(f"{settings.n_workers} workers started; their logs: {log_dir}")
            wait_for_workers(workers, signals, progress.refresh)
        finally:
            for worker in workers:  # on Ctrl-C: stop the workers; their trials go back to the queue
                if worker.poll() is None:
                    worker.terminate()
            for worker in workers:
                worker.wait()
    _report_lost_workers(prepared, {i + 1: w.returncode for i, w in enumerate(workers)}, log_dir, progress)


def wait_for_workers(
    workers: Sequence[subprocess.Popen[bytes]],
    signals: RunSignals,
    refresh: Callable[[], None],
    refresh_s: float = 2.0,
) -> None:
    """Wait until every worker process has exited, calling ``refresh`` every ``refresh_s`` seconds and
    once at the end; returns the moment the last one exits. A signal raises only inside the waits, never
    inside ``refresh``: a read of the study cut off there could keep a lock on the storage that the
    workers' last writes then wait for."""
    for worker in workers:
        while worker.poll() is None:
            with signals.allowed(), contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=refresh_s)
            if worker.poll() is None:
                refresh()
    refresh()


def _report_lost_workers(
    prepared: Prepared, exit_codes: Mapping[int, int], log_dir: Path, progress: SweepProgress
) -> None:
    """After the local workers ended: a warning for each that failed, if the study's trials all finished
    anyway (a dead worker's trial is retried by the others); CommandFailed if some did not."""
    lost = [f"worker {k} {_ended(code)}" for k, code in exit_codes.items() if code != 0]
    if not lost:
        return
    status = budget_status(prepared.study)
    unfinished = status.waiting + status.running
    if unfinished:
        raise CommandFailed(
            f"{', '.join(lost)}; {unfinished} trials are unfinished (logs: {log_dir}); run the same "
            "command again to resume"
        )
    progress.console.print(
        f"[yellow]warning: {', '.join(lost)} (logs: {log_dir}); every trial finished (one it was running "
        "was retried)[/yellow]"
    )


def _ended(exit_code: int) -> str:
    """How a worker process ended, from its exit code (negative: killed by that signal)."""
    if exit_code < 0:
        return f"was killed by {signal.Signals(-exit_code).name}"
    return f"exited with code {exit_code}"


@hydra_app("tune", interrupted=INTERRUPTED_HINT)
def main(cfg: DictConfig) -> None:
    """``python -m tuner.tune``: run the sweep (or, with ``worker=<index>`` in a multirun, one worker job
    of it); exit codes as in :mod:`tuner.app`."""
    overrides = HydraConfig.get().overrides.task
    index = worker_index(cfg.get("worker"))
    joining = index is not None and index > 0
    prepared = join_study(cfg, f"worker {index}") if joining else prepare(cfg, create=True)
    if index is None:
        run_sweep(prepared, overrides)
    elif index == 0:  # the job that owns the study: in-process worker, then the tables and validation
        prepared.settings = replace(prepared.settings, n_workers=1)
        run_sweep(prepared, overrides)
    else:
        work_and_report(prepared, f"worker {index}")


def run_sweep(prepared: Prepared, overrides: Sequence[str]) -> None:
    """Budget, sweep run, workers, then the records and tables of the finished study."""
    console = get_console()  # the one rich console: log lines print above the progress bar
    settings, study = prepared.settings, prepared.study
    with contextlib.ExitStack() as stack:
        sweep, added = _open_sweep(prepared, overrides, stack)
        status = budget_status(study)
        console.print(
            f"study {study.study_name!r} in {mask_secrets(settings.storage)}: {status.counted} trials "
            f"in the budget ({added} new), {status.complete + status.pruned + status.failed} finished"
        )
        prepared.setup = replace(prepared.setup, sweep_run_id=sweep.run_id)
        mark_started(study)
        with SweepProgress(study, settings.n_trials, console) as progress:
            run_local_workers(prepared, overrides, progress)
        finish_sweep(prepared, sweep, console)


def _open_sweep(
    prepared: Prepared, overrides: Sequence[str], stack: contextlib.ExitStack
) -> tuple[RunRecorder, int]:
    """Top up the budget, record the command (``overrides``) on the study and open the sweep run (entered
    on ``stack``); returns it and the number of trials added.

    Both happen under the study's lock: a second sweep command on the same study finds the budget and
    the sweep run the first one made, and joins them. If the run cannot be opened on a study this
    command created, the study is deleted again: a failed command leaves nothing behind.
    """
    settings, study = prepared.settings, prepared.study
    params = _sweep_params(prepared.config)
    config_yaml = OmegaConf.to_yaml(params)
    with study_lock(settings.storage, study.study_name):
        new_study = budget_status(study).counted == 0
        if new_study and settings.enqueue_base:
            outside = enqueue_base(study, prepared.setup.space, prepared.config["algo"])
            sampled = f"; the sampler chooses {', '.join(outside)} (outside the space)" if outside else ""
            get_console().print(f"trial 0 trains the base config's searched values{sampled}")
        added = top_up_budget(study, settings.n_trials)
        previous = study.user_attrs.get(SWEEP_RUN_ATTR)
        try:
            sweep = stack.enter_context(
                start_run(
                    **prepared.setup.tracking,
                    run_name=f"sweep-{study.study_name}",
                    tags={"kind": "sweep", "optuna_study": study.study_name},
                    resume_run_id=previous,
                )
            )
        except ConfigError:
            if new_study:
                optuna.delete_study(study_name=study.study_name, storage=prepared.storage)
            raise
        record_command(study, overrides)
        if previous != sweep.run_id:  # a new study (or its run was deleted)
            study.set_user_attr(SWEEP_RUN_ATTR, sweep.run_id)
            sweep.log_params(params)
            sweep.log_text(config_yaml, "config.yaml")
            return sweep, added
    # MLflow params are write-once: a resumed or joined session's config is kept as an artifact.
    sweep.log_text(config_yaml, f"config-resumed-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.yaml")
    return sweep, added


def _sweep_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the sweep run records as params: the tuning settings and the base training config."""
    return {k: v for k, v in config.items() if k != "paths"}


if __name__ == "__main__":
    main()
