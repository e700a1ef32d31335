"""Train one agent on one environment and record it in MLflow: ``python -m tuner.train [overrides]``.

    python -m tuner.train env=pendulum algo.learning_rate=1e-3 seed=3
    python -m tuner.train experiment=ppo_cartpole
    python -m tuner.train --cfg job            # print the composed config and exit

compose (Hydra) → validate the config, and the environment by building the agent → only then open the
MLflow run → learn, logging metrics against env steps and evaluating every ``env.eval.freq_steps`` on
separate envs → final evaluation → model, config and learning curve as artifacts → end the run.
:func:`run_training` is that job without Hydra's entry point, for tests and for the Optuna objective.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from algorithms import Agent, ConfigError, EvalResult, TrainState, get_algorithm
from algorithms.common.env_backends import check_backend
from algorithms.common.networks import configure_torch_cpu
from tuner.app import hydra_app
from tuner.compose import algorithm_config
from tuner.progress import TrainProgress
from tuner.secrets import mask_secrets

if TYPE_CHECKING:
    from tuner.tracking import RunRecorder, RunSignals

log = logging.getLogger(__name__)

CONFIG_ARTIFACT = "config.yaml"
MODEL_ARTIFACT = "model.pt"
CURVE_ARTIFACT = "learning_curve.png"
RECENT_EPISODES = 10  # the progress display shows the mean return of this many recent episodes
# Diagnostics that are schedules rather than losses; everything else in TrainState.losses is losses/<name>.
CHART_DIAGNOSTICS = {"learning_rate": "charts/learning_rate", "clip_range": "charts/clip_range"}


EvalHook = Callable[[int, float], bool]
"""Called with (env step, mean eval return) after every evaluation; returning True stops training
there (the tuner's pruning), and the run then ends with that evaluation as its final one."""


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced.

    Attributes:
        run_id: the MLflow run with the metrics, params and artifacts.
        steps: env steps trained (the budget rounded up to whole iterations).
        mean_return: mean return of the final evaluation.
        std_return: standard deviation of the final evaluation's returns.
        wall_time_s: seconds from the start of learning to the end of the final evaluation.
        stopped_early: an :data:`EvalHook` ended training before the budget.
    """

    run_id: str
    steps: int
    mean_return: float
    std_return: float
    wall_time_s: float
    stopped_early: bool = False


@dataclass(frozen=True)
class RunSettings:
    """The validated run-level settings of a training config: all but the algorithm's hyperparameters."""

    algo: str
    env_name: str
    env_id: str
    env_kwargs: dict[str, Any]
    env_backend: str
    """``env.backend``: what steps the envs (``auto`` is resolved by the agent, for its env count)."""
    seed: int
    total_steps: int
    torch_threads: int
    eval_episodes: int
    eval_freq_steps: int
    """Env steps between evaluations during training; 0 for the final evaluation only."""
    eval_seed_offset: int
    progress: bool
    tracking_uri: str
    experiment: str
    artifact_dir: str | None
    """Local artifact folder of new MLflow experiments; None: the tracking server's artifact store."""
    log_models: bool = True
    """Store the trained agent as the run's ``model.pt`` artifact."""
    log_curves: bool = True
    """Store the run's learning curve as its ``learning_curve.png`` artifact."""

    @property
    def eval_seed(self) -> int:
        """Seed of the evaluation envs."""
        return self.seed + self.eval_seed_offset

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Read the settings from a resolved config; ConfigError naming the key if one is missing or bad."""
        env_kwargs = _lookup(config, "env.kwargs")
        if not isinstance(env_kwargs, Mapping):
            raise ConfigError(f"env.kwargs must be a mapping, got {env_kwargs!r}")
        freq = _lookup(config, "env.eval.freq_steps")
        env_id = _string(config, "env.id")
        # configs stored before env backends existed ran on Gymnasium's vector envs
        backend = _string(config, "env.backend") if "backend" in _lookup(config, "env") else "gymnasium"
        return cls(
            algo=_string(config, "algo.name"),
            env_name=_string(config, "env.name"),
            env_id=env_id,
            env_kwargs=dict(env_kwargs),
            env_backend=check_backend(backend),
            seed=config_integer(config, "seed", 0),
            total_steps=config_integer(config, "total_steps", 1),
            torch_threads=config_integer(config, "torch_threads", 1),
            eval_episodes=config_integer(config, "env.eval.n_episodes", 1),
            eval_freq_steps=0 if freq is None else config_integer(config, "env.eval.freq_steps", 0),
            eval_seed_offset=config_integer(config, "env.eval.seed_offset", 1),
            progress=config_boolean(config, "progress"),
            tracking_uri=_string(config, "tracking.uri"),
            experiment=_string(config, "tracking.experiment"),
            artifact_dir=_optional_string(config, "tracking.artifact_dir"),
            log_models=config_boolean(config, "tracking.log_models"),
            log_curves=config_boolean(config, "tracking.log_curves"),
        )


def run_tags(settings: RunSettings, env_backend: str) -> dict[str, Any]:
    """The MLflow tags of a training run: algorithm, env id, the backend that stepped its envs (``auto``
    resolved), seed."""
    return {
        "algo": settings.algo,
        "env_id": settings.env_id,
        "env_backend": env_backend,
        "seed": settings.seed,
    }


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as plain data with every interpolation resolved; ConfigError naming the key otherwise."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"cannot resolve config key {exc.full_key!r}: {reason}") from exc
    assert isinstance(resolved, dict)
    return resolved


def build_agent(config: Mapping[str, Any], settings: RunSettings) -> Agent:
    """Validate the hyperparameters in ``config["algo"]`` and create the agent with its training envs.

    Raises ConfigError for a bad hyperparameter, an unknown env id or a missing optional extra, and
    UnsupportedSpaceError when the algorithm cannot handle the env's spaces.
    """
    _, algo_config = algorithm_config(config["algo"])
    n_envs = getattr(algo_config, "n_envs", 1)
    if settings.eval_seed_offset < n_envs:
        raise ConfigError(
            f"env.eval.seed_offset ({settings.eval_seed_offset}) must be >= algo.n_envs ({n_envs}), "
            "so evaluation seeds differ from training seeds"
        )
    agent_cls = get_algorithm(settings.algo).agent_cls
    return agent_cls(settings.env_id, algo_config, settings.seed, settings.env_kwargs, settings.env_backend)


class TrainingMonitor:
    """The ``learn`` callback: logs each iteration's metrics, evaluates on schedule, updates the progress.

    Attributes:
        episodes: ``(env step, return)`` of every finished training episode.
        evaluations: ``(env step, mean return, std return)`` of every evaluation, the final one included.
        signals: the deferred signal block of a tuning worker, or None; when set, each callback runs as
            a held block, so that no MLflow or Optuna write in it is cut off.
    """

    def __init__(
        self,
        agent: Agent | None,
        settings: RunSettings,
        run: RunRecorder,
        progress: TrainProgress,
        on_eval: EvalHook | None = None,
        signals: RunSignals | None = None,
    ) -> None:
        self.agent = agent
        self.signals = signals
        self.settings = settings
        self.run = run
        self.progress = progress
        self.episodes: list[tuple[int, float]] = []
        self.evaluations: list[tuple[int, float, float]] = []
        self._recent: deque[float] = deque(maxlen=RECENT_EPISODES)
        self._next_eval = settings.eval_freq_steps
        self.on_eval = on_eval
        self.stopped_early = False
        self.last_result: EvalResult | None = None

    def __call__(self, state: TrainState) -> None:
        """Record one iteration; evaluate when an evaluation point was passed (the last one is left to
        the final evaluation)."""
        with self.signals.held() if self.signals is not None else contextlib.nullcontext():
            self.record(state)
            if self.eval_due(state.step) and self.record_eval(state.step, self.evaluate(state.step)):
                state.request_stop()

    def record(self, state: TrainState) -> None:
        """Log one iteration's episodes, diagnostics and speed, and update the progress.

        ``charts/episodic_return`` and ``charts/episodic_length`` are the means over the episodes that
        ended during the iteration, one point at its last env step (none where no episode ended): the
        episodes of one rollout would otherwise share a step, and the curve would zigzag between them.
        """
        step = state.step
        for ret in state.episode_returns:
            self.episodes.append((step, ret))
            self._recent.append(ret)
        episodes = {}
        if state.episode_returns:
            episodes = {
                "charts/episodic_return": float(np.mean(state.episode_returns)),
                "charts/episodic_length": float(np.mean(state.episode_lengths)),
            }
        diagnostics = {
            CHART_DIAGNOSTICS.get(key, f"losses/{key}"): value for key, value in state.losses.items()
        }
        self.run.log_metrics({**episodes, **diagnostics, "time/sps": state.sps}, step)
        self.progress.update(step, state.sps, float(np.mean(self._recent)) if self._recent else None)

    def eval_due(self, step: int) -> bool:
        """Whether an evaluation point was passed at ``step`` (before the budget's end)."""
        freq = self.settings.eval_freq_steps
        return bool(freq) and self._next_eval <= step < self.settings.total_steps

    def start_at(self, step: int, last_result: EvalResult | None) -> None:
        """Monitor a run that starts at env ``step`` from another's state (a population member that
        continues another's training): the next evaluation point is the first after ``step``, and
        ``last_result`` stands as the latest evaluation until this run has its own."""
        freq = self.settings.eval_freq_steps
        if freq:
            self._next_eval = (step // freq + 1) * freq
        self.last_result = last_result

    def record_eval(self, step: int, result: EvalResult) -> bool:
        """Schedule the next evaluation after one during training and ask the hook; True: stop here."""
        freq = self.settings.eval_freq_steps
        self._next_eval = (step // freq + 1) * freq
        if self.on_eval is not None and self.on_eval(step, result.mean_return):
            self.stopped_early = True
        return self.stopped_early

    def evaluate(self, step: int, result: EvalResult | None = None) -> EvalResult:
        """Evaluate the current policy on the evaluation envs (or take ``result``, evaluated elsewhere)
        and record it at ``step``."""
        if result is None:
            if self.agent is None:
                raise ValueError("a monitor without an agent records evaluations made elsewhere")
            result = self.agent.evaluate(self.settings.eval_episodes, seed=self.settings.eval_seed)
        self.run.log_metrics(
            {"eval/mean_return": result.mean_return, "eval/std_return": result.std_return}, step
        )
        self.evaluations.append((step, result.mean_return, result.std_return))
        self.last_result = result
        self.progress.note(
            f"eval at {step} steps: return {result.mean_return:.1f} ± {result.std_return:.1f} "
            f"over {len(result.returns)} episodes"
        )
        return result


def run_training(
    cfg: DictConfig,
    parent_run_id: str | None = None,
    on_eval: EvalHook | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    signals: RunSignals | None = None,
) -> TrainResult:
    """Validate ``cfg`` (composed from conf/train.yaml), then train, evaluate and record one MLflow run.

    Args:
        cfg: the composed config.
        parent_run_id: nest the run under this MLflow run (e.g. a tuning trial).
        on_eval: called after each evaluation during training and after the final one; returning True
            during training stops it there (that evaluation is then the final one).
        run_name: MLflow run name (default ``<algo>-<env>-seed<seed>``).
        tags: extra MLflow tags of the run (e.g. a benchmark cell's identity).
        signals: the deferred signal block this runs in (a tuning worker's). None: the run opens one of
            its own. Either way SIGINT and SIGTERM interrupt only the learning itself, never a write.

    Raises:
        ConfigError, UnsupportedSpaceError: before any MLflow run exists.
        NonFiniteLossError: training diverged; the run is ended FAILED.
        KeyboardInterrupt: interrupted (SIGINT, or SIGTERM as RunTerminated); the run is ended KILLED.
    """
    config = resolve_config(cfg)
    settings = RunSettings.from_config(config)
    configure_torch_cpu(settings.torch_threads)
    agent = build_agent(config, settings)
    # Imported only once the config is valid: MLflow and matplotlib take seconds to import, which a bad
    # config or `--cfg job` need not wait for.
    from tuner.tracking import check_tracking_store, interrupts_raise

    try:
        check_tracking_store(settings.tracking_uri, settings.experiment)
    except BaseException:
        agent.close()
        raise

    # A run of its own (`make train`, a benchmark cell) defers signals as a tuning worker does, so an
    # interrupt never cuts an MLflow write short and leaves the tracking database locked.
    block = contextlib.nullcontext(signals) if signals is not None else interrupts_raise()
    try:
        with block as deferred:
            return _train_and_record(
                agent, config, settings, parent_run_id, on_eval, run_name, tags or {}, deferred
            )
    finally:
        agent.close()


def _train_and_record(
    agent: Agent,
    config: Mapping[str, Any],
    settings: RunSettings,
    parent_run_id: str | None,
    on_eval: EvalHook | None,
    run_name: str | None,
    extra_tags: Mapping[str, Any],
    signals: RunSignals,
) -> TrainResult:
    """Open the MLflow run, learn with the monitor, evaluate, store config, model and learning curve;
    inside the deferred signal block ``signals``, which lets signals raise only during learning."""
    from tuner.tracking import start_run  # deferred as in run_training: MLflow's import is slow

    tags = {**run_tags(settings, agent.env_backend), **extra_tags}
    if HydraConfig.initialized():
        tags["overrides"] = " ".join(HydraConfig.get().overrides.task)
    run_name = run_name or f"{settings.algo}-{settings.env_name}-seed{settings.seed}"
    with start_run(
        settings.tracking_uri,
        settings.experiment,
        settings.artifact_dir,
        run_name=run_name,
        tags=tags,
        parent_run_id=parent_run_id,
        handle_signals=False,  # signals: the deferred block around this run governs
    ) as run:
        log.info(
            "training %s on %s (seed %d) for %d env steps; MLflow run %s in experiment %r at %s",
            settings.algo,
            settings.env_id,
            settings.seed,
            settings.total_steps,
            run.run_id,
            settings.experiment,
            mask_secrets(settings.tracking_uri),
        )
        run.log_params(config)
        run.log_text(OmegaConf.to_yaml(config), CONFIG_ARTIFACT)

        progress = TrainProgress(
            settings.total_steps, f"{settings.algo} {settings.env_id}", settings.progress
        )
        monitor = TrainingMonitor(agent, settings, run, progress, on_eval, signals)
        start = time.perf_counter()
        with progress, signals.allowed():
            state = agent.learn(settings.total_steps, monitor)
        if monitor.stopped_early and monitor.last_result is not None:
            final = monitor.last_result  # the hook stopped training right after this evaluation
        else:
            final = monitor.evaluate(state.step)
            if on_eval is not None:
                on_eval(state.step, final.mean_return)
        return finish_run(run, monitor, agent, config, state.step, final, time.perf_counter() - start)


def finish_run(
    run: RunRecorder,
    monitor: TrainingMonitor,
    agent: Agent,
    config: Mapping[str, Any],
    steps: int,
    final: EvalResult,
    wall_time_s: float,
) -> TrainResult:
    """Close a training run's record: wall time, the model, the learning curve; returns its result."""
    from tuner.plots import learning_curve  # deferred as in run_training: matplotlib's import is slow

    settings = monitor.settings
    if monitor.stopped_early:
        run.set_tags({"stopped_early": f"by the tuner after evaluation at {steps} env steps"})
    run.log_metric("time/wall_time_s", wall_time_s, steps)
    if settings.log_models:
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / MODEL_ARTIFACT
            agent.save(model_path)
            run.log_artifact(model_path)
    if settings.log_curves:
        title = f"{settings.algo} on {settings.env_id}, seed {settings.seed}"
        lines = _reference_lines(config, settings.algo)
        figure = learning_curve(monitor.episodes, monitor.evaluations, title, lines)
        run.log_figure(figure, CURVE_ARTIFACT)
    log.info(
        "final evaluation over %d episodes: %.2f ± %.2f after %d env steps in %.1f s",
        len(final.returns),
        final.mean_return,
        final.std_return,
        steps,
        wall_time_s,
    )
    return TrainResult(
        run.run_id, steps, final.mean_return, final.std_return, wall_time_s, monitor.stopped_early
    )


def _reference_lines(config: Mapping[str, Any], algo: str) -> list[tuple[str, float]]:
    """Horizontal lines for the learning curve: solved threshold, random policy, published score."""
    env = config["env"]
    lines = []
    if env.get("threshold") is not None:
        lines.append(("solved threshold", float(env["threshold"])))
    if env.get("random_score") is not None:
        lines.append(("random policy", float(env["random_score"])))
    reference = (env.get("reference") or {}).get(algo)
    if reference:
        lines.append((f"rl-zoo3 {algo} at {reference['budget']} steps", float(reference["score"])))
    return lines


def _optional_string(config: Mapping[str, Any], key: str) -> str | None:
    return None if _lookup(config, key) is None else _string(config, key)


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"missing config key {key!r}")
        node = node[part]
    return node


def config_integer(config: Mapping[str, Any], key: str, minimum: int) -> int:
    """The integer >= ``minimum`` at the dotted ``key`` of ``config``; ConfigError naming it otherwise."""
    value = _lookup(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def config_boolean(config: Mapping[str, Any], key: str) -> bool:
    """The boolean at the dotted ``key`` of ``config``; ConfigError naming it otherwise."""
    value = _lookup(config, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _string(config: Mapping[str, Any], key: str) -> str:
    value = _lookup(config, key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value


@hydra_app("train")
def main(cfg: DictConfig) -> float:
    """``python -m tuner.train``: :func:`run_training`; exit codes as in :mod:`tuner.app` (2 for a bad
    config, with no MLflow run created; 1 when training diverged, the run FAILED; 128 + N when
    interrupted, the run KILLED)."""
    return run_training(cfg).mean_return


if __name__ == "__main__":
    main()
