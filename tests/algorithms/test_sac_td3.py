"""SAC and TD3: the math, their public surface (determinism, persistence, errors) and that they learn."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from algorithms import (
    SAC,
    TD3,
    ConfigError,
    NonFiniteLossError,
    SACConfig,
    TD3Config,
    TrainState,
    UnsupportedSpaceError,
    build_config,
    get_algorithm,
)
from algorithms.common.networks import StackedMLP, twin_min_q
from algorithms.common.off_policy import polyak_update, scale_action, unscale_action
from algorithms.sac import squashed_gaussian
from tests.algorithms.toy_envs import register_toy_envs
from tests.helpers import record_curve, saved_and_loaded, score_after_learning

SMALL = dict(net_arch=(32, 32), batch_size=64, learning_starts=100)


# --- math pieces ---------------------------------------------------------------------------------------
def test_squashed_gaussian_log_prob_matches_the_tanh_transformed_normal() -> None:
    torch.manual_seed(0)
    mean = torch.randn(64, 3, dtype=torch.float64) * 2
    log_std = torch.randn(64, 3, dtype=torch.float64).clamp(-2, 1)
    noise = torch.randn(64, 3, dtype=torch.float64)
    action, log_prob = squashed_gaussian(mean, log_std, noise)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()]
    )
    u = mean + log_std.exp() * noise
    np.testing.assert_allclose(action.numpy(), torch.tanh(u).numpy())
    # evaluate the reference at the pre-image u (TanhTransform's own inverse is atanh, lossy near ±1)
    reference = (dist.base_dist.log_prob(u) - dist.transforms[0].log_abs_det_jacobian(u, action)).sum(-1)
    np.testing.assert_allclose(log_prob.numpy(), reference.numpy(), rtol=1e-10, atol=1e-10)
    # and against the naive formula where it is still accurate
    naive = (dist.base_dist.log_prob(u) - torch.log(1 - torch.tanh(u) ** 2)).sum(-1)
    ok = u.abs().max(-1).values < 5
    np.testing.assert_allclose(log_prob[ok].numpy(), naive[ok].numpy(), rtol=1e-8)


def test_squashed_gaussian_density_integrates_like_a_density() -> None:
    """1-D check: a histogram of sampled actions matches exp(log π(a)) on the same bins."""
    mean, log_std = torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[-0.3]], dtype=torch.float64)
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal((400_000, 1)))
    actions, _ = squashed_gaussian(mean.expand(400_000, 1), log_std.expand(400_000, 1), noise)
    edges = np.linspace(-0.95, 0.95, 20)
    hist, _ = np.histogram(actions.numpy()[:, 0], bins=edges)
    centres = torch.from_numpy((edges[:-1] + edges[1:]) / 2)[:, None]
    u = torch.atanh(centres)
    _, log_prob = squashed_gaussian(mean.expand(19, 1), log_std.expand(19, 1), (u - mean) / log_std.exp())
    expected = log_prob.exp().numpy() * np.diff(edges) * 400_000
    np.testing.assert_allclose(hist, expected, rtol=0.05)


def test_squashed_gaussian_stays_finite_for_saturated_actions() -> None:
    mean = torch.tensor([[40.0, -40.0]])
    _, log_prob = squashed_gaussian(mean, torch.zeros(1, 2), torch.zeros(1, 2))
    assert torch.isfinite(log_prob).all()


def test_polyak_update_is_an_exponential_average() -> None:
    target = torch.tensor([0.0, 10.0, -4.0])
    source = torch.tensor([1.0, 0.0, 4.0])
    polyak_update(target, source, 0.25)
    np.testing.assert_allclose(target.numpy(), [0.25, 7.5, -2.0])
    polyak_update(target, source, 1.0)
    np.testing.assert_array_equal(target.numpy(), source.numpy())


def test_action_scaling_round_trips_between_policy_and_env_bounds() -> None:
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 10.0])
    policy = np.array([[-1.0, -1.0], [0.0, 0.5], [1.0, 1.0]])
    env = scale_action(policy, low, high)
    np.testing.assert_allclose(env, [[-2.0, 0.0], [0.0, 7.5], [2.0, 10.0]])
    np.testing.assert_allclose(unscale_action(env, low, high), policy)


def test_narrow_head_computes_the_same_function_and_gradients() -> None:
    torch.manual_seed(0)
    plain = StackedMLP(2, 5, (16, 16), (1, 1), "relu", False, (1.0, 1.0))
    fast = StackedMLP(2, 5, (16, 16), (1, 1), "relu", False, (1.0, 1.0), narrow_head=True)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(8, 5, requires_grad=True)
    y_plain, y_fast = plain(x), fast(x)
    torch.testing.assert_close(y_fast, y_plain)
    g_plain = torch.autograd.grad(y_plain.pow(2).sum(), [x, *plain.parameters()])
    g_fast = torch.autograd.grad(y_fast.pow(2).sum(), [x, *fast.parameters()])
    for a, b in zip(g_plain, g_fast, strict=True):
        torch.testing.assert_close(a, b)


# --- configs and registry ----------------------------------------------------------------------------
def test_registry_and_configs_from_plain_mappings() -> None:
    assert get_algorithm("sac").agent_cls is SAC and get_algorithm("td3").config_cls is TD3Config
    config = build_config("sac", {"ent_coef": "auto", "net_arch": [64, 64], "actor_learning_rate": 1e-3})
    assert config.net_arch == (64, 64) and config.learn_ent_coef
    fixed = build_config("sac", {"ent_coef": 0.2})
    assert not fixed.learn_ent_coef and math.isclose(fixed.initial_log_alpha(), math.log(0.2))
    assert math.isclose(SACConfig(ent_coef="auto_0.1").initial_log_alpha(), math.log(0.1))
    with pytest.raises(ConfigError, match=r"polcy_delay.*policy_delay"):
        build_config("td3", {"polcy_delay": 3})


@pytest.mark.parametrize(
    ("cls", "values", "field"),
    [
        (SACConfig, {"ent_coef": "sometimes"}, "ent_coef"),
        (SACConfig, {"ent_coef": -0.1}, "ent_coef"),
        (SACConfig, {"init_ent_coef": 0.0}, "init_ent_coef"),
        (SACConfig, {"tau": 0.0}, "tau"),
        (SACConfig, {"gamma": 1.5}, "gamma"),
        (SACConfig, {"batch_size": 0}, "batch_size"),
        (SACConfig, {"log_std_min": 3.0}, "log_std_min"),
        (SACConfig, {"critic_learning_rate": -1.0}, "critic_learning_rate"),
        (SACConfig, {"activation": "swish"}, "activation"),
        (TD3Config, {"policy_delay": 0}, "policy_delay"),
        (TD3Config, {"target_noise_clip": -0.5}, "target_noise_clip"),
        (TD3Config, {"net_arch": ()}, "net_arch"),
        (TD3Config, {"train_freq": 1.5}, "train_freq"),
        (TD3Config, {"gradient_steps": -2}, "gradient_steps"),
        (SACConfig, {"noise_color": -0.5}, "noise_color"),
        (TD3Config, {"noise_color": 3.5}, "noise_color"),
        (TD3Config, {"noise_seq_len": 1}, "noise_seq_len"),
    ],
)
def test_invalid_values_raise_a_config_error_naming_the_field(cls: type, values: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        cls(**values)


# --- the agents' surface -------------------------------------------------------------------------------
AGENTS = [
    pytest.param(SAC, SACConfig(**SMALL), id="sac"),
    pytest.param(TD3, TD3Config(**SMALL), id="td3"),
]


@pytest.mark.parametrize(("cls", "config"), AGENTS)
def test_same_config_and_seed_give_a_bit_identical_learning_curve(cls: type, config: Any) -> None:
    with cls("Pendulum-v1", config, seed=7) as a, cls("Pendulum-v1", config, seed=7) as b:
        curve_a = record_curve(a, 1200)
        curve_b = record_curve(b, 1200)
        assert curve_a == curve_b and len(curve_a) == 2
        assert curve_a[0][0] == 1000 and len(curve_a[0][1]) == 5  # one iteration = 1000 env steps
        for name, tensor in a._tensors().items():  # weights, targets, log α: every piece of learned state
            assert torch.equal(tensor, b._tensors()[name]), name
        for name, optimizer in a._optimizers().items():
            assert torch.equal(optimizer.exp_avg_sq, b._optimizers()[name].exp_avg_sq), name
    with cls("Pendulum-v1", config, seed=8) as c:
        assert record_curve(c, 1200) != curve_a, "a different seed must give a different curve"


@pytest.mark.parametrize(("cls", "config"), AGENTS)
def test_save_load_gives_identical_actions_and_state(cls: type, config: Any, tmp_path: Path) -> None:
    with cls("Pendulum-v1", config, seed=3) as agent:
        agent.learn(400)
        obs = np.random.default_rng(0).uniform(-1, 1, size=(16, 3)).astype(np.float32)
        with saved_and_loaded(agent, tmp_path / "model.pt", obs, episodes=2, seed=9) as loaded:
            assert loaded.config == agent.config and loaded.num_steps == agent.num_steps == 400
            assert torch.equal(loaded.critic_target_flat, agent.critic_target_flat)
            assert torch.equal(loaded.critic_optimizer.exp_avg_sq, agent.critic_optimizer.exp_avg_sq)
            assert loaded.critic_optimizer.step_count == agent.critic_optimizer.step_count > 0
            if cls is SAC:
                assert torch.equal(loaded.temperature.log_alpha, agent.temperature.log_alpha)
                assert loaded.temperature.log_alpha.item() != 0.0  # α has been learned
            else:
                assert torch.equal(loaded.actor_target_flat, agent.actor_target_flat)


@pytest.mark.parametrize(("cls", "config"), AGENTS)
def test_actions_stay_within_the_bounds(cls: type, config: Any) -> None:
    with cls("MountainCarContinuous-v0", config, seed=0) as agent:
        obs = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32) * 100
        for deterministic in (True, False):
            actions = agent.predict(obs, deterministic)
            assert actions.shape == (64, 1) and actions.dtype == np.float32
            assert np.abs(actions).max() <= 1.0


def test_target_critic_tracks_the_critic_by_polyak_averaging() -> None:
    config = SACConfig(**{**SMALL, "tau": 0.1})
    with SAC("Pendulum-v1", config, seed=0) as agent:
        agent.learn(150)  # past learning_starts: the buffer has data
        before = agent.critic_target_flat.clone()
        agent._train(1)
        expected = 0.9 * before + 0.1 * agent.critic_flat
        torch.testing.assert_close(agent.critic_target_flat, expected)


def test_td3_updates_the_actor_only_every_policy_delay_steps() -> None:
    with TD3("Pendulum-v1", TD3Config(**SMALL, policy_delay=3), seed=0) as agent:
        agent.learn(99)  # fills the buffer, no update yet
        assert agent.n_updates == 0
        actor, target = agent.actor_flat.clone(), agent.critic_target_flat.clone()
        agent._train(2)
        assert torch.equal(agent.actor_flat, actor) and torch.equal(agent.critic_target_flat, target)
        agent._train(1)
        assert not torch.equal(agent.actor_flat, actor) and not torch.equal(agent.critic_target_flat, target)


@pytest.mark.parametrize("cls, config", AGENTS)
def test_gradient_steps_minus_one_takes_one_update_per_collected_env_step(cls: type, config: Any) -> None:
    # 2 envs, train_freq 3: each training phase follows 6 new env steps and so runs 6 updates.
    config = type(config)(**{**SMALL, "n_envs": 2, "train_freq": 3, "gradient_steps": -1})
    with cls("Pendulum-v1", config, seed=0) as agent:
        agent.learn(100 + 5 * 6)  # learning_starts 100, then five phases
        assert agent.num_steps == 130
        assert agent.n_updates == 5 * 6  # phases after vectorised steps 51, 54, 57, 60 and 63


def test_callback_can_stop_training_early() -> None:
    with SAC("Pendulum-v1", SACConfig(**SMALL, n_envs=2), seed=0) as agent:

        def stop_after_two(state: TrainState) -> None:
            if state.iteration == 2:
                state.request_stop()

        state = agent.learn(50_000, stop_after_two)
        assert state.iteration == 2 and state.step == 2000 and state.sps > 0
        assert set(state.losses) == set(SAC.loss_keys)


def test_async_vectorization_gives_the_same_curve_as_sync() -> None:
    base = dict(**SMALL, n_envs=2)
    with (
        TD3("Pendulum-v1", TD3Config(**base), seed=5) as sync_agent,
        TD3("Pendulum-v1", TD3Config(**base, vectorization="async"), seed=5) as async_agent,
    ):
        assert record_curve(sync_agent, 600) == record_curve(async_agent, 600)


@pytest.mark.parametrize("cls", [SAC, TD3])
def test_discrete_actions_are_rejected_naming_the_space_and_the_alternatives(cls: type) -> None:
    config = SACConfig() if cls is SAC else TD3Config()
    name = cls.__name__
    with pytest.raises(
        UnsupportedSpaceError, match=rf"{name} supports Box action spaces only.*Discrete.*ppo"
    ):
        cls("CartPole-v1", config, seed=0)


@pytest.mark.parametrize(("cls", "config"), AGENTS)
def test_non_finite_loss_raises_the_dedicated_error(cls: type, config: Any) -> None:
    register_toy_envs()
    with cls("rltune_test/NaNRewardBox-v0", config, seed=0) as agent:
        with pytest.raises(NonFiniteLossError, match="non-finite critic_loss") as info:
            agent.learn(500)
        assert info.value.step == 100  # the first update, right at learning_starts


# --- learning smoke runs: short, but they must clearly beat a random policy (≈ −1200 on Pendulum) -----
def test_sac_learns_pendulum() -> None:
    config = SACConfig(learning_rate=1e-3, net_arch=(64, 64), batch_size=128)
    score = score_after_learning(SAC, "Pendulum-v1", config, 5000)
    assert score > -600, f"eval {score:.1f} vs random ≈ −1200"


def test_td3_learns_pendulum() -> None:
    config = TD3Config(learning_rate=1e-3, net_arch=(64, 64), batch_size=128)
    score = score_after_learning(TD3, "Pendulum-v1", config, 6000)
    assert score > -600, f"eval {score:.1f} vs random ≈ −1200"


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_twin_min_q_gives_autograds_input_gradient_through_the_smaller_critic(activation: str) -> None:
    torch.manual_seed(0)
    critic = StackedMLP(2, 5, (16, 8), (1, 1), activation, False, (1.0, 1.0), narrow_head=True)
    x = torch.randn(64, 5, requires_grad=True)
    weights = torch.randn(64)
    # A plain backward: the ReLU path computes no weight gradients at all; others are asked not to.
    (weights * twin_min_q(critic, x)).sum().backward(inputs=None if activation == "relu" else [x])
    expected_x = x.detach().clone().requires_grad_(True)
    reference = critic(expected_x).amin(0)[:, 0]
    (weights * reference).sum().backward(inputs=[expected_x])
    torch.testing.assert_close(twin_min_q(critic, x.detach()), reference.detach())
    torch.testing.assert_close(x.grad, expected_x.grad)
    assert all(p.grad is None for p in critic.parameters())


@pytest.mark.parametrize("learned", [True, False])
def test_sac_moves_log_alpha_towards_the_target_entropy_and_leaves_a_fixed_alpha_alone(learned: bool) -> None:
    """Adam's first step on log α is ±lr: up when the policy's entropy (−E log π, the logged
    ``losses/entropy``) is below the target −dim(A), down when above."""
    config = SACConfig(**SMALL, learning_rate=1e-3, ent_coef="auto" if learned else 0.2)
    with SAC("Pendulum-v1", config, seed=0) as agent:
        agent.learn(99)  # fills the buffer, no update yet
        assert agent.n_updates == 0
        before = agent.temperature.log_alpha.item()
        agent._train(1)
        entropy = agent._pop_losses()["entropy"]
        moved = agent.temperature.log_alpha.item() - before
    if not learned:
        assert moved == 0.0 and before == pytest.approx(math.log(0.2))
        return
    below_target = entropy < agent.temperature.target_entropy
    assert moved == pytest.approx(1e-3 if below_target else -1e-3, rel=1e-4)


def test_td3_smooths_the_target_policy_with_noise_clipped_to_target_noise_clip() -> None:
    """With the noise clipped to 0 the target is the unsmoothed one (the same update as no noise at all);
    with a clip above 0 the noise changes the critic's target, and so its update."""

    def critic_after_one_update(noise: float, clip: float) -> torch.Tensor:
        config = TD3Config(**SMALL, target_policy_noise=noise, target_noise_clip=clip)
        with TD3("Pendulum-v1", config, seed=0) as agent:
            agent.learn(99)  # fills the buffer, no update yet
            agent._train(1)
            return agent.critic_flat.clone()

    unsmoothed = critic_after_one_update(0.0, 0.5)
    assert torch.equal(critic_after_one_update(0.5, 0.0), unsmoothed)  # every draw clipped to 0
    assert not torch.equal(critic_after_one_update(0.5, 0.5), unsmoothed)
