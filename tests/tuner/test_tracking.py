"""tuner.tracking against a real MLflow store (SQLite in a temporary folder): lifecycle, nesting, secrets."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from algorithms import ConfigError
from tuner import tracking
from tuner.stores import sqlite_lock
from tuner.tracking import RunTerminated, flatten_params, start_run

SECRET = "hunter2"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Arguments of start_run for one SQLite store shared by this module's tests (creating one takes ~2 s)."""
    runs_dir = tmp_path_factory.mktemp("runs")
    return {
        "uri": f"sqlite:///{runs_dir}/mlflow.db",
        "experiment": "tracking_tests",
        "artifact_dir": str(runs_dir / "mlartifacts"),
    }


def fetch(store: dict[str, str], run_id: str) -> Run:
    return MlflowClient(store["uri"]).get_run(run_id)


def test_float_params_show_without_binary_noise_in_the_run(store: dict[str, str]) -> None:
    values = {"reference": -143.29999999999998, "mix": [0.1 + 0.2, 64], "lr": 0.00031245678912345}
    with start_run(**store, run_name="rounded") as run:
        run.log_params(values)
    params = fetch(store, run.run_id).data.params
    assert params == {"reference": "-143.3", "mix": "[0.3, 64]", "lr": "0.0003124567891"}


def test_flatten_params_joins_keys_and_keeps_lists_whole() -> None:
    config = {
        "algo": {"lr": 0.001, "net_arch": [64, 64]},
        "env": {"kwargs": {}, "eval": {"n": 10}},
        "x": None,
    }
    assert flatten_params(config) == {
        "algo.lr": "0.001",
        "algo.net_arch": "[64, 64]",
        "env.kwargs": "{}",
        "env.eval.n": "10",
        "x": "None",
    }


def test_finished_run_records_masked_params_tags_text_and_finite_metrics(store: dict[str, str]) -> None:
    secret_url = f"postgresql://alice:{SECRET}@db/mlflow"
    with start_run(**store, run_name="ok", tags={"source": secret_url}) as run:
        run.log_params({"a": {"url": secret_url, "long": "x" * 7000}})
        run.log_text(f"uri: {secret_url}\n", "config.yaml")
        for step in range(3):
            run.log_metric("m", float(step), step)
        run.log_metrics({"nan": math.nan, "inf": math.inf, "ok": 1.0}, step=5)
        run.log_metrics({f"many/{i}": float(i) for i in range(1500)}, step=0)  # more than one batch
    got = fetch(store, run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["a.url"] == "postgresql://alice:***@db/mlflow"
    assert len(got.data.params["a.long"]) == tracking.PARAM_VALUE_LIMIT
    assert got.data.tags["source"] == "postgresql://alice:***@db/mlflow"
    assert [m.value for m in MlflowClient(store["uri"]).get_metric_history(run.run_id, "m")] == [
        0.0,
        1.0,
        2.0,
    ]
    assert "nan" not in got.data.metrics and "inf" not in got.data.metrics
    assert got.data.metrics["ok"] == 1.0
    assert sum(key.startswith("many/") for key in got.data.metrics) == 1500
    text = Path(MlflowClient(store["uri"]).download_artifacts(run.run_id, "config.yaml")).read_text()
    assert SECRET not in text and "***" in text


def test_exception_ends_run_failed_with_reason_and_is_reraised(store: dict[str, str]) -> None:
    with pytest.raises(RuntimeError, match="boom"), start_run(**store) as run:
        run.log_metric("m", 1.0, 1)
        raise RuntimeError("boom")
    got = fetch(store, run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags[tracking.FAILURE_TAG] == "RuntimeError: boom"
    assert got.data.metrics["m"] == 1.0  # buffered metrics are flushed on the way out


def test_keyboard_interrupt_ends_run_killed(store: dict[str, str]) -> None:
    with pytest.raises(KeyboardInterrupt), start_run(**store) as run:
        raise KeyboardInterrupt
    assert fetch(store, run.run_id).info.status == "KILLED"


def test_sigterm_during_run_ends_it_killed_and_restores_the_handler(store: dict[str, str]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunTerminated), start_run(**store) as run:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this at once
    got = fetch(store, run.run_id)
    assert got.info.status == "KILLED"
    assert got.data.tags[tracking.FAILURE_TAG] == "RunTerminated: received SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_signals_while_a_run_is_being_closed_are_held_then_delivered() -> None:
    received: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        with tracking.RunSignals() as signals:
            signals.closing = True
            os.kill(os.getpid(), signal.SIGTERM)  # held: no exception while closing
            time.sleep(0.1)
            assert received == []
        assert received == [signal.SIGTERM]  # delivered to the previous handler on leaving
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_deferred_block_raises_signals_only_inside_allowed_blocks() -> None:
    received: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        with tracking.interrupts_raise() as signals:
            os.kill(os.getpid(), signal.SIGTERM)  # held: a storage write here would not be cut off
            time.sleep(0.1)
            with pytest.raises(RunTerminated), signals.allowed():
                pytest.fail("the held SIGTERM did not raise on entering the allowed block")
            with pytest.raises(RunTerminated), signals.allowed():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # interrupted at once
            with signals.allowed():
                time.sleep(0.1)  # nothing is held any more
            reached = False
            with pytest.raises(RunTerminated), signals.allowed():
                with signals.held():  # a write inside the training callback
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.1)
                    reached = True
                pytest.fail("the SIGTERM held in the held block did not raise on leaving it")
            assert reached
            os.kill(os.getpid(), signal.SIGTERM)  # held to the end of the block
            time.sleep(0.1)
            assert received == []
        assert received == [signal.SIGTERM]  # then delivered to the previous handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_nested_run_points_to_its_parent(store: dict[str, str]) -> None:
    with (
        start_run(**store, run_name="parent") as parent,
        start_run(**store, parent_run_id=parent.run_id) as child,
    ):
        pass
    assert fetch(store, child.run_id).data.tags[MLFLOW_PARENT_RUN_ID] == parent.run_id
    assert fetch(store, parent.run_id).info.status == fetch(store, child.run_id).info.status == "FINISHED"


def test_deleted_experiment_is_a_config_error(store: dict[str, str]) -> None:
    client = MlflowClient(store["uri"])
    client.delete_experiment(client.create_experiment("deleted_one"))
    with pytest.raises(ConfigError, match="deleted"), start_run(**{**store, "experiment": "deleted_one"}):
        pass


def _hold_the_store_lock(path: str, held: Any, seconds: float) -> None:
    """Child process: hold the SQLite store's lock, as a command creating its tables does."""
    with sqlite_lock(Path(path)):
        held.set()
        time.sleep(seconds)


@pytest.mark.parametrize("opening", ["check", "reader"])
def test_opening_an_existing_sqlite_store_waits_while_another_process_creates_its_tables(
    tmp_path: Path, opening: str
) -> None:
    """MLflow migrates a store's tables when a client opens it; a worker that did so while the sweep was
    still creating them failed with a CircularDependencyError. Opening waits for the creator's lock."""
    db = tmp_path / "mlflow.db"
    db.touch()  # the creator has made the file, not yet the tables
    context = multiprocessing.get_context("spawn")
    held = context.Event()
    creator = context.Process(target=_hold_the_store_lock, args=(str(db), held, 5.0))
    creator.start()
    try:
        assert held.wait(60)
        started = time.monotonic()
        if opening == "check":
            tracking.check_tracking_store(f"sqlite:///{db}", "ppo_cartpole")
        else:
            tracking.RunReader(f"sqlite:///{db}")
        assert time.monotonic() - started > 4.0  # it waited for the lock (creating the tables takes ~2 s)
    finally:
        creator.join(30)
