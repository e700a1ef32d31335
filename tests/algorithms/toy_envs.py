"""Tiny registered environments that exercise error paths of the agents."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class ToyEnv(gym.Env):
    """A 10-step episode with configurable spaces and reward."""

    def __init__(self, action_space: gym.Space, observation_space: gym.Space, reward: float = 1.0) -> None:
        self.action_space = action_space
        self.observation_space = observation_space
        self.reward = reward
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._t += 1
        return self.observation_space.sample(), self.reward, self._t >= 10, False, {}


BOX_OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


def register_toy_envs() -> None:
    """Register the toy envs under ``rltune_test/…`` (idempotent)."""
    specs = {
        "rltune_test/MultiDiscreteAction-v0": dict(
            action_space=gym.spaces.MultiDiscrete([2, 3]), observation_space=BOX_OBS
        ),
        "rltune_test/DictObs-v0": dict(
            action_space=gym.spaces.Discrete(2),
            observation_space=gym.spaces.Dict({"a": BOX_OBS}),
        ),
        "rltune_test/UnboundedBox-v0": dict(
            action_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), observation_space=BOX_OBS
        ),
        "rltune_test/NaNReward-v0": dict(
            action_space=gym.spaces.Discrete(2), observation_space=BOX_OBS, reward=float("nan")
        ),
        "rltune_test/NaNRewardBox-v0": dict(
            action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
            observation_space=BOX_OBS,
            reward=float("nan"),
        ),
    }
    for env_id, kwargs in specs.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=ToyEnv, kwargs=kwargs)


register_toy_envs()  # so "tests.algorithms.toy_envs:rltune_test/…" ids work from a fresh process
