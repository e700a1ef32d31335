"""PPO's piecewise-constant schedules, and a population's exploit and explore (population-based training)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from algorithms import PPO, ConfigError, PPOConfig, ppo, ppo_population
from algorithms.common.optim import MemberAdam
from algorithms.ppo_population import PopulationPPO, member_configs

SMALL = PPOConfig(n_envs=4, n_steps=64, batch_size=64, n_epochs=2)  # 256 env steps an iteration
PENDULUM = PPOConfig(
    n_envs=2, n_steps=64, batch_size=64, n_epochs=2, normalize_obs=True, normalize_reward=True, anneal_lr=True
)


# --- schedules --------------------------------------------------------------------------------------
def test_at_step_takes_the_last_pair_that_has_started() -> None:
    config = PPOConfig.from_dict({"learning_rate": [[0, 1e-3], [500, 5e-4], [1000, 1e-4]], "gamma": 0.9})
    assert config.learning_rate == ((0, 1e-3), (500, 5e-4), (1000, 1e-4))  # hashable, frozen
    assert [config.at_step(t).learning_rate for t in (0, 499, 500, 999, 1000, 10**9)] == [
        1e-3, 1e-3, 5e-4, 5e-4, 1e-4, 1e-4,
    ]  # fmt: skip
    assert config.at_step(700).gamma == 0.9
    assert SMALL.at_step(123) is SMALL and not SMALL.has_schedules


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rate": [[100, 1e-3]]}, "learning_rate must be a number or a list of [from_step, value] "
         "pairs starting at step 0 with increasing integer steps, got ((100, 0.001),)"),
        ({"clip_range": [[0, 0.2], [0, 0.1]]}, "clip_range must be a number or a list of [from_step, value] "
         "pairs starting at step 0 with increasing integer steps, got ((0, 0.2), (0, 0.1))"),
        ({"gamma": [[0, 0.99], [256, 1.5]]}, "gamma (from step 256) must be in [0.0, 1.0], got 1.5"),
        ({"ent_coef": [[0, -0.1]]}, "ent_coef (from step 0) must be >= 0, got -0.1"),
        ({"vf_coef": [[0, 0.5, 1]]}, "vf_coef must be a number or a list of [from_step, value] pairs, "
         "got [[0, 0.5, 1]]"),
    ],
)  # fmt: skip
def test_a_bad_schedule_is_one_clear_error(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PPOConfig.from_dict(values)
    assert str(caught.value) == message


def learning_curve(config: PPOConfig, steps: int = 1024) -> list[tuple[int, float, float]]:
    """(step, learning rate, policy loss) per iteration of a CartPole run, seed 0."""
    curve: list[tuple[int, float, float]] = []
    with PPO("CartPole-v1", config, seed=0) as agent:
        agent.learn(
            steps, lambda s: curve.append((s.step, s.losses["learning_rate"], s.losses["policy_loss"]))
        )
    return curve


def test_a_schedule_changes_the_values_an_iteration_trains_with(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each iteration starting at env step t trains with the values the schedule holds at t: the learning
    rate the update used (logged), and the discount and λ that GAE was given."""
    seen: list[tuple[float, float]] = []
    real_gae = ppo.compute_gae

    def spy(*args: Any) -> Any:
        seen.append((float(args[4]), float(args[5])))
        return real_gae(*args)

    monkeypatch.setattr(ppo, "compute_gae", spy)
    config = dataclasses.replace(
        SMALL, learning_rate=((0, 1e-3), (512, 1e-4)), gamma=((0, 0.99), (768, 0.9)), gae_lambda=0.9
    )
    curve = learning_curve(config)
    assert [(step, lr) for step, lr, _ in curve] == [(256, 1e-3), (512, 1e-3), (768, 1e-4), (1024, 1e-4)]
    assert seen == [(0.99, 0.9), (0.99, 0.9), (0.99, 0.9), (0.9, 0.9)]


def test_a_one_value_schedule_trains_as_the_constant() -> None:
    assert learning_curve(dataclasses.replace(SMALL, learning_rate=((0, 3e-4),))) == learning_curve(SMALL)


def test_a_population_member_follows_its_schedule_as_a_single_ppo_does() -> None:
    config = dataclasses.replace(
        SMALL, learning_rate=((0, 1e-3), (512, 2e-4)), clip_range=((0, 0.3), (768, 0.1)), ent_coef=0.01
    )
    expected = learning_curve(config)
    curve = []
    with PopulationPPO("CartPole-v1", SMALL, n_members=2) as population:
        population.start_member(0, SMALL, seed=5, total_steps=1024)  # a neighbour on constants
        population.start_member(1, config, seed=0, total_steps=1024)
        while population.active_slots:
            state = population.learn_iteration().states[1]
            curve.append((state.step, state.losses["learning_rate"], state.losses["policy_loss"]))
    assert [c[0] for c in curve] == [c[0] for c in expected]
    np.testing.assert_allclose([c[1] for c in curve], [c[1] for c in expected], rtol=1e-6)  # float32 rows
    np.testing.assert_allclose([c[2] for c in curve], [c[2] for c in expected], rtol=1e-3, atol=1e-6)


def test_a_saved_agent_keeps_its_schedule(tmp_path: Path) -> None:
    config = dataclasses.replace(SMALL, learning_rate=((0, 1e-3), (512, 2e-4)))
    with PPO("CartPole-v1", config, seed=0) as agent:
        agent.learn(256)
        agent.save(tmp_path / "agent.pt")
    with PPO.load(tmp_path / "agent.pt") as loaded:
        assert loaded.config == config


# --- exploit and explore ----------------------------------------------------------------------------
def member_state(population: PopulationPPO, slot: int) -> dict[str, Any]:
    """Everything exploit copies of a member, as plain copies."""
    member = population.members[slot]
    assert member is not None and member.obs_normalizer is not None and member.reward_normalizer is not None
    adam = population.optimizer
    return {
        "weights": adam.rows[slot].clone(),
        "log_std": population.log_std[slot].detach().clone(),
        "exp_avg": adam.exp_avg[slot].clone(),
        "exp_avg_sq": adam.exp_avg_sq[slot].clone(),
        "adam_steps": float(adam.steps[slot]),
        "obs_rms": member.obs_normalizer.rms.state(),
        "reward_rms": member.reward_normalizer.rms.state(),
        "num_steps": member.num_steps,
        "iteration": member.iteration,
        "config": member.config,  # with num_steps: the schedules' and the annealing's position
    }


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        elif isinstance(a[key], dict):
            for name in a[key]:
                np.testing.assert_array_equal(a[key][name], b[key][name])
        else:
            assert a[key] == b[key], key


def test_exploit_copies_the_source_s_learning_state_and_leaves_the_source_alone() -> None:
    """Weights (actor, critic, log-std), Adam moments and step count, normaliser statistics, steps
    done (the annealing's position) and hyperparameters; the target keeps its envs and generator."""
    configs = member_configs(
        PENDULUM, [{"learning_rate": 1e-4}, {"learning_rate": 3e-4}, {"learning_rate": 1e-3}]
    )
    with PopulationPPO("Pendulum-v1", PENDULUM, n_members=3) as population:
        for slot, config in enumerate(configs):
            population.start_member(slot, config, seed=slot, total_steps=2048)
        for _ in range(3):
            population.learn_iteration()
        population.members[2].num_steps += 128  # not in lockstep: the target must take the source's count
        source_before = member_state(population, 2)
        target = population.members[0]
        assert target is not None
        rng_before, returns_before = target.rng.bit_generator.state, target.reward_normalizer.returns.copy()
        assert float((source_before["weights"] - population.optimizer.rows[0]).abs().max()) > 1e-3

        population.exploit(0, 2)

        assert_same_state(member_state(population, 0), source_before)
        assert_same_state(member_state(population, 2), source_before)
        assert target.rng.bit_generator.state == rng_before  # its own generator, untouched
        np.testing.assert_array_equal(target.reward_normalizer.returns, returns_before)  # its own episodes
        assert target.env_block == slice(0, 2) and target.seed == 0
        # Acting through the numpy views sees the copied weights: same actions for the same observations.
        obs = np.random.default_rng(0).normal(size=(3, 2, 3)).astype(np.float32)
        obs[0] = obs[2]
        heads, values = population._act_numpy(obs)
        np.testing.assert_array_equal(heads[0], heads[2])
        np.testing.assert_array_equal(values[0], values[2])


EXPLORED = {
    "learning_rate": 7e-4,
    "clip_range": 0.15,
    "gae_lambda": 0.85,
    "gamma": 0.93,
    "ent_coef": 0.02,
    "vf_coef": 0.3,
    "max_grad_norm": 0.7,
}


def test_explored_values_are_what_the_batched_update_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """After explore, the rows the update reads hold the new values: GAE's γ and λ, the loss's clip
    range and coefficients at each minibatch step, and the learning rate and gradient clip at each Adam
    step; the iteration logs the same learning rate and clip range."""
    seen: dict[str, list[float]] = {name: [] for name in EXPLORED}
    real_gae, real_losses = ppo_population.compute_gae, PopulationPPO._surrogate_step
    real_step, real_minibatch = MemberAdam.step, PopulationPPO._minibatch_step

    def gae(rewards: Any, values: Any, dones: Any, last: Any, gamma: Any, lam: Any) -> Any:
        seen["gamma"].append(float(gamma[1, 0]))
        seen["gae_lambda"].append(float(lam[1, 0]))
        return real_gae(rewards, values, dones, last, gamma, lam)

    def losses(self: PopulationPPO, minibatch: Any, clip: torch.Tensor) -> Any:
        seen["clip_range"].append(float(clip[1, 0]))
        return real_losses(self, minibatch, clip)

    def adam_step(self: MemberAdam, active: torch.Tensor) -> None:
        seen["learning_rate"].append(float(self.lr[1, 0]))
        seen["max_grad_norm"].append(float(self.max_grad_norm[1, 0]))
        real_step(self, active)

    def minibatch(self: PopulationPPO, *args: Any) -> Any:
        seen["vf_coef"].append(float(self._vf_coef[1]))
        seen["ent_coef"].append(float(self._ent_coef[1]))
        return real_minibatch(self, *args)

    with PopulationPPO("CartPole-v1", SMALL, n_members=2) as population:
        population.start_member(0, SMALL, seed=0, total_steps=1024)
        population.start_member(1, SMALL, seed=1, total_steps=1024)
        population.learn_iteration()
        population.set_hyperparameters(1, EXPLORED)
        monkeypatch.setattr(ppo_population, "compute_gae", gae)
        monkeypatch.setattr(PopulationPPO, "_surrogate_step", losses)
        monkeypatch.setattr(MemberAdam, "step", adam_step)
        monkeypatch.setattr(PopulationPPO, "_minibatch_step", minibatch)
        state = population.learn_iteration().states[1]
        member = population.members[1]
        assert member is not None
    for name, values in seen.items():
        assert values, name
        np.testing.assert_allclose(values, EXPLORED[name], rtol=1e-6, err_msg=name)
    assert state.losses["learning_rate"] == pytest.approx(EXPLORED["learning_rate"])
    assert state.losses["clip_range"] == pytest.approx(EXPLORED["clip_range"])
    assert {name: getattr(member.config, name) for name in EXPLORED} == EXPLORED


def test_explore_takes_only_member_hyperparameters() -> None:
    with PopulationPPO("CartPole-v1", SMALL, n_members=1) as population:
        population.start_member(0, SMALL, seed=0, total_steps=256)
        with pytest.raises(ConfigError, match="n_epochs cannot differ between members"):
            population.set_hyperparameters(0, {"n_epochs": 3})
        with pytest.raises(ConfigError, match=r"gamma must be in \[0.0, 1.0\], got 1.2"):
            population.set_hyperparameters(0, {"gamma": 1.2})
