"""PPO's written-out gradient (no autograd graph) against autograd's, on the same minibatch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from algorithms import PPO, PPOConfig
from algorithms.ppo import RolloutSamples, surrogate_step, surrogate_terms, total_loss
from algorithms.ppo_population import PopulationPPO, member_configs
from tests.helpers import through_autograd

CASES = list(
    itertools.product(
        ["CartPole-v1", "Pendulum-v1"],  # categorical, Gaussian
        ["tanh", "relu"],
        [None, 0.2],  # clip_range_vf
        [0.0, 0.01],  # ent_coef
        [True, False],  # normalize_advantage
    )
)


def minibatch(agent: PPO, n: int, seed: int) -> RolloutSamples:
    """Random samples whose old log-probabilities put ratios on both sides of the clip range."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, agent.policy.net.weights[0].shape[1], generator=g)
    with torch.no_grad():
        head, _ = agent.policy(obs)
    if agent.policy.dist == "categorical":
        actions = torch.randint(0, head.shape[-1], (n,), generator=g)
    else:
        actions = head + torch.randn(head.shape, generator=g)
    with torch.no_grad():
        logprobs, _ = agent.policy.log_prob_entropy(head, actions)
    logprobs = logprobs + 0.3 * torch.randn(n, generator=g)  # ratios from about 0.5 to 2
    values, returns = torch.randn(n, generator=g), torch.randn(n, generator=g)
    return RolloutSamples(obs, actions, logprobs, torch.randn(n, generator=g), returns, values)


def autograd_gradient(agent: PPO, batch: RolloutSamples, clip: float, cfg: PPOConfig) -> tuple:
    """The reference: the losses of surrogate_terms, differentiated by autograd."""
    head, newvalue = agent.policy(batch.obs)
    newlogprob, entropy = agent.policy.log_prob_entropy(head, batch.actions)
    out = surrogate_terms(
        newlogprob, batch.logprobs, batch.advantages, newvalue, batch.values, batch.returns, entropy,
        clip, cfg.clip_range_vf, cfg.normalize_advantage,
    ).losses  # fmt: skip
    total_loss(out, cfg.vf_coef, cfg.ent_coef).backward()
    return out.stacked().detach(), agent.flat_params.grad.clone()


@pytest.mark.parametrize(("env_id", "activation", "clip_vf", "ent_coef", "normalize"), CASES)
def test_written_out_gradient_equals_autograd(
    env_id: str, activation: str, clip_vf: float | None, ent_coef: float, normalize: bool
) -> None:
    cfg = PPOConfig(
        n_envs=1, n_steps=64, batch_size=64, net_arch=(16, 16), activation=activation,
        clip_range_vf=clip_vf, ent_coef=ent_coef, normalize_advantage=normalize, log_std_init=-0.3,
    )  # fmt: skip
    with PPO(env_id, cfg, seed=0) as agent:
        assert agent.policy.writes_out_backward
        batch = minibatch(agent, 64, seed=1)
        expected_losses, expected_grad = autograd_gradient(agent, batch, 0.2, cfg)
        agent.flat_params.grad.fill_(123.0)  # the written-out backward replaces, never adds
        step = surrogate_step(agent.policy, batch, 0.2, cfg)
        step.backward()
        torch.testing.assert_close(step.losses.stacked(), expected_losses, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(agent.flat_params.grad, expected_grad, rtol=1e-5, atol=1e-7)
        assert expected_grad.abs().max() > 1e-3  # a gradient that could differ


def test_policies_without_written_out_derivatives_go_through_autograd() -> None:
    cfg = PPOConfig(n_envs=1, n_steps=64, batch_size=64, net_arch=(16,), activation="elu")
    with PPO("CartPole-v1", cfg, seed=0) as agent:
        assert not agent.policy.writes_out_backward
        step = surrogate_step(agent.policy, minibatch(agent, 64, seed=1), 0.2, cfg)
        assert step.loss.requires_grad
        step.backward()
        assert agent.flat_params.grad.abs().max() > 0


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_learning_with_written_out_gradient_follows_autograd(env_id: str) -> None:
    """Whole iterations (rollouts, epochs of shuffled minibatches, Adam): the two paths end with the same
    weights, up to float rounding."""
    cfg = PPOConfig(n_envs=2, n_steps=64, batch_size=32, n_epochs=3, net_arch=(32, 32))
    with PPO(env_id, cfg, seed=4) as written, PPO(env_id, cfg, seed=4) as reference:
        through_autograd(reference.policy.net)
        assert not reference.policy.writes_out_backward
        initial = written.flat_params.detach().clone()
        written.learn(256)
        reference.learn(256)
        np.testing.assert_allclose(written.flat_params.detach(), reference.flat_params.detach(), atol=1e-4)
        assert (written.flat_params.detach() - initial).abs().max() > 1e-3  # it learned


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_population_with_written_out_gradient_follows_autograd(env_id: str) -> None:
    """The batched form: members with their own learning rates, clip ranges and entropy weights end an
    iteration with the weights the autograd path gives them."""
    cfg = PPOConfig(n_envs=2, n_steps=64, batch_size=32, n_epochs=3, net_arch=(32, 32), clip_range_vf=0.3)
    configs = member_configs(
        cfg, [{"learning_rate": 1e-3, "ent_coef": 0.0}, {"clip_range": 0.1, "ent_coef": 0.02}, {}]
    )
    final = []
    for written in (True, False):
        with PopulationPPO(env_id, cfg, n_members=3) as population:
            if not written:
                through_autograd(population.net)
            assert population.net.writes_out_backward is written
            for slot, member_config in enumerate(configs):
                population.start_member(slot, member_config, seed=slot, total_steps=512)
            initial = population.flat_params.detach().clone()
            while population.active_slots:
                population.learn_iteration()
            final.append(population.flat_params.detach().clone())
    np.testing.assert_allclose(final[0], final[1], atol=1e-4)
    assert (final[0] - initial).abs().max() > 1e-3  # it learned
