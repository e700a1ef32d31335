"""Population mode (tune.population=K) driven as a user drives it: real, tiny studies."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.helpers import (
    DIVERGE_STUDY,
    ENV,
    ROOT,
    counted,
    interrupt_once_started,
    load,
    run_tune,
    runs_by_name,
    tune_args,
)
from tuner.population import population_size, worker_share

# The search space keeps one structural knob (n_epochs), so populations have a structure to fix.
WITH_EPOCHS = "+search.params.n_epochs={type:categorical,choices:[1,2]}"
ALWAYS_PRUNE = ["pruner=none", "pruner._target_=optuna.pruners.ThresholdPruner", "+pruner.lower=1e9"]


def test_a_population_study_runs_every_trial_as_a_real_trial(tmp_path: Path) -> None:
    result = run_tune(
        tmp_path,
        WITH_EPOCHS,
        "tune.population=3",
        "tune.population_trials=3",
        "tune.n_trials=5",
        "sampler=tpe",
        "sampler.seed=0",
        "pruner=none",
    )
    assert result.returncode == 0, result.stderr
    study = load(tmp_path)
    assert sorted(t.number for t in study.trials) == list(range(5))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    # Three trials per population; the members of one population share the structural setting.
    populations: dict[int, set[int]] = {}
    for trial in study.trials:
        populations.setdefault(trial.user_attrs["population"], set()).add(trial.params["n_epochs"])
    assert sorted(populations) == [1, 2]
    assert all(len(epochs) == 1 for epochs in populations.values())
    assert len({t.params["learning_rate"] for t in study.trials}) == 5  # member hyperparameters vary

    runs = runs_by_name(tmp_path)
    slots: dict[int, set[int]] = {}
    for trial in study.trials:
        slot = int(runs[f"trial-{trial.number}-seed1"][0].data.tags["population_slot"])
        slots.setdefault(trial.user_attrs["population"], set()).add(slot)
    assert slots == {1: {0, 1, 2}, 2: {0, 1}}  # the second population holds the 2 trials left, not 3
    (sweep,) = runs["sweep-ppo_cartpole"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for trial in study.trials:
        (trial_run,) = runs[f"trial-{trial.number}"]
        assert trial_run.info.status == "FINISHED"
        assert trial_run.data.tags["mlflow.parentRunId"] == sweep.info.run_id
        assert trial_run.data.metrics["trial/objective"] == trial.value
        (seed_run,) = runs[f"trial-{trial.number}-seed1"]
        assert seed_run.data.tags["mlflow.parentRunId"] == trial_run.info.run_id
        assert seed_run.info.status == "FINISHED"
        history = client.get_metric_history(seed_run.info.run_id, "eval/mean_return")
        assert [m.step for m in history] == [256, 512]  # its own evaluations, at its own env steps
        assert history[-1].value == trial.value
        # tune.trial_artifacts is off: the seed's run keeps its config, not its agent or curve
        assert {a.path for a in client.list_artifacts(seed_run.info.run_id)} == {"config.yaml"}
        # what Optuna saw: the same evaluations as intermediate values
        assert trial.intermediate_values == {m.step: m.value for m in history}


def test_pruned_trials_are_refilled_at_once_and_the_budget_is_exact(tmp_path: Path) -> None:
    result = run_tune(tmp_path, *ALWAYS_PRUNE, "tune.population=2", "tune.n_trials=5")
    assert result.returncode == 0, result.stderr
    study = load(tmp_path)
    assert [t.state for t in counted(study)] == [TrialState.PRUNED] * 5
    assert all(list(t.intermediate_values) == [256] for t in study.trials)  # pruned at the first report
    runs = runs_by_name(tmp_path)
    slots = [int(runs[f"trial-{n}-seed1"][0].data.tags["population_slot"]) for n in range(5)]
    assert set(slots) == {0, 1}  # two slots served five trials: each pruned slot was refilled
    for n in range(5):
        seed_run = runs[f"trial-{n}-seed1"][0]
        assert seed_run.info.status == "FINISHED"
        assert "stopped_early" in seed_run.data.tags
        assert runs[f"trial-{n}"][0].data.tags["optuna_state"] == "PRUNED"


def test_a_trials_seeds_train_side_by_side(tmp_path: Path) -> None:
    result = run_tune(tmp_path, "tune.population=4", "tune.n_seeds=2", "tune.n_trials=3")
    assert result.returncode == 0, result.stderr
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    runs = runs_by_name(tmp_path)
    for trial in study.trials:
        seed_returns = trial.user_attrs["seed_returns"]
        assert len(seed_returns) == 2
        assert trial.value == sum(seed_returns) / 2
        finals = [runs[f"trial-{trial.number}-seed{s}"][0].data.metrics["eval/mean_return"] for s in (1, 2)]
        assert sorted(finals) == sorted(seed_returns)
        # Reported at each env step: the mean of both seeds' evaluations there.
        assert list(trial.intermediate_values) == [256, 512]
        assert trial.intermediate_values[512] == trial.value


def test_population_settings_are_checked_before_anything_runs(tmp_path: Path) -> None:
    sac = [sys.executable, "-m", "tuner.tune", "algo=sac", "env=pendulum", "tune.population=2"]
    cases = [
        (sac, "tune.population trains PPO only"),
        (tune_args(tmp_path, "tune.population=1", "tune.n_seeds=2"), "tune.population (1) must be >="),
        (tune_args(tmp_path, "tune.population=2", "sampler=nsga2"), "single-objective sampler"),
        (tune_args(tmp_path, "tune.population=2", "tune.population_trials=0"), "tune.population_trials must"),
    ]
    for args, fragment in cases:
        args = [*args, f"paths.runs_dir={tmp_path}", "tune.n_trials=2"]
        result = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert fragment in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_interrupted_population_loses_nothing_and_resumes(tmp_path: Path) -> None:
    args = tune_args(tmp_path, "tune.population=2", "tune.n_trials=4", "tune.budget_steps=1000000")
    returncode, stderr = interrupt_once_started(tmp_path, args, seed_runs=2)
    assert returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    runs = [r for rs in runs_by_name(tmp_path).values() for r in rs]
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    killed = {r.info.run_name for r in runs if r.info.status == "KILLED"}
    assert {"trial-0", "trial-1", "trial-0-seed1", "trial-1-seed1"} <= killed
    study = load(tmp_path)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]

    again = run_tune(tmp_path, "tune.population=2", "tune.n_trials=4")
    assert again.returncode == 0, again.stderr
    study = load(tmp_path)
    assert [t.state for t in counted(study)] == [TrialState.COMPLETE] * 4
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 2  # the two interrupted trials, each retried once with the same params
    retried = {t.number: t for t in counted(study)}
    for trial in interrupted:
        assert any(r.params == trial.params for r in retried.values())


def test_a_population_is_sized_for_equal_waves_of_its_trials() -> None:
    """tune.population is the most members; a population takes no more than its trials fill evenly."""
    assert population_size(16, 1, 32, 20) == 10  # 10 + 10, not 16 + 4 of 16 slots
    assert population_size(32, 1, 64, 20) == 20  # one wave; 12 slots would stay empty
    assert population_size(8, 1, 16, 20) == 8  # 16 trials in this population: 8 + 8
    assert population_size(8, 1, 16, 4) == 4  # the last 4 trials of a study
    assert population_size(4, 2, 8, 3) == 4  # 2 seeds a trial: waves of 2 trials, then 1
    assert population_size(5, 2, 10, 20) == 4  # 2 trials a wave; a fifth slot could not hold a trial
    assert population_size(1, 1, 2, 20) == 1


def test_a_new_population_plans_for_its_workers_share_of_the_unfinished_trials() -> None:
    """Waiting and running trials are shared evenly between workers; a worker takes no more than waits."""
    assert worker_share(waiting=19, running=1, n_workers=1) == 20  # one worker: the whole study
    assert worker_share(waiting=19, running=1, n_workers=2) == 10  # the first of two workers: half
    assert worker_share(waiting=9, running=11, n_workers=2) == 10  # the other holds 10: the other half
    assert worker_share(waiting=4, running=9, n_workers=2) == 5  # the other is busy: the rest of the queue
    assert worker_share(waiting=0, running=1, n_workers=4) == 1  # the last trial


def test_a_diverging_member_fails_its_trial_and_the_others_complete(tmp_path: Path) -> None:
    """A member whose learning rate blows its loss up is a FAIL trial saying so; its neighbours in the
    same population complete, and the budget stays exact."""
    result = run_tune(
        tmp_path,
        *DIVERGE_STUDY,
        "tune.population=2",
        "tune.n_trials=4",
        "tune.budget_steps=2048",
        "~search.params.learning_rate",
        "+search.params.learning_rate={type:categorical,choices:[10000.0,0.0003]}",
    )
    assert result.returncode == 0, result.stderr
    study = load(tmp_path, "diverge")
    assert sorted(t.number for t in study.trials) == list(range(4))  # diverging is not retried
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(failed) + len(complete) == 4 and failed and complete
    assert {t.params["learning_rate"] for t in failed} == {10000.0}
    assert {t.params["learning_rate"] for t in complete} == {0.0003}
    assert all(t.user_attrs["fail_reason"].startswith("training diverged: non-finite") for t in failed)
    # One population held a diverging and a learning member side by side.
    mixed = {t.user_attrs["population"] for t in failed} & {t.user_attrs["population"] for t in complete}
    assert mixed, [(t.number, t.user_attrs["population"], t.params["learning_rate"]) for t in study.trials]
    runs = runs_by_name(tmp_path)
    assert {r.info.status for t in failed for r in runs[f"trial-{t.number}"]} == {"FAILED"}
    assert {r.info.status for t in complete for r in runs[f"trial-{t.number}"]} == {"FINISHED"}
