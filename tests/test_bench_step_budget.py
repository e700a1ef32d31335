"""bench/step_budget.py: the iteration split, the step budget, and the written-out backward."""

from __future__ import annotations

import pytest
import torch

from algorithms import PPO, PPOConfig
from bench.step_budget import (
    allowed_step_seconds,
    gradient_steps,
    network_step,
    network_step_without_autograd,
    split_iteration,
)


def test_split_iteration_solves_rest_and_step_from_two_step_counts() -> None:
    # rest 10 ms, 1 ms a step: 20 steps → 30 ms, 1 step → 11 ms
    split = split_iteration(0.030, 0.011, steps=20, steps_one_epoch=1)
    assert split.step_s == pytest.approx(0.001)
    assert split.rest_s == pytest.approx(0.010)


def test_allowed_step_is_what_the_target_leaves_after_the_rest() -> None:
    # SB3 90 ms; 3× → 30 ms an iteration; 10 ms of rest leaves 20 ms for 20 steps
    assert allowed_step_seconds(0.090, 3.0, rest_s=0.010, steps=20) == pytest.approx(0.001)
    assert allowed_step_seconds(0.090, 3.0, rest_s=0.040, steps=20) < 0


def test_gradient_steps_count_every_minibatch_of_every_epoch() -> None:
    assert gradient_steps(PPOConfig(n_envs=8, n_steps=32, batch_size=256, n_epochs=20)) == 20
    assert gradient_steps(PPOConfig(n_envs=8, n_steps=32, batch_size=64, n_epochs=3)) == 12
    assert gradient_steps(PPOConfig(n_envs=1, n_steps=100, batch_size=64, n_epochs=2)) == 4  # 64 + 36


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_written_out_backward_takes_the_step_autograd_takes(activation: str) -> None:
    config = PPOConfig(n_envs=2, n_steps=16, batch_size=32, net_arch=(16, 16), activation=activation)
    obs = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    with (
        PPO("CartPole-v1", config, seed=3) as autograd_agent,
        PPO("CartPole-v1", config, seed=3) as bare_agent,
    ):
        before = autograd_agent.optimizer.param.detach().clone()
        network_step(autograd_agent, obs)()
        network_step_without_autograd(bare_agent, obs)()
        after_autograd = autograd_agent.optimizer.param.detach()
        after_bare = bare_agent.optimizer.param.detach()
        assert not torch.equal(after_autograd, before)  # the step moved the weights
        torch.testing.assert_close(after_bare, after_autograd, rtol=1e-5, atol=1e-6)
