"""Hand-written distribution functions agree with torch.distributions, and the samplers are unbiased."""

import numpy as np
import torch
from torch.distributions import Beta, Categorical, Normal

from algorithms.common import distributions as D


def test_categorical_log_prob_and_entropy_match_torch() -> None:
    logits = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    actions = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(1))
    log_prob, entropy = D.categorical_log_prob_entropy(logits, actions)
    ref = Categorical(logits=logits)
    torch.testing.assert_close(log_prob, ref.log_prob(actions))
    torch.testing.assert_close(entropy, ref.entropy())


def test_categorical_sampler_frequencies_and_log_probs() -> None:
    logits = np.log(np.array([[0.1, 0.6, 0.3]] * 60_000))
    actions, log_probs = D.categorical_sample(logits, np.random.default_rng(0))
    freq = np.bincount(actions, minlength=3) / len(actions)
    np.testing.assert_allclose(freq, [0.1, 0.6, 0.3], atol=0.01)
    np.testing.assert_allclose(log_probs, logits[np.arange(len(actions)), actions], atol=1e-9)


def test_gaussian_log_prob_and_entropy_match_torch() -> None:
    g = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(32, 3, generator=g), torch.randn(3, generator=g) * 0.5
    actions = torch.randn(32, 3, generator=g)
    log_prob, entropy = D.gaussian_log_prob_entropy(mean, log_std, actions)
    ref = Normal(mean, log_std.exp())
    torch.testing.assert_close(log_prob, ref.log_prob(actions).sum(-1))
    torch.testing.assert_close(entropy, ref.entropy().sum(-1))


def test_gaussian_sampler_moments_and_log_probs() -> None:
    mean = np.tile(np.array([[1.0, -2.0]]), (50_000, 1))
    log_std = np.log(np.array([0.5, 2.0]))
    actions, log_probs = D.gaussian_sample(mean, log_std, np.random.default_rng(0))
    np.testing.assert_allclose(actions.mean(0), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(actions.std(0), [0.5, 2.0], rtol=0.02)
    ref = Normal(torch.from_numpy(mean), torch.from_numpy(np.exp(log_std))).log_prob(
        torch.from_numpy(actions).double()
    )
    np.testing.assert_allclose(log_probs, ref.sum(-1).numpy(), atol=1e-4)


def test_beta_log_prob_and_entropy_match_torch() -> None:
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(16, 4, generator=g)  # two action dimensions: α and β each
    x = torch.rand(16, 2, generator=g).clamp(0.01, 0.99)
    log_prob, entropy = D.beta_log_prob_entropy(raw, x)
    alpha, beta = D.beta_params(raw)
    ref = Beta(alpha, beta)
    torch.testing.assert_close(log_prob, ref.log_prob(x).sum(-1))
    torch.testing.assert_close(entropy, ref.entropy().sum(-1))
    assert (alpha > 1).all() and (beta > 1).all()


def test_beta_sampler_mean() -> None:
    raw = torch.zeros(40_000, 2)  # α = β = softplus(0) + 1 ≈ 1.69 → mean 0.5
    raw[:, 0] = 2.0  # α ≈ 3.13, β ≈ 1.69
    x, _ = D.beta_sample(raw, np.random.default_rng(0))
    alpha, beta = (torch.nn.functional.softplus(torch.tensor([2.0, 0.0])) + 1).tolist()
    assert abs(x.mean() - alpha / (alpha + beta)) < 0.005
    assert (x > 0).all() and (x < 1).all()
