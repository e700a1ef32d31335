"""The replay buffer and the off-policy loop's storage: truncation vs termination, wrap-around, sampling."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from algorithms.common.off_policy import OffPolicyRunner
from algorithms.common.replay import ReplayBuffer


class CounterEnv(gym.Env):
    """Observation ``[t, episode]``; reward ``t``; terminates at ``t == terminate_at`` (if set)."""

    observation_space = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, terminate_at: int | None = None) -> None:
        self.terminate_at = terminate_at
        self.t = 0
        self.episode = -1

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.episode], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t, self.episode = 0, self.episode + 1
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        return self._obs(), float(self.t), self.t == self.terminate_at, False, {}


def register() -> None:
    if "rltune_test/CounterTruncated-v0" not in gym.registry:
        gym.register("rltune_test/CounterTruncated-v0", entry_point=CounterEnv, max_episode_steps=4)
    if "rltune_test/CounterTerminated-v0" not in gym.registry:
        gym.register("rltune_test/CounterTerminated-v0", entry_point=CounterEnv, kwargs={"terminate_at": 3})


def collect(env_id: str, steps: int, n_envs: int = 1, capacity: int = 100) -> ReplayBuffer:
    """Random-action steps through the shared off-policy loop; returns its replay buffer."""
    register()
    runner = OffPolicyRunner("SAC", env_id, n_envs, 0, "sync", None, "gymnasium", (gym.spaces.Box,), capacity)
    try:
        runner.learn(
            steps,
            None,
            learning_starts=10**9,
            train_freq=1,
            gradient_steps=1,
            explore=lambda obs: np.zeros((n_envs, 1), np.float32),
            train=lambda n: None,
            pop_losses=dict,
        )
    finally:
        runner.close()
    return runner.buffer


def test_truncated_step_keeps_bootstrapping_and_stores_the_real_final_observation() -> None:
    buffer = collect("rltune_test/CounterTruncated-v0", 6)
    # Episode 0: t = 0..4, truncated by the time limit at the 4th step (row 3).
    np.testing.assert_array_equal(buffer.observations[3], [3, 0])
    np.testing.assert_array_equal(buffer.next_observations[3], [4, 0])  # final_obs, not the reset obs
    assert buffer.terminated[:6].tolist() == [0.0] * 6
    np.testing.assert_array_equal(buffer.observations[4], [0, 1])  # the next episode starts fresh
    np.testing.assert_array_equal(buffer.next_observations[4], [1, 1])
    assert buffer.rewards[:6].tolist() == [1, 2, 3, 4, 1, 2]


def test_terminated_step_is_marked_terminal_with_its_final_observation() -> None:
    buffer = collect("rltune_test/CounterTerminated-v0", 5)
    assert buffer.terminated[:5].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    np.testing.assert_array_equal(buffer.next_observations[2], [3, 0])
    np.testing.assert_array_equal(buffer.observations[3], [0, 1])


def test_vectorised_add_stores_one_row_per_env_in_order() -> None:
    buffer = collect("rltune_test/CounterTruncated-v0", 8, n_envs=2)
    assert len(buffer) == 8
    # rows alternate env 0, env 1; both envs see the same counter sequence
    np.testing.assert_array_equal(buffer.observations[:8:2, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(buffer.observations[1:8:2, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(buffer.next_observations[6:8], [[4, 0], [4, 0]])


def make_rows(start: int, n: int) -> tuple[np.ndarray, ...]:
    ids = np.arange(start, start + n, dtype=np.float32)
    obs = np.stack([ids, -ids], 1)
    return obs, ids[:, None] / 100, ids, (ids % 2 == 0), obs + 0.5


def test_wrap_around_overwrites_the_oldest_transitions() -> None:
    buffer = ReplayBuffer(5, obs_dim=2, act_dim=1)
    buffer.add(*make_rows(0, 3))
    buffer.add(*make_rows(3, 3))  # crosses the end: rows 3, 4, then 0
    assert len(buffer) == 5 and buffer.pos == 1
    assert buffer.rewards.tolist() == [5, 1, 2, 3, 4]
    np.testing.assert_allclose(buffer.actions[:, 0], [0.05, 0.01, 0.02, 0.03, 0.04])
    assert buffer.terminated.tolist() == [0, 0, 1, 0, 1]
    np.testing.assert_array_equal(buffer.next_observations[0], [5.5, -4.5])
    buffer.add(*make_rows(6, 7))  # more than the capacity at once: only the newest 5 remain
    assert sorted(buffer.rewards.tolist()) == [8, 9, 10, 11, 12]


def test_sample_shapes_and_only_filled_rows() -> None:
    buffer = ReplayBuffer(1000, obs_dim=2, act_dim=1)
    buffer.add(*make_rows(0, 10))
    rng = np.random.default_rng(0)
    batch = buffer.sample(512, rng)
    assert batch.observations.shape == (512, 2) and batch.next_observations.shape == (512, 2)
    assert batch.actions.shape == (512, 1) and batch.obs_actions.shape == (512, 3)
    assert batch.rewards.shape == (512,) and batch.terminated.shape == (512,)
    ids = batch.rewards.numpy()
    assert set(ids.tolist()) == set(range(10))  # every filled row, nothing beyond
    np.testing.assert_array_equal(batch.observations[:, 0].numpy(), ids)
    np.testing.assert_array_equal(batch.obs_actions[:, 2].numpy(), batch.actions[:, 0].numpy())
    np.testing.assert_array_equal(batch.terminated.numpy(), (ids % 2 == 0).astype(np.float32))
    np.testing.assert_array_equal(batch.next_observations[:, 0].numpy(), ids + 0.5)


def test_sampling_is_reproducible_from_the_generator() -> None:
    buffer = ReplayBuffer(100, obs_dim=2, act_dim=1)
    buffer.add(*make_rows(0, 50))
    a = buffer.sample(32, np.random.default_rng(3)).rewards
    b = buffer.sample(32, np.random.default_rng(3)).rewards
    assert a.tolist() == b.tolist()


def test_empty_buffer_cannot_be_sampled() -> None:
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(10, 2, 1).sample(4, np.random.default_rng(0))
