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
import fcntl
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from algorithms import ConfigError
from tuner.secrets import mask_secrets

MULTI_OBJECTIVE_SAMPLERS = ("NSGAIISampler", "NSGAIIISampler")
STUDY_STARTED_ATTR = "started_at"  # study user attr: when the latest sweep command started (tune.timeout)
SWEEP_RUN_ATTR = "mlflow_sweep_run_id"  # study user attr: the MLflow parent run of the sweep
TRIAL_RUN_ATTR = "mlflow_run_id"  # trial user attr: the trial's MLflow run
FAIL_REASON_ATTR = "fail_reason"  # trial user attr: why a trial ended FAIL


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
    export_dir: str
    export_name: str
    population: int = 0
    """Slots of a population-mode worker (0: off; trials run one after another)."""
    population_trials: int = 0
    """Trials one population starts before it retires and the next samples a new structure."""

    @classmethod
    def from_config(cls, tune: Mapping[str, Any]) -> TuneSettings:
        """Read and check ``cfg.tune``; ConfigError naming the key for a bad value."""

        def integer(key: str, minimum: int) -> int:
            value = tune.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"tune.{key} must be an integer >= {minimum}, got {value!r}")
            return value

        timeout = tune.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ConfigError(f"tune.timeout must be a number of seconds > 0 or null, got {timeout!r}")
        n_seeds, seeds_start = integer("n_seeds", 1), integer("seeds_start", 0)
        n_validate, validate_start = integer("validate_seeds", 0), integer("validate_seeds_start", 0)
        seeds = tuple(range(seeds_start, seeds_start + n_seeds))
        validate_seeds = tuple(range(validate_start, validate_start + n_validate))
        overlap = sorted(set(seeds) & set(validate_seeds))
        if overlap:
            raise ConfigError(
                f"validation seeds must differ from tuning seeds; both include {overlap}: move "
                f"tune.validate_seeds_start past {seeds[-1]}"
            )
        heartbeat = integer("heartbeat_interval", 1)
        grace = integer("grace_period", 1)
        if grace <= heartbeat:
            raise ConfigError(
                f"tune.grace_period ({grace}) must exceed tune.heartbeat_interval ({heartbeat})"
            )
        population = integer("population", 0)
        population_trials = tune.get("population_trials")
        if population_trials is None:
            population_trials = 2 * population
        elif (
            not isinstance(population_trials, int)
            or isinstance(population_trials, bool)
            or population_trials < 1
        ):
            raise ConfigError(
                f"tune.population_trials must be an integer >= 1 or null, got {population_trials!r}"
            )
        name = tune.get("study_name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tune.study_name must be a non-empty string, got {name!r}")
        return cls(
            study_name=name,
            storage=str(tune.get("storage")),
            n_trials=integer("n_trials", 1),
            timeout=None if timeout is None else float(timeout),
            n_seeds=n_seeds,
            seeds=seeds,
            budget_steps=integer("budget_steps", 1),
            n_workers=integer("n_workers", 1),
            heartbeat_interval=heartbeat,
            grace_period=grace,
            max_retry=integer("max_retry", 0),
            validate_seeds=validate_seeds,
            export=bool(tune.get("export")),
            export_dir=str(tune.get("export_dir")),
            export_name=_preset_name(tune.get("export_name")),
            population=population,
            population_trials=population_trials,
        )


def _preset_name(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"tune.export_name must be a file name of letters, digits, _ . -, got {name!r}")
    return name


def make_storage(
    settings: TuneSettings, on_stale_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> RDBStorage:
    """Optuna's RDB storage for ``settings.storage`` with worker heartbeats.

    ``on_stale_trial`` runs after Optuna marks a dead worker's trial FAIL (after the retry is enqueued).
    ConfigError, with any password masked, when the URL is not an RDB URL or the database is unreachable.
    """
    url = settings.storage
    creating: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    database_file = sqlite_file(url)
    if database_file is not None:
        database_file.parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith("postgresql"):
        from tuner.postgres import ensure_database, schema_lock

        ensure_database(url)
        creating = schema_lock(url)  # workers opening a fresh database would race to create the tables
    with warnings.catch_warnings():  # heartbeats and retries are marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry)

    def stale(study: optuna.Study, trial: FrozenTrial) -> None:
        retry(study, trial)
        if on_stale_trial is not None:
            on_stale_trial(study, trial)

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with creating:  # its own ConfigError (server unreachable) is already the message to show
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=settings.heartbeat_interval,
                    grace_period=settings.grace_period,
                    heartbeat_stale_trial_callback=stale,
                )
        except Exception as exc:  # SQLAlchemy raises many types: bad URL, driver missing, refused connection
            reason = mask_secrets(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise ConfigError(
                f"cannot open Optuna storage {mask_secrets(url)}: {reason} "
                "(tune.storage takes an RDB URL: sqlite:///path.db, postgresql://user@host/db, mysql://…)"
            ) from exc


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` storage URL; None for another backend or ``:memory:``."""
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return None
    return Path(url.removeprefix("sqlite:///"))


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
            raise ConfigError(
                f"no study {settings.study_name!r} in {mask_secrets(settings.storage)}; "
                "start it with `make sweep` (python -m tuner.tune) first"
            ) from None
    found = [d.name.lower() for d in study.directions]
    if found != directions:
        raise ConfigError(
            f"study {settings.study_name!r} was created with directions {found}, but sampler "
            f"{type(sampler).__name__} needs {directions}; use another tune.study_name"
        )
    return study


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials that failed with a dead worker and were re-enqueued (they no longer count)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return {
            n for t in trials if (n := RetryHeartbeatStaleTrialCallback.retried_trial_number(t)) is not None
        }


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


def top_up_budget(study: optuna.Study, n_trials: int) -> int:
    """Enqueue WAITING trials until the study holds ``n_trials`` counted trials; returns how many.

    Re-running with a larger ``n_trials`` extends a study; a smaller one adds nothing.
    """
    missing = n_trials - budget_status(study).counted
    for _ in range(max(0, missing)):
        study.enqueue_trial({}, skip_if_exists=False)
    return max(0, missing)


def claim_trial(study: optuna.Study, storage: RDBStorage) -> optuna.Trial | None:
    """Take a WAITING trial for this worker (atomic RUNNING compare-and-set); None when none is left."""
    with _claim_lock(storage.url):
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                    # Re-read through the study so its trial cache knows the claimed trial's new state.
                    study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    return optuna.Trial(study, frozen._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker took and finished it meanwhile
    return None


@contextlib.contextmanager
def _claim_lock(url: str) -> Iterator[None]:
    """On SQLite, hold an exclusive lock on ``<database>.claim-lock`` for the block; elsewhere nothing.

    Optuna's WAITING → RUNNING compare-and-set reads the state with ``SELECT … FOR UPDATE``, which
    PostgreSQL and MySQL honour, but SQLite reads outside the write transaction: two local workers
    claiming at once could both take the same trial and train it twice (measured: a double claim in 9
    of 10 rounds of two processes claiming 20 trials). SQLite studies live on one machine, so a file lock
    beside the database serialises the claims.
    """
    database_file = sqlite_file(url)
    if database_file is None:
        yield
        return
    with database_file.with_name(database_file.name + ".claim-lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mark_started(study: optuna.Study) -> None:
    """Record now as the start of the sweep's work: ``tune.timeout`` counts from here in every worker."""
    study.set_user_attr(STUDY_STARTED_ATTR, time.time())


def time_left(study: optuna.Study, timeout: float | None) -> bool:
    """Whether ``tune.timeout`` (counted from the latest sweep command's start) allows a new trial."""
    if timeout is None:
        return True
    started = float(study.user_attrs.get(STUDY_STARTED_ATTR, time.time()))
    return time.time() - started < timeout


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
