"""Twin Delayed DDPG (Fujimoto et al. 2018, "Addressing Function Approximation Error in Actor-Critic
Methods") for continuous (Box) actions.

Reads top to bottom like the paper: the config, the deterministic tanh actor and the twin critics,
then the agent — act with the actor plus Gaussian exploration noise (white, or coloured over time with
``noise_color``), store the transition, and per
gradient step regress both critics on the clipped double-Q target with target policy smoothing; every
``policy_delay`` steps improve the actor against Q₁ and Polyak-average both targets. Names follow
CleanRL (``qf_loss``, ``actor_loss``); default hyperparameters follow Stable-Baselines3.

Speed, without changing the algorithm: the twin critics are one two-member :class:`StackedMLP`, each
optimised network is one flat buffer with :class:`FlatAdam`, target updates are one ``lerp_`` each,
the actor step evaluates Q₁ only and computes no critic-weight gradients, and acting runs in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from algorithms.common.config import (
    require_in_range,
    require_int,
)
from algorithms.common.errors import NonFiniteLossError
from algorithms.common.networks import StackedMLP, make_twin_critic, narrow_linear
from algorithms.common.noise import ContinuousOffPolicyConfig
from algorithms.common.off_policy import (
    OffPolicyAgent,
    make_target,
    polyak_update,
    stats_to_dict,
)
from algorithms.common.optim import FlatAdam, flatten_parameters


# ----------------------------------------------------------------------------------------------------
# 1. Hyperparameters
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TD3Config(ContinuousOffPolicyConfig):
    """TD3 hyperparameters. Defaults are Stable-Baselines3's; invalid values raise ConfigError at once.

    The fields every off-policy algorithm has, and their checks, are :class:`OffPolicyConfig`'s (the
    exploration noise's colour, :class:`ContinuousOffPolicyConfig`'s); this
    class declares TD3's own and redeclares those whose default differs.
    """

    learning_rate: float = 1e-3
    """Adam step size of the actor and the critics. Typical 1e-4 … 1e-3 (log scale)."""
    policy_delay: int = 2
    """Critic steps per actor (and target) step. Typical 1 … 4."""
    target_policy_noise: float = 0.2
    """Std of the Gaussian smoothing noise added to target actions, in the policy's [-1, 1] units, ≥ 0.
    Typical 0.1 … 0.5."""
    target_noise_clip: float = 0.5
    """The smoothing noise is clipped to ±this, ≥ 0. Typical 0.3 … 1."""
    exploration_noise: float = 0.1
    """Std of the Gaussian exploration noise, as a fraction of the action range's half-width (i.e. in
    the policy's [-1, 1] units), ≥ 0; ``noise_color`` sets its correlation over time. Typical 0.05 … 0.5."""
    net_arch: tuple[int, ...] = (400, 300)
    """Hidden layer sizes of the actor and of each critic."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("policy_delay", self.policy_delay, 1)
        for name in ("target_policy_noise", "target_noise_clip", "exploration_noise"):
            require_in_range(name, getattr(self, name), 0.0, float("inf"))


# ----------------------------------------------------------------------------------------------------
# 2. Deterministic actor (the twin critics are the shared ``make_twin_critic``)
# ----------------------------------------------------------------------------------------------------
def make_actor(obs_dim: int, act_dim: int, net_arch: tuple[int, ...], activation: str) -> StackedMLP:
    """μ(s) before the tanh: a one-member stacked MLP, nn.Linear's initialisation (as SB3)."""
    return StackedMLP(1, obs_dim, net_arch, (act_dim,), activation, False, (1.0,), narrow_head=True)


def first_member(net: StackedMLP, x: torch.Tensor) -> torch.Tensor:
    """Member 0 of a stacked MLP alone (Q₁ of the twin critic), shape (B, out)."""
    h = x.unsqueeze(0)
    layers = list(zip(net.weights, net.biases, strict=True))
    for weight, bias in layers[:-1]:
        h = net.act(torch.baddbmm(bias[:1], h, weight[:1]))
    weight, bias = layers[-1]
    return narrow_linear(h, weight[:1], bias[:1])[0]


# ----------------------------------------------------------------------------------------------------
# 3. The agent
# ----------------------------------------------------------------------------------------------------
class TD3(OffPolicyAgent):
    """A TD3 agent bound to one environment id, one config and one seed.

    Training envs are created here; evaluation runs on separate envs seeded per call. Same config and
    seed on CPU give a bit-identical learning curve.
    """

    algorithm = "td3"
    config_cls = TD3Config
    action_spaces: tuple[type[gym.Space], ...] = (gym.spaces.Box,)
    critic_keys = ("critic_loss",)
    actor_keys = ("actor_loss",)

    def __init__(
        self,
        env_id: str,
        config: TD3Config,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        env_backend: str = "gymnasium",
    ) -> None:
        self._setup(env_id, config, seed, env_kwargs, env_backend)
        obs_dim, act_dim = self.runner.obs_dim, self.runner.act_dim
        arch, act = config.net_arch, config.activation
        torch.manual_seed(seed)  # network initialisation
        self.actor = make_actor(obs_dim, act_dim, arch, act)
        self.critic = make_twin_critic(obs_dim, act_dim, arch, act)
        self.actor_flat = flatten_parameters(self.actor.parameters())
        self.critic_flat = flatten_parameters(self.critic.parameters())
        self.actor_target, self.actor_target_flat = make_target(
            self.actor_flat, lambda: make_actor(obs_dim, act_dim, arch, act)
        )
        self.critic_target, self.critic_target_flat = make_target(
            self.critic_flat, lambda: make_twin_critic(obs_dim, act_dim, arch, act)
        )
        self._actor_params = list(self.actor.parameters())
        self.actor_optimizer = FlatAdam(self.actor_flat, lr=config.learning_rate)
        self.critic_optimizer = FlatAdam(self.critic_flat, lr=config.learning_rate)
        self._critic_stats: list[torch.Tensor] = []
        self._actor_stats: list[torch.Tensor] = []
        self.noise = config.make_noise(self.runner.n_envs, act_dim, self.runner.rng)

    # --- acting ---------------------------------------------------------------------------------
    def _act(self, obs: np.ndarray) -> np.ndarray:
        return np.tanh(self.actor.forward_numpy(np.asarray(obs).astype(np.float32, copy=False))[0])

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Env actions for a batch of observations: μ(s), plus exploration noise unless deterministic."""
        return self.runner.to_env_action(self._act(obs) if deterministic else self._explore(obs))

    def _explore(self, obs: np.ndarray) -> np.ndarray:
        action = self._act(obs)
        return np.clip(action + self.config.exploration_noise * self.noise.sample(), -1.0, 1.0)

    # --- training -------------------------------------------------------------------------------
    def _train(self, gradient_steps: int) -> None:
        """``gradient_steps`` critic updates, with an actor and target update every ``policy_delay``."""
        cfg = self.config
        rng, buffer = self.runner.rng, self.runner.buffer
        for _ in range(gradient_steps):
            self.n_updates += 1
            b = buffer.sample(cfg.batch_size, rng)

            # Clipped double-Q target with target policy smoothing:
            # y = r + γ (1 − d) min_i Q'_i(s', clip(μ'(s') + clip(ε, −c, c), −1, 1)),  ε ~ N(0, σ̃²).
            with torch.no_grad():
                noise = torch.from_numpy(
                    rng.standard_normal((cfg.batch_size, self.runner.act_dim), np.float32)
                )
                noise = (noise * cfg.target_policy_noise).clamp_(
                    -cfg.target_noise_clip, cfg.target_noise_clip
                )
                next_actions = (torch.tanh(self.actor_target(b.next_observations)[0]) + noise).clamp_(
                    -1.0, 1.0
                )
                next_q = self.critic_target(torch.cat((b.next_observations, next_actions), 1)).amin(0)[:, 0]
                target_q = b.rewards + cfg.gamma * (1.0 - b.terminated) * next_q

            qf = self.critic(b.obs_actions)[:, :, 0]
            qf_loss = (qf - target_q).pow(2).mean(1).sum()  # SB3: Σ_i MSE(Q_i, y)
            if not bool(torch.isfinite(qf_loss)):
                raise NonFiniteLossError("critic_loss", self.runner.num_steps)
            qf_loss.backward()
            self.critic_optimizer.step()
            self._critic_stats.append(qf_loss.detach().unsqueeze(0))

            # Delayed policy update: maximise Q₁(s, μ(s)); gradients for the actor's weights only.
            if self.n_updates % cfg.policy_delay == 0:
                pi_actions = torch.tanh(self.actor(b.observations)[0])
                actor_loss = -first_member(self.critic, torch.cat((b.observations, pi_actions), 1)).mean()
                if not bool(torch.isfinite(actor_loss)):
                    raise NonFiniteLossError("actor_loss", self.runner.num_steps)
                actor_loss.backward(inputs=self._actor_params)
                self.actor_optimizer.step()
                self._actor_stats.append(actor_loss.detach().unsqueeze(0))
                polyak_update(self.critic_target_flat, self.critic_flat, cfg.tau)
                polyak_update(self.actor_target_flat, self.actor_flat, cfg.tau)

    def _pop_losses(self) -> dict[str, float]:
        losses = stats_to_dict(self._critic_stats, self.critic_keys) | stats_to_dict(
            self._actor_stats, self.actor_keys
        )
        self._critic_stats, self._actor_stats = [], []
        return losses

    # --- persistence (OffPolicyAgent.save / load) ------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "actor": self.actor_flat,
            "actor_target": self.actor_target_flat,
            "critic": self.critic_flat,
            "critic_target": self.critic_target_flat,
        }

    def _optimizers(self) -> dict[str, FlatAdam]:
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}
