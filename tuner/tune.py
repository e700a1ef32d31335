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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RDBStorage
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
from tuner.compose import algorithm_config, override_key
from tuner.objective import TrialOutcome, TrialSetup
from tuner.population import check_population
from tuner.search import SearchSpace
from tuner.secrets import mask_secrets
from tuner.stores import StoreMissing
from tuner.study import (
    SWEEP_RUN_ATTR,
    BudgetStatus,
    TuneSettings,
    budget_status,
    build_pruner,
    build_sampler,
    fail_reason,
    is_multi_objective,
    make_storage,
    mark_started,
    open_study,
    retried_numbers,
    study_lock,
    top_up_budget,
)
from tuner.sweep_finish import finish_sweep
from tuner.tracking import RunRecorder, check_tracking_store, interrupts_raise, start_run
from tuner.train import RunSettings, build_agent, resolve_config
from tuner.worker import INTERRUPTED_HINT, StaleTrialRunCloser, run_worker, work_and_report

log = logging.getLogger(__name__)

JOIN_POLL_S = 2.0  # seconds between two looks at a study a worker waits for
# Config nodes that are not part of a training run.
TUNE_GROUPS = ("tune", "search", "sampler", "pruner", "storage", "worker")
NOT_FORWARDED = ("hydra", "seed", "total_steps", *TUNE_GROUPS)  # overrides the trials set themselves


@dataclass
class Prepared:
    """A validated sweep: its settings, storage, study and what every trial needs."""

    settings: TuneSettings
    storage: RDBStorage
    study: optuna.Study
    setup: TrialSetup
    config: dict[str, Any]


def training_overrides(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides of a tune command that tuner.train understands (algo, env, experiment, tracking…)."""
    return tuple(o for o in overrides if override_key(o) not in NOT_FORWARDED)


def prepare(cfg: DictConfig, create: bool) -> Prepared:
    """Validate the whole sweep config, check both stores and open the study (create it, if ``create``);
    raises ConfigError before anything is created, StoreMissing when not creating and there is no study."""
    config = resolve_config(cfg)
    settings = TuneSettings.from_config(config["tune"])
    algo, _ = algorithm_config(config["algo"])  # names a bad value by its key, before the space uses it
    space = SearchSpace.from_config(config["search"], algo, base=config["algo"])
    space = space.for_budget(settings.budget_steps, base=config["algo"])
    base_config = {k: v for k, v in config.items() if k not in TUNE_GROUPS}
    base_config["total_steps"] = settings.budget_steps
    # Build the agent once on the base config: an unknown env id, a missing extra or an unsupported
    # space is reported now, not as a failure of every trial.
    base_config["seed"] = settings.seeds[0]
    build_agent(base_config, RunSettings.from_config(base_config)).close()

    sampler = build_sampler(cfg.sampler, seed_offset=worker_index(cfg.get("worker")) or 0)
    check_population(settings, algo, is_multi_objective(sampler))
    pruner = build_pruner(cfg.pruner)
    tracking = {
        "uri": str(config["tracking"]["uri"]),
        "experiment": str(config["tracking"]["experiment"]),
        "artifact_dir": config["tracking"]["artifact_dir"],  # None: the tracking server's store
    }
    # Both stores are checked before either is created in (make_storage checks its own first): a bad
    # one leaves nothing behind.
    check_tracking_store(tracking["uri"], tracking["experiment"])
    storage = make_storage(settings, StaleTrialRunCloser(tracking["uri"]), create=create)
    study = open_study(settings, storage, sampler, pruner, create=create)
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    setup = TrialSetup(
        base_config=base_config,
        base_overrides=training_overrides(overrides),
        space=space,
        seeds=settings.seeds,
        budget_steps=settings.budget_steps,
        tracking=tracking,
        sweep_run_id=study.user_attrs.get(SWEEP_RUN_ATTR),
        multi_objective=is_multi_objective(sampler),
    )
    return Prepared(settings, storage, study, setup, config)


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
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(f"study {study.study_name}", total=total, info="")
        self._reported = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}

    def __enter__(self) -> SweepProgress:
        self.progress.__enter__()
        self.refresh()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.refresh()
        self.progress.__exit__(*exc_info)

    def refresh(self) -> BudgetStatus:
        """Re-read the study, print newly finished trials and update the bar."""
        trials = self.study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        for trial in trials:
            if trial.state.is_finished() and trial.number not in self._reported:
                self._reported.add(trial.number)
                self.console.print(describe_trial(trial, retried))
        status = budget_status(self.study)
        best = best_value(self.study)
        info = (
            f"best {best:.1f}" if best is not None else "best -"
        ) + f" · pruned {status.pruned} · failed {status.failed} · running {status.running}"
        self.progress.update(self.task, completed=status.complete + status.pruned + status.failed, info=info)
        return status

    def outcome(self, outcome: TrialOutcome) -> None:
        """A trial of the in-process worker ended."""
        self.refresh()


def describe_trial(trial: optuna.trial.FrozenTrial, retried: set[int]) -> str:
    """One line for a finished trial: number, state, value or reason (``retried``: the numbers of
    retried attempts, :func:`tuner.study.retried_numbers`), duration."""
    seconds = trial.duration.total_seconds() if trial.duration else float("nan")
    value = f" mean return {trial.values[0]:.2f}" if trial.values else ""
    reason = fail_reason(trial, retried)
    return (
        f"trial {trial.number} {trial.state.name}{value}{f' ({reason})' if reason else ''} in {seconds:.0f} s"
    )


def best_value(study: optuna.Study) -> float | None:
    """Best mean return so far (the first objective of a multi-objective study)."""
    best = best_trial(study)
    return None if best is None else best.values[0]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The COMPLETE trial with the highest mean return (NSGA-II: the Pareto point with the best return)."""
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(finished, key=lambda t: t.values[0], default=None)


def run_local_workers(prepared: Prepared, overrides: Sequence[str], progress: SweepProgress) -> None:
    """Run ``tune.n_workers`` workers: in this process for one, as ``tuner.worker`` subprocesses otherwise."""
    settings = prepared.settings
    if settings.n_workers == 1:
        run_worker(prepared.study, prepared.storage, prepared.setup, settings, on_outcome=progress.outcome)
        return
    log_dir = Path(prepared.config["paths"]["runs_dir"]) / "logs" / settings.study_name
    log_dir.mkdir(parents=True, exist_ok=True)

    workers: list[subprocess.Popen[bytes]] = []
    # A signal raises only in the sleep, never inside progress.refresh()'s read of the study: a read cut
    # off there could keep a lock on the storage that the workers' last writes then wait for.
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
            while any(worker.poll() is None for worker in workers):
                with signals.allowed():
                    time.sleep(2.0)
                progress.refresh()
        finally:
            for worker in workers:  # on Ctrl-C: stop the workers; their trials go back to the queue
                if worker.poll() is None:
                    worker.terminate()
            for worker in workers:
                worker.wait()
    _report_lost_workers(prepared, {i + 1: w.returncode for i, w in enumerate(workers)}, log_dir, progress)


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


def worker_index(value: Any) -> int | None:
    """The ``worker`` setting: None, or a job index >= 0; ConfigError otherwise."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(
            f"worker must be null or an index >= 0 (worker='range(N)' in a multirun), got {value!r}"
        )
    return value


def join_study(cfg: DictConfig, who: str) -> Prepared:
    """Open the study once its sweep command has created it, enqueued its trial budget and opened its
    sweep run, waiting up to ``tune.join_timeout`` seconds (a worker can start before or with the sweep
    command, and a multirun's jobs in any order, or far apart on a cluster's queue).

    Prints one line when it has to wait; nothing is created meanwhile.
    """
    timeout_s = TuneSettings.from_config(resolve_config(cfg)["tune"]).join_timeout
    deadline = time.monotonic() + timeout_s
    waiting = _Waiting(who, timeout_s)
    while True:  # until the storage and the study exist
        try:
            prepared = prepare(cfg, create=False)
            break
        except StoreMissing as exc:
            if time.monotonic() > deadline:
                raise
            waiting.say(str(exc))
        time.sleep(JOIN_POLL_S)
    name = prepared.study.study_name
    while True:  # then only re-read the study, not the whole config, agent and storage
        sweep_run_id = prepared.study.user_attrs.get(SWEEP_RUN_ATTR)
        # A resumed study has a sweep run already; its topped-up budget says the sweep command got there.
        topped_up = budget_status(prepared.study).counted >= prepared.settings.n_trials
        if sweep_run_id and topped_up:
            return replace(prepared, setup=replace(prepared.setup, sweep_run_id=sweep_run_id))
        if time.monotonic() > deadline:
            raise ConfigError(
                f"study {name!r} got no sweep run and {prepared.settings.n_trials} enqueued trials within "
                f"{timeout_s:.0f} s (tune.join_timeout); start its sweep command (make sweep) with the same "
                "settings"
            )
        waiting.say(f"study {name!r} has no sweep run or enqueued trials yet")
        time.sleep(JOIN_POLL_S)


class _Waiting:
    """Prints, once, what a joining worker waits for and for how long."""

    def __init__(self, who: str, timeout_s: float) -> None:
        self.who = who
        self.timeout_s = timeout_s
        self.said = False

    def say(self, reason: str) -> None:
        """Print the first reason to wait; later ones are the same wait."""
        if not self.said:
            print(
                mask_secrets(
                    f"{self.who}: {reason}; waiting up to {self.timeout_s:.0f} s (tune.join_timeout) for the "
                    "sweep command to create it and enqueue its trials"
                ),
                flush=True,
            )
            self.said = True


def run_sweep(prepared: Prepared, overrides: Sequence[str]) -> None:
    """Budget, sweep run, workers, then the records and tables of the finished study."""
    console = Console() if sys.stdout.isatty() else Console(width=120)  # logs: no 80-column wrap
    settings, study = prepared.settings, prepared.study
    with contextlib.ExitStack() as stack:
        sweep, added = _open_sweep(prepared, stack)
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


def _open_sweep(prepared: Prepared, stack: contextlib.ExitStack) -> tuple[RunRecorder, int]:
    """Top up the budget and open the sweep run (entered on ``stack``); returns it and the number of
    trials added.

    Both happen under the study's lock: a second sweep command on the same study finds the budget and
    the sweep run the first one made, and joins them. If the run cannot be opened on a study this
    command created, the study is deleted again: a failed command leaves nothing behind.
    """
    settings, study = prepared.settings, prepared.study
    params = _sweep_params(prepared.config)
    config_yaml = OmegaConf.to_yaml(params)
    with study_lock(settings.storage, study.study_name):
        new_study = budget_status(study).counted == 0
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
