"""Evaluate a recorded agent: ``python -m tuner.evaluate run=<id> | model=models:/<name>/<version> |
experiment=<preset> checkpoint=<path>`` (``make evaluate ARGS="…"``).

Loads the agent (``torch.load(weights_only=True)``) with the config it was trained with, plays
``episodes`` episodes on evaluation envs seeded with ``eval_seed`` (apart from the seeds training used)
with the deterministic policy, and with the stochastic one too when ``stochastic=true``, prints mean ±
std, IQM with its 95 % bootstrap interval and the episode lengths, and records an evaluation run: in the
source run's experiment and nested under it (tag ``evaluates_run``), or, for a checkpoint, in the
preset's experiment with the checkpoint as its ``model.pt``. ``video=true`` also records episodes with
Gymnasium's ``RecordVideo`` as MP4 artifacts; ``register=<name>`` registers the model in MLflow's Model
Registry. Every input is checked, and the source loaded, before anything is recorded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from rich import get_console

from algorithms import Agent, ConfigError, EvalResult, load_agent
from algorithms.common.networks import configure_torch_cpu
from tuner.app import hydra_app
from tuner.display import console_table
from tuner.model_registry import RecordedAgent, fetch_model, fetch_run, register_model
from tuner.stats import bootstrap_ci, iqm
from tuner.tracking import check_tracking_store, start_run
from tuner.train import CONFIG_ARTIFACT, config_boolean, config_integer, resolve_config
from tuner.ui_links import print_links

VIDEO_DIR = "videos"
EPISODES_CSV = "episodes.csv"


@dataclass(frozen=True)
class EvaluateSettings:
    """The validated keys of conf/evaluate.yaml (see the comments there)."""

    run: str | None
    model: str | None
    checkpoint: Path | None
    episodes: int
    eval_seed: int
    eval_envs: int
    stochastic: bool
    video: bool
    video_episodes: int
    register: str | None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EvaluateSettings:
        """Check the keys; ConfigError naming the key, the value and what is allowed."""
        sources = {key: cfg.get(key) for key in ("run", "model", "checkpoint") if cfg.get(key) is not None}
        if len(sources) != 1:
            given = ", ".join(f"{k}={v}" for k, v in sources.items()) or "none"
            raise ConfigError(
                "give one of run=<MLflow run id>, model=models:/<name>/<version> or checkpoint=<model.pt>; "
                f"got {given}"
            )
        checkpoint = cfg.get("checkpoint")
        if checkpoint is not None and not Path(str(checkpoint)).is_file():
            raise ConfigError(f"checkpoint={checkpoint}: no such file")
        register = cfg.get("register")
        if register is not None and (not isinstance(register, str) or not register.strip()):
            raise ConfigError(f"register must be a model name, got {register!r}")
        return cls(
            run=None if cfg.get("run") is None else str(cfg["run"]),
            model=None if cfg.get("model") is None else str(cfg["model"]),
            checkpoint=None if checkpoint is None else Path(str(checkpoint)),
            episodes=config_integer(cfg, "episodes", 1),
            eval_seed=config_integer(cfg, "eval_seed", 0),
            eval_envs=config_integer(cfg, "eval_envs", 1),
            stochastic=config_boolean(cfg, "stochastic"),
            video=config_boolean(cfg, "video"),
            video_episodes=config_integer(cfg, "video_episodes", 1),
            register=register,
        )


def check_video_extra() -> None:
    """ConfigError naming the extra when Gymnasium's RecordVideo cannot write MP4s (no moviepy)."""
    try:
        import moviepy  # noqa: F401  (RecordVideo imports it itself; this only checks it is there)
    except ImportError:
        raise ConfigError(
            "video=true needs moviepy: pip install -e '.[video]' (or make install-video)"
        ) from None


def load_source(
    settings: EvaluateSettings, config: Mapping[str, Any], tracking_uri: str, folder: Path
) -> RecordedAgent:
    """The recorded agent to evaluate, downloaded into ``folder``; for a checkpoint, one whose config is
    ``config`` (the composed preset) and which has no run yet."""
    if settings.run is not None:
        return fetch_run(tracking_uri, settings.run, folder)
    if settings.model is not None:
        return fetch_model(tracking_uri, settings.model, folder)
    assert settings.checkpoint is not None
    experiment = str(config["tracking"]["experiment"])
    return RecordedAgent("", "", experiment, dict(config), settings.checkpoint)


def open_agent(source: RecordedAgent) -> Agent:
    """Load the agent; ConfigError when it is not the algorithm and env its config names (a checkpoint
    given with another preset)."""
    agent = load_agent(source.model_path)
    algo, env_id = source.config["algo"]["name"], source.config["env"]["id"]
    if agent.algorithm != algo or agent.env_id != env_id:
        agent.close()
        where = (
            f"checkpoint={source.model_path}" if not source.run_id else f"the model of run {source.run_id}"
        )
        raise ConfigError(
            f"{where} holds a {agent.algorithm} agent for {agent.env_id}, but the config asks for {algo} on "
            f"{env_id}; pick the experiment (or algo= and env=) it was trained with"
        )
    return agent


def evaluate_policies(agent: Agent, settings: EvaluateSettings) -> dict[str, EvalResult]:
    """policy label → its episodes: ``deterministic``, and ``stochastic`` when asked."""
    labels = ["deterministic", *(["stochastic"] if settings.stochastic else [])]
    return {
        label: agent.evaluate(
            settings.episodes,
            settings.eval_seed,
            deterministic=label == "deterministic",
            n_envs=settings.eval_envs,
        )
        for label in labels
    }


def summary_table(results: Mapping[str, EvalResult]) -> pd.DataFrame:
    """A row per policy: episodes, mean ± std, IQM with its 95 % bootstrap interval, episode lengths."""
    rows = []
    for label, result in results.items():
        low, high = bootstrap_ci(result.returns)
        rows.append(
            {
                "policy": label,
                "episodes": len(result.returns),
                "mean": result.mean_return,
                "std": result.std_return,
                "iqm": iqm(result.returns),
                "ci_low": low,
                "ci_high": high,
                "length_mean": float(np.mean(result.lengths)),
                "length_min": int(np.min(result.lengths)),
                "length_max": int(np.max(result.lengths)),
            }
        )
    return pd.DataFrame(rows)


def record_videos(
    agent: Agent, source: RecordedAgent, settings: EvaluateSettings, folder: Path
) -> list[Path]:
    """``video_episodes`` episodes of the deterministic policy, one MP4 each in ``folder``, on env seeds
    ``eval_seed``, ``eval_seed + 1``, …"""
    env_kwargs = dict(source.config["env"].get("kwargs") or {})
    env = gym.make(agent.env_id, render_mode="rgb_array", **env_kwargs)
    env = gym.wrappers.RecordVideo(
        env,
        str(folder),
        episode_trigger=lambda _: True,
        name_prefix=f"{agent.algorithm}-{agent.env_id}",
        disable_logger=True,
    )
    try:
        for index in range(settings.video_episodes):
            obs, _ = env.reset(seed=settings.eval_seed + index)
            done = False
            while not done:
                action = agent.predict(np.asarray(obs)[None], deterministic=True)[0]
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
    finally:
        env.close()
    return sorted(folder.glob("*.mp4"))


def record_evaluation(
    source: RecordedAgent,
    agent: Agent,
    results: Mapping[str, EvalResult],
    table: pd.DataFrame,
    videos: list[Path],
    tracking: Mapping[str, Any],
) -> tuple[str, str]:
    """The evaluation run, nested under the source run when there is one; returns (run id, experiment
    id)."""
    tags = {
        "kind": "evaluation",
        "algo": agent.algorithm,
        "env_id": agent.env_id,
        **({"evaluates_run": source.run_id} if source.run_id else {}),
        **({"model_uri": source.model_uri} if source.model_uri else {}),
        **({"checkpoint": str(source.model_path)} if not source.run_id else {}),
    }
    name = f"evaluate-{source.run_name or agent.algorithm + '-' + str(source.config['env']['name'])}"
    with start_run(
        tracking["uri"],
        source.experiment,
        tracking.get("artifact_dir"),
        run_name=name,
        tags=tags,
        parent_run_id=source.run_id or None,
    ) as run:
        for _, row in table.iterrows():
            prefix = "eval" if row["policy"] == "deterministic" else "eval_stochastic"
            run.log_metrics(
                {
                    f"{prefix}/mean_return": row["mean"],
                    f"{prefix}/std_return": row["std"],
                    f"{prefix}/iqm": row["iqm"],
                    f"{prefix}/iqm_ci_low": row["ci_low"],
                    f"{prefix}/iqm_ci_high": row["ci_high"],
                    f"{prefix}/mean_length": row["length_mean"],
                },
                agent.num_steps,
            )
        run.log_text(_episodes_csv(results), EPISODES_CSV)
        # A checkpoint has no run: this one keeps it, so that it can be evaluated or registered again.
        if not source.run_id:
            run.log_artifact(source.model_path)
            run.log_text(OmegaConf.to_yaml(OmegaConf.create(source.config)), CONFIG_ARTIFACT)
        for path in videos:
            run.log_artifact(path, VIDEO_DIR)
        return run.run_id, run.experiment_id


def _episodes_csv(results: Mapping[str, EvalResult]) -> str:
    frames = [
        pd.DataFrame(
            {"policy": label, "episode": range(len(r.returns)), "return": r.returns, "length": r.lengths}
        )
        for label, r in results.items()
    ]
    return pd.concat(frames, ignore_index=True).to_csv(index=False)


def evaluate(cfg: DictConfig) -> pd.DataFrame:
    """Check, load, evaluate, record (and register); returns the summary table."""
    config = resolve_config(cfg)
    settings = EvaluateSettings.from_config(config)
    configure_torch_cpu(int(config["torch_threads"]))
    if settings.video:
        check_video_extra()
    tracking = config["tracking"]
    check_tracking_store(tracking["uri"], create=settings.checkpoint is not None)
    console = get_console()
    with tempfile.TemporaryDirectory() as tmp:
        source = load_source(settings, config, tracking["uri"], Path(tmp))
        with open_agent(source) as agent:
            results = evaluate_policies(agent, settings)
            videos = record_videos(agent, source, settings, Path(tmp) / VIDEO_DIR) if settings.video else []
            table = summary_table(results)
            title = (
                f"{agent.algorithm} {agent.env_id}: {settings.episodes} episodes, seed {settings.eval_seed}"
            )
            console.print(console_table(table, title, console.width, ("length_min", "length_max", "std")))
            run_id, experiment_id = record_evaluation(source, agent, results, table, videos, tracking)
    console.print(f"evaluation run {run_id}" + (f" (of run {source.run_id})" if source.run_id else ""))
    if settings.register:
        uri = _register(settings.register, source, run_id, table, tracking["uri"])
        console.print(f"registered as {uri}: python -m tuner.evaluate model={uri}")
    print_links(console, tracking["uri"], experiment_id, run_id, "the evaluation run")
    return table


def _register(name: str, source: RecordedAgent, evaluation_run: str, table: pd.DataFrame, uri: str) -> str:
    """Register the evaluated model (a checkpoint from the evaluation run that keeps it) with the
    evaluation table as its description; the ``models:/`` URI."""
    tags = {
        "algo": source.config["algo"]["name"],
        "env_id": source.config["env"]["id"],
        "evaluation_run": evaluation_run,
    }
    description = f"Evaluation (run {evaluation_run}):\n\n{table.to_markdown(index=False)}"
    return register_model(uri, name, source.run_id or evaluation_run, description, tags)


@hydra_app("evaluate")
def main(cfg: DictConfig) -> None:
    """``python -m tuner.evaluate``; exit codes as in :mod:`tuner.app` (2 for bad input, nothing recorded)."""
    # Rendering for videos needs no display: MuJoCo through EGL, pygame (classic control, Box2D) through
    # SDL's dummy driver; artifact downloads print no progress bars.
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    evaluate(cfg)


if __name__ == "__main__":
    main()
