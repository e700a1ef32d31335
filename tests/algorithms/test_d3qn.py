"""D3QN: the math pieces against hand-computed values, the agent's surface, and a learning smoke run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from algorithms import (
    ALGORITHMS,
    D3QN,
    ConfigError,
    D3QNConfig,
    NonFiniteLossError,
    TrainState,
    UnsupportedSpaceError,
)
from algorithms.common.nstep import NStepAccumulator
from algorithms.common.prioritized import PrioritizedSampler, SumTree
from algorithms.common.replay import ReplayBuffer
from algorithms.common.types import VecStep
from algorithms.d3qn import NoisyLinear, dueling_q_values, huber_td_gradient, td_targets
from tests.algorithms.toy_envs import register_toy_envs
from tests.helpers import record_curve, saved_and_loaded, through_autograd

SMALL = dict(net_arch=(32, 32), batch_size=32, learning_starts=100, target_update_interval=100)


# --- math pieces ---------------------------------------------------------------------------------------
def test_dueling_head_adds_the_value_to_mean_subtracted_advantages() -> None:
    out = torch.tensor([[10.0, 1.0, 2.0, 6.0], [-1.0, 0.0, 0.0, 3.0]])  # [V | A1 A2 A3]
    q = dueling_q_values(out)
    expected = torch.tensor([[10 + 1 - 3, 10 + 2 - 3, 10 + 6 - 3], [-1 - 1, -1 - 1, -1 + 3 - 1]])
    torch.testing.assert_close(q, expected.float())
    # Identifiability: the mean over actions of Q is V.
    torch.testing.assert_close(q.mean(1), out[:, 0])


def test_double_q_target_lets_the_online_net_choose_and_the_target_net_value() -> None:
    rewards = torch.tensor([1.0, 0.5, -1.0])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    next_q_target = torch.tensor([[1.0, 5.0], [3.0, 2.0], [4.0, -2.0]])
    next_q_online = torch.tensor([[9.0, 0.0], [0.0, 1.0], [0.0, 7.0]])  # picks a* = 0, 1, 1
    double = td_targets(rewards, terminated, 0.9, next_q_target, next_q_online)
    # Row 0: 1 + 0.9 * Q'(s', 0) = 1 + 0.9 * 1; row 1 terminal: 0.5; row 2: -1 + 0.9 * Q'(s', 1) = -1 - 1.8.
    torch.testing.assert_close(double, torch.tensor([1.9, 0.5, -2.8]))
    # Plain DQN takes the target net's own max: 1 + 0.9 * 5, 0.5, -1 + 0.9 * 4.
    dqn = td_targets(rewards, terminated, 0.9, next_q_target, None)
    torch.testing.assert_close(dqn, torch.tensor([5.5, 0.5, 2.6]))
    # Per-transition discounts (n-step: γ^k) replace the scalar γ.
    per_row = td_targets(rewards, terminated, torch.tensor([0.81, 0.9, 0.729]), next_q_target, next_q_online)
    torch.testing.assert_close(per_row, torch.tensor([1 + 0.81, 0.5, -1 - 2 * 0.729]))


def _step(
    acc: NStepAccumulator, obs: float, action: int, reward: float, term: bool = False, trunc: bool = False
):
    return acc.add(
        VecStep(
            np.array([[obs]], np.float32),
            np.array([action]),
            np.array([reward]),
            np.array([term]),
            np.array([trunc]),
            np.array([[obs + 1]], np.float32),  # the real successor of state x is x + 1 here
        )
    )


def test_n_step_returns_cut_at_termination_and_bootstrap_through_truncation() -> None:
    gamma = 0.5
    acc = NStepAccumulator(3, gamma, n_envs=1, obs_dim=1, act_dim=1)
    assert len(_step(acc, 0, 0, 1.0).obs) == 0  # window not full yet
    assert len(_step(acc, 1, 1, 2.0).obs) == 0
    full = _step(acc, 2, 0, 4.0)  # window [0, 1, 2] is full: emit s=0
    np.testing.assert_allclose(full.returns, [1 + 0.5 * 2 + 0.25 * 4])
    np.testing.assert_allclose(full.next_obs, [[3.0]])
    np.testing.assert_allclose(full.discounts, [gamma**3])
    np.testing.assert_allclose(full.terminated, [0.0])

    # Terminate at s=3: pending windows start at s=1, 2, 3 and all end at the terminal step.
    ended = _step(acc, 3, 1, 8.0, term=True)
    np.testing.assert_allclose(ended.obs[:, 0], [1, 2, 3])
    np.testing.assert_allclose(ended.actions[:, 0], [1, 0, 1])
    np.testing.assert_allclose(ended.returns, [2 + 0.5 * 4 + 0.25 * 8, 4 + 0.5 * 8, 8])
    np.testing.assert_allclose(ended.terminated, [1, 1, 1])  # no bootstrap at all
    np.testing.assert_allclose(ended.next_obs[:, 0], [4, 4, 4])
    np.testing.assert_allclose(ended.discounts, [gamma**3, gamma**2, gamma])

    # A new episode, truncated after two steps: windows are shortened but keep bootstrapping.
    assert len(_step(acc, 10, 0, 1.0).obs) == 0
    cut = _step(acc, 11, 0, 1.0, trunc=True)
    np.testing.assert_allclose(cut.obs[:, 0], [10, 11])
    np.testing.assert_allclose(cut.returns, [1 + 0.5, 1])
    np.testing.assert_allclose(cut.terminated, [0, 0])
    np.testing.assert_allclose(cut.next_obs[:, 0], [12, 12])  # the real last observation
    np.testing.assert_allclose(cut.discounts, [gamma**2, gamma])


def test_n_step_accumulator_keeps_vectorised_envs_apart() -> None:
    acc = NStepAccumulator(2, 1.0, n_envs=2, obs_dim=1, act_dim=1)
    obs = np.array([[0.0], [100.0]], np.float32)
    first = acc.add(
        VecStep(
            obs, np.array([0, 1]), np.array([1.0, 10.0]), np.array([False, True]), np.zeros(2, bool), obs + 1
        )
    )
    np.testing.assert_allclose(first.obs[:, 0], [100])  # env 1 ended at once: a 1-step transition
    second = acc.add(
        VecStep(
            obs + 1, np.array([1, 0]), np.array([2.0, 20.0]), np.zeros(2, bool), np.zeros(2, bool), obs + 2
        )
    )
    np.testing.assert_allclose(second.obs[:, 0], [0])  # env 0's window is full; env 1 restarted
    np.testing.assert_allclose(second.returns, [3.0])


def test_sum_tree_keeps_sums_and_finds_prefix_sums() -> None:
    tree = SumTree(5)
    tree.update(np.array([0, 1, 2, 3, 4]), np.array([1.0, 2.0, 3.0, 4.0, 0.0]))
    assert tree.total == 10.0
    found = tree.find(np.array([0.0, 0.99, 1.0, 2.99, 3.0, 5.99, 6.0, 9.99]))
    np.testing.assert_array_equal(found, [0, 0, 1, 1, 2, 2, 3, 3])
    tree.update(np.array([1, 1]), np.array([5.0, 0.5]))  # repeated index: the last value wins
    assert tree.total == pytest.approx(8.5)
    np.testing.assert_allclose(tree.values(np.array([1])), [0.5])


def test_prioritized_sampling_follows_the_priorities() -> None:
    sampler = PrioritizedSampler(capacity=8, alpha=1.0, eps=0.0)
    sampler.on_add(np.arange(4))
    sampler.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    rng = np.random.default_rng(0)
    counts = np.zeros(4)
    for _ in range(2000):
        indices, weights = sampler.sample(64, size=4, beta=1.0, rng=rng)
        counts += np.bincount(indices, minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.005)
    # Importance weights (N·P)^-β over their batch maximum: with β = 1, min_batch P / P.
    indices, weights = sampler.sample(4, size=4, beta=1.0, rng=rng)
    probs = (indices + 1) / 10.0
    np.testing.assert_allclose(weights, probs.min() / probs, rtol=1e-6)


def test_prioritized_sampling_with_alpha_zero_is_uniform() -> None:
    sampler = PrioritizedSampler(capacity=4, alpha=0.0)
    sampler.on_add(np.arange(4))
    sampler.update_priorities(np.arange(4), np.array([0.1, 1.0, 10.0, 100.0]))
    _, weights = sampler.sample(16, size=4, beta=0.4, rng=np.random.default_rng(1))
    np.testing.assert_allclose(weights, 1.0)


def test_noisy_layer_resamples_only_on_reset_and_its_mean_is_noise_free() -> None:
    layer = NoisyLinear(4, 3, sigma0=0.5)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4)
    layer.reset_noise(generator)
    first = layer(x)
    torch.testing.assert_close(layer(x), first)  # same noise until the next reset
    layer.reset_noise(generator)
    assert not torch.allclose(layer(x), first)
    mean = torch.nn.functional.linear(x, layer.weight_mu, layer.bias_mu)
    torch.testing.assert_close(layer(x, noise=False), mean)
    # Gradients reach both the means and the noise scales.
    layer(x).sum().backward()
    assert layer.weight_sigma.grad is not None and layer.weight_sigma.grad.abs().sum() > 0


def test_replay_buffer_reports_written_rows_and_stores_discounts() -> None:
    buffer = ReplayBuffer(3, obs_dim=1, act_dim=1, store_discounts=True)
    obs = np.zeros((2, 1), np.float32)
    rows = buffer.add(obs, np.zeros(2), np.zeros(2), np.zeros(2), obs, discounts=np.array([0.9, 0.81]))
    np.testing.assert_array_equal(rows, [0, 1])
    rows = buffer.add(obs, np.zeros(2), np.zeros(2), np.zeros(2), obs, discounts=np.array([0.5, 0.25]))
    np.testing.assert_array_equal(rows, [2, 0])  # wraps around
    batch = buffer.gather(np.array([0, 1, 2]))
    torch.testing.assert_close(batch.discounts, torch.tensor([0.25, 0.81, 0.5]))
    with pytest.raises(ValueError, match="discounts"):
        buffer.add(obs, np.zeros(2), np.zeros(2), np.zeros(2), obs)


# --- the agent's surface -------------------------------------------------------------------------------
def test_registered_with_its_config() -> None:
    assert ALGORITHMS["d3qn"].agent_cls is D3QN and ALGORITHMS["d3qn"].config_cls is D3QNConfig


@pytest.mark.parametrize(
    "values, field",
    [
        ({"n_step": 0}, "n_step"),
        ({"per_alpha": 1.5}, "per_alpha"),
        ({"exploration_final_eps": -0.1}, "exploration_final_eps"),
        ({"dueling": "yes"}, "dueling"),
        ({"gradient_steps": -3}, "gradient_steps"),
        ({"target_update_interval": 0}, "target_update_interval"),
    ],
)
def test_invalid_values_raise_a_config_error_naming_the_field(values: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        D3QNConfig(**values)


def test_continuous_actions_are_rejected_naming_the_alternatives() -> None:
    with pytest.raises(UnsupportedSpaceError) as info:
        D3QN("Pendulum-v1", D3QNConfig(**SMALL))
    message = str(info.value)
    assert "D3QN supports Discrete action spaces only" in message and "Box" in message
    assert "sac" in message and "td3" in message


VARIANTS = [
    pytest.param(D3QNConfig(**SMALL), id="d3qn"),
    pytest.param(D3QNConfig(**SMALL, dueling=False, double_q=False), id="dqn"),
    pytest.param(D3QNConfig(**SMALL, n_step=3, prioritized=True, noisy=True, n_envs=2), id="rainbow-ish"),
]


@pytest.mark.parametrize("config", VARIANTS)
def test_same_config_and_seed_give_a_bit_identical_learning_curve(config: D3QNConfig) -> None:
    with D3QN("CartPole-v1", config, seed=3) as a, D3QN("CartPole-v1", config, seed=3) as b:
        curve = record_curve(a, 2000)
        assert curve == record_curve(b, 2000)
        for name, tensor in a._tensors().items():  # online and target networks
            assert torch.equal(tensor, b._tensors()[name]), name
        assert torch.equal(a.optimizer.exp_avg_sq, b.optimizer.exp_avg_sq)
    with D3QN("CartPole-v1", config, seed=4) as c:
        assert record_curve(c, 2000) != curve, "a different seed must give a different curve"


@pytest.mark.parametrize("config", VARIANTS)
def test_save_load_gives_identical_actions_and_state(config: D3QNConfig, tmp_path: Path) -> None:
    with D3QN("CartPole-v1", config, seed=0) as agent:
        agent.learn(1000)
        obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        with saved_and_loaded(agent, tmp_path / "model.pt", obs, episodes=3, seed=5) as loaded:
            assert torch.equal(loaded.target_flat, agent.target_flat)
            assert loaded.num_steps == agent.num_steps and loaded.n_updates == agent.n_updates > 0


def test_target_network_is_copied_every_target_update_interval_env_steps() -> None:
    config = D3QNConfig(**{**SMALL, "target_update_interval": 40, "train_freq": 1})
    with D3QN("CartPole-v1", config, seed=0) as agent:
        agent.learn(100)  # learning starts at step 100: one update, after the copy due at 80
        assert agent.n_updates == 1 and agent.target_updates == 2
        before = agent.target_flat.clone()
        agent.learn(19)  # steps 101 … 119: still before the next copy (at 120)
        assert torch.equal(agent.target_flat, before)
        agent.learn(1)  # step 120: copy the online weights, then train on
        assert agent.target_updates == 3
        assert not torch.equal(agent.target_flat, before)


def test_epsilon_decays_linearly_over_the_exploration_fraction() -> None:
    config = D3QNConfig(
        **SMALL, exploration_fraction=0.5, exploration_initial_eps=1.0, exploration_final_eps=0.1
    )
    with D3QN("CartPole-v1", config, seed=0) as agent:
        seen: list[tuple[int, float]] = []
        agent.learn(2000, lambda s: seen.append((s.step, s.losses["epsilon"])))
        assert seen[0] == (1000, pytest.approx(0.1))  # 1000 / 2000 = the whole fraction done
        assert agent.config.noisy is False and agent.epsilon == pytest.approx(0.1)


def test_callback_can_stop_training_early() -> None:
    with D3QN("CartPole-v1", D3QNConfig(**SMALL), seed=0) as agent:

        def stop(state: TrainState) -> None:
            state.request_stop()

        state = agent.learn(50_000, stop)
        assert state.step == 1000 and set(state.losses) == set(D3QN.loss_keys)


def test_d3qn_learns_cartpole() -> None:
    """Smoke run: a short D3QN training beats the random policy (≈ 22) by a wide margin."""
    config = D3QNConfig(
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=20_000,
        learning_starts=1000,
        target_update_interval=10,
        train_freq=64,
        gradient_steps=32,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        net_arch=(64, 64),
    )
    with D3QN("CartPole-v1", config, seed=1) as agent:
        agent.learn(20_000)
        result = agent.evaluate(10, seed=10_001)
    assert result.mean_return >= 150, result


def test_noisy_network_acts_in_numpy_with_the_same_function_as_in_torch() -> None:
    from algorithms.d3qn import NoisyMLP

    net = NoisyMLP(4, (16, 16), 3, "relu", sigma0=0.5)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with torch.no_grad():
        mean = net(torch.from_numpy(x), noise=False).numpy()
    np.testing.assert_allclose(net.forward_numpy(x, None), mean, rtol=1e-5, atol=1e-6)
    # With noise: numpy draws eps_in then eps_out per layer; put the same draws into the torch buffers.
    rng, replay = np.random.default_rng(1), np.random.default_rng(1)
    noisy = net.forward_numpy(x, rng)
    for layer in net.layers:
        for eps in (layer.eps_in, layer.eps_out):
            e = torch.from_numpy(replay.standard_normal(eps.shape[0], dtype=np.float32))
            eps.copy_(e.sign() * e.abs().sqrt())
    with torch.no_grad():
        np.testing.assert_allclose(noisy, net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(noisy, mean)


def test_n_step_returns_with_learning_starts_zero_wait_for_the_first_stored_window() -> None:
    config = D3QNConfig(**{**SMALL, "learning_starts": 0, "train_freq": 1, "n_step": 3, "prioritized": True})
    with D3QN("CartPole-v1", config, seed=0) as agent:
        agent.learn(10)  # the first two steps complete no 3-step window yet: nothing to train on
        assert len(agent.runner.buffer) == 8 and agent.n_updates == 8


@pytest.mark.parametrize(
    "options",
    [
        dict(dueling=False, double_q=False),
        dict(dueling=True, double_q=True, activation="tanh"),
        dict(prioritized=True, n_step=3),
    ],
    ids=["plain", "dueling-double-tanh", "prioritized-nstep"],
)
def test_written_out_backward_trains_as_autograd_does(options: dict) -> None:
    """The Q-network's gradient written out (no autograd graph) takes the steps autograd takes: after
    hundreds of updates both agents hold the same weights, up to float rounding."""
    config = D3QNConfig(**{**SMALL, "train_freq": 1, **options})
    with D3QN("CartPole-v1", config, seed=2) as written, D3QN("CartPole-v1", config, seed=2) as reference:
        through_autograd(reference.q_network.net)
        assert written.q_network.writes_out_backward and not reference.q_network.writes_out_backward
        initial = written.q_flat.detach().clone()
        written.learn(600)
        reference.learn(600)
        assert written.n_updates == reference.n_updates >= 400
        np.testing.assert_allclose(written.q_flat.detach(), reference.q_flat.detach(), atol=1e-4)
        assert (written.q_flat.detach() - initial).abs().max() > 1e-3  # it learned


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_written_out_td_gradient_equals_autograd(dueling: bool, weighted: bool) -> None:
    """One minibatch's Huber TD loss: the written-out gradient is autograd's, with TD errors on both sides
    of the Huber loss's kink and (prioritized replay) importance weights."""
    g = torch.Generator().manual_seed(0)
    obs, actions = torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)
    td_target = 3.0 * torch.randn(32, generator=g)
    weights = torch.rand(32, generator=g) if weighted else None
    with D3QN("CartPole-v1", D3QNConfig(**SMALL, dueling=dueling), seed=0) as agent:
        old_val = agent.q_network(obs).gather(1, actions[:, None])[:, 0]
        elementwise = torch.nn.functional.smooth_l1_loss(old_val, td_target, reduction="none")
        (elementwise if weights is None else weights * elementwise).mean().backward()
        expected = agent.q_flat.grad.clone()
        assert ((old_val - td_target).abs() < 1).any() and ((old_val - td_target).abs() > 1).any()
        agent.q_flat.grad.fill_(7.0)  # written out: replaced, not added to
        q, backward = agent.q_network.q_with_backward(obs)
        grad_q = torch.zeros_like(q)
        written_old_val = q.gather(1, actions[:, None])[:, 0]
        grad_q.scatter_(1, actions[:, None], huber_td_gradient(written_old_val, td_target, weights)[:, None])
        backward(grad_q)
        torch.testing.assert_close(agent.q_flat.grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("noisy", [False, True], ids=["written-out", "autograd"])
def test_a_non_finite_td_loss_raises_the_dedicated_error_at_the_first_update(noisy: bool) -> None:
    register_toy_envs()
    config = D3QNConfig(learning_starts=100, train_freq=4, noisy=noisy)
    with D3QN("rltune_test/NaNReward-v0", config, seed=0) as agent:
        with pytest.raises(NonFiniteLossError, match="non-finite td_loss") as info:
            agent.learn(500)
        assert info.value.step == 100
