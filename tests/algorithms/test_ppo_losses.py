"""PPO's update maths against hand-computed values: the clipped surrogate and its gradient, value
clipping, advantage standardisation, the target-KL early stop, and learning-rate / clip annealing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from algorithms import PPO, PPOConfig, TrainState
from algorithms.ppo import surrogate_terms

# Five samples: the ratio leaves [0.8, 1.2] in four of them, on both sides, with both signs of advantage.
RATIOS = [1.5, 1.5, 0.5, 0.5, 1.1]
ADVANTAGES = [1.0, -1.0, 1.0, -1.0, 1.0]


def _losses(newlogprob: torch.Tensor, clip_vf: float | None = None, normalize: bool = False):
    zeros = torch.zeros(5)
    return surrogate_terms(
        newlogprob, zeros, torch.tensor(ADVANTAGES), torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0]),
        torch.ones(5), torch.full((5,), 3.0), torch.full((5,), 0.7), 0.2, clip_vf, normalize,
    ).losses  # fmt: skip


def test_the_surrogate_is_the_pessimistic_bound_and_clipped_samples_give_no_gradient() -> None:
    newlogprob = torch.tensor(RATIOS).log().requires_grad_()
    out = _losses(newlogprob)
    # max(-A r, -A clip(r)) per sample: -1.2, 1.5, -0.5, 0.8, -1.1 → mean -0.1
    assert out.pg_loss.item() == pytest.approx(-0.1, abs=1e-6)
    assert out.clipfrac.item() == pytest.approx(0.8)
    expected_kl = np.mean([(r - 1) - math.log(r) for r in RATIOS])
    assert out.approx_kl.item() == pytest.approx(expected_kl, rel=1e-5)
    assert out.entropy.item() == pytest.approx(0.7)
    out.pg_loss.backward()
    # d/dlogπ of -A r / 5 where the unclipped term is the larger one, 0 where the clipped one is.
    expected_grad = [0.0, 1.5 / 5, -0.5 / 5, 0.0, -1.1 / 5]
    np.testing.assert_allclose(newlogprob.grad.numpy(), expected_grad, atol=1e-6)


def test_value_loss_is_half_the_squared_error_of_the_clipped_value() -> None:
    newlogprob = torch.zeros(5)
    # new values 2, 0, 1, 1, 1 around old values 1 and returns 3
    assert _losses(newlogprob).v_loss.item() == pytest.approx(0.5 * (1 + 9 + 4 + 4 + 4) / 5)
    clipped = _losses(newlogprob, clip_vf=0.5).v_loss.item()  # values 1.5, 0.5, 1, 1, 1
    assert clipped == pytest.approx(0.5 * (1.5**2 + 2.5**2 + 4 + 4 + 4) / 5)


def test_advantages_are_standardised_per_agent_when_asked() -> None:
    newlogprob = torch.tensor(RATIOS).log()
    normalized = _losses(newlogprob, normalize=True).pg_loss.item()
    advantages = np.array(ADVANTAGES)
    scaled = (advantages - advantages.mean()) / (advantages.std(ddof=1) + 1e-8)
    ratios = np.array(RATIOS)
    expected = np.maximum(-scaled * ratios, -scaled * np.clip(ratios, 0.8, 1.2)).mean()
    assert normalized == pytest.approx(expected, rel=1e-5)


def _counting_steps(agent: PPO) -> list[int]:
    """Count the optimiser steps of each update (one entry per learn iteration)."""
    counts = [0]
    step = agent.optimizer.step

    def counted_step() -> None:
        counts[-1] += 1
        step()

    agent.optimizer.step = counted_step  # type: ignore[method-assign]
    return counts


@pytest.mark.parametrize(("target_kl", "steps_per_update"), [(None, 4 * 4), (1e-9, 1)])
def test_target_kl_ends_the_update_at_the_first_minibatch_that_exceeds_it(
    target_kl: float | None, steps_per_update: int
) -> None:
    """n_epochs 4 × 4 minibatches = 16 steps; with a tiny target the first step (ratio 1, KL 0) is taken
    and the next minibatch, whose KL is above 1.5 × target, ends the update."""
    config = PPOConfig(n_envs=2, n_steps=64, batch_size=32, n_epochs=4, target_kl=target_kl)
    with PPO("CartPole-v1", config, seed=0) as agent:
        counts = _counting_steps(agent)
        agent.learn(3 * 128, lambda state: counts.append(0))
    assert counts[:-1] == [steps_per_update] * 3


def test_annealing_takes_learning_rate_and_clip_range_linearly_to_zero() -> None:
    config = PPOConfig(
        n_envs=2, n_steps=64, batch_size=64, n_epochs=1, learning_rate=1e-3, clip_range=0.2,
        anneal_lr=True, anneal_clip_range=True,
    )  # fmt: skip
    schedule: list[tuple[float, float]] = []
    weights: list[torch.Tensor] = []

    def record(state: TrainState) -> None:
        schedule.append((state.losses["learning_rate"], state.losses["clip_range"]))
        weights.append(agent.flat_params.detach().clone())

    with PPO("CartPole-v1", config, seed=0) as agent:
        agent.learn(4 * 128, record)
    np.testing.assert_allclose(schedule, [(1e-3 * f, 0.2 * f) for f in (0.75, 0.5, 0.25, 0.0)], atol=1e-12)
    assert not torch.equal(weights[1], weights[2])  # lr 0.25e-3 still moves the weights
    assert torch.equal(weights[2], weights[3])  # the last update ran with lr 0
