"""Action distributions as plain functions: numpy samplers for acting, torch densities for learning.

Acting happens one small batch at a time, where numpy's per-call cost is a fraction of torch's, and
sampling with one ``numpy.random.Generator`` keeps a run reproducible from its seed. The update needs
gradients, so log-densities and entropies there are torch functions. No torch.distributions objects:
their argument checks and object creation dominate the cost for small batches.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# --- categorical (Discrete actions) -----------------------------------------------------------------
def categorical_sample(logits: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One action per row from softmax(logits) by inverse CDF; returns (actions, log-probabilities)."""
    return categorical_from_uniform(logits, rng.random(logits.shape[:-1]))


def categorical_from_uniform(logits: np.ndarray, uniform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse-CDF draw of :func:`categorical_sample` from given U(0, 1) numbers, one per row of
    ``logits`` (any leading shape, e.g. (members, envs, actions)): several generators, one vector op."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    cdf = np.cumsum(np.exp(shifted), axis=-1)  # unnormalised; its last column is the normaliser
    total = cdf[..., -1]
    u = uniform * total
    actions = np.minimum((cdf < u[..., None]).sum(axis=-1), logits.shape[-1] - 1)
    log_probs = np.take_along_axis(shifted, actions[..., None], axis=-1)[..., 0] - np.log(total)
    return actions, log_probs


class LogDensity(NamedTuple):
    """log π(a|s) and the entropy per row, with the intermediates their derivatives reuse."""

    log_prob: torch.Tensor
    entropy: torch.Tensor
    log_p: torch.Tensor | None = None
    """Categorical: log-probabilities of every action."""
    index: torch.Tensor | None = None
    """Categorical: the actions taken, as a gather index."""
    z: torch.Tensor | None = None
    """Gaussian: (a − mean) / σ."""
    inv_std: torch.Tensor | None = None
    """Gaussian: 1 / σ."""


def categorical_log_density(logits: torch.Tensor, actions: torch.Tensor) -> LogDensity:
    """Log-probability of integer ``actions`` and the entropy of each row's distribution."""
    log_p = F.log_softmax(logits, dim=-1)
    index = actions.long().unsqueeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return LogDensity(log_p.gather(-1, index).squeeze(-1), entropy, log_p=log_p, index=index)


def categorical_log_prob_entropy(
    logits: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of integer ``actions`` and the entropy of each row's distribution."""
    density = categorical_log_density(logits, actions)
    return density.log_prob, density.entropy


# --- diagonal Gaussian with state-independent log-std (Box actions) ---------------------------------
def gaussian_sample(
    mean: np.ndarray, log_std: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw from N(mean, exp(log_std)²) per dimension; returns (actions, log-densities summed over dims)."""
    return gaussian_from_noise(mean, log_std, rng.standard_normal(mean.shape))


def gaussian_from_noise(
    mean: np.ndarray, log_std: np.ndarray, noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The draw of :func:`gaussian_sample` from given standard-normal ``noise`` (``log_std`` broadcasts
    against ``mean``, e.g. (members, 1, dims) against (members, envs, dims))."""
    actions = mean + noise * np.exp(log_std)
    log_prob = (-0.5 * noise**2 - log_std - LOG_SQRT_2PI).sum(-1)
    return actions.astype(np.float32), log_prob


def gaussian_log_density(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> LogDensity:
    """Log-density of ``actions`` (summed over dimensions) and the entropy, per row (``log_std``
    broadcasts against ``mean``)."""
    inv_std = torch.exp(-log_std)
    z = (actions - mean) * inv_std
    log_prob = (-0.5 * z.pow(2) - log_std - LOG_SQRT_2PI).sum(-1)
    entropy = (0.5 + LOG_SQRT_2PI + log_std).sum(-1).expand(log_prob.shape)
    return LogDensity(log_prob, entropy, z=z, inv_std=inv_std)


def gaussian_log_prob_entropy(
    mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-density of ``actions`` (summed over dimensions) and the entropy, per row."""
    density = gaussian_log_density(mean, log_std, actions)
    return density.log_prob, density.entropy


# --- Beta scaled to the action bounds (Box actions; Chou et al. 2017) -------------------------------
def beta_params(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the head's output into concentrations α, β > 1, so every Beta is unimodal."""
    alpha_raw, beta_raw = raw.chunk(2, dim=-1)
    return F.softplus(alpha_raw) + 1.0, F.softplus(beta_raw) + 1.0


def beta_sample(raw: torch.Tensor, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw x ∈ (0, 1) from Beta(α, β); returns (x, log-densities summed over dims)."""
    alpha, beta = beta_params(raw)
    x = rng.beta(alpha.numpy().astype(np.float64), beta.numpy().astype(np.float64))
    x = np.clip(x, 1e-6, 1.0 - 1e-6).astype(np.float32)
    log_prob, _ = beta_log_prob_entropy(raw, torch.from_numpy(x))
    return x, log_prob.numpy()


def beta_log_prob_entropy(raw: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-density of ``x`` ∈ (0, 1) under Beta(α, β), summed over dimensions, and the entropy."""
    alpha, beta = beta_params(raw)
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    log_prob = ((alpha - 1) * torch.log(x) + (beta - 1) * torch.log1p(-x) - log_norm).sum(-1)
    total = alpha + beta
    entropy = (
        log_norm
        - (alpha - 1) * torch.digamma(alpha)
        - (beta - 1) * torch.digamma(beta)
        + (total - 2) * torch.digamma(total)
    ).sum(-1)
    return log_prob, entropy
