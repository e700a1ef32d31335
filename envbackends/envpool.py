"""The ``envpool`` backend: EnvPool's C++ batched envs behind Gymnasium's same-step-autoreset API.

EnvPool (``pip install -e ".[envpool]"``) steps every env of a pool in one call. Its own autoreset
happens on the step after an episode ends; here an ended env is reset at once instead (EnvPool's
``reset(env_ids)``), so observations, ``final_obs`` and episode boundaries follow Gymnasium's
same-step mode. Spaces are taken from Gymnasium's env (EnvPool declares LunarLander's observation
bounds wrongly). EnvPool seeds env ``i`` of a pool made with seed ``s`` with ``s + i``, from its own
generator: initial states differ from Gymnasium's for the same seed, and a partial reset cannot reseed
an env, it continues that env's stream (a reset of all envs with a seed makes a new pool).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import envpool
import gymnasium as gym
import numpy as np

from algorithms.common.env_backends import EnvBackend, SameStepVectorEnv
from algorithms.common.errors import ConfigError

ENV_IDS = (
    "CartPole-v1",
    "Pendulum-v1",
    "Acrobot-v1",
    "MountainCarContinuous-v0",
    "LunarLander-v3",
    "LunarLanderContinuous-v3",
)
"""Env ids this backend creates; tests/algorithms/test_env_backends.py checks each one's spaces, dtypes
and autoreset against Gymnasium's."""

TESTED_IDS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1", "MountainCarContinuous-v0", "LunarLander-v3")
"""Ids the tests compare with Gymnasium's: step by step from the same state, and LunarLander (whose
Box2D state cannot be set from outside) by the returns of Gymnasium's demonstration policy."""

AUTO_MIN_ENVS = {"Acrobot-v1": 1, "LunarLander-v3": 2}
"""Tested id → the fewest envs at which EnvPool steps it faster than Gymnasium's SyncVectorEnv
(bench/results/env_backends.md); ``env.backend=auto`` picks EnvPool for these. Not CartPole (the
``vector`` backend is faster still), nor MountainCarContinuous (Gymnasium's is faster at 8 envs), nor
Pendulum, whose dynamics differ at the speed limit (EnvPool advances the angle by the speed before
clipping it, as Gymnasium's old Pendulum-v0 did; tests/algorithms/test_env_backends.py)."""


class EnvPoolVectorEnv(SameStepVectorEnv):
    """A pool of ``n_envs`` EnvPool envs of one id, stepped in one call on one thread."""

    def __init__(self, env_id: str, n_envs: int, seed: int, env_kwargs: Mapping[str, Any]):
        if env_kwargs:
            raise ConfigError(
                f"env.backend=envpool takes no env.kwargs (got {dict(env_kwargs)}); use env.backend=gymnasium"
            )
        probe = gym.make(env_id)
        super().__init__(n_envs, probe.observation_space, probe.action_space)
        probe.close()
        self.env_id = env_id
        self.pool = self._make_pool(seed)

    def _make_pool(self, seed: int) -> Any:
        with warnings.catch_warnings():  # EnvPool builds float64 Box bounds that Gymnasium casts down
            warnings.simplefilter("ignore", UserWarning)
            pool = envpool.make(
                self.env_id, env_type="gymnasium", num_envs=self.num_envs, seed=seed, num_threads=1
            )
            _ = pool.observation_space  # built (and cached) here, where its warning is silenced
        return pool

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """As :meth:`SameStepVectorEnv.reset`; a reset of every env with an int seed makes a new pool,
        so that the same seed starts the same episodes again."""
        if isinstance(seed, int | np.integer) and not (options and "reset_mask" in options):
            self.pool.close()
            self.pool = self._make_pool(int(seed))
            seed = None
        return super().reset(seed=seed, options=options)

    def step_batch(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        obs, rewards, terminated, truncated, _ = self.pool.step(actions)
        return obs, rewards, terminated, truncated

    def reset_envs(self, env_ids: np.ndarray, seeds: Sequence[int | None] | None) -> np.ndarray:
        obs, info = self.pool.reset(np.asarray(env_ids, dtype=np.int32))
        order = np.argsort(np.argsort(env_ids))  # EnvPool returns them by env id
        return obs[np.argsort(info["env_id"])][order]

    def close(self, **kwargs: Any) -> None:
        self.pool.close()


def make_envpool_envs(
    env_id: str, n_envs: int, seed: int, env_kwargs: Mapping[str, Any]
) -> gym.vector.VectorEnv:
    """The ``envpool`` backend's envs for ``env_id``, reset with ``seed``."""
    envs = EnvPoolVectorEnv(env_id, n_envs, seed, env_kwargs)
    envs.reset(seed=seed)
    return envs


BACKEND = EnvBackend("envpool", make_envpool_envs, ENV_IDS, TESTED_IDS, AUTO_MIN_ENVS, reseeds_subsets=False)
"""Registered as ``envpool`` in pyproject.toml's ``rltune.env_backends`` entry points."""
