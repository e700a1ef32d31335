"""algorithms.common.normalize: running statistics against numpy over the whole stream, and what the
observation and reward normalisers return."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.common.normalize import ObsNormalizer, RewardNormalizer, RunningMeanStd


def test_running_statistics_of_uneven_batches_equal_those_of_the_whole_stream() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 50, 3, 200)]
    rms = RunningMeanStd((4,))
    for batch in batches:
        rms.update(batch)
    stream = np.concatenate(batches)
    # The prior count of 1e-4 (mean 0, variance 1) is the only difference from the plain statistics.
    np.testing.assert_allclose(rms.mean, stream.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(rms.var, stream.var(axis=0), rtol=1e-5)
    assert rms.count == pytest.approx(len(stream) + 1e-4)


def test_saved_statistics_restore_exactly_and_are_copies() -> None:
    rms = RunningMeanStd((2,))
    rms.update(np.array([[1.0, 2.0], [3.0, 6.0]]))
    state = rms.state()
    restored = RunningMeanStd((2,))
    restored.load_state(state)
    state["mean"][:] = 99.0  # changing the saved arrays must not reach either object
    assert restored.mean.tolist() == rms.mean.tolist() == pytest.approx([2.0, 4.0], rel=1e-4)
    assert restored.var.tolist() == rms.var.tolist() and restored.count == rms.count


def test_observations_are_standardised_then_clipped_and_updates_are_optional() -> None:
    normalizer = ObsNormalizer((1,), clip=1.5)
    batch = np.array([[0.0], [2.0], [4.0], [6.0]])
    out = normalizer(batch, update=True)
    assert out.dtype == np.float32
    # mean 3, std sqrt(5): (x - 3) / sqrt(5) = -1.342, -0.447, 0.447, 1.342 (none beyond 1.5)
    np.testing.assert_allclose(out[:, 0], (batch[:, 0] - 3.0) / np.sqrt(5.0), rtol=1e-4)
    far = normalizer(np.array([[100.0]]), update=False)
    assert far[0, 0] == pytest.approx(1.5)  # clipped
    assert normalizer.rms.mean[0] == pytest.approx(3.0, rel=1e-4)  # update=False left the statistics


def test_rewards_are_scaled_by_the_std_of_the_discounted_return_which_resets_at_episode_ends() -> None:
    normalizer = RewardNormalizer(n_envs=2, gamma=0.5, clip=100.0)
    returns = []
    expected_returns = np.zeros(2)
    for t, (reward, done) in enumerate(
        [([1.0, 2.0], [False, False]), ([1.0, 2.0], [False, True]), ([4.0, 0.0], [False, False])]
    ):
        reward, done = np.array(reward), np.array(done)
        scaled = normalizer(reward, done)
        expected_returns = expected_returns * 0.5 + reward
        returns.append(expected_returns.copy())
        stream = np.concatenate(returns)
        var = (stream.var() * len(stream) + 1e-4 * (1 + stream.mean() ** 2)) / (len(stream) + 1e-4)
        np.testing.assert_allclose(scaled, reward / np.sqrt(var + 1e-8), rtol=1e-4, err_msg=f"step {t}")
        expected_returns[done] = 0.0  # the second env's episode ended at step 1: its return restarts
    assert normalizer.returns.tolist() == pytest.approx([4.0 + 0.5 * 1.5, 0.0])


def test_rewards_are_clipped_after_scaling() -> None:
    normalizer = RewardNormalizer(n_envs=1, gamma=0.99, clip=0.5)
    for _ in range(10):
        normalizer(np.array([1.0]), np.array([False]))
    assert normalizer(np.array([1000.0]), np.array([False]))[0] == pytest.approx(0.5)
