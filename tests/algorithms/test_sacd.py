"""SAC-Discrete: the expected soft value, the temperature, its public surface and that it learns."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from algorithms import ALGORITHMS, SACD, ConfigError, SACDConfig, UnsupportedSpaceError, build_config
from algorithms.sacd import soft_state_value
from tests.helpers import record_curve, saved_and_loaded, score_after_learning

SMALL = dict(net_arch=(32, 32), batch_size=64, learning_starts=100)
CARTPOLE_RANDOM = 22.0  # mean return of uniformly random actions (conf/env/cartpole.yaml random_score)


def test_the_soft_value_is_the_policy_expectation_of_the_smaller_q_minus_alpha_log_pi() -> None:
    """Two states, two actions, by hand: V(s) = Σ_a π(a|s) (min(Q₁, Q₂)(s, a) − α log π(a|s))."""
    probs = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    log_probs = torch.log(probs.clamp_min(1e-30))
    twin_q = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 1.0], [4.0, -1.0]]])  # (Q₁, Q₂) × state × action
    alpha = torch.tensor(0.5)
    # State 0: min Q = (1, 1); 0.25 (1 − 0.5 ln 0.25) + 0.75 (1 − 0.5 ln 0.75).
    first = 0.25 * (1 - 0.5 * math.log(0.25)) + 0.75 * (1 - 0.5 * math.log(0.75))
    # State 1: a deterministic policy on action 0 (min Q = 2): the value is that Q, with no entropy bonus.
    torch.testing.assert_close(soft_state_value(probs, log_probs, twin_q, alpha), torch.tensor([first, 2.0]))


@pytest.mark.parametrize("learned", [True, False])
def test_the_temperature_step_moves_alpha_towards_the_target_entropy(learned: bool) -> None:
    """Adam's first step on log α is ±lr: up when the policy's entropy (the logged ``losses/entropy``)
    is below the target, scale · log |A|, down when above; a fixed α stays where it is."""
    config = SACDConfig(**SMALL, learning_rate=1e-3, ent_coef="auto" if learned else 0.2)
    for scale in (0.1, 0.98):  # a target below, then above, the entropy of a fresh, near-uniform policy
        with SACD(
            "CartPole-v1", SACDConfig(**{**config.__dict__, "target_entropy_scale": scale}), seed=0
        ) as agent:
            agent.learn(99)  # fills the buffer, no update yet
            before = agent.temperature.log_alpha.item()
            agent._train(1)
            entropy = agent._pop_losses()["entropy"]
            moved = agent.temperature.log_alpha.item() - before
            target = agent.temperature.target_entropy
        assert target == pytest.approx(scale * math.log(2))
        if not learned:
            assert moved == 0.0 and before == pytest.approx(math.log(0.2))
            continue
        assert (entropy < target) == (scale == 0.98)
        assert moved == pytest.approx(1e-3 if entropy < target else -1e-3, rel=1e-4)


def test_sacd_learns_cartpole_well_above_a_random_policy() -> None:
    config = SACDConfig(net_arch=(64, 64), batch_size=64, learning_starts=500, learning_rate=1e-3, gamma=0.98)
    score = score_after_learning(SACD, "CartPole-v1", config, 10_000)
    assert score > 5 * CARTPOLE_RANDOM, f"eval return {score:.1f} after 10k steps"


def test_the_same_seed_gives_a_bit_identical_curve_and_another_seed_another() -> None:
    config = SACDConfig(**SMALL)
    with SACD("CartPole-v1", config, seed=4) as a, SACD("CartPole-v1", config, seed=4) as b:
        curve = record_curve(a, 1500)
        assert curve == record_curve(b, 1500)
        assert any(losses for _, _, losses in curve)  # updates ran
    with SACD("CartPole-v1", config, seed=5) as c:
        assert record_curve(c, 1500) != curve


def test_save_load_gives_identical_actions_and_state(tmp_path: Path) -> None:
    with SACD("CartPole-v1", SACDConfig(**SMALL), seed=3) as agent:
        agent.learn(400)
        obs = np.random.default_rng(0).uniform(-1, 1, size=(16, 4)).astype(np.float32)
        with saved_and_loaded(agent, tmp_path / "model.pt", obs, episodes=2, seed=9) as loaded:
            assert loaded.config == agent.config and loaded.num_steps == agent.num_steps == 400
            assert torch.equal(loaded.critic_target_flat, agent.critic_target_flat)
            assert torch.equal(loaded.temperature.log_alpha, agent.temperature.log_alpha)
            assert loaded.temperature.log_alpha.item() != 0.0  # α has been learned
            assert loaded.actor_optimizer.step_count == agent.actor_optimizer.step_count > 0


def test_stochastic_actions_follow_the_policy_probabilities() -> None:
    """``predict(deterministic=False)`` samples π: over many draws each action's share is its probability."""
    with SACD("CartPole-v1", SACDConfig(**SMALL), seed=0) as agent:
        obs = np.tile(np.array([[0.1, -0.2, 0.05, 0.3]], dtype=np.float32), (20_000, 1))
        probs, _ = agent.actor(torch.from_numpy(obs[:1]))
        share = agent.predict(obs, deterministic=False).mean()
        assert share == pytest.approx(probs[0, 1].item(), abs=0.015)
        assert set(agent.predict(obs[:5]).tolist()) == {int(probs[0].argmax())}


def test_continuous_actions_are_refused_with_a_pointer_to_sac() -> None:
    with pytest.raises(UnsupportedSpaceError, match=r"SACD supports Discrete action spaces only.*use .*sac"):
        SACD("Pendulum-v1", SACDConfig(**SMALL))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"target_entropy_scale": 1.5}, "target_entropy_scale"),
        ({"target_entropy_scale": 0.0}, "target_entropy_scale"),
        ({"ent_coef": "often"}, "ent_coef must be 'auto'"),
        ({"target_update_interval": 0}, "target_update_interval"),
    ],
)
def test_bad_values_are_named(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config("sacd", values)


def test_sacd_is_registered() -> None:
    assert ALGORITHMS["sacd"].agent_cls is SACD and ALGORITHMS["sacd"].config_cls is SACDConfig
