"""What SAC, TD3 and D3QN share, so that each algorithm's module holds only its algorithm.

- :class:`OffPolicyConfig`: the hyperparameters every off-policy algorithm has, and their checks; each
  algorithm's config subclasses it.
- :class:`OffPolicyRunner`: the training envs, the replay buffer, the agent's only random generator and
  the loop that steps the envs with the agent's exploration policy, stores transitions and calls the
  agent's update.
- :class:`OffPolicyAgent`: the base class of the three agents: ``learn``, ``evaluate``, ``save``, ``load``
  and ``close`` around a runner; the subclass supplies networks, losses and optimizers.
- Small pieces: action rescaling, Polyak averaging, target networks, the ``gradient_steps`` check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import gymnasium as gym
import numpy as np
import torch

from algorithms.common.checkpoint import agent_header, read_checkpoint, write_checkpoint
from algorithms.common.config import (
    config_from_mapping,
    require_choice,
    require_in_range,
    require_int,
    require_net_arch,
    require_positive,
)
from algorithms.common.env_backends import resolve_backend
from algorithms.common.envs import EpisodeTracker, check_spaces, eval_envs, evaluate_episodes, make_vec_env
from algorithms.common.errors import ConfigError, UnsupportedSpaceError
from algorithms.common.networks import StackedMLP, activation_fn
from algorithms.common.optim import FlatAdam, flatten_parameters
from algorithms.common.registry import supporting_algorithms
from algorithms.common.replay import ReplayBuffer
from algorithms.common.types import Callback, EvalResult, TrainState, VecStep

Store = Callable[[VecStep], None]
"""Receives each vectorised step in place of the plain ``buffer.add`` (n-step windows, priorities)."""

ITERATION_ENV_STEPS = 1000
"""Env steps (over all envs) per training iteration, i.e. between two callbacks, at least."""


# --- small pieces --------------------------------------------------------------------------------------
def scale_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map an action from the policy's [-1, 1] to the Box bounds [low, high] (affinely, per dimension)."""
    return low + (action + 1.0) * (0.5 * (high - low))


def unscale_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map an action from the Box bounds [low, high] to the policy's [-1, 1]; inverse of scale_action."""
    return 2.0 * (action - low) / (high - low) - 1.0


@torch.no_grad()
def polyak_update(target: torch.Tensor, source: torch.Tensor, tau: float) -> None:
    """θ_target ← (1 − τ) θ_target + τ θ — one ``lerp_`` when both are flat parameter buffers."""
    target.lerp_(source, tau)


def make_target(
    source_flat: torch.Tensor, build: Callable[[], StackedMLP]
) -> tuple[StackedMLP, torch.Tensor]:
    """A copy of the network behind ``source_flat`` (made by ``build()``, the same constructor call) whose
    weights live in one flat, gradient-free buffer initialised from ``source_flat``."""
    target = build()
    target_flat = flatten_parameters(target.parameters())
    target_flat.requires_grad_(False)
    target_flat.grad = None
    for p in target.parameters():
        p.requires_grad_(False)
        p.grad = None
    if target_flat.shape != source_flat.shape:
        raise ValueError("the target network's layout differs from the source's")
    target_flat.data.copy_(source_flat.data)  # same construction order ⇒ same flat layout
    return target, target_flat


def require_gradient_steps(value: object) -> None:
    """``gradient_steps`` must be an int >= 0, or -1 (one update per collected env step)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ConfigError(
            f"gradient_steps must be an int >= 0, or -1 for one update per collected env step; got {value!r}"
        )


# --- the hyperparameters every off-policy algorithm has ---------------------------------------------------
@dataclass(frozen=True)
class OffPolicyConfig:
    """The fields and checks SAC, TD3 and D3QN share. Defaults are Stable-Baselines3's SAC ones; each
    algorithm's config subclasses this, redeclares the fields whose default differs and checks its own
    fields after :meth:`__post_init__`."""

    ROLLOUT_FIELDS: ClassVar[tuple[str, ...]] = ("n_envs", "train_freq")
    """The fields whose product is the env steps between two updates (a training phase)."""
    WARMUP_FIELD: ClassVar[str | None] = "learning_starts"
    """The field of env steps collected before the first update (None: none)."""

    learning_rate: float = 3e-4
    """Adam step size. Typical 1e-4 … 1e-3 (log scale)."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions. Typical 1e4 … 1e6."""
    learning_starts: int = 100
    """Env steps of uniformly random actions before the first update. Typical 100 … 25 000."""
    batch_size: int = 256
    """Transitions per gradient step. Typical 64 … 512."""
    tau: float = 0.005
    """Polyak coefficient of the target update, in (0, 1]: θ' ← (1 − τ) θ' + τ θ. Typical 0.001 … 0.05."""
    gamma: float = 0.99
    """Discount factor in [0, 1]. Typical 0.9 … 0.999."""
    train_freq: int = 1
    """Vectorised env steps between two training phases (each is ``n_envs`` env steps). Typical 1 … 64."""
    gradient_steps: int = 1
    """Gradient steps per training phase; -1 means as many as env steps collected in the phase
    (``train_freq · n_envs``, one update per env step, as SB3's -1). Typical 1 … 64."""
    net_arch: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of each network."""
    activation: str = "relu"
    """Hidden activation: relu, tanh, elu or gelu."""
    n_envs: int = 1
    """Parallel training environments. Typical 1 … 16."""
    vectorization: str = "sync"
    """How the training envs run: ``sync`` (one process) or ``async`` (one subprocess per env)."""

    def __post_init__(self) -> None:
        require_positive("learning_rate", self.learning_rate)
        require_int("buffer_size", self.buffer_size, 1)
        require_int("learning_starts", self.learning_starts, 0)
        require_int("batch_size", self.batch_size, 1)
        require_int("train_freq", self.train_freq, 1)
        require_gradient_steps(self.gradient_steps)
        require_int("n_envs", self.n_envs, 1)
        require_in_range("tau", self.tau, 0.0, 1.0)
        require_positive("tau", self.tau)
        require_in_range("gamma", self.gamma, 0.0, 1.0)
        require_net_arch("net_arch", self.net_arch)
        activation_fn(self.activation)
        require_choice("vectorization", self.vectorization, ("sync", "async"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build from a mapping (e.g. a Hydra node), naming any unknown key."""
        return config_from_mapping(cls, values)


# --- the loop --------------------------------------------------------------------------------------------
class OffPolicyRunner:
    """Training envs, replay buffer, random generator and step counter of one off-policy agent.

    Args:
        algo: display name for error messages (``"SAC"``).
        env_id, n_envs, seed, vectorization, env_kwargs, env_backend: as :func:`make_vec_env`.
        action_spaces: the action-space types the algorithm supports.
        buffer_size: replay capacity in transitions.
        store_discounts: the buffer keeps a per-transition bootstrap discount (n-step returns).
    """

    def __init__(
        self,
        algo: str,
        env_id: str,
        n_envs: int,
        seed: int,
        vectorization: str,
        env_kwargs: Mapping[str, Any] | None,
        env_backend: str,
        action_spaces: tuple[type[gym.Space], ...],
        buffer_size: int,
        store_discounts: bool = False,
    ) -> None:
        self.env_id = env_id
        self.seed = seed
        self.env_kwargs = dict(env_kwargs or {})
        self.env_backend = env_backend
        self.envs = make_vec_env(env_id, n_envs, seed, vectorization, self.env_kwargs, env_backend)
        try:
            action_space = self.envs.single_action_space
            if not isinstance(action_space, action_spaces):
                names = " or ".join(t.__name__ for t in action_spaces)
                others = supporting_algorithms(action_space)
                hint = (
                    f"; for {type(action_space).__name__} actions use {' or '.join(others)}" if others else ""
                )
                raise UnsupportedSpaceError(
                    f"{algo} supports {names} action spaces only; this environment has {action_space}{hint}"
                )
            check_spaces(algo, self.envs.single_observation_space, action_space, action_spaces)
        except Exception:
            self.envs.close()
            raise
        self.action_space = action_space
        self.obs_dim = int(self.envs.single_observation_space.shape[0])
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:  # one stored column: the action index
            self.act_dim, self.n_actions = 1, int(action_space.n)
            self.low = self.high = np.zeros(1)
        else:
            self.act_dim, self.n_actions = int(action_space.shape[0]), 0
            self.low = action_space.low.astype(np.float64)
            self.high = action_space.high.astype(np.float64)
        self.n_envs = n_envs
        self.buffer = ReplayBuffer(buffer_size, self.obs_dim, self.act_dim, store_discounts)
        self.rng = np.random.default_rng(seed)  # exploration, replay sampling and target noise
        self.num_steps = 0  # env steps over all envs
        self.num_vec_steps = 0  # vectorised steps (calls of envs.step)
        self._obs: np.ndarray | None = None
        self._eval_envs: gym.vector.VectorEnv | None = None

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        """Policy-space actions in [-1, 1] → env actions within the bounds, in the space's dtype
        (discrete action indices pass through as integers)."""
        if self.discrete:
            return np.asarray(action).reshape(-1).astype(np.int64)
        env_action = scale_action(np.clip(action, -1.0, 1.0), self.low, self.high)
        return env_action.astype(self.action_space.dtype, copy=False)

    def learn(
        self,
        total_steps: int,
        callback: Callback | None,
        *,
        learning_starts: int,
        train_freq: int,
        gradient_steps: int,
        explore: Callable[[np.ndarray], np.ndarray],
        train: Callable[[int], None],
        pop_losses: Callable[[], dict[str, float]],
        store: Store | None = None,
    ) -> TrainState:
        """Collect ``total_steps`` env steps (rounded up to whole vectorised steps) and train on the way.

        Each vectorised step acts with ``explore(obs)`` (policy-space actions in [-1, 1]) once
        ``learning_starts`` env steps have been taken, uniformly at random before, and stores the
        transitions. Every ``train_freq`` vectorised steps after ``learning_starts``,
        ``train(gradient_steps)`` runs the updates (``gradient_steps`` -1: ``train_freq · n_envs``). An
        iteration — one callback — is ``max(train_freq, ⌈1000 / n_envs⌉)`` vectorised steps; its losses
        come from ``pop_losses()``.
        ``store`` replaces the plain ``buffer.add`` of each step's transitions (n-step returns,
        priorities); it gets ``(obs, actions, rewards, terminated, truncated, real_next_obs)``.
        Random actions before ``learning_starts`` are uniform in [-1, 1] (Box) or over the indices.
        """
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
        n_envs = self.n_envs
        if gradient_steps < 0:
            gradient_steps = train_freq * n_envs
        chunk = max(train_freq, -(-ITERATION_ENV_STEPS // n_envs))
        if self._obs is None:
            self._obs, _ = self.envs.reset(seed=self.seed)
        obs = self._obs
        tracker = EpisodeTracker(n_envs)
        state = TrainState(step=self.num_steps, total_steps=total_steps)
        start_steps, start_time = self.num_steps, time.perf_counter()
        end_steps = self.num_steps + total_steps
        buffer = self.buffer

        while self.num_steps < end_steps and not state.stop_requested:
            for _ in range(chunk):
                if self.num_steps >= end_steps:
                    break
                action = self.random_actions() if self.num_steps < learning_starts else explore(obs)
                obs = self._step(obs, action, tracker, store)
                # An n-step store holds transitions back until their window closes: the buffer can
                # still be empty here when learning_starts is 0.
                due = self.num_steps >= learning_starts and self.num_vec_steps % train_freq == 0
                if due and buffer.size > 0:
                    train(gradient_steps)
            self._obs = obs
            self._close_iteration(state, tracker, pop_losses, start_steps, start_time)
            if callback is not None:
                callback(state)
        return state

    def _close_iteration(
        self,
        state: TrainState,
        tracker: EpisodeTracker,
        pop_losses: Callable[[], dict[str, float]],
        start_steps: int,
        start_time: float,
    ) -> None:
        """Fill ``state`` with the iteration's env steps, finished episodes, losses and speed."""
        state.step = self.num_steps
        state.iteration += 1
        state.episode_returns, state.episode_lengths = tracker.pop()
        state.losses = pop_losses()
        state.sps = (self.num_steps - start_steps) / max(time.perf_counter() - start_time, 1e-9)

    def _step(
        self, obs: np.ndarray, action: np.ndarray, tracker: EpisodeTracker, store: Store | None
    ) -> np.ndarray:
        """Step every env once with ``action``, count the episodes and store the transitions (through
        ``store`` when given); the next observations."""
        next_obs, reward, terminated, truncated, infos = self.envs.step(self.to_env_action(action))
        done = terminated | truncated
        tracker.update(reward, done)
        real_next_obs = next_obs
        if done.any():  # same-step autoreset: next_obs already starts the next episode
            real_next_obs = next_obs.copy()
            for i in np.flatnonzero(done):
                real_next_obs[i] = infos["final_obs"][i]
        if store is None:
            self.buffer.add(obs, action, reward, terminated, real_next_obs)
        else:
            store(VecStep(obs, action, reward, terminated, truncated, real_next_obs))
        self.num_steps += self.n_envs
        self.num_vec_steps += 1
        return next_obs

    def random_actions(self) -> np.ndarray:
        """One uniformly random action per env: in [-1, 1]^act_dim (Box) or an index (Discrete)."""
        if self.discrete:
            return self.rng.integers(0, self.n_actions, size=self.n_envs)
        return self.rng.uniform(-1.0, 1.0, size=(self.n_envs, self.act_dim)).astype(np.float32)

    def evaluate(
        self, predict: Callable[[np.ndarray], np.ndarray], n_episodes: int, seed: int, n_envs: int = 4
    ) -> EvalResult:
        """``n_episodes`` episodes on separate evaluation envs (kept between calls), as PPO evaluates."""
        if n_episodes < 1:
            raise ConfigError(f"n_episodes must be >= 1, got {n_episodes}")
        self._eval_envs = eval_envs(
            self._eval_envs, self.env_id, min(n_envs, n_episodes), seed, self.env_kwargs, self.env_backend
        )
        return evaluate_episodes(self._eval_envs, predict, n_episodes, seed)

    def close(self) -> None:
        """Close the training and evaluation envs."""
        self.envs.close()
        if self._eval_envs is not None:
            self._eval_envs.close()


def stats_to_dict(stats: list[torch.Tensor], keys: tuple[str, ...]) -> dict[str, float]:
    """Mean over updates of per-update stat vectors (stacked at the end: no ``.item()`` per update)."""
    if not stats:
        return {}
    return dict(zip(keys, torch.stack(stats).mean(0).tolist(), strict=True))


# --- the agent shell -----------------------------------------------------------------------------------
class OffPolicyAgent:
    """The surface SAC, TD3 and D3QN share around their algorithm: ``learn``, ``evaluate``, ``save``,
    ``load``, ``close`` and the context manager, all delegating to an :class:`OffPolicyRunner`.

    A subclass sets :attr:`algorithm`, :attr:`config_cls` and :attr:`action_spaces`, calls
    :meth:`_setup` first in its constructor (signature ``(env_id, config, seed, env_kwargs,
    env_backend)``), and provides the algorithm: ``predict``, ``_explore`` (policy-space actions while
    training), ``_train(gradient_steps)``, ``_pop_losses()``, and the checkpointed ``_tensors()`` and
    ``_optimizers()``. Optional hooks: ``_start_learning``, ``_store`` (when :meth:`_custom_store`
    is true) and ``_extra_state`` / ``_restore_extra_state`` for counters beyond the runner's.
    """

    algorithm: str
    config_cls: type
    action_spaces: tuple[type[gym.Space], ...]
    config: Any
    runner: OffPolicyRunner
    n_updates: int
    loss_keys: tuple[str, ...] = ()
    """Names of the entries of each per-update stat vector in ``_stats`` (the logged ``losses/…``)."""

    def _setup(
        self,
        env_id: str,
        config: Any,
        seed: int,
        env_kwargs: Mapping[str, Any] | None,
        env_backend: str = "gymnasium",
        store_discounts: bool = False,
    ) -> None:
        """Record what the agent is bound to and create the runner (envs, buffer, generator)."""
        self.env_id = env_id
        self.config = config
        self.seed = seed
        self.env_kwargs = dict(env_kwargs or {})
        self.env_backend = resolve_backend(env_backend, env_id, config.n_envs)
        self.runner = OffPolicyRunner(
            self.algorithm.upper(),
            env_id,
            config.n_envs,
            seed,
            config.vectorization,
            self.env_kwargs,
            self.env_backend,
            self.action_spaces,
            config.buffer_size,
            store_discounts,
        )
        self.n_updates = 0
        self._stats: list[torch.Tensor] = []

    @property
    def num_steps(self) -> int:
        """Env steps taken so far, over all training envs."""
        return self.runner.num_steps

    # --- what each algorithm provides ------------------------------------------------------------
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Env actions for a batch of observations."""
        raise NotImplementedError

    def _explore(self, obs: np.ndarray) -> np.ndarray:
        """Training actions (policy space: [-1, 1] for Box, indices for Discrete) for a batch of obs."""
        raise NotImplementedError

    def _train(self, gradient_steps: int) -> None:
        """Run ``gradient_steps`` updates from the replay buffer."""
        raise NotImplementedError

    def _pop_losses(self) -> dict[str, float]:
        """Mean loss statistics since the last call, then reset: by default the per-update stat vectors
        the subclass appended to ``_stats``, named by :attr:`loss_keys`."""
        losses = stats_to_dict(self._stats, self.loss_keys)
        self._stats = []
        return losses

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The flat weight buffers (and other tensors) a checkpoint holds, by name."""
        raise NotImplementedError

    def _optimizers(self) -> dict[str, FlatAdam]:
        """The optimizers a checkpoint holds, by name."""
        raise NotImplementedError

    # --- hooks with defaults ----------------------------------------------------------------------
    def _start_learning(self, total_steps: int) -> None:
        """Called at the start of every ``learn`` call (schedules over its budget)."""

    def _custom_store(self) -> bool:
        """Whether transitions go through :meth:`_store` instead of a plain ``buffer.add``."""
        return False

    def _store(self, step: VecStep) -> None:
        """Store one vectorised step (only called when :meth:`_custom_store` is true)."""
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        """Plain data to checkpoint beyond the step and update counters."""
        return {}

    def _restore_extra_state(self, payload: Mapping[str, Any]) -> None:
        """Put back what :meth:`_extra_state` saved."""

    # --- the shared surface -----------------------------------------------------------------------
    def learn(self, total_steps: int, callback: Callback | None = None) -> TrainState:
        """Train for ``total_steps`` env steps (rounded up to whole vectorised steps).

        ``callback`` is called after every iteration (about 1000 env steps) with the live
        :class:`TrainState`; it may call ``state.request_stop()``. Raises NonFiniteLossError when a
        loss becomes NaN or infinite.
        """
        cfg = self.config
        self._start_learning(total_steps)
        return self.runner.learn(
            total_steps,
            callback,
            learning_starts=cfg.learning_starts,
            train_freq=cfg.train_freq,
            gradient_steps=cfg.gradient_steps,
            explore=self._explore,
            train=self._train,
            pop_losses=self._pop_losses,
            store=self._store if self._custom_store() else None,
        )

    def evaluate(self, n_episodes: int, seed: int, deterministic: bool = True, n_envs: int = 4) -> EvalResult:
        """Run ``n_episodes`` complete episodes on separate evaluation envs seeded with ``seed``.

        Episodes are split evenly across ``min(n_envs, n_episodes)`` envs, so the result depends only
        on the policy, ``seed`` and these counts.
        """
        return self.runner.evaluate(lambda obs: self.predict(obs, deterministic), n_episodes, seed, n_envs)

    def save(self, path: str | Path) -> None:
        """Write the config, weights (online and target), optimizer states and counters to ``path``.

        The replay buffer is not saved. Tensors and plain data only, so :meth:`load` can use
        ``torch.load(weights_only=True)``.
        """
        payload: dict[str, Any] = {
            **agent_header(self),
            "num_steps": self.runner.num_steps,
            "num_vec_steps": self.runner.num_vec_steps,
            "n_updates": self.n_updates,
            **self._extra_state(),
        }
        payload.update({name: t.detach().clone() for name, t in self._tensors().items()})
        payload.update({f"{name}_optimizer": opt.state_dict() for name, opt in self._optimizers().items()})
        write_checkpoint(payload, path)

    @classmethod
    def load(cls, path: str | Path, seed: int | None = None) -> Self:
        """Rebuild an agent saved by :meth:`save` (safe loading: tensors and plain data only)."""
        payload, config, seed = read_checkpoint(path, cls.config_cls, seed)
        agent = cls(  # type: ignore[call-arg]
            payload["env_id"], config, seed, payload["env_kwargs"], payload["env_backend"]
        )
        with torch.no_grad():  # copy in place: parameter views into the flat buffers stay intact
            for name, tensor in agent._tensors().items():
                tensor.copy_(payload[name])
        for name, opt in agent._optimizers().items():
            opt.load_state_dict(payload[f"{name}_optimizer"])
        agent.runner.num_steps = int(payload["num_steps"])
        agent.runner.num_vec_steps = int(payload["num_vec_steps"])
        agent.n_updates = int(payload["n_updates"])
        agent._restore_extra_state(payload)
        return agent

    def close(self) -> None:
        """Close the training and evaluation envs."""
        self.runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
