"""A sweep's config, validated and opened: what ``tuner.tune``, ``tuner.worker`` and multirun jobs start from.

:func:`prepare` composes and checks everything (search space, sampler, pruner, seeds, the base config and
its environment), checks both stores, then opens (or creates) the study; :func:`join_study` waits for a
study that its sweep command has yet to create.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from algorithms import ConfigError
from tuner.compose import algorithm_config, override_key
from tuner.multienv import EnvTask, load_tasks
from tuner.population import check_population
from tuner.search import SearchSpace
from tuner.secrets import mask_secrets
from tuner.stores import StoreMissing
from tuner.study import (
    SWEEP_RUN_ATTR,
    TRIAL_RUN_ATTR,
    TuneSettings,
    budget_status,
    build_pruner,
    build_sampler,
    is_multi_objective,
    make_storage,
    open_study,
)
from tuner.tracking import KILLED, check_tracking_store, end_runs
from tuner.train import RunSettings, build_agent, resolve_config
from tuner.trial_record import TrialSetup

JOIN_POLL_S = 2.0  # seconds between two looks at a study a worker waits for
# Config nodes that are not part of a training run.
TUNE_GROUPS = ("tune", "pbt", "search", "sampler", "pruner", "storage", "worker")
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
    settings = TuneSettings.from_config(config["tune"], config.get("pbt"), _eval_freq(config))
    algo, _ = algorithm_config(config["algo"])  # names a bad value by its key, before the space uses it
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    tasks = _env_tasks(settings, config, overrides)
    if tasks:  # the first env is the base config's: the trials table, replay and the population use it
        config["env"] = dict(tasks[0].env)
        settings = replace(settings, budget_steps=tasks[0].budget_steps)
    space = SearchSpace.from_config(config["search"], algo, base=config["algo"])
    space = space.for_budget(
        min([settings.budget_steps, *(t.budget_steps for t in tasks)]), base=config["algo"]
    )
    base_config = {k: v for k, v in config.items() if k not in TUNE_GROUPS}
    base_config["total_steps"] = settings.budget_steps
    # Build the agent once on the base config (each env's, for several): an unknown env id, a missing
    # extra or an unsupported space is reported now, not as a failure of every trial.
    base_config["seed"] = settings.seeds[0]
    for env in [task.env for task in tasks] or [base_config["env"]]:
        checked = {**base_config, "env": env}
        build_agent(checked, RunSettings.from_config(checked)).close()

    sampler = build_sampler(cfg.sampler, seed_offset=worker_index(cfg.get("worker")) or 0)
    check_population(settings, algo, is_multi_objective(sampler), RunSettings.from_config(base_config))
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
    setup = TrialSetup(
        base_config=base_config,
        base_overrides=training_overrides(overrides),
        space=space,
        seeds=settings.seeds,
        budget_steps=settings.budget_steps,
        tracking=tracking,
        sweep_run_id=study.user_attrs.get(SWEEP_RUN_ATTR),
        multi_objective=is_multi_objective(sampler),
        trial_artifacts=settings.trial_artifacts,
        tasks=tasks,
    )
    return Prepared(settings, storage, study, setup, config)


def _env_tasks(
    settings: TuneSettings, config: dict[str, Any], overrides: Sequence[str]
) -> tuple[EnvTask, ...]:
    """The envs of ``tune.envs``, composed as this sweep's (none for a one-env study)."""
    if not settings.envs:
        return ()
    if settings.method != "search":
        raise ConfigError(
            "tune.envs trains each trial's envs one after another; tune.method=pbt trains one env: "
            "set tune.method=search, or drop tune.envs"
        )
    return load_tasks(
        settings.envs, settings.env_budgets, config["algo"]["name"], overrides, config["paths"]["root_dir"]
    )


def _eval_freq(config: dict[str, Any]) -> int:
    """The trials' evaluation period in env steps (0 when unset or not a positive integer; the training
    settings check it)."""
    freq = config.get("env", {}).get("eval", {}).get("freq_steps")
    return freq if isinstance(freq, int) and not isinstance(freq, bool) and freq > 0 else 0


class StaleTrialRunCloser:
    """Heartbeat callback: ends the MLflow runs of a trial whose worker died (they stay RUNNING otherwise)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """End the trial's run and its seed runs KILLED, naming the lost worker as the reason."""
        run_id = trial.user_attrs.get(TRIAL_RUN_ATTR)
        if run_id:
            end_runs(
                self.tracking_uri,
                [run_id],
                KILLED,
                f"worker of trial {trial.number} stopped sending heartbeats; the trial is retried",
            )


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
    config = resolve_config(cfg)
    timeout_s = TuneSettings.from_config(config["tune"], config.get("pbt"), _eval_freq(config)).join_timeout
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
    if prepared.settings.method == "pbt":
        raise ConfigError(
            f"study {prepared.study.study_name!r} is tuned with tune.method=pbt, whose population trains "
            "in its sweep command's process; a worker cannot join it"
        )
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
