"""Studies on the real PostgreSQL server: a fresh database per test, dropped afterwards.

When PostgreSQL is unreachable these tests skip, except with RLTUNE_REQUIRE_POSTGRES=1 (as in CI), where
they fail: a green CI must have exercised them.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.helpers import (
    ENV,
    POSTGRES,
    ROOT,
    containing,
    counted,
    files_containing,
    kill_once_a_trial_runs,
    mlflow_values,
    optuna_values,
    postgres_unreachable,
    tune_args,
)
from tuner.compose import compose_config
from tuner.postgres import ensure_database
from tuner.study import TuneSettings, make_storage

pytestmark = pytest.mark.postgres
SERVER = POSTGRES
PASSWORD = "pg-s3cret-pw"  # trust auth accepts any password, so it can ride along in every URL


def _admin() -> sqlalchemy.engine.Engine:
    return sqlalchemy.create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")


def _drop_database(engine: sqlalchemy.engine.Engine, name: str) -> None:
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a database that does not exist yet (the storage creates it); dropped after the test."""
    message = postgres_unreachable()
    if message is not None:
        if os.environ.get("RLTUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    engine = _admin()
    name = f"rltune_test_{uuid.uuid4().hex[:10]}"
    yield f"{SERVER}/{name}"
    _drop_database(engine, name)
    engine.dispose()


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


def run(
    tmp_path: Path,
    storage_url: str,
    *extra: str,
    timeout: float = 300,
    multirun: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """A tiny sweep on storage=postgres, the URL passed the recommended way (RLTUNE_STORAGE)."""
    args = tune_args(tmp_path, "storage=postgres", *extra)
    if multirun:
        args.insert(3, "--multirun")  # after `python -m tuner.tune`, before the overrides
    # Its own session: on a timeout the whole group goes, launcher jobs (submitit) included.
    with subprocess.Popen(
        args,
        cwd=ROOT,
        env={**ENV, "RLTUNE_STORAGE": storage_url, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


@pytest.fixture
def mlflow_server(tmp_path: Path, pg_url: str) -> Iterator[str]:
    """An MLflow tracking server on a fresh PostgreSQL database, as `make tracking-server` starts it."""
    backend = f"{pg_url}_mlflow"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run(
        [sys.executable, "-m", "tuner.postgres", "MLFLOW_BACKEND_STORE_URI"],
        env={**ENV, "MLFLOW_BACKEND_STORE_URI": backend},
        check=True,
        cwd=ROOT,
    )
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        env={**ENV, "MLFLOW_BACKEND_STORE_URI": backend},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    "the MLflow server did not start"
                )
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        engine = _admin()
        with engine.connect() as connection:
            name = backend.rsplit("/", 1)[1]
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def test_four_workers_finish_exactly_the_budget_and_log_to_the_server(
    tmp_path: Path, pg_url: str, mlflow_server: str
) -> None:
    result = run(
        tmp_path, pg_url, "tune.n_trials=12", "tune.n_workers=4", "tracking=server",
        "tune.trial_artifacts=true", env={"MLFLOW_TRACKING_URI": mlflow_server},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="ppo_cartpole", storage=pg_url)
    assert sorted(t.number for t in study.trials) == list(range(12))  # exact, no duplicate numbers
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    # Which worker ran how many trials depends on the schedule; that four ran and shared out exactly
    # the twelve trials does not.
    logs = sorted((tmp_path / "logs" / "ppo_cartpole").glob("worker-*.log"))
    done = [re.findall(r"done: (\d+) trials", p.read_text()) for p in logs]
    assert len(logs) == 4 and all(len(d) == 1 for d in done), done
    assert sum(int(d[0]) for d in done) == 12
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()  # nothing local

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("ppo_cartpole")
    runs = client.search_runs([experiment.experiment_id])
    names = Counter(r.info.run_name for r in runs)
    assert {f"trial-{n}" for n in range(12)} <= set(names) and names["sweep-ppo_cartpole"] == 1
    assert all(r.info.status == "FINISHED" for r in runs)
    seed_run = next(r for r in runs if r.info.run_name == "trial-7-seed1")
    assert "model.pt" in {a.path for a in client.list_artifacts(seed_run.info.run_id)}  # via the server


def test_a_password_in_the_storage_url_is_never_written_or_printed(tmp_path: Path, pg_url: str) -> None:
    result = run(tmp_path, with_password(pg_url), "tune.n_trials=2", "tune.validate_seeds=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert PASSWORD not in result.stdout + result.stderr
    assert "***" in result.stdout + result.stderr  # the URL was shown, masked
    for path in tmp_path.rglob("*"):  # logs, MLflow's database and artifacts, exported presets
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    for mlflow_run in client.search_runs(experiments):
        values = [*mlflow_run.data.params.values(), *mlflow_run.data.tags.values()]
        assert not [v for v in values if PASSWORD in v], mlflow_run.info.run_name


def test_unreachable_storage_is_one_masked_message_and_nothing_starts(tmp_path: Path) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/rltune"  # nothing listens on port 1
    result = run(tmp_path, url, "tune.n_trials=2", timeout=120)
    assert result.returncode == 2
    assert PASSWORD not in result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach Optuna storage postgresql://postgres:***@127.0.0.1:1/rltune")
    assert not (tmp_path / "mlflow.db").exists()


def _databases() -> set[str]:
    engine = _admin()
    try:
        with engine.connect() as connection:
            return set(connection.execute(sqlalchemy.text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()


def test_a_tracking_store_that_fails_leaves_no_study_and_no_new_database(tmp_path: Path, pg_url: str) -> None:
    tracking = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/mlflow"  # nothing listens on port 1
    result = run(tmp_path, pg_url, "tune.n_trials=2", f"tracking.uri={tracking}", timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cannot reach MLflow tracking store postgresql://postgres:***@127.0.0.1:1/mlflow" in line
    assert pg_url.rsplit("/", 1)[1] not in _databases()  # the study's database was never created
    assert not (tmp_path / "mlflow.db").exists()


def test_replay_reads_a_postgres_study_with_the_storage_settings_of_tune(tmp_path: Path, pg_url: str) -> None:
    result = run(tmp_path, pg_url, "tune.n_trials=1")
    assert result.returncode == 0, result.stderr
    (trial,) = optuna.load_study(study_name="ppo_cartpole", storage=pg_url).trials
    replay = subprocess.run(
        [sys.executable, "-m", "tuner.replay", "storage=postgres", "study=ppo_cartpole", "trial=0",
         f"paths.runs_dir={tmp_path}"],
        cwd=ROOT, env={**ENV, "RLTUNE_STORAGE": pg_url}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert f"final eval return {trial.user_attrs['seed_returns'][0]:.2f}" in replay.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "tuner.replay", "storage=postgres", "study=ppo_cartpole", "trial=0",
         f"paths.runs_dir={tmp_path}"],
        cwd=ROOT, env={**ENV, "RLTUNE_STORAGE": f"{pg_url}_none"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr, missing.stderr
    assert f"{pg_url.rsplit('/', 1)[1]}_none" not in _databases()  # read-only: never created


def test_passwords_in_every_url_override_stay_out_of_a_whole_scale_out_sweep(
    tmp_path: Path, pg_url: str
) -> None:
    """Study storage and MLflow store both on PostgreSQL, each URL with the password and given on the
    command line; two worker processes; then a replay with the URLs again: nothing any of them printed,
    logged or recorded holds the password."""
    tracking = f"{pg_url}_mlflow"
    ensure_database(tracking)
    try:
        urls = [f"tune.storage={with_password(pg_url)}", f"tracking.uri={with_password(tracking)}"]
        sweep = subprocess.run(
            [*tune_args(tmp_path, "tune.n_trials=2", "tune.n_workers=2", "tune.validate_seeds=1"), *urls],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        replay = subprocess.run(
            [sys.executable, "-m", "tuner.replay", f"storage.url={with_password(pg_url)}",
             f"tracking.uri={with_password(tracking)}", "study=ppo_cartpole", "trial=1",
             f"paths.runs_dir={tmp_path}"],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert replay.returncode == 0, replay.stderr
        printed = sweep.stdout + sweep.stderr + replay.stdout + replay.stderr
        assert PASSWORD not in printed and "postgres:***@" in printed
        assert files_containing(tmp_path, PASSWORD) == []  # worker and Hydra logs, exported preset
        assert containing(mlflow_values(tracking), PASSWORD) == []
        stored = optuna_values(pg_url)
        assert containing(stored, PASSWORD) == [] and containing(stored, "postgres:***@")
    finally:
        engine = _admin()
        _drop_database(engine, tracking.rsplit("/", 1)[1])
        engine.dispose()


def test_a_worker_started_with_its_sweep_waits_for_the_trials(tmp_path: Path, pg_url: str) -> None:
    """`make worker` and `make sweep` started at the same moment: the worker waits for the study and
    its trials instead of finding none and exiting with 0 trials."""
    extra = ("storage=postgres", "tune.n_trials=6", "tune.budget_steps=16384", "worker=3")
    worker = subprocess.Popen(
        [sys.executable, "-m", "tuner.worker", *tune_args(tmp_path, *extra)[3:]],
        cwd=ROOT, env={**ENV, "RLTUNE_STORAGE": pg_url}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        sweep = run(tmp_path, pg_url, "tune.n_trials=6", "tune.budget_steps=16384")
        output, _ = worker.communicate(timeout=240)
    finally:
        worker.kill()
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert worker.returncode == 0, output
    n_done = int(output.strip().splitlines()[-1].removeprefix("worker done: ").split()[0])
    assert n_done >= 1, output
    study = optuna.load_study(study_name="ppo_cartpole", storage=pg_url)
    assert [t.state for t in counted(study)] == [TrialState.COMPLETE] * 6


def _open_storage(settings: TuneSettings, barrier: Any, outcomes: Any) -> None:
    """Child process: open the study storage the way a worker does, all children at the same moment."""
    barrier.wait()
    try:
        make_storage(settings).engine.dispose()
        outcomes.put("ok")
    except Exception as exc:  # report it to the test rather than die with it
        outcomes.put(f"{type(exc).__name__}: {exc}")


def test_workers_opening_a_fresh_database_at_once_all_get_the_storage(pg_url: str) -> None:
    """Optuna creates its tables on first open; without tuner.postgres.schema_lock two workers doing that
    at the same moment make PostgreSQL reject one of them (measured: 5 of 10 rounds of two processes),
    and a multirun's job 0 that lost this race left job 1 waiting for a study that never came."""
    context = multiprocessing.get_context("fork")  # the children need nothing imported afresh
    tune = compose_config([], config_name="tune").tune
    for round_ in range(4):
        url = f"{pg_url}_{round_}"
        settings = TuneSettings.from_config({**tune, "storage": url})
        barrier, outcomes = context.Barrier(3), context.Queue()
        children = [
            context.Process(target=_open_storage, args=(settings, barrier, outcomes)) for _ in range(3)
        ]
        try:
            for child in children:
                child.start()
            results = [outcomes.get(timeout=120) for _ in children]
            assert results == ["ok"] * 3, results
            assert optuna.get_all_study_names(url) == []  # the tables exist and are whole
        finally:
            for child in children:
                child.join(30)
                if child.is_alive():
                    child.kill()
            admin = _admin()
            _drop_database(admin, url.rsplit("/", 1)[1])
            admin.dispose()


def test_submitit_multirun_workers_share_one_study(tmp_path: Path, pg_url: str) -> None:
    # Hydra's submitit launcher starts the workers as jobs; submitit_local runs them here, submitit_slurm
    # on a cluster with the same command.
    result = run(
        tmp_path,
        pg_url,
        "tune.n_trials=8",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={tmp_path}/multirun",
        "worker=range(2)",
        timeout=400,
        multirun=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="ppo_cartpole", storage=pg_url)
    assert sorted(t.number for t in study.trials) == list(range(8))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    logs = {p.name: p.read_text() for p in (tmp_path / "multirun" / ".submitit").rglob("*_log.out")}
    assert len(logs) == 2, sorted(logs)
    joined = [text for text in logs.values() if "worker 1 done:" in text]
    assert len(joined) == 1 and "worker 1 done: 0 trials" not in joined[0], logs
    assert any("best trial" in text for text in logs.values())  # job 0 wrote the study's tables


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(tmp_path: Path, pg_url: str) -> None:
    args = tune_args(tmp_path, "storage=postgres", "tune.n_trials=2", "tune.budget_steps=30000")
    env = {**ENV, "RLTUNE_STORAGE": pg_url}
    killed_number, killed_run_id = kill_once_a_trial_runs(args, env, pg_url)

    again = run(tmp_path, pg_url, "tune.n_trials=2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    study = optuna.load_study(study_name="ppo_cartpole", storage=pg_url)
    trials = {t.number: t for t in study.trials}
    assert trials[killed_number].state == TrialState.FAIL
    retries = [
        t for t in study.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed_number
    ]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[killed_number].params
    assert [t.state for t in counted(study)] == [TrialState.COMPLETE] * 2  # exact budget
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(killed_run_id).info.status == "KILLED"


def test_population_workers_share_a_postgres_study(tmp_path: Path, pg_url: str) -> None:
    """Two workers, each with its own population of 2, fill one study's budget exactly."""
    result = run(tmp_path, pg_url, "tune.population=2", "tune.n_workers=2", "tune.n_trials=6")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="ppo_cartpole", storage=pg_url)
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    logs = sorted((tmp_path / "logs" / "ppo_cartpole").glob("worker-*.log"))
    assert len(logs) == 2
    assert all("COMPLETE" in log.read_text() for log in logs), "both populations ran trials"


@pytest.mark.parametrize("population", [0, 2], ids=["seq", "pop"])
def test_a_multi_env_study_shares_a_postgres_study_between_workers(
    tmp_path: Path, pg_url: str, population: int
) -> None:
    envs = ["tune.envs=[cartpole,acrobot]", "tune.budget_steps={cartpole:512,acrobot:512}"]
    mode = f"tune.population={population}"
    result = run(tmp_path, pg_url, *envs, mode, "tune.n_workers=2", "tune.n_trials=4")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="ppo_cartpole-acrobot", storage=pg_url)
    assert sorted(t.number for t in study.trials) == list(range(4))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(list(t.user_attrs["env_returns"]) == ["cartpole", "acrobot"] for t in study.trials)
