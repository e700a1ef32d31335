"""Soft Actor-Critic (Haarnoja et al. 2018, "SAC: Algorithms and Applications", with a learned
temperature α) for continuous (Box) actions.

Reads top to bottom like the paper: the config, the squashed-Gaussian policy and its log-density
(the twin soft-Q critics are the shared ``make_twin_critic``), then the agent — act with a sampled
action, store the transition, and per gradient step: regress both critics on the soft Bellman target
from the target critics, improve the policy against the smaller Q, adjust α towards the target
entropy, and Polyak-average the target.
Names follow CleanRL (``qf_loss``, ``log_alpha``); default hyperparameters follow Stable-Baselines3.

Speed, without changing the algorithm: both critics are one two-member :class:`StackedMLP` (and so
are the target critics); each optimised group (actor, critics, log α) lives in one flat buffer with
:class:`FlatAdam`; the target update is one ``lerp_``; the policy step computes no critic-weight
gradients and backpropagates each sample through the smaller critic only (``twin_min_q``); acting
runs in numpy on zero-copy views of the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch.nn import functional as F

from algorithms.common.config import (
    require_int,
    require_positive,
)
from algorithms.common.errors import ConfigError, NonFiniteLossError
from algorithms.common.networks import StackedMLP, make_twin_critic, twin_min_q
from algorithms.common.noise import ContinuousOffPolicyConfig
from algorithms.common.off_policy import (
    OffPolicyAgent,
    make_target,
    polyak_update,
)
from algorithms.common.optim import FlatAdam, flatten_parameters
from algorithms.common.temperature import Temperature, initial_log_alpha, learns_temperature

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
LOG_2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------------
# 1. Hyperparameters
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SACConfig(ContinuousOffPolicyConfig):
    """SAC hyperparameters. Defaults are Stable-Baselines3's; invalid values raise ConfigError at once.

    The fields every off-policy algorithm has, and their checks, are :class:`OffPolicyConfig`'s (the
    exploration noise's colour, :class:`ContinuousOffPolicyConfig`'s); this
    class declares SAC's own and redeclares those whose default differs.
    """

    learning_rate: float = 3e-4
    """Adam step size of every optimizer not overridden below (and always of α). Typical 1e-4 … 1e-3
    (log scale)."""
    actor_learning_rate: float | None = None
    """Adam step size of the policy (None: ``learning_rate``)."""
    critic_learning_rate: float | None = None
    """Adam step size of the twin critics (None: ``learning_rate``)."""
    ent_coef: str | float = "auto"
    """Entropy temperature α: ``"auto"`` learns it towards the target entropy; a float > 0 fixes it.
    Typical fixed values 0.001 … 0.5. ``"auto_0.1"`` (SB3's form) learns it starting at 0.1."""
    init_ent_coef: float = 1.0
    """Initial α when learned, > 0. Typical 0.01 … 1."""
    target_entropy_scale: float = 1.0
    """The learned α aims at entropy −scale · dim(A) nats. Typical 0.25 … 2."""
    target_update_interval: int = 1
    """Gradient steps between two Polyak updates of the target critics. Typical 1 … 8."""
    log_std_min: float = -20.0
    """Lower clamp of the policy's log standard deviation (before the tanh squashing)."""
    log_std_max: float = 2.0
    """Upper clamp of the policy's log standard deviation, > ``log_std_min``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("actor_learning_rate", "critic_learning_rate"):
            value = getattr(self, name)
            if value is not None:
                require_positive(name, value)
        require_int("target_update_interval", self.target_update_interval, 1)
        self.initial_log_alpha()  # validates ent_coef / init_ent_coef
        require_positive("target_entropy_scale", self.target_entropy_scale)
        if not self.log_std_min < self.log_std_max:
            raise ConfigError(
                f"log_std_min ({self.log_std_min}) must be smaller than log_std_max ({self.log_std_max})"
            )

    @property
    def learn_ent_coef(self) -> bool:
        """Whether α is learned (``ent_coef`` is ``"auto"`` or ``"auto_<init>"``)."""
        return learns_temperature(self.ent_coef)

    def initial_log_alpha(self) -> float:
        """log α at the start: from ``init_ent_coef`` (or ``auto_<x>``) when learned, else the fixed α."""
        return initial_log_alpha(self.ent_coef, self.init_ent_coef)


# ----------------------------------------------------------------------------------------------------
# 2. Squashed Gaussian policy
# ----------------------------------------------------------------------------------------------------
def squashed_gaussian(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised a = tanh(u), u = mean + σ·noise, and log π(a) summed over action dimensions.

    The change of variables gives log π(a) = log N(u; mean, σ) − Σ log(1 − tanh(u)²), and
    log(1 − tanh(u)²) = 2 (log 2 − u − softplus(−2u)) holds exactly and stays finite for large |u|.
    """
    u = mean + log_std.exp() * noise
    log_prob = (-0.5 * noise.pow(2) - log_std - LOG_SQRT_2PI).sum(-1)
    log_prob = log_prob - (2.0 * (LOG_2 - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), log_prob


class Actor:
    """π(a|s): an MLP to the mean and log-std of u; actions are a = tanh(u) ∈ (−1, 1)."""

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig) -> None:
        self.act_dim = act_dim
        self.log_std_min, self.log_std_max = config.log_std_min, config.log_std_max
        # One member, nn.Linear's initialisation (as SB3's off-policy networks).
        self.net = StackedMLP(
            1, obs_dim, config.net_arch, (2 * act_dim,), config.activation, False, (1.0,), narrow_head=True
        )

    def __call__(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled actions and their log-probabilities (differentiable in the weights)."""
        out = self.net(obs)[0]
        mean, log_std = out[:, : self.act_dim], out[:, self.act_dim :]
        return squashed_gaussian(mean, log_std.clamp(self.log_std_min, self.log_std_max), noise)

    def act_numpy(self, obs: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """Actions for acting, in numpy: tanh(mean) when ``noise`` is None, else the sample
        tanh(mean + σ·noise) for standard normal ``noise`` of shape (batch, act_dim)."""
        out = self.net.forward_numpy(obs.astype(np.float32, copy=False))[0]
        u = out[:, : self.act_dim]
        if noise is not None:
            log_std = np.clip(out[:, self.act_dim :], self.log_std_min, self.log_std_max)
            u = u + np.exp(log_std) * noise
        return np.tanh(u)


# ----------------------------------------------------------------------------------------------------
# 3. The agent
# ----------------------------------------------------------------------------------------------------
class SAC(OffPolicyAgent):
    """A SAC agent bound to one environment id, one config and one seed.

    Training envs are created here; evaluation runs on separate envs seeded per call. Same config and
    seed on CPU give a bit-identical learning curve.
    """

    algorithm = "sac"
    config_cls = SACConfig
    action_spaces: tuple[type[gym.Space], ...] = (gym.spaces.Box,)
    loss_keys = ("critic_loss", "actor_loss", "ent_coef", "ent_coef_loss", "entropy")

    def __init__(
        self,
        env_id: str,
        config: SACConfig,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        env_backend: str = "gymnasium",
    ) -> None:
        self._setup(env_id, config, seed, env_kwargs, env_backend)
        obs_dim, act_dim = self.runner.obs_dim, self.runner.act_dim
        torch.manual_seed(seed)  # network initialisation
        self.actor = Actor(obs_dim, act_dim, config)
        self.critic = make_twin_critic(obs_dim, act_dim, config.net_arch, config.activation)
        self.actor_flat = flatten_parameters(self.actor.net.parameters())
        self.critic_flat = flatten_parameters(self.critic.parameters())
        self.critic_target, self.critic_target_flat = make_target(
            self.critic_flat,
            lambda: make_twin_critic(obs_dim, act_dim, config.net_arch, config.activation),
        )
        self._actor_params = list(self.actor.net.parameters())
        self.actor_optimizer = FlatAdam(
            self.actor_flat, lr=config.actor_learning_rate or config.learning_rate
        )
        self.critic_optimizer = FlatAdam(
            self.critic_flat, lr=config.critic_learning_rate or config.learning_rate
        )
        # α: learned with its own Adam when ent_coef is "auto", towards −scale · dim(A) nats; else fixed.
        self.temperature = Temperature(
            config.ent_coef,
            config.init_ent_coef,
            -config.target_entropy_scale * act_dim,
            config.learning_rate,
        )
        self.noise = config.make_noise(self.runner.n_envs, act_dim, self.runner.rng)

    # --- acting ---------------------------------------------------------------------------------
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Env actions for a batch of observations: tanh of the mean, or a policy sample (white noise)."""
        obs = np.asarray(obs)
        noise = None
        if not deterministic:
            noise = self.runner.rng.standard_normal((len(obs), self.runner.act_dim), dtype=np.float32)
        return self.runner.to_env_action(self.actor.act_numpy(obs, noise))

    def _explore(self, obs: np.ndarray) -> np.ndarray:
        """A policy sample per training env, its standard normal coloured as ``noise_color`` says."""
        return self.actor.act_numpy(obs, self.noise.sample())

    # --- training -------------------------------------------------------------------------------
    def _train(self, gradient_steps: int) -> None:
        """``gradient_steps`` SAC updates, each on a fresh minibatch from the replay buffer."""
        cfg = self.config
        rng, buffer = self.runner.rng, self.runner.buffer
        critic, critic_target, actor = self.critic, self.critic_target, self.actor
        for _ in range(gradient_steps):
            b = buffer.sample(cfg.batch_size, rng)
            noise = torch.from_numpy(
                rng.standard_normal((2, cfg.batch_size, self.runner.act_dim), np.float32)
            )
            alpha = self.temperature.alpha()

            # Soft Bellman target from the target critics:
            # y = r + γ (1 − d) (min_i Q'_i(s', a') − α log π(a'|s')),  a' ~ π(·|s').
            with torch.no_grad():
                next_actions, next_log_prob = actor(b.next_observations, noise[1])
                next_q = critic_target(torch.cat((b.next_observations, next_actions), 1)).amin(0)[:, 0]
                next_q = next_q - alpha * next_log_prob
                target_q = b.rewards + cfg.gamma * (1.0 - b.terminated) * next_q

            # Critic step: both Q's regress on y (SB3's ½ Σ MSE).
            qf = critic(b.obs_actions)[:, :, 0]
            qf_loss = 0.5 * (qf - target_q).pow(2).mean(1).sum()
            qf_loss.backward()
            self.critic_optimizer.step()

            # Policy step: minimise E[α log π(a|s) − min Q(s, a)], a ~ π reparameterised. Only the
            # actor's gradient is computed; the critic passes gradients to the action, not its weights.
            pi_actions, log_prob = actor(b.observations, noise[0])
            min_q_pi = twin_min_q(critic, torch.cat((b.observations, pi_actions), 1))
            actor_loss = (alpha * log_prob - min_q_pi).mean()
            actor_loss.backward(inputs=self._actor_params)
            self.actor_optimizer.step()

            # Temperature step on log α: loss −log α · (log π + H̄), so its gradient is −(E log π + H̄).
            entropy_gap = self.temperature.update(log_prob.detach().mean())

            self.n_updates += 1
            if self.n_updates % cfg.target_update_interval == 0:
                polyak_update(self.critic_target_flat, self.critic_flat, cfg.tau)

            stats = torch.stack(
                (
                    qf_loss.detach(),
                    actor_loss.detach(),
                    alpha,
                    -alpha.log() * entropy_gap,
                    -entropy_gap + self.temperature.target_entropy,
                )
            )
            if not bool(torch.isfinite(stats[:2]).all()):
                name = "critic_loss" if not bool(torch.isfinite(qf_loss)) else "actor_loss"
                raise NonFiniteLossError(name, self.runner.num_steps)
            self._stats.append(stats)

    # --- persistence (OffPolicyAgent.save / load) ------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "actor": self.actor_flat,
            "critic": self.critic_flat,
            "critic_target": self.critic_target_flat,
            "log_alpha": self.temperature.log_alpha,
        }

    def _optimizers(self) -> dict[str, FlatAdam]:
        return {
            "actor": self.actor_optimizer,
            "critic": self.critic_optimizer,
            "alpha": self.temperature.optimizer,
        }
