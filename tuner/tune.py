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

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import hydra
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

from algorithms import ConfigError, UnsupportedSpaceError
from tuner.compose import CONF_DIR, algorithm_config
from tuner.objective import TrialOutcome, TrialSetup
from tuner.population import check_population
from tuner.search import SearchSpace
from tuner.secrets import mask_secrets
from tuner.study import (
    SWEEP_RUN_ATTR,
    BudgetStatus,
    TuneSettings,
    budget_status,
    build_pruner,
    build_sampler,
    is_multi_objective,
    make_storage,
    mark_started,
    open_study,
    top_up_budget,
)
from tuner.train import RunSettings, build_agent, resolve_config
from tuner.worker import StaleTrialRunCloser, run_worker, work_and_report

log = logging.getLogger(__name__)

EXIT_CONFIG_ERROR = 2
JOIN_TIMEOUT_S = 600.0  # a multirun worker job waits this long for job 0 to create the study
JOIN_POLL_S = 2.0
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


def override_key(override: str) -> str:
    """The top-level config key a Hydra override sets (``+algo.x=1`` → ``algo``)."""
    key = override.lstrip("+~").split("=", 1)[0]
    return key.split(".", 1)[0].split("@", 1)[0]


def training_overrides(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides of a tune command that tuner.train understands (algo, env, experiment, tracking…)."""
    return tuple(o for o in overrides if override_key(o) not in NOT_FORWARDED)


def prepare(cfg: DictConfig, create: bool) -> Prepared:
    """Validate the whole sweep config and open the study; raises ConfigError before any work starts."""
    config = resolve_config(cfg)
    settings = TuneSettings.from_config(config["tune"])
    algo = str(config["algo"].get("name"))
    space = SearchSpace.from_config(config["search"], algo, base=config["algo"])
    base_config = {k: v for k, v in config.items() if k not in TUNE_GROUPS}
    base_config["total_steps"] = settings.budget_steps
    algorithm_config(base_config["algo"])
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
    storage = make_storage(settings, StaleTrialRunCloser(tracking["uri"]))
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
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in self._reported:
                self._reported.add(trial.number)
                self.console.print(describe_trial(trial))
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


def describe_trial(trial: optuna.trial.FrozenTrial) -> str:
    """One line for a finished trial: number, state, value or reason, duration."""
    seconds = trial.duration.total_seconds() if trial.duration else float("nan")
    value = f" mean return {trial.values[0]:.2f}" if trial.values else ""
    reason = trial.user_attrs.get("fail_reason", "")
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
    from tuner.tracking import interrupts_raise

    workers: list[subprocess.Popen[bytes]] = []
    # A signal raises only in the sleep, never inside progress.refresh()'s read of the study: a read cut
    # off there could keep a lock on the storage that the workers' last writes then wait for.
    with interrupts_raise() as signals:
        try:
            for index in range(settings.n_workers):
                log_file = (log_dir / f"worker-{index}.log").open("ab")
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
    failed = [i for i, w in enumerate(workers) if w.returncode != 0]
    if failed:
        raise RuntimeError(f"workers {failed} exited with errors; see {log_dir}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="tune")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: one clear message and exit code 2 for a bad config, otherwise run the sweep
    (or, with ``worker=<index>`` in a multirun, one worker job of it)."""
    overrides = HydraConfig.get().overrides.task
    try:
        index = worker_index(cfg.get("worker"))
        joining = index is not None and index > 0
        prepared = wait_for_study(cfg) if joining else prepare(cfg, create=True)
    except (ConfigError, UnsupportedSpaceError) as exc:
        print(mask_secrets(f"error: {exc}"), file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    try:
        if index is None:
            run_sweep(prepared, overrides)
        elif index == 0:  # the job that owns the study: in-process worker, then the tables and validation
            prepared.settings = replace(prepared.settings, n_workers=1)
            run_sweep(prepared, overrides)
        else:
            work_and_report(prepared, f"worker {index}")
    except KeyboardInterrupt as exc:
        exit_interrupted(exc)


def exit_interrupted(exc: KeyboardInterrupt) -> NoReturn:
    """One line and exit 128 + signal number: the running trials went back to the queue, their runs
    ended KILLED, and re-running the same command resumes the study."""
    signum = getattr(exc, "signum", signal.SIGINT)  # tracking.RunTerminated carries SIGTERM's number
    print(
        f"interrupted by {signal.Signals(signum).name}: finished trials are kept and running ones go back "
        "to the queue; run the same command again to resume",
        file=sys.stderr,
    )
    sys.exit(128 + signum)


def worker_index(value: Any) -> int | None:
    """The ``worker`` setting: None, or a job index >= 0; ConfigError otherwise."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(
            f"worker must be null or an index >= 0 (worker='range(N)' in a multirun), got {value!r}"
        )
    return value


def wait_for_study(cfg: DictConfig, timeout_s: float = JOIN_TIMEOUT_S) -> Prepared:
    """Open the study once job 0 has created it, topped up its budget and opened its sweep run (the jobs
    of a multirun may start in any order, or far apart on a cluster's queue)."""
    deadline = time.monotonic() + timeout_s
    while True:  # until the study exists: prepare() raises ConfigError naming it missing
        try:
            prepared = prepare(cfg, create=False)
            break
        except ConfigError:
            if time.monotonic() > deadline:
                raise
        time.sleep(JOIN_POLL_S)
    while True:  # then only re-read the study, not the whole config, agent and storage
        sweep_run_id = prepared.study.user_attrs.get(SWEEP_RUN_ATTR)
        # A resumed study has a sweep run already; its topped-up budget says job 0 got there too.
        topped_up = budget_status(prepared.study).counted >= prepared.settings.n_trials
        if sweep_run_id and topped_up:
            return replace(prepared, setup=replace(prepared.setup, sweep_run_id=sweep_run_id))
        if time.monotonic() > deadline:
            raise ConfigError(f"job worker=0 did not open the study's sweep run within {timeout_s:.0f} s")
        time.sleep(JOIN_POLL_S)


def run_sweep(prepared: Prepared, overrides: Sequence[str]) -> None:
    """Budget, sweep run, workers, then the records and tables of the finished study."""
    from tuner.sweep_finish import finish_sweep
    from tuner.tracking import start_run

    console = Console() if sys.stdout.isatty() else Console(width=120)  # logs: no 80-column wrap
    settings, study = prepared.settings, prepared.study
    added = top_up_budget(study, settings.n_trials)
    status = budget_status(study)
    console.print(
        f"study {study.study_name!r} in {mask_secrets(settings.storage)}: {status.counted} trials "
        f"in the budget ({added} new), {status.complete + status.pruned + status.failed} finished"
    )
    tracking = prepared.setup.tracking
    with start_run(
        **tracking,
        run_name=f"sweep-{study.study_name}",
        tags={"kind": "sweep", "optuna_study": study.study_name},
        resume_run_id=study.user_attrs.get(SWEEP_RUN_ATTR),
    ) as sweep:
        config_yaml = OmegaConf.to_yaml(_sweep_params(prepared.config))
        if study.user_attrs.get(SWEEP_RUN_ATTR) != sweep.run_id:  # a new study (or its run was deleted)
            study.set_user_attr(SWEEP_RUN_ATTR, sweep.run_id)
            sweep.log_params(_sweep_params(prepared.config))
            sweep.log_text(config_yaml, "config.yaml")
        else:  # MLflow params are write-once: a resumed session's config is kept as an artifact
            sweep.log_text(config_yaml, f"config-resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
        prepared.setup = replace(prepared.setup, sweep_run_id=sweep.run_id)
        mark_started(study)
        with SweepProgress(study, settings.n_trials, console) as progress:
            run_local_workers(prepared, overrides, progress)
        finish_sweep(prepared, sweep, console)


def _sweep_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the sweep run records as params: the tuning settings and the base training config."""
    return {k: v for k, v in config.items() if k != "paths"}


if __name__ == "__main__":
    main()
