"""Plain result and state objects passed between an agent, its callbacks and the tuner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np


@dataclass
class TrainState:
    """What a callback sees after each training iteration; it is the only channel to the training loop.

    Attributes:
        step: environment steps taken so far, counted over all vectorised envs.
        iteration: training iterations (rollout + update) completed so far.
        total_steps: the step budget of the current ``learn`` call.
        episode_returns: undiscounted returns of the episodes that finished during the last iteration
            (raw environment reward, before any normalisation).
        episode_lengths: lengths of those episodes, in env steps.
        losses: the last update's diagnostics, keyed like ``policy_loss``, ``value_loss``, ``entropy``,
            ``approx_kl``, ``clipfrac``, ``explained_variance``, ``learning_rate``.
        sps: env steps per second since ``learn`` began.
        stop_requested: set through :meth:`request_stop` to end ``learn`` after this iteration.
    """

    step: int = 0
    iteration: int = 0
    total_steps: int = 0
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    sps: float = 0.0
    stop_requested: bool = False

    def request_stop(self) -> None:
        """Ask the agent to stop training at the end of the current iteration."""
        self.stop_requested = True


Callback = Callable[[TrainState], None]
"""A function called once per training iteration with the live :class:`TrainState`."""


@dataclass(frozen=True)
class EvalResult:
    """Returns of complete evaluation episodes on dedicated evaluation envs.

    Attributes:
        returns: undiscounted return of each episode (raw reward).
        lengths: length of each episode in env steps.
    """

    returns: np.ndarray
    lengths: np.ndarray

    @property
    def mean_return(self) -> float:
        """Mean episode return."""
        return float(np.mean(self.returns))

    @property
    def std_return(self) -> float:
        """Population standard deviation of the episode returns."""
        return float(np.std(self.returns))


class Agent(Protocol):
    """The surface every agent in ``algorithms.ALGORITHMS`` offers to the tuner and the benchmarks."""

    env_backend: str
    """The env backend that steps its envs (``auto`` resolved): gymnasium, vector or envpool."""

    def learn(self, total_steps: int, callback: Callback | None = None) -> TrainState:
        """Train for ``total_steps`` env steps, calling ``callback`` after each iteration."""
        ...

    def evaluate(self, n_episodes: int, seed: int, deterministic: bool = True) -> EvalResult:
        """Run ``n_episodes`` complete episodes on separate evaluation envs seeded with ``seed``."""
        ...

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Env actions for a batch of raw observations."""
        ...

    def save(self, path: str | Path) -> None:
        """Write everything needed to rebuild the agent to ``path``."""
        ...

    def close(self) -> None:
        """Release the environments."""
        ...


class VecStep(NamedTuple):
    """One step of every training env, as the replay receives it (one row per env)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_obs: np.ndarray
    """Each env's real successor: ``final_obs`` where its episode ended, not the reset observation."""
