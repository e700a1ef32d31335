"""``python -m tuner.evaluate``: a recorded agent loaded back from MLflow (by run, by registered model or
from a checkpoint), evaluated, recorded as a linked run, rendered and registered."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers import command, files_under, one_error_line, run_tune

# A small CartPole run, recorded with its model: the source every test evaluates.
TRAIN = ["experiment=ppo_cartpole", "total_steps=4096", "env.eval.n_episodes=4", "progress=false"]
TRAIN_SEED, EVAL_OFFSET = 1, 10_000  # the run's final evaluation: 4 episodes on seed 10001


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    """(runs directory, run id, final evaluation return) of one `make train` run."""
    runs = tmp_path_factory.mktemp("evaluate")
    result = command("tuner.train", *TRAIN, f"paths.runs_dir={runs}")
    assert result.returncode == 0, result.stderr
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("ppo_cartpole").experiment_id])
    history = client.get_metric_history(run.info.run_id, "eval/mean_return")
    return runs, run.info.run_id, max(history, key=lambda m: m.step).value


def evaluation_runs(runs: Path) -> list:
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string="tags.kind = 'evaluation'")


def test_evaluating_a_run_reproduces_its_final_evaluation_and_records_a_linked_run(
    trained: tuple[Path, str, float],
) -> None:
    runs, run_id, final = trained
    before = {r.info.run_id for r in evaluation_runs(runs)}
    result = command(
        "tuner.evaluate", f"run={run_id}", f"paths.runs_dir={runs}", "episodes=4",
        f"eval_seed={TRAIN_SEED + EVAL_OFFSET}", "stochastic=true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "deterministic" in result.stdout and "stochastic" in result.stdout
    (run,) = [r for r in evaluation_runs(runs) if r.info.run_id not in before]
    assert run.data.tags["evaluates_run"] == run_id and run.data.tags["mlflow.parentRunId"] == run_id
    # The same policy on the same seeds and episode split as the run's own final evaluation.
    assert run.data.metrics["eval/mean_return"] == pytest.approx(final)
    assert {"eval/iqm", "eval/iqm_ci_low", "eval_stochastic/mean_return", "eval/mean_length"} <= set(
        run.data.metrics
    )


def test_a_registered_model_is_listed_and_evaluates_to_the_run_s_return(
    trained: tuple[Path, str, float],
) -> None:
    runs, run_id, final = trained
    first = command(
        "tuner.evaluate", f"run={run_id}", f"paths.runs_dir={runs}", "register=rltune_test_cartpole"
    )
    assert first.returncode == 0, first.stderr
    assert "models:/rltune_test_cartpole/1" in first.stdout
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    assert "rltune_test_cartpole" in [m.name for m in client.search_registered_models()]
    version = client.get_model_version("rltune_test_cartpole", "1")
    assert version.run_id == run_id and "deterministic" in version.description
    again = command(
        "tuner.evaluate", "model=models:/rltune_test_cartpole/1", f"paths.runs_dir={runs}", "episodes=4",
        f"eval_seed={TRAIN_SEED + EVAL_OFFSET}",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    (latest,) = [
        r for r in evaluation_runs(runs) if r.data.tags.get("model_uri") == "models:/rltune_test_cartpole/1"
    ]
    assert latest.data.metrics["eval/mean_return"] == pytest.approx(final)


@pytest.mark.skipif(
    importlib.util.find_spec("moviepy") is None, reason="needs the video extra (make install-video)"
)
def test_video_true_logs_a_playable_mp4_of_the_episode(trained: tuple[Path, str, float]) -> None:
    from moviepy import VideoFileClip  # the optional extra, imported only where it is installed

    runs, run_id, _ = trained
    result = command("tuner.evaluate", f"run={run_id}", f"paths.runs_dir={runs}", "video=true", "episodes=2")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # no renderer noise (pygame without a display)
    (video,) = [p for p in files_under(runs / "mlartifacts") if p.suffix == ".mp4"]
    assert video.parent.name == "videos" and video.name.startswith("ppo-CartPole-v1")
    clip = VideoFileClip(str(video))
    try:
        assert clip.n_frames > 1 and clip.size == [600, 400]
    finally:
        clip.close()


def test_a_checkpoint_is_evaluated_with_its_preset_and_refused_with_another(
    trained: tuple[Path, str, float], tmp_path: Path
) -> None:
    runs, run_id, _ = trained
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    checkpoint = Path(client.download_artifacts(run_id, "model.pt", str(tmp_path)))
    own = command(
        "tuner.evaluate",
        "experiment=ppo_cartpole",
        f"checkpoint={checkpoint}",
        f"paths.runs_dir={tmp_path}/ok",
    )
    assert own.returncode == 0, own.stderr
    (run,) = evaluation_runs(tmp_path / "ok")
    assert {
        a.path for a in MlflowClient(f"sqlite:///{tmp_path}/ok/mlflow.db").list_artifacts(run.info.run_id)
    } >= {
        "model.pt",
        "config.yaml",
        "episodes.csv",
    }
    other = command(
        "tuner.evaluate",
        "experiment=ppo_pendulum",
        f"checkpoint={checkpoint}",
        f"paths.runs_dir={tmp_path}/no",
    )
    assert other.returncode == 2
    assert "holds a ppo agent for CartPole-v1, but the config asks for ppo on Pendulum-v1" in one_error_line(
        other
    )
    assert not (tmp_path / "no" / "mlflow.db").exists() or not evaluation_runs(tmp_path / "no")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run=0123456789abcdef0123456789abcdef"],
            "run=0123456789abcdef0123456789abcdef: no such MLflow run",
        ),
        (["model=models:/nobody/3"], "model=models:/nobody/3: no such registered model version"),
        (["model=nobody"], "model must be models:/<name>/<version>, got 'nobody'"),
        ([], "give one of run=<MLflow run id>"),
        (["episodes=0", "run=x"], "episodes must be an integer >= 1, got 0"),
    ],
)
def test_bad_sources_are_one_line_errors_and_record_nothing(
    trained: tuple[Path, str, float], args: list[str], message: str
) -> None:
    runs, _, _ = trained
    before = len(evaluation_runs(runs))
    result = command("tuner.evaluate", *args, f"paths.runs_dir={runs}")
    assert result.returncode == 2
    assert message in one_error_line(result)
    assert len(evaluation_runs(runs)) == before


def test_a_run_without_a_model_is_refused(tmp_path: Path) -> None:
    train = command(
        "tuner.train", *TRAIN, "total_steps=512", "tracking.log_models=false", f"paths.runs_dir={tmp_path}"
    )
    assert train.returncode == 0, train.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("ppo_cartpole").experiment_id])
    result = command("tuner.evaluate", f"run={run.info.run_id}", f"paths.runs_dir={tmp_path}")
    assert result.returncode == 2
    assert "has no model.pt" in one_error_line(result)
    assert not evaluation_runs(tmp_path)


def test_a_sweep_registers_its_validated_tuned_model(tmp_path: Path) -> None:
    """tune.register=true: the tuned config's first held-out seed's model becomes version 1 of the preset's
    name, described by the validation table and the preset; evaluate loads it back."""
    result = run_tune(tmp_path, "tune.n_trials=2", "tune.validate_seeds=2", "tune.register=true")
    assert result.returncode == 0, result.stderr
    assert "as models:/ppo_cartpole_tuned/1" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    version = client.get_model_version("ppo_cartpole_tuned", "1")
    source = client.get_run(version.run_id)
    assert source.info.run_name == "validation-tuned-seed1001"
    assert "Held-out validation" in version.description and "override /algo: ppo" in version.description
    evaluated = command("tuner.evaluate", "model=models:/ppo_cartpole_tuned/1", f"paths.runs_dir={tmp_path}")
    assert evaluated.returncode == 0, evaluated.stderr


def test_register_without_validation_is_refused(tmp_path: Path) -> None:
    result = run_tune(tmp_path, "tune.register=true", "tune.validate_seeds=0")
    assert result.returncode == 2
    assert "tune.register=true registers a held-out validation run's model" in one_error_line(result)
    assert not (tmp_path / "optuna.db").exists()
