"""Population PPO: each member is the single-agent PPO it stands for, and members never interact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from algorithms import PPO, ConfigError, PPOConfig, ppo_population
from algorithms.common.optim import FlatAdam, MemberAdam, flatten_by_member, flatten_parameters
from algorithms.ppo_population import PopulationPPO, member_configs

CARTPOLE = PPOConfig(n_envs=4, n_steps=64, batch_size=64, n_epochs=4, ent_coef=0.01)
PENDULUM = PPOConfig(
    n_envs=2,
    n_steps=128,
    batch_size=64,
    n_epochs=4,
    clip_range_vf=0.5,
    target_kl=0.02,
    normalize_obs=True,
    normalize_reward=True,
    anneal_lr=True,
)
BUDGET = 4096


@pytest.fixture(params=[False, True], ids=["accumulated-grads", "written-grads"])
def write_grads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run the test with autograd accumulating the gradients, then with the network writing them in
    place (what populations of large networks get, see WRITE_GRADS_MIN_WEIGHTS)."""
    monkeypatch.setattr(ppo_population, "WRITE_GRADS_MIN_WEIGHTS", 0 if request.param else 1 << 62)
    return request.param


def single_curve(env_id: str, config: PPOConfig, seed: int, steps: int = BUDGET) -> tuple[list, torch.Tensor]:
    """(step, policy loss, episode returns) per iteration of a single-agent PPO, and its final weights."""
    curve: list = []
    with PPO(env_id, config, seed=seed) as agent:
        agent.learn(steps, lambda s: curve.append((s.step, s.losses["policy_loss"], s.episode_returns)))
        weights = torch.cat([p.detach().reshape(-1) for p in agent.policy.parameters()]).clone()
    return curve, weights


def member_weights(population: PopulationPPO, slot: int) -> torch.Tensor:
    agent = population.member_agent(slot)
    try:
        return torch.cat([p.detach().reshape(-1) for p in agent.policy.parameters()]).clone()
    finally:
        agent.close()


def assert_same_curve(a: list, b: list, returns_rtol: float, loss_iterations: int | None = None) -> None:
    """Same steps, the same episode returns (to ``returns_rtol``) and the same policy losses.

    Rounding differs between the batched and the single computation (Adam, norms, matmul paths) in the
    last bits. On a continuous-action env those differences grow with every update; ``loss_iterations``
    limits the loss comparison (an ill-conditioned number: a mean of near-cancelling terms) to the first
    iterations, while the returns are compared all along.
    """
    assert [step for step, _, _ in a] == [step for step, _, _ in b]
    n = loss_iterations or len(a)
    np.testing.assert_allclose([x for _, x, _ in a[:n]], [x for _, x, _ in b[:n]], rtol=1e-3, atol=1e-6)
    for (_, _, ra), (_, _, rb) in zip(a, b, strict=True):
        np.testing.assert_allclose(ra, rb, rtol=returns_rtol)


@pytest.mark.parametrize(
    ("env_id", "config", "returns_rtol", "loss_iterations", "weights_atol"),
    [("CartPole-v1", CARTPOLE, 0.0, None, 1e-5), ("Pendulum-v1", PENDULUM, 5e-3, 6, 1e-3)],
    ids=["cartpole", "pendulum-normalised-target-kl"],
)
def test_population_of_one_reproduces_single_ppo(
    env_id: str,
    config: PPOConfig,
    returns_rtol: float,
    loss_iterations: int | None,
    weights_atol: float,
    write_grads: bool,
) -> None:
    expected, expected_weights = single_curve(env_id, config, seed=3)
    curve = []
    with PopulationPPO(env_id, config, n_members=1) as population:
        assert population.net.write_grads is write_grads
        population.start_member(0, config, seed=3, total_steps=BUDGET)
        while population.active_slots:
            state = population.learn_iteration().states[0]
            curve.append((state.step, state.losses["policy_loss"], state.episode_returns))
        weights = member_weights(population, 0)
    assert len(curve) == len(expected) == BUDGET // (config.n_envs * config.n_steps)
    assert_same_curve(curve, expected, returns_rtol, loss_iterations)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=weights_atol)


def test_members_do_not_interact() -> None:
    """A member's learning curve is the same whatever its neighbours' hyperparameters and seeds are, and
    it is the single-agent run of its config and seed (compared over the first iterations: differences
    in the last bits of the batched arithmetic eventually flip a sampled action)."""
    middle = {"learning_rate": 1e-3, "gamma": 0.95}
    neighbours = (
        [{"learning_rate": 1e-4, "gamma": 0.9}, {"clip_range": 0.1, "ent_coef": 0.0}],
        [{"learning_rate": 2e-3, "gae_lambda": 0.8}, {"vf_coef": 0.2, "max_grad_norm": 5.0}],
    )
    curves = []
    for (left, right), seeds in zip(neighbours, ((1, 3), (4, 6)), strict=True):
        configs = member_configs(CARTPOLE, [left, middle, right])
        curve = []
        with PopulationPPO("CartPole-v1", CARTPOLE, n_members=3) as population:
            population.start_member(0, configs[0], seed=seeds[0], total_steps=BUDGET)
            population.start_member(1, configs[1], seed=2, total_steps=BUDGET)
            population.start_member(2, configs[2], seed=seeds[1], total_steps=BUDGET)
            while population.active_slots:
                state = population.learn_iteration().states[1]
                curve.append((state.step, state.losses["policy_loss"], state.episode_returns))
        curves.append(curve)
    assert curves[0] == curves[1]  # bit for bit
    expected, _ = single_curve("CartPole-v1", member_configs(CARTPOLE, [middle])[0], seed=2, steps=1024)
    assert_same_curve(curves[0][:4], expected, returns_rtol=0.0)


def test_member_hyperparameters_take_effect() -> None:
    """A member with a vanishing learning rate keeps its initial weights while the others move."""
    configs = member_configs(
        CARTPOLE, [{"learning_rate": 1e-12}, {"learning_rate": 3e-4}, {"learning_rate": 3e-3}]
    )
    with PopulationPPO("CartPole-v1", CARTPOLE, n_members=3) as population:
        for slot, config in enumerate(configs):
            population.start_member(slot, config, seed=5, total_steps=1024)
        initial = [member_weights(population, slot) for slot in range(3)]
        while population.active_slots:
            population.learn_iteration()
        moved = [float((member_weights(population, slot) - initial[slot]).abs().max()) for slot in range(3)]
    assert moved[0] < 1e-8
    assert moved[1] > 1e-3
    assert moved[2] > moved[1]  # same seed and data order: a 10x larger step moves further


def test_restarting_a_slot_resets_exactly_that_member(write_grads: bool) -> None:
    seeds = (7, 8)
    with PopulationPPO("CartPole-v1", CARTPOLE, n_members=2) as population:
        assert population.net.write_grads is write_grads
        for slot, seed in enumerate(seeds):
            population.start_member(slot, CARTPOLE, seed=seed, total_steps=BUDGET)
        for _ in range(2):
            population.learn_iteration()
        other_before = member_weights(population, 1)
        other_moments = population.optimizer.exp_avg[1].clone()
        other_steps = float(population.optimizer.steps[1])

        population.start_member(0, CARTPOLE, seed=42, total_steps=BUDGET)

        with PPO("CartPole-v1", CARTPOLE, seed=42) as fresh:
            fresh_weights = torch.cat([p.detach().reshape(-1) for p in fresh.policy.parameters()])
        torch.testing.assert_close(member_weights(population, 0), fresh_weights, rtol=0, atol=0)
        assert float(population.optimizer.exp_avg[0].abs().max()) == 0.0
        assert float(population.optimizer.steps[0]) == 0.0
        assert population.members[0] is not None and population.members[0].num_steps == 0
        torch.testing.assert_close(member_weights(population, 1), other_before, rtol=0, atol=0)
        torch.testing.assert_close(population.optimizer.exp_avg[1], other_moments, rtol=0, atol=0)
        assert float(population.optimizer.steps[1]) == other_steps

        # From here on, the restarted member learns exactly as a new single agent with seed 42.
        curve = []
        while population.active_slots:
            states = population.learn_iteration().states
            if 0 in states:
                curve.append((states[0].step, states[0].losses["policy_loss"], states[0].episode_returns))
    expected, _ = single_curve("CartPole-v1", CARTPOLE, seed=42)
    assert_same_curve(curve, expected, returns_rtol=0.0)


def test_batched_evaluation_matches_single_agent_evaluation() -> None:
    with PopulationPPO("CartPole-v1", CARTPOLE, n_members=2) as population:
        for slot in (0, 1):
            population.start_member(slot, CARTPOLE, seed=slot, total_steps=512)
        while population.active_slots:
            population.learn_iteration()
        results = population.evaluate({0: 100, 1: 200}, n_episodes=5)
        for slot, seed in ((0, 100), (1, 200)):
            agent = population.member_agent(slot)
            try:
                np.testing.assert_array_equal(results[slot].returns, agent.evaluate(5, seed).returns)
            finally:
                agent.close()


def test_structural_settings_must_match_the_population() -> None:
    with PopulationPPO("CartPole-v1", CARTPOLE, n_members=2) as population:
        other = dataclasses.replace(CARTPOLE, n_steps=32, net_arch=(32,))
        with pytest.raises(ConfigError, match=r"n_steps=32 \(population: 64\).*net_arch"):
            population.start_member(0, other, seed=0, total_steps=512)
        with pytest.raises(ConfigError, match="slot must be in 0 … 1"):
            population.start_member(2, CARTPOLE, seed=0, total_steps=512)
    with pytest.raises(ConfigError, match="cannot differ between members"):
        member_configs(CARTPOLE, [{"n_epochs": 3}])


def _stacked(n_members: int) -> tuple[list[nn.Parameter], nn.Parameter]:
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(2 * n_members, 3, 4))
    scale = nn.Parameter(torch.randn(n_members, 2))
    return [weight, scale], flatten_by_member([weight, scale], n_members)


def test_member_adam_steps_each_member_as_its_own_adam() -> None:
    """Per-member lr and clip, masked members untouched (even with NaN gradients)."""
    params, flat = _stacked(3)
    weight, scale = params
    optimizer = MemberAdam(flat, 3)
    optimizer.lr[:, 0] = torch.tensor([1e-2, 1e-3, 5e-2])
    optimizer.max_grad_norm[:, 0] = torch.tensor([0.5, 100.0, 0.1])
    references = []
    for k in range(3):  # member k alone: its two weight rows and its scale row, with FlatAdam
        w = nn.Parameter(weight.detach()[2 * k : 2 * k + 2].clone())
        s = nn.Parameter(scale.detach()[k].clone())
        ref_flat = flatten_parameters([w, s])
        lr, clip = float(optimizer.lr[k]), float(optimizer.max_grad_norm[k])
        references.append((w, s, FlatAdam(ref_flat, lr=lr, max_grad_norm=clip)))

    active = torch.tensor([True, True, False])
    frozen = (weight.detach()[4:6].clone(), scale.detach()[2].clone())
    for step in range(3):
        ((weight**2).sum() * (step + 1) + (scale**3).sum()).backward()
        weight.grad[4:6] = float("nan")  # a diverged member's gradient must not leak anywhere
        optimizer.step(active)
        for k in (0, 1):
            w, s, ref = references[k]
            ((w**2).sum() * (step + 1) + (s**3).sum()).backward()
            ref.step()
    for k in (0, 1):
        w, s, _ = references[k]
        torch.testing.assert_close(weight.detach()[2 * k : 2 * k + 2], w.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scale.detach()[k], s.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.detach()[4:6], frozen[0], rtol=0, atol=0)
    torch.testing.assert_close(scale.detach()[2], frozen[1], rtol=0, atol=0)
    assert float(optimizer.steps[2]) == 0.0
    assert float(flat.grad.abs().max()) == 0.0


def test_a_diverging_member_stops_alone(write_grads: bool) -> None:
    """A member whose loss turns NaN is reported and emptied; its neighbour learns as if nothing happened."""
    config = PPOConfig(n_envs=2, n_steps=64, batch_size=64, n_epochs=2)
    curves = []
    for first_lr in (1e4, 3e-4):  # 1e4 blows the first member's weights up within a few updates
        curve, diverged = [], {}
        with PopulationPPO("Pendulum-v1", config, n_members=2) as population:
            assert population.net.write_grads is write_grads
            configs = member_configs(config, [{"learning_rate": first_lr}, {}])
            for slot, member_config in enumerate(configs):
                population.start_member(slot, member_config, seed=slot, total_steps=2048)
            with np.errstate(over="ignore", invalid="ignore"):
                while population.active_slots:
                    result = population.learn_iteration()
                    diverged.update(result.diverged)
                    state = result.states[1]
                    curve.append((state.step, state.losses["policy_loss"], state.episode_returns))
            assert population.members[0] is None or first_lr < 1
        curves.append(curve)
        if first_lr > 1:
            assert list(diverged) == [0] and "non-finite" in str(diverged[0])
    assert curves[0] == curves[1]
