"""The Optuna study behind a sweep: settings, storage, sampler and pruner, and the shared trial budget.

The budget is exact across any number of workers and restarts: the study holds ``n_trials`` trials in
all, created up front as WAITING trials (``enqueue_trial``) that workers claim atomically with the
storage's compare-and-set on the trial state, the way Optuna's own ``ask`` pops its queue. A worker never
creates a trial of its own, so two workers finishing at the same moment cannot overshoot. A trial whose
worker died (no heartbeat for ``grace_period`` seconds) is marked FAIL by Optuna and re-enqueued with
the same parameters by ``RetryHeartbeatStaleTrialCallback``; the failed attempt no longer counts, its
retry does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from algorithms import ConfigError
from tuner.multienv import env_budgets, env_names
from tuner.pbt import PBTSettings
from tuner.postgres import advisory_lock, ensure_database, maintenance_url, schema_lock, study_lock_key
from tuner.search import SearchSpace
from tuner.secrets import mask_secrets
from tuner.stores import StoreMissing, check_server, check_sqlite, lock_if_sqlite, sqlite_lock, sqlite_path

MULTI_OBJECTIVE_SAMPLERS = ("NSGAIISampler", "NSGAIIISampler")
OBJECTIVE_NAMES = ("mean_return", "train_seconds")  # what the study's objectives are (plots, tables)
MULTI_ENV_OBJECTIVE = "normalized_iqm"  # the first objective's name with tune.envs
ENVS_ATTR = "envs"  # study user attr: the tune.envs it is tuned on ([] or absent: one env)
STUDY_STARTED_ATTR = "started_at"  # study user attr: when the latest sweep command started (tune.timeout)
SWEEP_RUN_ATTR = "mlflow_sweep_run_id"  # study user attr: the MLflow parent run of the sweep
TRIAL_RUN_ATTR = "mlflow_run_id"  # trial user attr: the trial's MLflow run
FAIL_REASON_ATTR = "fail_reason"  # trial user attr: why a trial ended FAIL
HEARTBEAT_LOST = "worker stopped sending heartbeats; retried"  # the reason of a stale trial
INTERRUPTED = "interrupted; retried"  # the reason of a trial whose worker was stopped (Ctrl-C, SIGTERM)
METHODS = ("search", "pbt")  # tune.method
METHOD_ATTR = "method"  # study user attr: the tune.method that tunes it


@dataclass(frozen=True)
class TuneSettings:
    """The validated ``tune`` node of conf/tune.yaml (see the comments there for each field)."""

    study_name: str
    storage: str
    n_trials: int
    timeout: float | None
    n_seeds: int
    seeds: tuple[int, ...]
    budget_steps: int
    n_workers: int
    heartbeat_interval: int
    grace_period: int
    max_retry: int
    validate_seeds: tuple[int, ...]
    export: bool
    trial_artifacts: bool
    """Whether each tuning seed's run keeps model.pt and learning_curve.png (its metrics are kept anyway)."""
    export_dir: str
    export_name: str
    population: int = 0
    """Slots of a population-mode worker (0: off; trials run one after another)."""
    population_trials: int = 0
    """Trials one population starts before it retires and the next samples a new structure."""
    join_timeout: float = 600.0
    """Seconds a worker waits for the sweep command to create the study and enqueue its trials."""
    method: str = "search"
    """``search`` (the sampler proposes every trial) or ``pbt`` (population-based training)."""
    pbt: PBTSettings | None = None
    """The ``pbt`` node, validated, when ``method`` is ``pbt``."""
    envs: tuple[str, ...] = ()
    """``tune.envs``: the env configs a trial trains on (empty: the env group's one env)."""
    register: bool = False
    """Register the validated tuned model (its first held-out seed's) in MLflow's Model Registry."""
    enqueue_base: bool = False
    """A new study's first trial trains the base config's values of the searched fields (the defaults or
    the experiment preset), the sampler choosing only those the space cannot give."""
    env_budgets: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Env steps ``tune.budget_steps`` sets per env of ``envs`` (the others: their config's budget)."""

    @classmethod
    def from_config(
        cls, tune: Mapping[str, Any], pbt: Mapping[str, Any] | None = None, eval_freq_steps: int = 0
    ) -> TuneSettings:
        """Read and check ``cfg.tune`` (and, for ``tune.method=pbt``, ``cfg.pbt``, whose default interval
        is at least ``eval_freq_steps``, the trials' evaluation period); ConfigError naming the key for
        a bad value."""
        timeout, join_timeout = _timeouts(tune)
        storage = tune.get("storage")
        if not isinstance(storage, str) or not storage:
            raise ConfigError(f"tune.storage must be an RDB URL, got {mask_secrets(storage)!r}")
        seeds, validate_seeds = _seed_ranges(tune)
        heartbeat = _tune_int(tune, "heartbeat_interval", 1)
        grace = _tune_int(tune, "grace_period", 1)
        if grace <= heartbeat:
            raise ConfigError(
                f"tune.grace_period ({grace}) must exceed tune.heartbeat_interval ({heartbeat})"
            )
        population, population_trials = _population_settings(tune)
        if _tune_bool(tune, "register") and not validate_seeds:
            raise ConfigError(
                "tune.register=true registers a held-out validation run's model: set tune.validate_seeds > 0"
            )
        envs = env_names(tune.get("envs"))
        # With several envs, tune.budget_steps may also be a mapping env -> steps, or null; budget_steps
        # is then the first env's, set once the envs are composed (tuner.prepare).
        budget_steps = (
            0
            if envs and not isinstance(tune.get("budget_steps"), int)
            else _tune_int(tune, "budget_steps", 1)
        )
        name = tune.get("study_name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tune.study_name must be a non-empty string, got {name!r}")
        settings = cls(
            study_name=name,
            storage=storage,
            n_trials=_tune_int(tune, "n_trials", 1),
            timeout=timeout,
            n_seeds=len(seeds),
            seeds=seeds,
            budget_steps=budget_steps,
            n_workers=_tune_int(tune, "n_workers", 1),
            heartbeat_interval=heartbeat,
            grace_period=grace,
            max_retry=_tune_int(tune, "max_retry", 0),
            validate_seeds=validate_seeds,
            export=_tune_bool(tune, "export"),
            register=_tune_bool(tune, "register"),
            enqueue_base=_tune_bool(tune, "enqueue_base"),
            trial_artifacts=_tune_bool(tune, "trial_artifacts"),
            export_dir=str(tune.get("export_dir")),
            export_name=_preset_name(tune.get("export_name")),
            population=population,
            population_trials=population_trials,
            join_timeout=join_timeout,
            envs=envs,
            env_budgets=env_budgets(tune.get("budget_steps"), envs) if envs else {},
        )
        method = tune.get("method", "search")
        if method not in METHODS:
            raise ConfigError(f"tune.method must be one of {', '.join(METHODS)}; got {method!r}")
        return settings if method == "search" else _pbt_settings(settings, pbt or {}, eval_freq_steps)


def _pbt_settings(settings: TuneSettings, pbt: Mapping[str, Any], eval_freq_steps: int) -> TuneSettings:
    """``settings`` for population-based training: its members fill the population (each member's
    seeds side by side), one trial per member to start with, all in one population."""
    n_members = settings.population // settings.n_seeds
    if n_members < 2:
        raise ConfigError(
            f"tune.method=pbt needs at least 2 members: tune.population ({settings.population}) // "
            f"tune.n_seeds ({settings.n_seeds}) = {n_members}; set tune.population >= {2 * settings.n_seeds}"
        )
    return dataclasses.replace(
        settings,
        method="pbt",
        pbt=PBTSettings.from_mapping(pbt, settings.budget_steps, eval_freq_steps),
        n_trials=n_members,
        population_trials=n_members,
    )


def _tune_bool(tune: Mapping[str, Any], key: str) -> bool:
    value = tune.get(key)
    if not isinstance(value, bool):
        raise ConfigError(f"tune.{key} must be true or false, got {value!r}")
    return value


def _tune_int(tune: Mapping[str, Any], key: str, minimum: int) -> int:
    """``tune.<key>`` as an integer >= ``minimum``; ConfigError otherwise."""
    value = tune.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"tune.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _timeouts(tune: Mapping[str, Any]) -> tuple[float | None, float]:
    """``tune.timeout`` (seconds > 0, or None) and ``tune.join_timeout`` (seconds >= 0)."""
    timeout = tune.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise ConfigError(f"tune.timeout must be a number of seconds > 0 or null, got {timeout!r}")
    join_timeout = tune.get("join_timeout")
    if isinstance(join_timeout, bool) or not isinstance(join_timeout, int | float) or join_timeout < 0:
        raise ConfigError(f"tune.join_timeout must be a number of seconds >= 0, got {join_timeout!r}")
    return (None if timeout is None else float(timeout)), float(join_timeout)


def _seed_ranges(tune: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tuning seeds and the validation seeds, which must not overlap."""
    n_seeds, seeds_start = _tune_int(tune, "n_seeds", 1), _tune_int(tune, "seeds_start", 0)
    n_validate, validate_start = (
        _tune_int(tune, "validate_seeds", 0),
        _tune_int(tune, "validate_seeds_start", 0),
    )
    seeds = tuple(range(seeds_start, seeds_start + n_seeds))
    validate_seeds = tuple(range(validate_start, validate_start + n_validate))
    overlap = sorted(set(seeds) & set(validate_seeds))
    if overlap:
        raise ConfigError(
            f"validation seeds must differ from tuning seeds; both include {overlap}: move "
            f"tune.validate_seeds_start past {seeds[-1]}"
        )
    return seeds, validate_seeds


def _population_settings(tune: Mapping[str, Any]) -> tuple[int, int]:
    """``tune.population`` (0: off) and ``tune.population_trials`` (null: twice the population)."""
    population = _tune_int(tune, "population", 0)
    population_trials = tune.get("population_trials")
    if population_trials is None:
        return population, 2 * population
    if not isinstance(population_trials, int) or isinstance(population_trials, bool) or population_trials < 1:
        raise ConfigError(
            f"tune.population_trials must be an integer >= 1 or null, got {population_trials!r}"
        )
    return population, population_trials


def _preset_name(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"tune.export_name must be a file name of letters, digits, _ . -, got {name!r}")
    return name


def check_storage(url: str, create: bool, key: str = "tune.storage") -> None:
    """Check the Optuna storage at ``url`` before anything is created in it or elsewhere.

    With ``create``, the storage must be creatable (a writable folder, a reachable server); without, it
    must exist, else StoreMissing. ConfigError, password masked, names the storage and ``key``.
    """
    what = "Optuna storage"
    path = sqlite_path(url)
    if path is not None:
        check_sqlite(path, what, key, create)
    elif url.startswith("sqlite"):
        return  # an in-memory database: nothing to check or create
    elif url.startswith("postgresql") and create:
        check_server(maintenance_url(url), what, key, shown=url)  # the database is created on first use
    elif "://" in url:
        check_server(url, what, key)
    else:
        raise ConfigError(
            f"{key} must be an RDB URL (sqlite:///path.db, postgresql://user@host/db, mysql://…), "
            f"got {mask_secrets(url)!r}"
        )


def make_storage(
    settings: TuneSettings,
    on_stale_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    create: bool = True,
) -> RDBStorage:
    """Optuna's RDB storage for ``settings.storage`` with worker heartbeats.

    ``on_stale_trial`` runs after Optuna marks a dead worker's trial FAIL (after the retry is enqueued).
    Without ``create`` a storage that does not exist is a StoreMissing error, and nothing is created.
    """
    with warnings.catch_warnings():  # heartbeats and retries are marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry)

    def stale(study: optuna.Study, trial: FrozenTrial) -> None:
        retry(study, trial)
        if on_stale_trial is not None:
            on_stale_trial(study, trial)

    return open_storage(
        settings.storage,
        create,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
        heartbeat_stale_trial_callback=stale,
    )


def open_storage(url: str, create: bool, key: str = "tune.storage", **options: Any) -> RDBStorage:
    """Check the storage (:func:`check_storage`), create it if ``create`` and it is missing, and open it
    as an ``RDBStorage`` with ``options``; ConfigError, password masked, when that fails."""
    check_storage(url, create, key)
    path = sqlite_path(url)
    first_use: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if path is not None and create:
        first_use = sqlite_lock(path)  # two commands opening a fresh file would both create its tables
    elif url.startswith("postgresql"):
        if create:
            ensure_database(url)
        first_use = schema_lock(url)  # workers opening a fresh database would race to create the tables
    engine_kwargs = {"connect_args": {"timeout": 60}} if path is not None else {"pool_pre_ping": True}
    with first_use:  # its own ConfigError (server unreachable) is already the message to show
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, **options)
        except Exception as exc:  # SQLAlchemy raises many types: bad URL, driver missing, refused connection
            reason = mask_secrets(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise ConfigError(f"cannot open Optuna storage {mask_secrets(url)} ({key}): {reason}") from exc


def study_lock(url: str, study_name: str) -> contextlib.AbstractContextManager[None]:
    """A lock, shared by every process on the storage, around one study's sweep bookkeeping (its budget
    top-up and its sweep run), so that two sweep commands on one study add one budget and one run.

    SQLite: a file lock beside the database; PostgreSQL: an advisory lock; other backends: none.
    """
    if url.startswith("postgresql"):
        return advisory_lock(url, study_lock_key(study_name))
    return lock_if_sqlite(url)


def build_sampler(node: DictConfig | Mapping[str, Any], seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """Instantiate the ``sampler`` config node (``_target_`` + arguments).

    A fixed ``seed`` is shifted by ``seed_offset`` (the worker's index): workers with the same seed would
    otherwise sample the same configurations in parallel. One worker stays reproducible.
    """
    values = (
        OmegaConf.to_container(OmegaConf.create(dict(node)), resolve=True)
        if isinstance(node, DictConfig)
        else dict(node)
    )
    if values.get("seed") is not None and seed_offset:
        values["seed"] = int(values["seed"]) + seed_offset
    return _instantiate(values, "sampler")


def build_pruner(node: DictConfig | Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """Instantiate the ``pruner`` config node (``_target_`` + arguments)."""
    return _instantiate(node, "pruner")


def _instantiate(node: DictConfig | Mapping[str, Any], group: str) -> Any:
    try:
        return instantiate(node)
    except Exception as exc:  # Hydra wraps constructor errors in InstantiationException
        raise ConfigError(
            f"{group}: cannot build {OmegaConf.to_container(OmegaConf.create(dict(node)))}: {exc}"
        ) from exc


def is_multi_objective(sampler: optuna.samplers.BaseSampler) -> bool:
    """Whether the sampler optimises (return, wall-clock) rather than return alone."""
    return type(sampler).__name__ in MULTI_OBJECTIVE_SAMPLERS


def open_study(
    settings: TuneSettings,
    storage: RDBStorage,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    create: bool,
) -> optuna.Study:
    """Create (or resume) the study, or — for a joining worker (``create=False``) — load it.

    Multi-objective samplers get directions (maximize return, minimize seconds) and no pruning.
    """
    directions = ["maximize", "minimize"] if is_multi_objective(sampler) else ["maximize"]
    if len(directions) > 1:
        pruner = optuna.pruners.NopPruner()
    if create:
        study = optuna.create_study(
            storage=storage,
            study_name=settings.study_name,
            sampler=sampler,
            pruner=pruner,
            directions=directions,
            load_if_exists=True,
        )
    else:
        try:
            study = optuna.load_study(
                study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:
            raise StoreMissing(
                f"no study {settings.study_name!r} in {mask_secrets(settings.storage)}; "
                "start it with `make sweep` (python -m tuner.tune) first"
            ) from None
    found = [d.name.lower() for d in study.directions]
    if create and found == directions and not study.metric_names:
        with warnings.catch_warnings():  # set_metric_names is experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            names = [MULTI_ENV_OBJECTIVE, *OBJECTIVE_NAMES[1:]] if settings.envs else OBJECTIVE_NAMES
            study.set_metric_names(list(names[: len(directions)]))
    if found != directions:
        raise ConfigError(
            f"study {settings.study_name!r} was created with directions {found}, but sampler "
            f"{type(sampler).__name__} needs {directions}; use another tune.study_name"
        )
    _check_recorded(study, METHOD_ATTR, "tune.method", settings.method, "search", create)
    _check_recorded(study, ENVS_ATTR, "tune.envs", list(settings.envs), [], create)
    return study


def objective_label(study: optuna.Study) -> str:
    """What a study's (first) objective is, in words: ``normalised IQM`` with several envs, else
    ``mean return``."""
    return "normalised IQM" if study.user_attrs.get(ENVS_ATTR) else "mean return"


def _check_recorded(study: optuna.Study, attr: str, key: str, value: Any, legacy: Any, create: bool) -> None:
    """Record a new study's setting ``key`` (``value``) as its user attr ``attr``; ConfigError when a
    study is resumed with another value (a PBT sweep cannot continue a search's trials, nor trials scored
    on other envs compare). A study that has trials but no record predates the setting: it was tuned
    with ``legacy``. Nothing is checked while a study is still empty, so a worker that opens it before
    its sweep command has recorded the setting waits as for any other part of the study."""
    recorded = study.user_attrs.get(attr)
    if recorded is None:
        if not study.get_trials(deepcopy=False):
            if create:
                study.set_user_attr(attr, value)
            return
        recorded = legacy
    if recorded != value:
        raise ConfigError(
            f"study {study.study_name!r} is tuned with {key}={recorded}, not {value}; "
            "use another tune.study_name"
        )


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials that failed with a dead or interrupted worker and were re-enqueued (they no
    longer count): every attempt in a retry's history, so a retry that failed again is left out too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}


def fail_reason(trial: FrozenTrial, retried: set[int]) -> str | None:
    """Why a FAIL trial failed (None for any other state): its ``fail_reason`` attribute, or, for an
    attempt that was retried without one, that its worker stopped sending heartbeats (Optuna failed it)."""
    if trial.state != TrialState.FAIL:
        return None
    reason = trial.user_attrs.get(FAIL_REASON_ATTR)
    if reason:
        return str(reason)
    return HEARTBEAT_LOST if trial.number in retried else None


@dataclass(frozen=True)
class BudgetStatus:
    """Where the study stands against its trial budget."""

    counted: int  # trials that count against n_trials: all but retried ones
    waiting: int
    running: int
    complete: int
    pruned: int
    failed: int  # FAIL trials that count (bad config, diverged, or out of retries)


def budget_status(study: optuna.Study) -> BudgetStatus:
    """Count the study's trials by state, leaving out attempts that were retried."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    counted = [t for t in trials if t.number not in retried]

    def count(state: TrialState) -> int:
        return sum(t.state == state for t in counted)

    return BudgetStatus(
        counted=len(counted),
        waiting=count(TrialState.WAITING),
        running=count(TrialState.RUNNING),
        complete=count(TrialState.COMPLETE),
        pruned=count(TrialState.PRUNED),
        failed=count(TrialState.FAIL),
    )


def enqueue_base(study: optuna.Study, space: SearchSpace, base: Mapping[str, Any]) -> list[str]:
    """Enqueue a trial with ``base``'s values of the searched fields (a preset's, to start the search
    from it); returns the fields the space cannot sample from there, which the sampler chooses."""
    outside = space.out_of_range(base)
    fixed = {name: value for name, value in base.items() if name in space.names and name not in outside}
    params = {p.optuna_name: p.to_sampled(fixed[p.name]) for p in space.params if p.name in fixed}
    study.enqueue_trial(params, skip_if_exists=False)
    return outside


def top_up_budget(study: optuna.Study, n_trials: int) -> int:
    """Enqueue WAITING trials until the study holds ``n_trials`` counted trials; returns how many.

    Re-running with a larger ``n_trials`` extends a study; a smaller one adds nothing.
    """
    missing = n_trials - budget_status(study).counted
    for _ in range(max(0, missing)):
        study.enqueue_trial({}, skip_if_exists=False)
    return max(0, missing)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of ``trial``: what RDBStorage's trial methods take.

    Optuna keeps it private (``_trial_id``); its public route, ``get_trial_id_from_study_id_trial_number``,
    costs two queries a call. This is the one place that reads the private attribute; a test checks it
    against the public route.
    """
    return trial._trial_id


def claim_trial(study: optuna.Study, storage: RDBStorage, number: int | None = None) -> optuna.Trial | None:
    """Take a WAITING trial for this worker (atomic RUNNING compare-and-set), the oldest or the one
    numbered ``number``; None when there is none to take."""
    with _claim_lock(storage.url):
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if number is not None and frozen.number != number:
                continue
            try:
                if storage.set_trial_state_values(trial_id(frozen), state=TrialState.RUNNING):
                    # Re-read through the study so its trial cache knows the claimed trial's new state.
                    study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    if frozen.user_attrs.get(FAIL_REASON_ATTR):  # a retry copies its failed attempt's
                        storage.set_trial_user_attr(trial_id(frozen), FAIL_REASON_ATTR, "")
                    return optuna.Trial(study, trial_id(frozen))
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker took and finished it meanwhile
    return None


def fail_and_retry(storage: RDBStorage, study: optuna.Study, trial: optuna.Trial) -> None:
    """Mark an interrupted trial FAIL (reason :data:`INTERRUPTED`) and re-enqueue it, as for a worker
    that died."""
    try:
        storage.set_trial_user_attr(trial_id(trial), FAIL_REASON_ATTR, INTERRUPTED)
        if not storage.set_trial_state_values(trial_id(trial), state=TrialState.FAIL):
            return
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        callback(study, storage.get_trial(trial_id(trial)))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The COMPLETE trial with the highest mean return (NSGA-II: the Pareto point with the best return)."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(finished, key=lambda t: t.values[0], default=None)


def _claim_lock(url: str) -> contextlib.AbstractContextManager[None]:
    """On SQLite, the database's file lock (:func:`tuner.stores.sqlite_lock`) for the block; elsewhere
    nothing.

    Optuna's WAITING → RUNNING compare-and-set reads the state with ``SELECT … FOR UPDATE``, which
    PostgreSQL and MySQL honour, but SQLite reads outside the write transaction: two local workers
    claiming at once can both take the same trial and train it twice. SQLite studies live on one
    machine, so a file lock beside the database serialises the claims.
    """
    return lock_if_sqlite(url)


def mark_started(study: optuna.Study) -> None:
    """Record now as the start of the sweep's work (an ISO 8601 time in UTC, as the dashboard shows it):
    ``tune.timeout`` counts from here in every worker."""
    study.set_user_attr(STUDY_STARTED_ATTR, datetime.now(UTC).isoformat(timespec="seconds"))


def time_left(study: optuna.Study, timeout: float | None) -> bool:
    """Whether ``tune.timeout`` (counted from the latest sweep command's start) allows a new trial."""
    if timeout is None:
        return True
    started = study.user_attrs.get(STUDY_STARTED_ATTR)
    if started is None:
        return True
    # Studies of earlier versions hold seconds since the epoch.
    seconds = (
        float(started) if isinstance(started, int | float) else datetime.fromisoformat(started).timestamp()
    )
    return time.time() - seconds < timeout


class Heartbeat:
    """Records the trial's heartbeat in the storage every ``interval`` seconds while the block runs.

    Optuna's own heartbeat thread belongs to ``study.optimize``; workers here claim trials themselves
    (see the module docstring), so they keep the heartbeat through the storage's public
    ``record_heartbeat``.
    """

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started: an error can come between creation and start
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a transient database error must not kill the trial; the next beat retries
                continue


def heartbeat(storage: RDBStorage, trial: optuna.Trial, interval: float) -> contextlib.ExitStack:
    """A running :class:`Heartbeat` of ``trial``, stopped by closing the stack."""
    stack = contextlib.ExitStack()
    stack.enter_context(Heartbeat(storage, trial_id(trial), interval))
    return stack
