"""A trial's record ends its MLflow run and its Optuna trial together, once, for each outcome."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.trial import TrialState

from tuner.search import SearchSpace
from tuner.trial_record import SEED_RETURNS_ATTR, TrialRecord, TrialSetup

SPACE = SearchSpace.from_config(
    {"algo": "ppo", "params": {"ent_coef": {"type": "float", "low": 1e-4, "high": 0.1}}}, "ppo"
)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One SQLite MLflow store for the module's tests (creating one takes seconds)."""
    runs_dir: Path = tmp_path_factory.mktemp("runs")
    return {
        "uri": f"sqlite:///{runs_dir}/mlflow.db",
        "experiment": "trial_record_tests",
        "artifact_dir": str(runs_dir / "mlartifacts"),
    }


def setup_for(tracking: dict[str, str], multi_objective: bool = False) -> TrialSetup:
    return TrialSetup({}, (), SPACE, (1, 2), 1000, tracking, None, multi_objective)


def opened(tracking: dict[str, str], multi_objective: bool = False) -> tuple[optuna.Study, TrialRecord]:
    directions = ["maximize", "minimize"] if multi_objective else ["maximize"]
    study = optuna.create_study(directions=directions)
    trial = study.ask()
    values = {"ent_coef": 0.01}
    record = TrialRecord.open(
        study, trial, setup_for(tracking, multi_objective), values, ["algo.ent_coef=0.01"]
    )
    return study, record


def run_of(tracking: dict[str, str], record: TrialRecord) -> Run:
    return MlflowClient(tracking["uri"]).get_run(record.run.run_id)


def test_complete_ends_both_with_the_objective(tracking: dict[str, str]) -> None:
    study, record = opened(tracking)
    record.seed_finished(0, 10.0)
    record.seed_finished(1, 30.0)
    outcome = record.complete([10.0, 30.0], wall_time_s=2.5)
    (trial,) = study.get_trials()
    assert outcome.state == trial.state == TrialState.COMPLETE and outcome.value == trial.value == 20.0
    assert trial.user_attrs[SEED_RETURNS_ATTR] == [10.0, 30.0]
    run = run_of(tracking, record)
    assert run.info.status == "FINISHED" and run.data.tags["optuna_state"] == "COMPLETE"
    assert run.data.metrics["trial/objective"] == 20.0 and run.data.metrics["trial/wall_time_s"] == 2.5
    assert run.data.params["sampled.ent_coef"] == "0.01" and run.data.tags["optuna_trial"] == "0"


def test_a_multi_objective_trial_reports_its_wall_time_second(tracking: dict[str, str]) -> None:
    study, record = opened(tracking, multi_objective=True)
    record.complete([5.0], wall_time_s=7.0)
    assert study.get_trials()[0].values == [5.0, 7.0]


def test_prune_ends_the_run_finished_and_the_trial_pruned(tracking: dict[str, str]) -> None:
    study, record = opened(tracking)
    outcome = record.prune(1500, [12.0])
    (trial,) = study.get_trials()
    assert outcome.state == trial.state == TrialState.PRUNED and trial.user_attrs[SEED_RETURNS_ATTR] == [12.0]
    run = run_of(tracking, record)
    assert run.info.status == "FINISHED" and run.data.tags["optuna_state"] == "PRUNED"
    assert run.data.tags["pruned_step"] == "1500" and "failure_reason" not in run.data.tags


def test_fail_ends_both_with_the_reason(tracking: dict[str, str]) -> None:
    study, record = opened(tracking)
    outcome = record.fail("training diverged: non-finite loss")
    (trial,) = study.get_trials()
    assert outcome.state == trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == outcome.reason == "training diverged: non-finite loss"
    run = run_of(tracking, record)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == outcome.reason


@pytest.mark.parametrize(
    ("error", "status"), [(KeyboardInterrupt(), "KILLED"), (RuntimeError("bug"), "FAILED")]
)
def test_an_exception_in_its_block_ends_the_run_and_leaves_the_trial_to_the_worker(
    tracking: dict[str, str], error: BaseException, status: str
) -> None:
    study, record = opened(tracking)
    with pytest.raises(type(error)), record:
        raise error
    assert run_of(tracking, record).info.status == status
    assert study.get_trials()[0].state == TrialState.RUNNING  # the worker sends it back to the queue


def test_a_run_ended_by_its_outcome_is_not_ended_again_by_a_later_error(tracking: dict[str, str]) -> None:
    study, record = opened(tracking)
    with pytest.raises(RuntimeError), record:
        record.prune(100, [])
        raise RuntimeError("after the end")
    assert run_of(tracking, record).info.status == "FINISHED"
    assert study.get_trials()[0].state == TrialState.PRUNED
