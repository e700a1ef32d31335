"""GAE against a hand-computed rollout, including a time-limit truncation inside it."""

import numpy as np
import pytest

from algorithms.ppo import compute_gae


def test_gae_matches_hand_computation_with_termination_and_truncation() -> None:
    gamma, lam = 0.9, 0.5
    # One env, four steps. The episode is truncated at t=1 (time limit; V(final_obs)=2.0 bootstrapped
    # into the reward as the rollout does), a new episode starts at t=2 and terminates at t=3.
    v_final_truncated = 2.0
    rewards = np.array([[1.0], [1.0 + gamma * v_final_truncated], [0.5], [2.0]], dtype=np.float32)
    values = np.array([[0.5], [1.0], [0.2], [0.3]], dtype=np.float32)
    dones = np.array([[0.0], [1.0], [0.0], [1.0]], dtype=np.float32)
    last_values = np.array([7.0], dtype=np.float32)  # after a terminal step: must be ignored

    adv, ret = compute_gae(rewards, values, dones, last_values, gamma, lam)

    # Hand computation, backwards:
    # t=3 terminal:   δ3 = 2.0 - 0.3 = 1.7;                 A3 = 1.7
    # t=2:            δ2 = 0.5 + 0.9*0.3 - 0.2 = 0.57;       A2 = 0.57 + 0.45*1.7 = 1.335
    # t=1 truncated:  δ1 = (1 + 0.9*2) - 1.0 = 1.8;          A1 = 1.8   (nothing flows back from t=2)
    # t=0:            δ0 = 1 + 0.9*1.0 - 0.5 = 1.4;          A0 = 1.4 + 0.45*1.8 = 2.21
    expected = np.array([[2.21], [1.8], [1.335], [1.7]])
    np.testing.assert_allclose(adv, expected, rtol=1e-6)
    np.testing.assert_allclose(ret, expected + values, rtol=1e-6)


def test_gae_bootstraps_from_last_value_when_rollout_ends_mid_episode() -> None:
    rewards = np.array([[1.0, 0.0]], dtype=np.float32)
    values = np.array([[0.0, 1.0]], dtype=np.float32)
    dones = np.zeros((1, 2), dtype=np.float32)
    last_values = np.array([10.0, -1.0], dtype=np.float32)
    adv, _ = compute_gae(rewards, values, dones, last_values, gamma=0.99, gae_lambda=0.95)
    np.testing.assert_allclose(adv[0], [1.0 + 0.99 * 10.0, 0.99 * -1.0 - 1.0], rtol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_gae_extremes_are_td_and_monte_carlo(lam: float) -> None:
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(5, 1)).astype(np.float32)
    values = rng.normal(size=(5, 1)).astype(np.float32)
    dones = np.zeros((5, 1), dtype=np.float32)
    last = np.zeros(1, dtype=np.float32)
    gamma = 0.9
    adv, _ = compute_gae(rewards, values, dones, last, gamma, lam)
    next_values = np.concatenate([values[1:], last[None]])
    if lam == 0.0:
        np.testing.assert_allclose(adv, rewards + gamma * next_values - values, rtol=1e-5, atol=1e-6)
    else:
        discounted = np.array([sum(gamma**k * rewards[t + k, 0] for k in range(5 - t)) for t in range(5)])
        np.testing.assert_allclose(adv[:, 0], discounted - values[:, 0], rtol=1e-5, atol=1e-5)
