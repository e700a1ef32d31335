"""tuner.train end to end: the real Hydra app, real agents and a real MLflow store, on budgets of seconds.

The command-line runs are independent, so the module starts them together on a small process pool
(``cli_results``) and each test reads the result it is about.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow import MlflowClient
from mlflow.entities import Run
from omegaconf import DictConfig, OmegaConf, open_dict

from algorithms import PPO, ConfigError, UnsupportedSpaceError
from tests.helpers import ROOT
from tuner.compose import CONF_DIR
from tuner.tracking import RunRecorder, RunTerminated, start_run
from tuner.train import run_training

SECRET = "hunter2"
SECRET_URL = f"postgresql://alice:{SECRET}@db.example.com:5432/mlflow"
CLI_TIMEOUT_S = 180
LONG_RUN = ("experiment=ppo_cartpole", "total_steps=10000000")
TINY = ("experiment=ppo_cartpole", "total_steps=2048", "env.eval.freq_steps=1024", "env.eval.n_episodes=4")

# name -> (overrides, text the one error line must contain); every one exits 2 (tuner.app), Hydra's own
# composition errors included.
BAD_INPUTS: dict[str, tuple[tuple[str, ...], str]] = {
    "unknown_algo": (
        ("algo=foo",),
        "algo=foo is not a config in conf/algo; choose one of: d3qn, ppo, sac, sacd, td3",
    ),
    "unknown_env_config": (("env=foo",), "env=foo is not a config in conf/env; choose one of: acrobot,"),
    "unknown_env_id": (("env.id=NoSuchEnv-v0",), "NoSuchEnv"),
    "typo_key": (("algo.learning_rat=1",), "Could not override 'algo.learning_rat'"),
    "bad_override_syntax": (("algo.net_arch=[64",), "cannot parse the override 'algo.net_arch=[64'"),
    "negative_learning_rate": (("algo.learning_rate=-1",), "learning_rate must be > 0"),
    "wrong_type": (
        ("algo.learning_rate=fast",),
        "algo.learning_rate must be a number or a list of [from_step, value] pairs, got 'fast'",
    ),
    "batch_larger_than_rollout": (
        ("algo.batch_size=100000",),
        "batch_size (100000) is larger than a rollout",
    ),
    "unknown_env_backend": (
        ("env.backend=threads",),
        "env.backend must be one of auto, gymnasium, vector, envpool; got 'threads'",
    ),
    "backend_without_the_env": (
        ("env=pendulum", "env.backend=vector"),
        "env.backend=vector has no 'Pendulum-v1'; it covers CartPole-v0, CartPole-v1",
    ),
}


@dataclass(frozen=True)
class CliResult:
    proc: subprocess.CompletedProcess[str]
    runs_dir: Path


def train_cli(*overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuner.train", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def all_runs(runs_dir: Path) -> list[Run]:
    client = MlflowClient(f"sqlite:///{runs_dir}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliResult]:
    """Every non-interactive CLI run of this module, two at a time (one per core), each with its runs dir."""
    jobs: dict[str, tuple[str, ...]] = {
        "tiny": (*TINY, f"+note={SECRET_URL}"),
        # std = exp(-1000) underflows to 0, so the Gaussian log-probability is NaN in the first update.
        "diverged": ("env=pendulum", "algo.log_std_init=-1000", "algo.n_steps=256", "total_steps=1024"),
        "cfg_job": ("--cfg", "job"),
        **{name: overrides for name, (overrides, _) in BAD_INPUTS.items()},
    }
    dirs = {name: tmp_path_factory.mktemp(name) for name in jobs}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(train_cli, f"paths.runs_dir={dirs[name]}", *overrides)
            for name, overrides in jobs.items()
        }
        return {name: CliResult(future.result(), dirs[name]) for name, future in futures.items()}


@pytest.fixture(scope="module")
def tiny(cli_results: dict[str, CliResult]) -> tuple[CliResult, Run]:
    result = cli_results["tiny"]
    assert result.proc.returncode == 0, result.proc.stderr
    (run,) = all_runs(result.runs_dir)
    return result, run


def test_tiny_run_records_params_tags_and_finishes(tiny: tuple[CliResult, Run]) -> None:
    _, run = tiny
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["algo.name"] == "ppo"
    assert float(params["algo.learning_rate"]) == 1e-3  # from the ppo_cartpole preset
    assert params["algo.n_envs"] == "8"
    assert params["algo.net_arch"] == "[64, 64]"
    assert params["env.id"] == "CartPole-v1"
    assert params["env.backend"] == "auto" and run.data.tags["env_backend"] == "vector"  # auto, resolved
    assert params["total_steps"] == "2048"
    assert params["seed"] == "1"
    assert {"algo": "ppo", "env_id": "CartPole-v1", "seed": "1"}.items() <= run.data.tags.items()


def test_tiny_run_logs_metrics_against_env_steps(tiny: tuple[CliResult, Run]) -> None:
    result, run = tiny
    expected = {
        "charts/episodic_return",
        "charts/episodic_length",
        "charts/learning_rate",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
        "losses/approx_kl",
        "losses/clipfrac",
        "losses/explained_variance",
        "time/sps",
        "eval/mean_return",
        "eval/std_return",
    }
    assert expected <= set(run.data.metrics)
    client = MlflowClient(f"sqlite:///{result.runs_dir}/mlflow.db")
    sps_steps = [m.step for m in client.get_metric_history(run.info.run_id, "time/sps")]
    assert sps_steps == list(range(256, 2049, 256))  # one point per iteration of 8 envs x 32 steps
    evals = client.get_metric_history(run.info.run_id, "eval/mean_return")
    assert [m.step for m in evals] == [1024, 2048]  # one scheduled evaluation, then the final one
    # Each is the mean of 4 whole CartPole episodes, so a multiple of 0.25 (a NaN or a partial episode
    # would not be).
    assert all((4 * m.value).is_integer() and m.value >= 8 for m in evals)
    # Episode statistics: one mean per iteration that ended episodes, at that iteration's env step.
    for key in ("charts/episodic_return", "charts/episodic_length"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == sorted(set(steps)) and set(steps) <= set(sps_steps), (key, steps)
    returns, lengths = (
        client.get_metric_history(run.info.run_id, f"charts/episodic_{k}") for k in ("return", "length")
    )
    assert [m.value for m in returns] == [m.value for m in lengths]  # CartPole pays 1 a step


def test_tiny_run_stores_config_model_and_learning_curve(tiny: tuple[CliResult, Run], tmp_path: Path) -> None:
    result, run = tiny
    client = MlflowClient(f"sqlite:///{result.runs_dir}/mlflow.db")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "config.yaml",
        "model.pt",
        "learning_curve.png",
    }
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    config = OmegaConf.load(local / "config.yaml")
    assert config.algo.learning_rate == 1e-3 and config.total_steps == 2048
    assert (local / "learning_curve.png").read_bytes().startswith(b"\x89PNG")
    final = MlflowClient(f"sqlite:///{result.runs_dir}/mlflow.db").get_metric_history(
        run.info.run_id, "eval/mean_return"
    )[-1]
    with PPO.load(local / "model.pt") as agent:
        assert agent.num_steps == 2048
        # The stored model is the one evaluated at the end: same episodes (seed 1 + eval offset 10000).
        assert agent.evaluate(n_episodes=4, seed=10001).mean_return == final.value


def test_secret_in_config_is_masked_everywhere(tiny: tuple[CliResult, Run], tmp_path: Path) -> None:
    result, run = tiny
    assert run.data.params["note"] == "postgresql://alice:***@db.example.com:5432/mlflow"
    assert all(SECRET not in value for value in run.data.params.values())
    assert all(SECRET not in value for value in run.data.tags.values())
    assert "+note=postgresql://alice:***@" in run.data.tags["overrides"]
    client = MlflowClient(f"sqlite:///{result.runs_dir}/mlflow.db")
    config_text = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    assert SECRET not in config_text and "alice:***@" in config_text
    assert SECRET not in result.proc.stdout and SECRET not in result.proc.stderr


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_fails_with_one_clear_message_and_no_run(
    name: str, cli_results: dict[str, CliResult]
) -> None:
    _, message = BAD_INPUTS[name]
    result = cli_results[name]
    assert result.proc.returncode == 2, result.proc.stderr
    assert result.proc.stderr.strip().splitlines() == [result.proc.stderr.strip()]  # one line
    assert result.proc.stderr.startswith("error: ")
    assert message in result.proc.stderr
    assert not (result.runs_dir / "mlflow.db").exists()
    assert not (result.runs_dir / "mlartifacts").exists()


def test_cfg_job_prints_the_config_and_exits_zero(cli_results: dict[str, CliResult]) -> None:
    result = cli_results["cfg_job"]
    assert result.proc.returncode == 0, result.proc.stderr
    assert "learning_rate: 0.0003" in result.proc.stdout
    assert "total_steps: ${env.budget_steps}" in result.proc.stdout
    assert not (result.runs_dir / "mlflow.db").exists()


def test_diverged_training_ends_run_failed_with_reason(cli_results: dict[str, CliResult]) -> None:
    result = cli_results["diverged"]
    assert result.proc.returncode == 1
    assert "error: training diverged: non-finite" in result.proc.stderr
    assert "Traceback" not in result.proc.stderr
    (run,) = all_runs(result.runs_dir)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("NonFiniteLossError: non-finite")


def test_sigterm_mid_training_ends_run_killed(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner.train", *LONG_RUN, f"paths.runs_dir={tmp_path}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first progress line: learn() is running
            if "steps/s" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr
    (run,) = all_runs(tmp_path)
    assert run.info.status == "KILLED"


@pytest.fixture
def compose_train(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose conf/train.yaml as the Hydra app would (HydraConfig set), with runs under ``tmp_path``."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", [f"paths.runs_dir={tmp_path}", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield _compose
    HydraConfig.instance().cfg = None


def test_run_training_evaluates_on_schedule_and_nests_under_a_parent(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = compose_train(
        "algo.n_steps=64",
        "total_steps=512",
        "env.eval.freq_steps=128",
        "env.eval.n_episodes=2",
        "progress=false",
    )
    tracking = {"uri": cfg.tracking.uri, "experiment": cfg.tracking.experiment, "artifact_dir": str(tmp_path)}
    with start_run(**tracking, run_name="trial") as parent:
        result = run_training(cfg, parent_run_id=parent.run_id)
    assert result.steps == 512
    client = MlflowClient(cfg.tracking.uri)
    evals = client.get_metric_history(result.run_id, "eval/mean_return")
    assert [m.step for m in evals] == [128, 256, 384, 512]
    assert evals[-1].value == pytest.approx(result.mean_return)
    run = client.get_run(result.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.info.status == "FINISHED"


def test_a_signal_during_a_tracking_write_waits_for_the_write_then_kills_the_run(
    compose_train: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_train(
        "algo.n_steps=64", "total_steps=512", "env.eval.freq_steps=128", "env.eval.n_episodes=2",
        "progress=false",
    )  # fmt: skip
    log_metrics = RunRecorder.log_metrics

    def sigterm_then_write(self: RunRecorder, metrics: dict[str, float], step: int) -> None:
        if "eval/mean_return" in metrics:  # the first evaluation's write, in the middle of learning
            monkeypatch.setattr(RunRecorder, "log_metrics", log_metrics)
            os.kill(os.getpid(), signal.SIGTERM)
        log_metrics(self, metrics, step)

    monkeypatch.setattr(RunRecorder, "log_metrics", sigterm_then_write)
    with pytest.raises(RunTerminated):
        run_training(cfg)
    (run,) = MlflowClient(cfg.tracking.uri).search_runs(
        [MlflowClient(cfg.tracking.uri).get_experiment_by_name(cfg.tracking.experiment).experiment_id]
    )
    assert run.info.status == "KILLED"
    # The write the signal arrived in finished, and learning stopped right after it.
    evals = MlflowClient(cfg.tracking.uri).get_metric_history(run.info.run_id, "eval/mean_return")
    assert [m.step for m in evals] == [128]
    assert run.data.metrics["eval/std_return"] >= 0


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("+algo.learning_rat=1", ConfigError, "algo: unknown PPOConfig field 'learning_rat'; did you mean"),
        ("env.id=Blackjack-v1", UnsupportedSpaceError, "PPO supports flat Box observations only"),
        ("env.eval.n_episodes=0", ConfigError, "env.eval.n_episodes must be an integer >= 1, got 0"),
        ("seed=-1", ConfigError, "seed must be an integer >= 0, got -1"),
        ("algo.policy_dist=beta", ConfigError, "policy_dist='beta' does not fit a Discrete action space"),
    ],
)  # fmt: skip
def test_invalid_config_raises_before_any_run_exists(
    compose_train: Callable[..., DictConfig], tmp_path: Path, override: str, error: type, message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        run_training(compose_train(override))
    assert not (tmp_path / "mlflow.db").exists()


def test_eval_seeds_must_not_overlap_training_seeds(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = compose_train("algo.n_envs=4", "env.eval.seed_offset=2")
    with pytest.raises(ConfigError, match=r"env.eval.seed_offset \(2\) must be >= algo.n_envs \(4\)"):
        run_training(cfg)
    assert not (tmp_path / "mlflow.db").exists()
