"""Creating seeded vectorised Gymnasium envs and checking that their spaces are supported."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from algorithms.common.env_backends import (
    VECTORIZATION_MODES,
    backend_for,
    import_env_module,
    make_gymnasium_envs,
    resolve_backend,
)
from algorithms.common.errors import ConfigError, UnsupportedSpaceError
from algorithms.common.types import EvalResult


def make_vec_env(
    env_id: str,
    n_envs: int,
    seed: int,
    vectorization: str = "sync",
    env_kwargs: Mapping[str, Any] | None = None,
    backend: str = "gymnasium",
) -> gym.vector.VectorEnv:
    """Create ``n_envs`` copies of ``env_id`` that reset in the same step an episode ends.

    ``env_id`` is a registered id, or ``"package.module:EnvName-v0"`` to import the module that
    registers it first (as ``gymnasium.make`` accepts). ``backend`` is one of
    :data:`~algorithms.common.env_backends.BACKENDS` (``auto`` resolved for ``env_id``);
    ``vectorization`` (sync / async) applies to the ``gymnasium`` backend, the others step in-process.

    Same-step autoreset puts the last observation of a finished episode in ``info["final_obs"]``,
    which is what bootstrapping through a time-limit truncation needs. Env ``i`` is seeded with
    ``seed + i`` when reset with ``seed``; the action space is seeded too, so random actions are
    reproducible.
    """
    if vectorization not in VECTORIZATION_MODES:
        raise ConfigError(f"vectorization must be one of {VECTORIZATION_MODES}, got {vectorization!r}")
    env_id = import_env_module(env_id)
    name = resolve_backend(backend, env_id, n_envs)
    if name == "gymnasium":
        envs = make_gymnasium_envs(env_id, n_envs, vectorization, dict(env_kwargs or {}))
    else:
        envs = backend_for(name, env_id).make(env_id, n_envs, seed, dict(env_kwargs or {}))
    envs.action_space.seed(seed)
    envs.single_action_space.seed(seed)
    return envs


def check_spaces(
    algo: str,
    observation_space: gym.Space,
    action_space: gym.Space,
    action_types: tuple[type[gym.Space], ...],
) -> None:
    """Raise UnsupportedSpaceError unless observations are a flat Box and actions one of ``action_types``."""
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise UnsupportedSpaceError(
            f"{algo} supports flat Box observations only; this environment has {observation_space}"
        )
    if not isinstance(action_space, action_types):
        names = " or ".join(t.__name__ for t in action_types)
        raise UnsupportedSpaceError(
            f"{algo} supports {names} action spaces; this environment has {action_space}"
        )
    if isinstance(action_space, gym.spaces.Box) and (
        len(action_space.shape) != 1
        or not np.all(np.isfinite(action_space.low))
        or not np.all(np.isfinite(action_space.high))
    ):
        raise UnsupportedSpaceError(
            f"{algo} needs a flat, bounded Box action space; this environment has {action_space}"
        )


class EpisodeTracker:
    """Accumulates raw rewards per vectorised env and reports each finished episode's return and length."""

    def __init__(self, n_envs: int) -> None:
        self._returns = np.zeros(n_envs, dtype=np.float64)
        self._lengths = np.zeros(n_envs, dtype=np.int64)
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []

    def update(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        """Add one step's raw rewards; ``dones`` marks envs whose episode ended at this step."""
        self._returns += rewards
        self._lengths += 1
        if dones.any():
            self.finished_returns.extend(self._returns[dones].tolist())
            self.finished_lengths.extend(self._lengths[dones].tolist())
            self._returns[dones] = 0.0
            self._lengths[dones] = 0

    def pop(self) -> tuple[list[float], list[int]]:
        """Return and forget the episodes finished since the last call."""
        out = (self.finished_returns, self.finished_lengths)
        self.finished_returns, self.finished_lengths = [], []
        return out


def eval_envs(
    current: gym.vector.VectorEnv | None,
    env_id: str,
    n_envs: int,
    seed: int,
    env_kwargs: dict[str, Any],
    backend: str = "gymnasium",
) -> gym.vector.VectorEnv:
    """Evaluation envs with ``n_envs`` copies on ``backend``: ``current`` when it has that many (kept
    between evaluations; :func:`evaluate_episodes` reseeds them), else new (sync) ones, closing
    ``current``."""
    if current is not None and current.num_envs == n_envs:
        return current
    if current is not None:
        current.close()
    return make_vec_env(env_id, n_envs, seed, "sync", env_kwargs, backend)


class EvalEpisodes:
    """One evaluation in progress: exactly ``n_episodes`` complete episodes, split evenly over ``envs``.

    The caller reads :attr:`obs`, chooses actions and calls :meth:`step` until :attr:`done`; several of
    these can advance side by side (a population evaluates all its members with one batched forward).
    """

    def __init__(self, envs: gym.vector.VectorEnv, n_episodes: int, seed: int) -> None:
        n_envs = envs.num_envs
        self.envs = envs
        self.quota = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])  # sums to n_episodes
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self._ep_return = np.zeros(n_envs)
        self._ep_length = np.zeros(n_envs, dtype=np.int64)
        self._done_count = np.zeros(n_envs, dtype=np.int64)
        self.obs, _ = envs.reset(seed=seed)

    @property
    def done(self) -> bool:
        """Every env has finished its share of episodes."""
        return not (self._done_count < self.quota).any()

    def step(self, actions: np.ndarray) -> None:
        """Step every env with ``actions`` and record the episodes that end."""
        self.obs, reward, terminated, truncated, _ = self.envs.step(actions)
        self._ep_return += reward
        self._ep_length += 1
        for i in np.flatnonzero(terminated | truncated):
            if self._done_count[i] < self.quota[i]:
                self.returns.append(float(self._ep_return[i]))
                self.lengths.append(int(self._ep_length[i]))
                self._done_count[i] += 1
            self._ep_return[i], self._ep_length[i] = 0.0, 0

    def result(self) -> EvalResult:
        """The finished episodes' returns and lengths."""
        return EvalResult(returns=np.asarray(self.returns), lengths=np.asarray(self.lengths))


def evaluate_episodes(
    envs: gym.vector.VectorEnv,
    predict: Callable[[np.ndarray], np.ndarray],
    n_episodes: int,
    seed: int,
) -> EvalResult:
    """Run exactly ``n_episodes`` complete episodes, split evenly over the ``envs`` (reset with ``seed``)."""
    run = EvalEpisodes(envs, n_episodes, seed)
    while not run.done:
        run.step(predict(run.obs))
    return run.result()
