"""One config tuned on several environments (tune.envs): the normalised objective, its records, its
errors, and real tiny studies through `python -m tuner.tune`."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from algorithms import ConfigError
from tests.helpers import (
    command,
    counted,
    interrupt_once_started,
    one_error_line,
    run_tune,
    runs_by_name,
    runs_named_like,
    tune_args,
)
from tuner.multienv import EnvTask, aggregate_score, env_budgets, env_names, normalized_scores

TWO_ENVS = ["tune.envs=[cartpole,acrobot]", "tune.budget_steps={cartpole:512,acrobot:768}"]
STUDY = "ppo_cartpole-acrobot"


def _task(name: str, random_score: float, reference: float) -> EnvTask:
    return EnvTask(name, {"name": name}, 1000, random_score, reference)


def test_the_objective_is_the_iqm_of_returns_normalised_per_env_by_hand() -> None:
    tasks = [_task("cartpole", 20.0, 500.0), _task("acrobot", -500.0, -100.0)]
    returns = {"cartpole": [500.0, 260.0, 20.0, 140.0], "acrobot": [-100.0, -300.0, -500.0, -200.0]}
    # cartpole: (r - 20) / 480 -> 1, 0.5, 0, 0.25; acrobot: (r + 500) / 400 -> 1, 0.5, 0, 0.75
    assert normalized_scores(tasks, returns) == [1.0, 0.5, 0.0, 0.25, 1.0, 0.5, 0.0, 0.75]
    # IQM of 8 values: drop the two lowest (0, 0) and the two highest (1, 1): mean of 0.25, 0.5, 0.5, 0.75
    assert aggregate_score(tasks, returns) == pytest.approx(0.5)
    # After the first env only (a trial reports after each env): its own IQM, 0.5 / 4 values -> 0.375
    assert aggregate_score(tasks, {"cartpole": returns["cartpole"]}) == pytest.approx((0.5 + 0.25) / 2)


def test_env_names_and_budgets_are_checked() -> None:
    assert env_names(None) == ()
    assert env_names(["cartpole", "acrobot"]) == ("cartpole", "acrobot")
    with pytest.raises(ConfigError, match="unknown env 'cartpol'; choose from acrobot, cartpole"):
        env_names(["cartpol"])
    with pytest.raises(ConfigError, match="names an env twice"):
        env_names(["cartpole", "cartpole"])
    assert env_budgets(5000, ["cartpole", "acrobot"]) == {"cartpole": 5000, "acrobot": 5000}
    assert env_budgets({"acrobot": 7}, ["cartpole", "acrobot"]) == {"acrobot": 7}
    assert env_budgets(None, ["cartpole"]) == {}
    with pytest.raises(ConfigError, match=r"names envs that tune.envs does not: \['pendulum'\]"):
        env_budgets({"pendulum": 7}, ["cartpole"])
    with pytest.raises(ConfigError, match=r"a mapping env -> steps or null with tune\.envs; got 'acrobot:7'"):
        env_budgets("acrobot:7", ["cartpole", "acrobot"])  # what an unquoted {a:1,b:2} becomes in bash
    with pytest.raises(ConfigError, match=r"tune\.budget_steps\.acrobot must be an integer >= 1, got 0"):
        env_budgets({"acrobot": 0}, ["cartpole", "acrobot"])


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["env.random_score=null"], "tune.envs: env 'cartpole' has no random_score"),
        (["env.reference.ppo=null"], "tune.envs: env 'cartpole' has no reference.ppo.score"),
        (["tune.envs=[cartpole,cartpol]"], "tune.envs: unknown env 'cartpol'; choose from"),
        (["tune.budget_steps={pendulum:512}"], "tune.budget_steps names envs that tune.envs does not"),
        (["tune.method=pbt", "tune.population=2"], "tune.method=pbt trains one env: set tune.method=search"),
    ],
)
def test_bad_multi_env_input_is_one_line_and_creates_nothing(
    tmp_path: Path, overrides: list[str], fragment: str
) -> None:
    result = run_tune(tmp_path, "tune.envs=[cartpole,acrobot]", *overrides, "tune.n_trials=2", timeout=120)
    assert result.returncode == 2
    assert fragment in one_error_line(result)
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


# Sequential trials, and population mode (a population per env; 2 slots, so trials wait for the next env).
MODES = pytest.mark.parametrize("mode", [["tune.population=0"], ["tune.population=2"]], ids=["seq", "pop"])


@MODES
def test_two_env_study_with_two_workers_records_every_env_and_resumes(
    tmp_path: Path, mode: list[str]
) -> None:
    first = run_tune(tmp_path, *TWO_ENVS, *mode, "tune.n_trials=3", "tune.n_workers=2", timeout=400)
    assert first.returncode == 0, first.stderr
    second = run_tune(tmp_path, *TWO_ENVS, *mode, "tune.n_trials=5", "tune.n_workers=2", timeout=400)
    assert second.returncode == 0, second.stderr
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = counted(study)
    assert sorted(t.number for t in trials) == list(range(5))  # exactly the budget, across the resume
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert study.metric_names == ["normalized_iqm"] and study.user_attrs["envs"] == ["cartpole", "acrobot"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = runs_by_name(tmp_path, STUDY)
    for trial in trials:
        env_returns = trial.user_attrs["env_returns"]
        assert list(env_returns) == ["cartpole", "acrobot"] and all(len(r) == 1 for r in env_returns.values())
        scores = [(env_returns["cartpole"][0] - 22.0) / 478.0, (env_returns["acrobot"][0] + 500.0) / 426.5]
        assert trial.user_attrs["normalized_scores"] == pytest.approx(scores)
        assert trial.value == pytest.approx(np.mean(scores))  # the IQM of two values is their mean
        # Reported after each env at the env steps a seed has trained by then: every trial alike.
        assert sorted(trial.intermediate_values) == [512, 512 + 768]
        metrics = runs[f"trial-{trial.number}"][0].data.metrics
        for env, env_id, budget in (("cartpole", "CartPole-v1", 512), ("acrobot", "Acrobot-v1", 768)):
            assert metrics[f"trial/{env}/mean_return"] == pytest.approx(env_returns[env][0])
            (seed_run,) = runs[f"trial-{trial.number}-{env}-seed1"]
            assert seed_run.info.status == "FINISHED" and seed_run.data.tags["env_id"] == env_id
            history = client.get_metric_history(seed_run.info.run_id, "eval/mean_return")
            assert [m.step for m in history] == list(range(256, budget + 1, 256))  # from step 0 on each env
            assert history[-1].value == pytest.approx(env_returns[env][0])
            assert ("population_slot" in seed_run.data.tags) == (mode == ["tune.population=2"])
    sweep = runs[f"sweep-{STUDY}"][0]
    table = pd.read_csv(client.download_artifacts(sweep.info.run_id, "trials.csv", str(tmp_path / "dl")))
    assert {"return_cartpole", "return_acrobot"} <= set(table.columns)
    assert "normalised IQM" in second.stdout


@MODES
def test_a_trial_pruned_after_an_env_trains_none_of_the_next(tmp_path: Path, mode: list[str]) -> None:
    # A pruner that stops every trial at its first report (no normalised score reaches 2): the report
    # after CartPole, the first env.
    pruner = ["pruner=none", "pruner._target_=optuna.pruners.ThresholdPruner", "+pruner.lower=2.0"]
    result = run_tune(tmp_path, *TWO_ENVS, *mode, *pruner, "tune.n_trials=3")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3
    runs = runs_by_name(tmp_path, STUDY)
    for trial in study.trials:
        assert list(trial.intermediate_values) == [512]
        assert list(trial.user_attrs["env_returns"]) == ["cartpole"]
        assert f"trial-{trial.number}-cartpole-seed1" in runs
        assert f"trial-{trial.number}-acrobot-seed1" not in runs


def test_an_interrupted_multi_env_population_loses_nothing_and_resumes(tmp_path: Path) -> None:
    # Two slots per env: trials 0 and 1 train Acrobot (a long budget) while 2 and 3, done with CartPole,
    # wait for its slots. SIGTERM then.
    envs = ["tune.envs=[cartpole,acrobot]", "tune.budget_steps={cartpole:512,acrobot:16000}"]
    args = tune_args(tmp_path, *envs, "tune.population=2", "tune.n_trials=4")

    def two_train_acrobot_and_two_wait() -> bool:
        return (
            runs_named_like(tmp_path, "trial-%-acrobot-seed%", status="RUNNING") == 2
            and runs_named_like(tmp_path, "trial-%-cartpole-seed%", status="FINISHED") == 4
        )

    returncode, stderr = interrupt_once_started(tmp_path, args, 0, ready=two_train_acrobot_and_two_wait)
    assert returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    runs = [r for rs in runs_by_name(tmp_path, STUDY).values() for r in rs]
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    killed = {r.info.run_name for r in runs if r.info.status == "KILLED"}
    trial_runs = {f"sweep-{STUDY}", *(f"trial-{n}" for n in range(4))}
    # (trials 2 and 3, waiting, had no seed run open)
    assert killed == trial_runs | {"trial-0-acrobot-seed1", "trial-1-acrobot-seed1"}
    storage = f"sqlite:///{tmp_path}/optuna.db"
    states = [t.state for t in optuna.load_study(study_name=STUDY, storage=storage).trials]
    assert states == [TrialState.FAIL] * 4 + [TrialState.WAITING] * 4  # back to the queue as retries
    interrupted = optuna.load_study(study_name=STUDY, storage=storage).trials[:4]

    again = run_tune(tmp_path, *envs, "tune.population=2", "tune.n_trials=4", timeout=400)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = counted(study)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted(tuple(sorted(t.params.items())) for t in trials) == sorted(
        tuple(sorted(t.params.items())) for t in interrupted
    )  # the same four configs, each trained on both envs from the start
    assert all(list(t.user_attrs["env_returns"]) == ["cartpole", "acrobot"] for t in trials)


def test_a_study_keeps_its_envs(tmp_path: Path) -> None:
    assert run_tune(tmp_path, *TWO_ENVS, "tune.n_trials=1").returncode == 0
    other = run_tune(
        tmp_path, "tune.envs=[cartpole]", "tune.study_name=ppo_cartpole-acrobot", "tune.n_trials=2"
    )
    assert other.returncode == 2
    assert "is tuned with tune.envs=['cartpole', 'acrobot'], not ['cartpole']" in one_error_line(other)


def test_validation_has_a_row_per_env_and_the_export_trains_on_any_of_them(tmp_path: Path) -> None:
    result = run_tune(
        tmp_path, *TWO_ENVS, "tune.n_trials=2", "tune.validate_seeds=2",
        "tune.export_name=rltune_test_multienv", timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = runs_by_name(tmp_path, STUDY)
    sweep = runs[f"sweep-{STUDY}"][0]
    validation = pd.read_csv(
        client.download_artifacts(sweep.info.run_id, "validation.csv", str(tmp_path / "v"))
    )
    assert list(validation["env"].unique()) == ["cartpole", "acrobot", "aggregate (normalised)"]
    assert list(validation["config"]) == ["default", "tuned", "difference"] * 3
    for label in ("default", "tuned"):
        for env in ("cartpole", "acrobot"):
            assert len(runs[f"validation-{label}-{env}-seed1001"]) == 1
    card = Path(client.download_artifacts(sweep.info.run_id, "report_card.md", str(tmp_path / "c")))
    assert "| acrobot |" in card.read_text() and "aggregate (normalised)" in card.read_text()
    assert "did tuning help? aggregate (normalised): default" in result.stdout

    # The preset is the shared hyperparameters alone: trained on acrobot with the trial's seed, budget
    # and evaluation settings it gives the trial's acrobot return.
    preset = tmp_path / "conf" / "experiment" / "rltune_test_multienv.yaml"
    text = preset.read_text()
    assert "override /env" not in text and "total_steps" not in text and "env=cartpole" in text
    best = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/optuna.db").best_trial
    train = command(
        "tuner.train", f"hydra.searchpath=[file://{tmp_path}/conf]", "experiment=rltune_test_multienv",
        "env=acrobot", "total_steps=768", "env.eval.freq_steps=256", "env.eval.n_episodes=2",
        f"paths.runs_dir={tmp_path}/replay", timeout=120,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    replay = MlflowClient(f"sqlite:///{tmp_path}/replay/mlflow.db")
    (run,) = replay.search_runs([replay.get_experiment_by_name("ppo_acrobot").experiment_id])
    final = replay.get_metric_history(run.info.run_id, "eval/mean_return")[-1].value
    assert final == pytest.approx(best.user_attrs["env_returns"]["acrobot"][0], abs=1e-9)
