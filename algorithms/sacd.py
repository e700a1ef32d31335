"""SAC-Discrete (Christodoulou 2019, "Soft Actor-Critic for Discrete Action Settings") for discrete
(Discrete) actions.

Reads top to bottom like the paper: the config; the categorical policy; then the agent — act with a
sampled action, store the transition, and per gradient step: regress both soft Q-networks (one output
per action) on the soft Bellman target, whose next-state value is the expectation over the policy's
action probabilities, Σ_a' π(a'|s') (min Q'(s', a') − α log π(a'|s')), rather than a sampled action's;
improve the policy on E_s Σ_a π(a|s) (α log π(a|s) − min Q(s, a)); adjust α towards a target entropy
that is a fraction of the largest possible one, log |A|; and Polyak-average the target critics.
Names follow CleanRL's ``sac_atari.py`` (``qf_loss``, ``actor_loss``, ``alpha_loss``).

The replay buffer, the env loop, evaluation and checkpoints are the ones SAC, TD3 and D3QN use
(:mod:`algorithms.common.off_policy`); the temperature is SAC's (:mod:`algorithms.common.temperature`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch.nn import functional as F

from algorithms.common.config import require_in_range, require_int, require_positive
from algorithms.common.errors import NonFiniteLossError
from algorithms.common.networks import StackedMLP
from algorithms.common.off_policy import (
    OffPolicyAgent,
    OffPolicyConfig,
    make_target,
    polyak_update,
)
from algorithms.common.optim import FlatAdam, flatten_parameters
from algorithms.common.temperature import Temperature, initial_log_alpha


# ----------------------------------------------------------------------------------------------------
# 1. Hyperparameters
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SACDConfig(OffPolicyConfig):
    """SAC-Discrete hyperparameters; invalid values raise ConfigError at once.

    The fields every off-policy algorithm has, and their checks, are :class:`OffPolicyConfig`'s
    (Stable-Baselines3's SAC defaults); this class declares SAC-Discrete's own.
    """

    ent_coef: str | float = "auto"
    """Entropy temperature α: ``"auto"`` learns it towards the target entropy; a float > 0 fixes it.
    ``"auto_0.1"`` learns it starting at 0.1."""
    init_ent_coef: float = 1.0
    """Initial α when learned, > 0. Typical 0.01 … 1."""
    target_entropy_scale: float = 0.5
    """The learned α aims at an entropy of this fraction of the maximum, log |A| nats; in (0, 1].
    Christodoulou (2019) uses 0.98 and CleanRL's ``sac_atari.py`` 0.89; with few actions a target that
    close to the uniform policy's entropy keeps raising α while the policy grows decisive, so the
    default aims lower. Typical 0.3 … 0.9."""
    target_update_interval: int = 1
    """Gradient steps between two Polyak updates of the target critics (``tau`` 1 makes them hard
    copies, as in the paper's Atari runs). Typical 1 … 8000."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("target_update_interval", self.target_update_interval, 1)
        initial_log_alpha(self.ent_coef, self.init_ent_coef)  # validates ent_coef / init_ent_coef
        require_positive("target_entropy_scale", self.target_entropy_scale)
        require_in_range("target_entropy_scale", self.target_entropy_scale, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------
# 2. Categorical policy
# ----------------------------------------------------------------------------------------------------
class Actor:
    """π(·|s): an MLP to one logit per action."""

    def __init__(self, obs_dim: int, n_actions: int, config: SACDConfig) -> None:
        # One member, nn.Linear's initialisation (as SB3's off-policy networks).
        self.net = StackedMLP(
            1, obs_dim, config.net_arch, (n_actions,), config.activation, False, (1.0,), narrow_head=True
        )

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action probabilities π(·|s) and their logarithms, each (B, n_actions)."""
        log_probs = F.log_softmax(self.net(obs)[0], dim=-1)
        return log_probs.exp(), log_probs

    def act_numpy(self, obs: np.ndarray, uniform: np.ndarray | None) -> np.ndarray:
        """Action indices for acting, in numpy: the most probable action when ``uniform`` is None, else
        a sample of π (inverse CDF of the probabilities at ``uniform``, shape (batch,) in [0, 1))."""
        logits = self.net.forward_numpy(obs.astype(np.float32, copy=False))[0]
        if uniform is None:
            return logits.argmax(-1)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        cdf = np.cumsum(probs, -1)
        chosen = (cdf < uniform[:, None] * cdf[:, -1:]).sum(-1)
        return np.minimum(chosen, logits.shape[-1] - 1)  # a rounding-error guard at u → 1


def soft_state_value(
    probs: torch.Tensor, log_probs: torch.Tensor, twin_q: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """V(s) = Σ_a π(a|s) (min_i Q_i(s, a) − α log π(a|s)), the expectation over the actions that replaces
    SAC's sampled action. ``probs`` and ``log_probs`` (B, n_actions), ``twin_q`` (2, B, n_actions), α a
    scalar; the result (B,)."""
    return (probs * (twin_q.amin(0) - alpha * log_probs)).sum(-1)


# ----------------------------------------------------------------------------------------------------
# 3. The agent
# ----------------------------------------------------------------------------------------------------
class SACD(OffPolicyAgent):
    """A SAC-Discrete agent bound to one environment id, one config and one seed.

    Training envs are created here; evaluation runs on separate envs seeded per call. Same config and
    seed on CPU give a bit-identical learning curve.
    """

    algorithm = "sacd"
    config_cls = SACDConfig
    action_spaces: tuple[type[gym.Space], ...] = (gym.spaces.Discrete,)
    loss_keys = ("critic_loss", "actor_loss", "ent_coef", "ent_coef_loss", "entropy")

    def __init__(
        self,
        env_id: str,
        config: SACDConfig,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        env_backend: str = "gymnasium",
    ) -> None:
        self._setup(env_id, config, seed, env_kwargs, env_backend)
        obs_dim, n_actions = self.runner.obs_dim, self.runner.n_actions
        torch.manual_seed(seed)  # network initialisation
        self.actor = Actor(obs_dim, n_actions, config)

        def twin_critic() -> StackedMLP:  # Q₁(s, ·) and Q₂(s, ·): one output per action each
            return StackedMLP(
                2, obs_dim, config.net_arch, (n_actions, n_actions), config.activation, False, (1.0, 1.0)
            )

        self.critic = twin_critic()
        self.actor_flat = flatten_parameters(self.actor.net.parameters())
        self.critic_flat = flatten_parameters(self.critic.parameters())
        self.critic_target, self.critic_target_flat = make_target(self.critic_flat, twin_critic)
        self.actor_optimizer = FlatAdam(self.actor_flat, lr=config.learning_rate)
        self.critic_optimizer = FlatAdam(self.critic_flat, lr=config.learning_rate)
        target_entropy = config.target_entropy_scale * math.log(n_actions)
        self.temperature = Temperature(
            config.ent_coef, config.init_ent_coef, target_entropy, config.learning_rate
        )

    # --- acting ---------------------------------------------------------------------------------
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Env actions for a batch of observations: the most probable action, or a sample of π."""
        obs = np.asarray(obs)
        uniform = None if deterministic else self.runner.rng.random(len(obs))
        return self.runner.to_env_action(self.actor.act_numpy(obs, uniform))

    def _explore(self, obs: np.ndarray) -> np.ndarray:
        """A sample of π per training env."""
        return self.actor.act_numpy(obs, self.runner.rng.random(len(obs)))

    # --- training -------------------------------------------------------------------------------
    def _train(self, gradient_steps: int) -> None:
        """``gradient_steps`` SAC-Discrete updates, each on a fresh minibatch from the replay buffer."""
        cfg = self.config
        rng, buffer = self.runner.rng, self.runner.buffer
        critic, actor = self.critic, self.actor
        for _ in range(gradient_steps):
            b = buffer.sample(cfg.batch_size, rng)
            actions = b.actions[:, 0].long()
            alpha = self.temperature.alpha()

            # Soft Bellman target with the expected next value (the policy's probabilities, not a sample):
            # y = r + γ (1 − d) Σ_a' π(a'|s') (min_i Q'_i(s', a') − α log π(a'|s')).
            with torch.no_grad():
                next_probs, next_log_probs = actor(b.next_observations)
                next_twin_q = self.critic_target(b.next_observations)
                next_v = soft_state_value(next_probs, next_log_probs, next_twin_q, alpha)
                target_q = b.rewards + cfg.gamma * (1.0 - b.terminated) * next_v

            # Critic step: Q_i(s, a) of the taken action regress on y (½ Σ MSE, as SAC).
            qf = critic(b.observations).gather(2, actions.expand(2, -1)[:, :, None])[:, :, 0]
            qf_loss = 0.5 * (qf - target_q).pow(2).mean(1).sum()
            qf_loss.backward()
            self.critic_optimizer.step()

            # Policy step: minimise E_s Σ_a π(a|s) (α log π(a|s) − min Q(s, a)), an exact expectation
            # over the actions, so no reparameterisation is needed; the critics are constants here.
            probs, log_probs = actor(b.observations)
            with torch.no_grad():
                min_q = critic(b.observations).amin(0)
            actor_loss = (probs * (alpha * log_probs - min_q)).sum(-1).mean()
            actor_loss.backward()
            self.actor_optimizer.step()

            # Temperature step, with E[log π] = −H(π(·|s)) averaged over the batch.
            mean_log_prob = (probs * log_probs).sum(-1).mean().detach()
            entropy_gap = self.temperature.update(mean_log_prob)

            self.n_updates += 1
            if self.n_updates % cfg.target_update_interval == 0:
                polyak_update(self.critic_target_flat, self.critic_flat, cfg.tau)

            stats = torch.stack(
                (qf_loss.detach(), actor_loss.detach(), alpha, -alpha.log() * entropy_gap, -mean_log_prob)
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
