"""The only module that talks to MLflow: experiments, the run lifecycle, params, metrics and artifacts.

A run is opened with :func:`start_run`, a context manager that always ends it: FINISHED when the block
completes, KILLED on KeyboardInterrupt or SIGTERM, FAILED on any other exception (which is re-raised with
its reason in the ``failure_reason`` tag). Runs nest through ``parent_run_id`` (sweep → trial → seed).
Metrics are buffered and written with ``log_batch`` every couple of seconds, since one SQLite
transaction per value would dominate a fast training loop. Every string that leaves through here —
params, tags, text artifacts — has URL passwords masked first (:func:`tuner.secrets.mask_secrets`).
"""

from __future__ import annotations

import logging
import math
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from algorithms import ConfigError
from tuner.secrets import mask_secrets
from tuner.stores import (
    StoreMissing,
    check_http,
    check_server,
    check_sqlite,
    check_writable_dir,
    lock_if_sqlite,
    sqlite_path,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values
TAG_VALUE_LIMIT = 8000  # and longer tag values
PARAMS_PER_BATCH = 100  # log_batch limits
METRICS_PER_BATCH = 1000
FLUSH_INTERVAL_S = 2.0
FAILURE_TAG = "failure_reason"
PARAM_DIGITS = 10  # significant digits of a float param: enough to tell sampled values apart
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"  # how a run ends (MLflow's RunStatus names)

T = TypeVar("T")


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested mapping into ``{"group.key": text}``; a list stays one value (``[64, 64]``).

    Floats are written to :data:`PARAM_DIGITS` significant digits, which drops binary noise
    (``-143.29999999999998`` shows as ``-143.3``); the exact values stay in the run's config.yaml.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(param_value(value))
    return flat


def param_value(value: Any) -> Any:
    """``value`` with every float in it (also inside a list or tuple) rounded to :data:`PARAM_DIGITS`
    significant digits, as an MLflow param shows it."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{PARAM_DIGITS}g}")
    if isinstance(value, list | tuple):
        return type(value)(param_value(item) for item in value)
    return value


class RunTerminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM during a run; the run ends KILLED."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


class RunRecorder:
    """Writes into one open MLflow run: params, tags, buffered metrics and artifacts."""

    def __init__(self, client: MlflowClient, run_id: str, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.client = client
        self.run_id = run_id
        self._flush_interval_s = flush_interval_s
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self.ended = False

    @property
    def experiment_id(self) -> str:
        """The id of the run's experiment (for links into the UI)."""
        return self.client.get_run(self.run_id).info.experiment_id

    def log_params(self, config: Mapping[str, Any]) -> None:
        """Log a nested config as flat params (``algo.learning_rate``), masked and cut to MLflow's limit."""
        params = [
            Param(key, mask_secrets(value)[:PARAM_VALUE_LIMIT])
            for key, value in flatten_params(config).items()
        ]
        for chunk in _chunks(params, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags; values become masked strings cut to MLflow's limit."""
        self.client.log_batch(
            self.run_id, tags=[RunTag(key, value) for key, value in tag_values(tags).items()]
        )

    def log_metric(self, key: str, value: float, step: int) -> None:
        """Queue one value at ``step`` (env steps); non-finite values are skipped."""
        if math.isfinite(value):
            self._pending.append(Metric(key, float(value), int(time.time() * 1000), int(step)))
        if time.monotonic() - self._last_flush >= self._flush_interval_s:
            self.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue several metrics at the same ``step``; non-finite values are skipped."""
        for key, value in metrics.items():
            self.log_metric(key, value, step)

    def flush(self) -> None:
        """Write the queued metrics now."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        for chunk in _chunks(pending, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy the local file ``path`` into the run's artifacts (under ``artifact_path`` if given)."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text``, secrets masked, as the artifact ``artifact_file``."""
        self.client.log_text(self.run_id, mask_secrets(text), artifact_file)

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        """Store a matplotlib figure as the image artifact ``artifact_file`` (e.g. ``curve.png``)."""
        self.client.log_figure(self.run_id, figure, artifact_file)

    def end(self, status: str, reason: str = "") -> None:
        """Write what is queued and end the run with ``status`` (FINISHED, FAILED or KILLED), ``reason``
        as its ``failure_reason`` tag; later calls do nothing."""
        if self.ended:
            return
        self.ended = True
        try:
            if reason:
                self.set_tags({FAILURE_TAG: reason})
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status)

    def end_for(self, exc: BaseException) -> None:
        """End the run as ``exc`` says: KILLED for an interrupt (KeyboardInterrupt, SIGTERM's
        :class:`RunTerminated`), FAILED for anything else, with the exception as the reason."""
        status = KILLED if isinstance(exc, KeyboardInterrupt) else FAILED
        reason = _describe(exc)
        log.info("MLflow run %s ends %s: %s", self.run_id, status, reason)  # the caller reports why
        self.end(status, reason)


class RunOptions(TypedDict, total=False):
    """What a new MLflow run may be given besides its store: see :func:`start_run`'s arguments."""

    run_name: str | None
    tags: Mapping[str, Any] | None
    parent_run_id: str | None
    resume_run_id: str | None


def open_run(
    uri: str, experiment: str, artifact_dir: str | Path | None, **options: Unpack[RunOptions]
) -> RunRecorder:
    """Create an MLflow run in ``experiment`` (created if needed), or reopen ``resume_run_id``; the caller
    ends it with :meth:`RunRecorder.end`. For runs that open and end in no nested order (a population's
    trials); everything else uses :func:`start_run`. Arguments as there."""
    local_dir = None if artifact_dir is None else Path(artifact_dir)
    client, experiment_id = _open_experiment(uri, experiment, local_dir)
    all_tags = dict(options.get("tags") or {})
    parent_run_id = options.get("parent_run_id")
    if parent_run_id is not None:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    resume_run_id = options.get("resume_run_id")
    run_id = _reopen(client, resume_run_id) if resume_run_id else None
    if run_id is None:
        run_name = options.get("run_name")
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tag_values(all_tags)).info.run_id
    elif parent_run_id is not None:  # a reopened run goes under the parent it is given now
        client.set_tag(run_id, MLFLOW_PARENT_RUN_ID, parent_run_id)
    return RunRecorder(client, run_id)


@contextmanager
def start_run(
    uri: str,
    experiment: str,
    artifact_dir: str | Path | None,
    *,
    handle_signals: bool = True,
    **options: Unpack[RunOptions],
) -> Iterator[RunRecorder]:
    """Open an MLflow run in ``experiment`` (created if needed) and always end it on leaving the block.

    Args:
        uri: tracking URI, e.g. ``sqlite:////abs/runs/mlflow.db`` (the file's folder is created).
        experiment: experiment name; a new experiment stores artifacts under ``artifact_dir/<name>``.
        artifact_dir: local folder for artifacts of newly created experiments; None leaves the location
            to the tracking server (``mlflow server --artifacts-destination``).
        run_name: display name of the run.
        tags: initial tags (masked).
        parent_run_id: makes this run a child of that run (same experiment, for the UI to nest it).
        resume_run_id: reopen this existing run (e.g. a resumed study's sweep run) instead of creating
            one; a new run is created if it no longer exists.
        handle_signals: turn SIGTERM into :class:`RunTerminated` while the run is open. Runs inside a
            worker's :func:`interrupts_raise` block pass False and leave signals to it.

    The run ends FINISHED, KILLED (KeyboardInterrupt, or SIGTERM, which raises :class:`RunTerminated`
    while the run is open) or FAILED (any other exception, re-raised). Raises ConfigError when the
    tracking store or the experiment cannot be used; no run exists then.
    """
    recorder = open_run(uri, experiment, artifact_dir, **options)
    with RunSignals(install=handle_signals) as signals:
        try:
            yield recorder
        except BaseException as exc:
            signals.closing = True
            recorder.end_for(exc)
            raise
        signals.closing = True
        recorder.end(FINISHED)


def _reopen(client: MlflowClient, run_id: str) -> str | None:
    """Set an existing, not deleted run back to RUNNING, without the failure reason of an earlier end;
    None if there is no such run."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage != "active":
        return None
    client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    if FAILURE_TAG in run.data.tags:  # the reason an earlier session ended it; this one starts afresh
        client.delete_tag(run_id, FAILURE_TAG)
    return run_id


def end_runs(uri: str, run_ids: Sequence[str], status: str, reason: str) -> list[str]:
    """End those of ``run_ids`` (and their RUNNING descendants) that are still RUNNING, with ``status``.

    For runs whose process died (a worker killed with SIGKILL): nothing else would ever end them.
    Returns the ids that were ended.
    """
    client = MlflowClient(tracking_uri=uri)
    ended: list[str] = []
    pending = list(run_ids)
    while pending:
        run_id = pending.pop()
        try:
            run = client.get_run(run_id)
        except MlflowException:
            continue
        children = client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
        )
        pending.extend(child.info.run_id for child in children)
        if run.info.status == "RUNNING":
            client.set_tag(run_id, FAILURE_TAG, mask_secrets(reason)[:TAG_VALUE_LIMIT])
            client.set_terminated(run_id, status)
            ended.append(run_id)
    return ended


def check_tracking_store(uri: str, experiment: str | None = None, create: bool = True) -> None:
    """Check the tracking store before anything is created in it or elsewhere (see :mod:`tuner.stores`).

    The store must be reachable and, with ``create``, writable; an existing store must be readable and,
    if ``experiment`` is given and exists, that experiment must not be deleted. Raises ConfigError
    naming the store (password masked); StoreMissing when ``create`` is False and there is no store.
    """
    what, key = "MLflow tracking store", "tracking.uri"
    path = sqlite_path(uri)
    if path is not None:
        check_sqlite(path, what, key, create)
        exists = path.exists()
    elif uri.startswith(("http://", "https://")):
        check_http(uri, "MLflow tracking server", key)
        exists = True
    elif "://" in uri and not uri.startswith("file:"):
        check_server(uri, what, key)
        exists = True
    else:  # a local folder (MLflow's file store)
        folder = Path(uri.removeprefix("file://"))
        exists = folder.exists()
        if create:
            check_writable_dir(folder, what, key)
        elif not exists:
            raise StoreMissing(f"no {what} at {folder} ({key}): it does not exist yet")
    if exists and experiment is not None:
        # Opening the store can migrate its tables, which must not overlap another process creating them.
        try:
            with lock_if_sqlite(uri):
                found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
        except MlflowException as exc:
            raise ConfigError(f"cannot use {what} {mask_secrets(uri)}: {exc.message}") from exc
        if found is not None and found.lifecycle_stage != "active":
            raise ConfigError(_deleted_experiment(experiment))


def _deleted_experiment(name: str) -> str:
    return (
        f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
        "or choose another name with tracking.experiment=..."
    )


def _open_experiment(uri: str, name: str, artifact_dir: Path | None) -> tuple[MlflowClient, str]:
    """A client on ``uri`` and the id of the active experiment ``name``, created if missing."""
    # A fresh SQLite store gets its tables on first use; two processes doing that at once collide.
    with lock_if_sqlite(uri):
        return _open_experiment_unlocked(uri, name, artifact_dir)


def _open_experiment_unlocked(uri: str, name: str, artifact_dir: Path | None) -> tuple[MlflowClient, str]:
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            safe_name = re.sub(r"[^\w.-]", "_", name)
            location = None if artifact_dir is None else (artifact_dir.resolve() / safe_name).as_uri()
            try:
                return client, client.create_experiment(name, artifact_location=location)
            except MlflowException:  # created meanwhile by another process
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
    except MlflowException as exc:
        raise ConfigError(f"cannot use MLflow tracking store {mask_secrets(uri)}: {exc.message}") from exc
    if experiment.lifecycle_stage != "active":
        raise ConfigError(_deleted_experiment(name))
    return client, experiment.experiment_id


class RunSignals:
    """Signal handling for open runs (a context manager), so that a run never stays RUNNING.

    Inside the block SIGTERM raises :class:`RunTerminated` and SIGINT raises KeyboardInterrupt. Once
    ``closing`` is set (the run is being ended), both are held instead; on leaving the block the previous
    handlers are put back and any held signal is delivered to them. Signals that were ignored stay
    ignored; outside the main thread nothing is installed.

    With ``deferred=True`` signals raise only inside :meth:`allowed` blocks (computation and sleeps) and
    are held everywhere else. An exception raised in the middle of a storage or tracking call can leave
    that call's database connection inside an open transaction, and every later write then waits on its
    lock (SQLite's busy timeout is 60 s here); a deferred block never interrupts one.
    """

    def __init__(self, install: bool = True, deferred: bool = False) -> None:
        self.closing = False
        self._install = install
        self._deferred = deferred
        self._allowed = False
        self._held: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> RunSignals:
        if self._install and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(self._held):
            signal.raise_signal(signum)

    @contextmanager
    def allowed(self) -> Iterator[None]:
        """A block in which a signal raises at once: computation or a sleep, nothing half-written when
        it is cut short. A signal held since the last such block raises on entry (the others held with
        it are dropped: one interrupt is enough)."""
        outer = self._allowed
        try:  # set inside the try, so that no exception can leave the flag set
            self._allowed = True  # before the check: a signal from here on raises by itself
            self._raise_held()
            yield
        finally:
            self._allowed = outer

    @contextmanager
    def held(self) -> Iterator[None]:
        """A block inside an :meth:`allowed` one that is never interrupted (storage and tracking writes
        from a training callback); a signal that came during it raises on leaving it."""
        outer = self._allowed
        self._allowed = False
        try:
            yield
        finally:
            self._allowed = outer
        if outer:
            self._raise_held()

    def _raise_held(self) -> None:
        """Raise for the latest held signal, if any (and not closing); the others are dropped."""
        if self._held and not self.closing:
            signum = self._held[-1]
            self._held.clear()
            _raise_for(signum)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.closing or (self._deferred and not self._allowed):
            self._held.append(signum)
            return
        _raise_for(signum)


def _raise_for(signum: int) -> None:
    """RunTerminated for SIGTERM, KeyboardInterrupt for SIGINT."""
    if signum == signal.SIGTERM:
        raise RunTerminated(signum)
    raise KeyboardInterrupt


def interrupts_raise() -> RunSignals:
    """A deferred :class:`RunSignals` block, for runs opened with ``handle_signals=False`` inside it:
    SIGTERM raises :class:`RunTerminated` and SIGINT KeyboardInterrupt, but only inside its
    :meth:`~RunSignals.allowed` blocks; anywhere else they wait for the next one, or for the block's end
    (then they go to the previous handlers)."""
    return RunSignals(deferred=True)


class RunReader:
    """Read-only queries on a tracking store, for jobs that resume from it and reports built from it.

    Runs are found by their tags (exact values) across all active experiments or in one; results are
    MLflow ``Run`` objects, newest first. MLflow errors become ConfigError naming the masked URI.
    """

    def __init__(self, uri: str, create: bool = False, experiment: str | None = None) -> None:
        """Read ``uri``, checked first by :func:`check_tracking_store` (with ``experiment``, if given);
        unless ``create`` (a command about to record there), a store that does not exist yet is a
        StoreMissing error rather than a new, empty store."""
        check_tracking_store(uri, experiment, create=create)
        self.uri = uri
        with lock_if_sqlite(uri):  # opening may create the tables
            self.client = MlflowClient(tracking_uri=uri)

    def run(self, run_id: str) -> Any:
        """The MLflow ``Run`` with id ``run_id``."""
        return self.client.get_run(run_id)

    def find_runs(
        self, tags: Mapping[str, str], experiment: str | None = None, finished_only: bool = False
    ) -> list[Any]:
        """Runs whose tags equal ``tags``, in experiment ``experiment`` (a name) or in any; newest first."""
        if any("'" in str(value) for value in tags.values()):
            raise ValueError(f"tag values to search for cannot contain a quote: {dict(tags)}")
        conditions = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
        if finished_only:
            conditions.append("attributes.status = 'FINISHED'")
        try:
            if experiment is None:
                ids = [e.experiment_id for e in self.client.search_experiments()]
            else:
                found = self.client.get_experiment_by_name(experiment)
                ids = [found.experiment_id] if found is not None else []
            runs: list[Any] = []
            token = None
            while ids:
                page = self.client.search_runs(
                    ids,
                    filter_string=" and ".join(conditions),
                    order_by=["attributes.start_time DESC"],
                    max_results=1000,
                    page_token=token,
                )
                runs.extend(page)
                token = page.token
                if not token:
                    break
        except MlflowException as exc:
            raise ConfigError(
                f"cannot read MLflow tracking store {mask_secrets(self.uri)}: {exc.message}"
            ) from exc
        return runs

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` of metric ``key`` sorted by step; of several values at a step, the latest."""
        history = sorted(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        return list({m.step: m.value for m in history}.items())  # dict keeps step order, latest value

    def read_text(self, run_id: str, artifact_file: str) -> str:
        """The text artifact ``artifact_file`` of run ``run_id``."""
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, artifact_file, tmp)).read_text()

    def experiment_name(self, experiment_id: str) -> str:
        """The name of experiment ``experiment_id``."""
        return self.client.get_experiment(experiment_id).name


def _describe(exc: BaseException) -> str:
    text = mask_secrets(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tag values as MLflow stores them: masked strings cut to its length limit."""
    return {key: mask_secrets(str(value))[:TAG_VALUE_LIMIT] for key, value in tags.items()}


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
