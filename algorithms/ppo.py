"""Proximal Policy Optimization (Schulman et al. 2017) with GAE, for discrete and continuous actions.

Reads top to bottom like the paper: the config, the actor-critic, generalised advantage estimation,
then the agent — collect a rollout with the current policy, compute advantages, and take several
epochs of clipped-surrogate minibatch steps on it. Names follow CleanRL (``b_advantages``,
``clipfrac``, ``approx_kl``); default hyperparameters follow Stable-Baselines3.

Section 5 defines the losses (:func:`surrogate_terms`, differentiated by autograd) and then writes out
their derivatives (:func:`surrogate_gradients`), which the update uses for categorical and Gaussian
policies on tanh or ReLU networks: recording the graph costs more than a small network's arithmetic.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from algorithms.common import distributions as D
from algorithms.common.checkpoint import agent_header, read_checkpoint, write_checkpoint
from algorithms.common.config import (
    Schedule,
    check_schedule,
    config_from_mapping,
    require_choice,
    require_in_range,
    require_non_negative,
    require_positive,
    schedule_value,
)
from algorithms.common.env_backends import resolve_backend
from algorithms.common.envs import EpisodeTracker, check_spaces, eval_envs, evaluate_episodes, make_vec_env
from algorithms.common.errors import ConfigError, NonFiniteLossError
from algorithms.common.networks import StackedMLP, activation_fn
from algorithms.common.normalize import ObsNormalizer, RewardNormalizer
from algorithms.common.optim import FlatAdam, flatten_parameters
from algorithms.common.types import Callback, EvalResult, TrainState

POLICY_DISTS = ("auto", "categorical", "gaussian", "beta")


# ----------------------------------------------------------------------------------------------------
# 1. Hyperparameters
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters. Defaults are Stable-Baselines3's; invalid values raise ConfigError at once."""

    ROLLOUT_FIELDS: ClassVar[tuple[str, ...]] = ("n_envs", "n_steps")
    """The fields whose product is the env steps between two updates (a rollout)."""
    WARMUP_FIELD: ClassVar[str | None] = None
    """The field of env steps collected before the first update (None: none)."""

    learning_rate: float | Schedule = 3e-4
    """Adam step size. Typical 1e-5 … 2e-3 (log scale). This and the other fields of
    :data:`SCHEDULABLE_FIELDS` also take a piecewise-constant schedule over the env steps trained, a
    list of ``[from_step, value]`` pairs from step 0 (what population-based training exports)."""
    n_envs: int = 1
    """Parallel environments stepped per rollout step. Typical 1 … 64."""
    n_steps: int = 2048
    """Steps collected from each env per rollout; the rollout holds ``n_envs * n_steps`` samples.
    Typical 32 … 4096."""
    batch_size: int = 64
    """Minibatch size for the gradient steps; at most ``n_envs * n_steps``. Typical 32 … 1024."""
    n_epochs: int = 10
    """Passes over each rollout. Typical 1 … 20."""
    gamma: float | Schedule = 0.99
    """Discount factor in [0, 1]. Typical 0.9 … 0.9999."""
    gae_lambda: float | Schedule = 0.95
    """GAE λ in [0, 1]: 0 is one-step TD, 1 is Monte Carlo. Typical 0.8 … 0.99."""
    clip_range: float | Schedule = 0.2
    """Clipping ε of the probability ratio, > 0. Typical 0.1 … 0.4."""
    clip_range_vf: float | None = None
    """Clip the value update to ±this around the old value (None: no clipping). Note that it is in
    the units of the (possibly normalised) return."""
    ent_coef: float | Schedule = 0.0
    """Weight of the entropy bonus, ≥ 0. Typical 0 … 0.1 (log scale from 1e-8)."""
    vf_coef: float | Schedule = 0.5
    """Weight of the value loss, > 0. Typical 0.2 … 1."""
    max_grad_norm: float | Schedule = 0.5
    """Global gradient-norm clip, > 0. Typical 0.3 … 5."""
    target_kl: float | None = None
    """Stop the epochs of an update early once the approximate KL exceeds 1.5 × this (None: never).
    Typical 0.01 … 0.05."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over the ``learn`` budget."""
    anneal_clip_range: bool = False
    """Decay the clip range linearly to 0 over the ``learn`` budget (rl-zoo3's ``lin_`` schedules)."""
    normalize_advantage: bool = True
    """Standardise advantages within each minibatch."""
    normalize_obs: bool = False
    """Standardise observations with running statistics, clipped to ±``obs_clip``."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return, clipped to ±``reward_clip``."""
    obs_clip: float = 10.0
    """Clip for normalised observations, > 0."""
    reward_clip: float = 10.0
    """Clip for normalised rewards, > 0."""
    policy_dist: str = "auto"
    """Action distribution: ``auto`` (categorical for Discrete, gaussian for Box), ``categorical``,
    ``gaussian`` (diagonal, state-independent log-std, actions clipped to the bounds) or ``beta``
    (Beta scaled to the bounds)."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy. Typical −2 … 1."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and of the critic (two separate networks)."""
    activation: str = "tanh"
    """Hidden activation: tanh, relu, elu or gelu."""
    ortho_init: bool = True
    """Orthogonal initialisation (gain √2 hidden, 0.01 policy head, 1 value head)."""
    adam_eps: float = 1e-5
    """Adam's ε (SB3 and CleanRL use 1e-5 for PPO)."""
    vectorization: str = "sync"
    """How the training envs run: ``sync`` (one process) or ``async`` (one subprocess per env)."""

    def __post_init__(self) -> None:
        check_schedule("learning_rate", self.learning_rate, require_positive)
        for name in ("n_envs", "n_steps", "batch_size", "n_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        rollout = self.n_envs * self.n_steps
        if self.batch_size > rollout:
            raise ConfigError(
                f"batch_size ({self.batch_size}) is larger than a rollout "
                f"(n_envs * n_steps = {self.n_envs} * {self.n_steps} = {rollout})"
            )
        check_schedule("gamma", self.gamma, lambda name, v: require_in_range(name, v, 0.0, 1.0))
        check_schedule("gae_lambda", self.gae_lambda, lambda name, v: require_in_range(name, v, 0.0, 1.0))
        check_schedule("clip_range", self.clip_range, require_positive)
        if self.clip_range_vf is not None:
            require_positive("clip_range_vf", self.clip_range_vf)
        check_schedule("ent_coef", self.ent_coef, require_non_negative)
        check_schedule("vf_coef", self.vf_coef, require_positive)
        check_schedule("max_grad_norm", self.max_grad_norm, require_positive)
        if self.target_kl is not None:
            require_positive("target_kl", self.target_kl)
        require_positive("obs_clip", self.obs_clip)
        require_positive("reward_clip", self.reward_clip)
        require_positive("adam_eps", self.adam_eps)
        require_choice("policy_dist", self.policy_dist, POLICY_DISTS)
        require_choice("vectorization", self.vectorization, ("sync", "async"))
        activation_fn(self.activation)
        if not self.net_arch or any(not isinstance(h, int) or h < 1 for h in self.net_arch):
            raise ConfigError(
                f"net_arch must be a non-empty list of positive integers, got {self.net_arch!r}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PPOConfig:
        """Build from a mapping (e.g. a Hydra node), naming any unknown key."""
        return config_from_mapping(cls, values)

    @property
    def has_schedules(self) -> bool:
        """Whether any field of :data:`SCHEDULABLE_FIELDS` holds a schedule rather than a constant."""
        return any(isinstance(getattr(self, name), tuple) for name in SCHEDULABLE_FIELDS)

    def at_step(self, step: int) -> PPOConfig:
        """This config with every scheduled field replaced by its value at env step ``step`` (itself when
        nothing is scheduled): the constants an iteration that starts at ``step`` trains with."""
        if not self.has_schedules:
            return self
        return dataclasses.replace(
            self, **{name: schedule_value(getattr(self, name), step) for name in SCHEDULABLE_FIELDS}
        )


SCHEDULABLE_FIELDS = (
    "learning_rate",
    "clip_range",
    "gae_lambda",
    "gamma",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
)
"""PPOConfig fields that may change during training: a constant or a :data:`Schedule`. They are also
the hyperparameters each member of a population sets for itself (:mod:`algorithms.ppo_population`)."""


# ----------------------------------------------------------------------------------------------------
# 2. Actor-critic
# ----------------------------------------------------------------------------------------------------
class ActorCritic(nn.Module):
    """Separate actor and critic MLPs, evaluated together as one two-member :class:`StackedMLP`.

    The actor's head parametrises a categorical, diagonal-Gaussian or Beta distribution; the critic's
    head is V(s). Stacking changes how the two networks are computed, not what they compute.
    """

    def __init__(self, obs_dim: int, action_space: gym.Space, config: PPOConfig) -> None:
        super().__init__()
        self.dist = resolve_policy_dist(config.policy_dist, action_space)
        if self.dist == "categorical":
            self.head_dim = int(action_space.n)
        elif self.dist == "gaussian":
            self.head_dim = int(action_space.shape[0])
        else:  # beta: α and β per action dimension
            self.head_dim = 2 * int(action_space.shape[0])
        self.net = StackedMLP(
            n_members=2,
            in_dim=obs_dim,
            hidden=config.net_arch,
            out_dims=(self.head_dim, 1),
            activation=config.activation,
            ortho_init=config.ortho_init,
            out_gains=(0.01, 1.0),
        )
        self.log_std = nn.Parameter(
            torch.full((self.head_dim,), float(config.log_std_init)), requires_grad=self.dist == "gaussian"
        )

    @property
    def writes_out_backward(self) -> bool:
        """Whether :func:`surrogate_step` can take this policy's gradient without autograd."""
        return writes_out_backward(self.dist, self.net)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(actor head output, V(s)) for a batch of observations."""
        out = self.net(obs)
        return out[0, :, : self.head_dim], out[1, :, 0]

    def act_numpy(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(actor head output, V(s)) in numpy, for acting: no autograd, tiny batches."""
        out = self.net.forward_numpy(obs)
        return out[0, :, : self.head_dim], out[1, :, 0]

    def log_prob_entropy(
        self, head: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(a|s) and the policy entropy at s from the actor head's output, both shape (batch,)."""
        if self.dist == "categorical":
            return D.categorical_log_prob_entropy(head, actions)
        if self.dist == "gaussian":
            return D.gaussian_log_prob_entropy(head, self.log_std, actions)
        return D.beta_log_prob_entropy(head, actions)

    def sample(self, head: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sample actions from the actor head's output; returns (actions, log π(a|s))."""
        return sample_actions(self.dist, head, self.log_std.detach().numpy(), rng)

    def deterministic(self, head: np.ndarray) -> np.ndarray:
        """The most likely action (categorical), the mean (Gaussian) or the mean in (0, 1) (Beta)."""
        return deterministic_actions(self.dist, head)


def writes_out_backward(dist: str, net: StackedMLP) -> bool:
    """Whether PPO's gradient is written out for a policy of ``dist`` on ``net`` (see :func:`surrogate_step`):
    categorical or Gaussian actions, and a network whose backward is written out."""
    return dist in ("categorical", "gaussian") and net.writes_out_backward


def sample_actions(
    dist: str, head: np.ndarray, log_std: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sample from distribution ``dist`` given the actor head's output (and the Gaussian's log-std)."""
    if dist == "categorical":
        return D.categorical_sample(head, rng)
    if dist == "gaussian":
        return D.gaussian_sample(head, log_std, rng)
    return D.beta_sample(torch.from_numpy(np.ascontiguousarray(head)), rng)


def deterministic_actions(dist: str, head: np.ndarray) -> np.ndarray:
    """The most likely action (categorical), the mean (Gaussian) or the mean in (0, 1) (Beta)."""
    if dist == "categorical":
        return head.argmax(-1)
    if dist == "gaussian":
        return head
    alpha, beta = D.beta_params(torch.from_numpy(np.ascontiguousarray(head)))
    return (alpha / (alpha + beta)).numpy()


def to_env_action(dist: str, actions: np.ndarray, action_space: gym.Space) -> np.ndarray:
    """Map policy outputs to what the env accepts: integers, clipped Box values, or scaled Beta draws."""
    if dist == "categorical":
        return actions
    low, high = action_space.low, action_space.high
    if dist == "beta":
        return (low + actions * (high - low)).astype(action_space.dtype)
    return np.clip(actions, low, high).astype(action_space.dtype)


def resolve_policy_dist(policy_dist: str, action_space: gym.Space) -> str:
    """Map ``auto`` to the natural distribution and check the choice fits the action space."""
    discrete = isinstance(action_space, gym.spaces.Discrete)
    if policy_dist == "auto":
        return "categorical" if discrete else "gaussian"
    if discrete != (policy_dist == "categorical"):
        kind = "Discrete" if discrete else "Box"
        valid = "categorical" if discrete else "gaussian or beta"
        raise ConfigError(
            f"policy_dist={policy_dist!r} does not fit a {kind} action space; use auto or {valid}"
        )
    return policy_dist


# ----------------------------------------------------------------------------------------------------
# 3. Collecting a rollout
# ----------------------------------------------------------------------------------------------------
class RolloutSamples(NamedTuple):
    """A rollout's samples as torch tensors, shaped (*agents, batch, ...): what the update reads."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor

    def select(self, index: Any) -> RolloutSamples:
        """The same index (a permutation, a minibatch slice, ...) applied to every tensor."""
        return RolloutSamples(*(tensor[index] for tensor in self))


@dataclass(frozen=True)
class Rollout:
    """Storage for one rollout, allocated once and refilled in place every iteration.

    Each array is shaped (n_steps, n_envs, ...) for a single agent, or (n_steps, K, n_envs, ...) for a
    population of K. Filled while acting (numpy), then handed to the update as torch
    tensors that share its memory where the layout allows.
    """

    obs: np.ndarray
    actions: np.ndarray
    logprobs: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    values: np.ndarray

    @classmethod
    def allocate(
        cls, n_steps: int, lead: tuple[int, ...], obs_dim: int, dist: str, action_space: gym.Space
    ) -> Rollout:
        """Zeroed storage of ``n_steps`` steps for agents and envs of shape ``lead``."""
        shape = (n_steps, *lead)
        categorical = dist == "categorical"
        act_shape = () if categorical else tuple(action_space.shape)
        return cls(
            obs=np.zeros((*shape, obs_dim), dtype=np.float32),
            actions=np.zeros((*shape, *act_shape), dtype=np.int64 if categorical else np.float32),
            logprobs=np.zeros(shape, dtype=np.float32),
            rewards=np.zeros(shape, dtype=np.float32),
            dones=np.zeros(shape, dtype=np.float32),
            values=np.zeros(shape, dtype=np.float32),
        )

    def samples(self, advantages: np.ndarray, returns: np.ndarray) -> RolloutSamples:
        """Every sample of the rollout, steps and envs flattened into one batch dimension per agent."""
        n_agent_dims = self.rewards.ndim - 2
        arrays = (self.obs, self.actions, self.logprobs, advantages, returns, self.values)
        return RolloutSamples(*(torch.from_numpy(_agents_first(a, n_agent_dims)) for a in arrays))


def _agents_first(array: np.ndarray, n_agent_dims: int) -> np.ndarray:
    """(n_steps, n_envs, ...) → (n_steps * n_envs, ...), a view, for a single agent (``n_agent_dims``
    0); (n_steps, K, n_envs, ...) → (K, n_steps * n_envs, ...), a copy, for a population (1)."""
    if n_agent_dims not in (0, 1):
        raise ValueError(f"a rollout has at most one agent dimension, got {n_agent_dims}")
    if n_agent_dims == 0:
        return array.reshape(-1, *array.shape[2:])
    moved = np.ascontiguousarray(np.moveaxis(array, 1, 0))
    return moved.reshape(array.shape[1], -1, *array.shape[3:])


def step_envs(
    envs: gym.vector.VectorEnv,
    env_action: np.ndarray,
    tracker: EpisodeTracker,
    reward_normalizer: RewardNormalizer | None,
    final_value: Callable[[np.ndarray], np.ndarray],
    gamma: float | np.floating,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of the training envs: (next observations, rewards as PPO learns them, episode ends).

    Finished episodes are tracked on the raw reward; the reward is then normalised (if enabled). A
    time-limit truncation is not a termination: the truncated step's reward gets ``gamma * V(s_T)``,
    with ``final_value`` mapping the raw final observations to V, so GAE can cut the episode there.
    """
    next_obs, reward, terminated, truncated, infos = envs.step(env_action)
    reward, done = learning_rewards(
        reward, terminated, truncated, infos.get("final_obs"), tracker, reward_normalizer, final_value, gamma
    )
    return next_obs, reward, done


def learning_rewards(
    reward: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    final_obs: np.ndarray | None,
    tracker: EpisodeTracker,
    reward_normalizer: RewardNormalizer | None,
    final_value: Callable[[np.ndarray], np.ndarray],
    gamma: float | np.floating,
) -> tuple[np.ndarray, np.ndarray]:
    """(rewards as PPO learns them, episode ends) from one step's raw results (see :func:`step_envs`);
    ``final_obs``: the envs' ``infos["final_obs"]`` (None when no episode ended)."""
    done = np.logical_or(terminated, truncated)
    tracker.update(reward, done)
    if reward_normalizer is not None:
        reward = reward_normalizer(reward, done)
    reward = reward.astype(np.float32)
    bootstrap = truncated & ~terminated
    if bootstrap.any():
        assert final_obs is not None, "a truncated step without infos['final_obs']"
        last_obs = np.stack([final_obs[i] for i in np.flatnonzero(bootstrap)])
        reward[bootstrap] += gamma * final_value(last_obs)
    return reward, done


# ----------------------------------------------------------------------------------------------------
# 4. Generalised advantage estimation
# ----------------------------------------------------------------------------------------------------
def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    last_values: np.ndarray,
    gamma: float | np.ndarray,
    gae_lambda: float | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns (targets for V) of a rollout, arrays of shape (n_steps, n_envs).

    ``gamma`` and ``gae_lambda`` may be arrays that broadcast against the last axes, e.g. one row per
    member of a population with rollouts of shape (n_steps, K, n_envs) and coefficients (K, 1).

    ``dones[t]`` marks an episode that ended at step t (terminated or truncated): nothing after it is
    propagated back. A truncated step must already carry its bootstrap ``gamma * V(final_obs)`` in
    ``rewards[t]``, so a time limit is not mistaken for a terminal state. ``last_values`` is V of the
    observation after the final step.

        δ_t = r_t + γ (1 − d_t) V(s_{t+1}) − V(s_t),     A_t = δ_t + γ λ (1 − d_t) A_{t+1}
    """
    n_steps = rewards.shape[0]
    # The coefficients in the rollout's precision; γλ is formed before rounding, so per-agent arrays
    # (a population's rows) give exactly what the same plain floats give.
    discount = np.asarray(gamma, dtype=rewards.dtype)
    discount_lambda = np.asarray(np.multiply(gamma, gae_lambda), dtype=rewards.dtype)
    advantages = np.zeros_like(rewards)
    last_gae = np.zeros_like(last_values)
    next_values = last_values
    for t in reversed(range(n_steps)):
        not_done = 1.0 - dones[t]
        delta = rewards[t] + discount * next_values * not_done - values[t]
        last_gae = delta + discount_lambda * not_done * last_gae
        advantages[t] = last_gae
        next_values = values[t]
    return advantages, advantages + values


# ----------------------------------------------------------------------------------------------------
# 5. The clipped surrogate objective
# ----------------------------------------------------------------------------------------------------
class SurrogateLosses(NamedTuple):
    """PPO's loss terms and diagnostics, each averaged over the last (sample) dimension."""

    pg_loss: torch.Tensor
    """Clipped-surrogate policy loss (to minimise)."""
    v_loss: torch.Tensor
    """Half the mean squared error of V against the returns."""
    entropy: torch.Tensor
    """Mean policy entropy."""
    approx_kl: torch.Tensor
    """k3 estimate of KL(old ‖ new) (Schulman 2020); no gradient."""
    clipfrac: torch.Tensor
    """Fraction of samples whose ratio left [1 − clip, 1 + clip]; no gradient."""

    def stacked(self) -> torch.Tensor:
        """The five terms stacked on a new first dimension, in field order."""
        return torch.stack(tuple(self))

    def first_non_finite(self) -> str:
        """Name of the first loss term that is NaN or infinite (``loss`` if none is)."""
        named = {"policy_loss": self.pg_loss, "value_loss": self.v_loss, "entropy": self.entropy}
        return next((k for k, v in named.items() if not bool(torch.isfinite(v).all())), "loss")


class SurrogateTerms(NamedTuple):
    """:func:`surrogate_terms`' result: the losses, and the intermediates their derivatives reuse."""

    losses: SurrogateLosses
    ratio: torch.Tensor
    advantages: torch.Tensor
    """As the policy loss used them (standardised when configured)."""
    pg_loss1: torch.Tensor
    pg_loss2: torch.Tensor
    value_error: torch.Tensor
    """V (clipped when configured) minus the return, per sample."""
    value_step: torch.Tensor | None
    """V minus the rollout's value estimate, per sample, when the value is clipped; else None."""


def surrogate_terms(
    newlogprob: torch.Tensor,
    oldlogprob: torch.Tensor,
    advantages: torch.Tensor,
    newvalue: torch.Tensor,
    oldvalue: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    clip: float | torch.Tensor,
    clip_vf: float | None,
    normalize_advantage: bool,
) -> SurrogateTerms:
    """PPO's loss terms for one minibatch, shaped (..., batch) → (...), with their intermediates.

    Leading dimensions are independent agents (a population); ``clip`` is a number or a tensor that
    broadcasts against them, e.g. shape (K, 1). Advantages are standardised per agent.
    """
    logratio = newlogprob - oldlogprob
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean(-1)
        clipfrac = ((ratio - 1.0).abs() > clip).float().mean(-1)

    if normalize_advantage and advantages.shape[-1] > 1:
        advantages = (advantages - advantages.mean(-1, keepdim=True)) / (
            advantages.std(-1, keepdim=True) + 1e-8
        )

    # Policy loss: the pessimistic (max of negatives) of the unclipped and clipped surrogates.
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean(-1)

    # Value loss, optionally clipped around the rollout's value estimate.
    value_step = None
    if clip_vf is not None:
        value_step = newvalue - oldvalue
        newvalue = oldvalue + torch.clamp(value_step, -clip_vf, clip_vf)
    value_error = newvalue - returns
    v_loss = 0.5 * value_error.pow(2).mean(-1)
    losses = SurrogateLosses(pg_loss, v_loss, entropy.mean(-1), approx_kl, clipfrac)
    return SurrogateTerms(losses, ratio, advantages, pg_loss1, pg_loss2, value_error, value_step)


Coefficient = float | torch.Tensor
"""A loss weight: one number, or one per agent (shape of the leading dimensions, e.g. (K,))."""


def total_loss(out: SurrogateLosses, vf_coef: Coefficient, ent_coef: Coefficient) -> torch.Tensor:
    """The loss a step minimises: policy loss + ``vf_coef`` · value loss − ``ent_coef`` · entropy."""
    loss = out.pg_loss + vf_coef * out.v_loss
    if isinstance(ent_coef, torch.Tensor) or ent_coef > 0:  # a zero keeps the entropy out of backward
        loss = loss - ent_coef * out.entropy
    return loss


class SurrogateStep(NamedTuple):
    """One minibatch's losses (one per agent), and the call that puts the gradient of their sum over
    the agents where ``mask`` holds (default: all) into the weights' ``.grad``."""

    losses: SurrogateLosses
    loss: torch.Tensor
    backward: Callable[[torch.Tensor | None], None]


def autograd_step(
    newvalue: torch.Tensor,
    newlogprob: torch.Tensor,
    entropy: torch.Tensor,
    minibatch: RolloutSamples,
    clip: float | torch.Tensor,
    cfg: PPOConfig,
    vf_coef: Coefficient,
    ent_coef: Coefficient,
) -> SurrogateStep:
    """:func:`surrogate_terms`' losses on outputs computed with autograd; backward through the graph."""
    out = surrogate_terms(
        newlogprob, minibatch.logprobs, minibatch.advantages, newvalue, minibatch.values,
        minibatch.returns, entropy, clip, cfg.clip_range_vf, cfg.normalize_advantage,
    ).losses  # fmt: skip
    loss = total_loss(out, vf_coef, ent_coef)

    def backward(mask: torch.Tensor | None = None) -> None:
        (loss if mask is None else torch.where(mask, loss, 0.0)).sum().backward()

    return SurrogateStep(out, loss, backward)


def written_out_step(
    dist: str,
    head: torch.Tensor,
    newvalue: torch.Tensor,
    log_std: nn.Parameter,
    write_network_grads: Callable[[torch.Tensor, torch.Tensor], None],
    minibatch: RolloutSamples,
    clip: float | torch.Tensor,
    cfg: PPOConfig,
    vf_coef: Coefficient,
    ent_coef: Coefficient,
) -> SurrogateStep:
    """The same losses from outputs computed without autograd; backward writes their gradient:
    :func:`surrogate_gradients` for the head, the value and the log-std, then ``write_network_grads``
    (given d loss / d head and d loss / d value) through the network."""
    grads = surrogate_gradients(
        dist, head, log_std.detach(), newvalue, minibatch, clip, cfg, vf_coef, ent_coef
    )

    def backward(mask: torch.Tensor | None = None) -> None:
        grad_head, grad_value, grad_log_std = grads.head, grads.value, grads.log_std
        if mask is not None:  # a masked agent gets no gradient, whatever its loss (NaN included)
            grad_head = torch.where(mask[:, None, None], grad_head, 0.0)
            grad_value = torch.where(mask[:, None], grad_value, 0.0)
            grad_log_std = torch.where(mask[:, None], grad_log_std, 0.0)
        write_network_grads(grad_head, grad_value)
        if log_std.requires_grad:
            log_std.grad.copy_(grad_log_std)

    return SurrogateStep(grads.losses, grads.loss, backward)


def surrogate_step(
    policy: ActorCritic, minibatch: RolloutSamples, clip: float, cfg: PPOConfig
) -> SurrogateStep:
    """The clipped-surrogate losses of ``minibatch`` under ``policy``, and how to take their gradient.

    Through autograd in general. Where the policy's derivatives are written out (categorical or Gaussian
    actions, tanh or ReLU layers), the same gradient comes from :func:`surrogate_gradients` and
    :meth:`StackedMLP.backward_written_out`, without recording a graph: for PPO's small networks that
    bookkeeping costs about a quarter of a step (bench/results/throughput.md).
    """
    if not policy.writes_out_backward:
        head, newvalue = policy(minibatch.obs)
        newlogprob, entropy = policy.log_prob_entropy(head, minibatch.actions)
        return autograd_step(newvalue, newlogprob, entropy, minibatch, clip, cfg, cfg.vf_coef, cfg.ent_coef)
    output, inputs = policy.net.forward_keeping_inputs(minibatch.obs)

    def write_network_grads(grad_head: torch.Tensor, grad_value: torch.Tensor) -> None:
        grad_output = torch.zeros_like(output)  # padding columns of the narrower head get none
        grad_output[0, :, : policy.head_dim] = grad_head
        grad_output[1, :, 0] = grad_value
        policy.net.backward_written_out(inputs, grad_output)

    head, newvalue = output[0, :, : policy.head_dim], output[1, :, 0]
    return written_out_step(
        policy.dist, head, newvalue, policy.log_std, write_network_grads, minibatch, clip, cfg,
        cfg.vf_coef, cfg.ent_coef,
    )  # fmt: skip


class SurrogateGradients(NamedTuple):
    """:func:`surrogate_gradients`'s result: the losses, and d loss / d each input of it."""

    losses: SurrogateLosses
    loss: torch.Tensor
    head: torch.Tensor
    value: torch.Tensor
    log_std: torch.Tensor


def _per_sample(coefficient: Coefficient) -> Coefficient:
    """A per-agent coefficient (shape (K,)) broadcast against per-sample values (shape (K, batch))."""
    return coefficient.unsqueeze(-1) if isinstance(coefficient, torch.Tensor) else coefficient


@torch.no_grad()
def surrogate_gradients(
    dist: str,
    head: torch.Tensor,
    log_std: torch.Tensor,
    newvalue: torch.Tensor,
    minibatch: RolloutSamples,
    clip: float | torch.Tensor,
    cfg: PPOConfig,
    vf_coef: Coefficient,
    ent_coef: Coefficient,
) -> SurrogateGradients:
    """:func:`surrogate_terms`' losses and :func:`total_loss` for a categorical or Gaussian policy,
    with the loss's derivatives by the actor's head, the value and the log-std, written out.

    Shapes as for :func:`surrogate_terms`: leading agent dimensions, then the batch; ``log_std``
    is (head,) or (K, head). Each derivative is the one autograd takes through the same expressions
    (tests compare them), with its conventions: a clamp passes the gradient on its bounds, and where
    the clipped and unclipped surrogates are equal the maximum splits it between them, which sums to
    the unclipped one's.
    """
    n = head.shape[-2]
    density = _log_density(dist, head, log_std, minibatch.actions)
    terms = surrogate_terms(
        density.log_prob, minibatch.logprobs, minibatch.advantages, newvalue, minibatch.values,
        minibatch.returns, density.entropy, clip, cfg.clip_range_vf, cfg.normalize_advantage,
    )  # fmt: skip
    ratio = terms.ratio

    # d loss / d ratio: the unclipped surrogate's where it is the larger or the clip does not bind.
    inside = (ratio >= 1 - clip) & (ratio <= 1 + clip)
    grad_ratio = torch.where((terms.pg_loss1 > terms.pg_loss2) | inside, -terms.advantages, 0.0) / n
    grad_value = terms.value_error * (_per_sample(vf_coef) / n)
    if terms.value_step is not None:
        grad_value = grad_value * (terms.value_step.abs() <= cfg.clip_range_vf)
    grad_head, grad_log_std = _log_density_gradients(density, grad_ratio * ratio, ent_coef, n)
    out = terms.losses
    return SurrogateGradients(out, total_loss(out, vf_coef, ent_coef), grad_head, grad_value, grad_log_std)


def _log_density(dist: str, head: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> D.LogDensity:
    """log π(a|s) and the entropy with their intermediates; ``log_std`` is one row per agent."""
    if dist == "categorical":
        return D.categorical_log_density(head, actions)
    return D.gaussian_log_density(head, log_std.unsqueeze(-2), actions)


def _log_density_gradients(
    density: D.LogDensity, grad_log_prob: torch.Tensor, ent_coef: Coefficient, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d head, d loss / d log-std) from d loss / d log π(a|s), plus the entropy term's share
    (−``ent_coef`` · mean entropy over ``n`` samples) when its weight can be non-zero."""
    with_entropy = isinstance(ent_coef, torch.Tensor) or ent_coef > 0
    if density.log_p is not None:
        # log π(a) = z_a − logsumexp(z): d/dz = onehot(a) − p; the entropy's d/dz = −p (log p + H).
        p = density.log_p.exp()
        grad_head = -p * grad_log_prob.unsqueeze(-1)
        grad_head.scatter_add_(-1, density.index, grad_log_prob.unsqueeze(-1))
        if with_entropy:
            weight = _per_sample(_per_sample(ent_coef)) / n
            grad_head += weight * p * (density.log_p + density.entropy.unsqueeze(-1))
        return grad_head, torch.zeros(())
    # d log N / d mean = z / σ, d log N / d log σ = z² − 1; the entropy's d/d log σ = 1 per dimension.
    z = density.z
    grad_head = grad_log_prob.unsqueeze(-1) * z * density.inv_std
    grad_log_std = (grad_log_prob.unsqueeze(-1) * (z * z - 1)).sum(-2)
    if with_entropy:
        grad_log_std = grad_log_std - _per_sample(ent_coef)
    return grad_head, grad_log_std


LOSS_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")
"""Names of the update's loss diagnostics, in :class:`SurrogateLosses` field order."""


def one_minibatch(batch: int, batch_size: int) -> bool:
    """Whether one minibatch holds the whole rollout: then the epoch is not shuffled, as the losses are
    means over the minibatch and the order of its samples cannot change them."""
    return batch_size >= batch


def progress_remaining(steps_done: int, total_steps: int) -> float:
    """The fraction of a ``learn`` budget still to go, in [0, 1]: the clock of the annealing schedules."""
    return max(0.0, 1.0 - steps_done / total_steps)


def annealed(config: PPOConfig, remaining: float) -> tuple[float, float]:
    """(learning rate, clip range) of an update with ``remaining`` of the budget to go: each decays
    linearly to 0 when its ``anneal_*`` flag is set, and stays at its configured value otherwise."""
    lr = config.learning_rate * (remaining if config.anneal_lr else 1.0)
    clip = config.clip_range * (remaining if config.anneal_clip_range else 1.0)
    return lr, clip


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 − Var[returns − V] / Var[returns] over a rollout: 1 for a perfect critic, ≤ 0 for one no better
    than a constant; NaN when the returns are constant."""
    var_y = np.var(returns)
    return float("nan") if var_y == 0 else float(1 - np.var(returns - values) / var_y)


def update_diagnostics(
    loss_means: Sequence[float] | None, values: np.ndarray, returns: np.ndarray, lr: float, clip: float
) -> dict[str, float]:
    """What an iteration reports under ``losses/``: the critic's explained variance, the mean of each
    loss term over the minibatch steps taken (NaN when none was), and the learning rate and clip range
    the update used."""
    means = list(loss_means) if loss_means is not None else [float("nan")] * len(LOSS_KEYS)
    return {
        "explained_variance": explained_variance(values, returns),
        **dict(zip(LOSS_KEYS, means, strict=True)),
        "learning_rate": lr,
        "clip_range": clip,
    }


# ----------------------------------------------------------------------------------------------------
# 6. The agent
# ----------------------------------------------------------------------------------------------------
class PPO:
    """A PPO agent bound to one environment id, one config and one seed.

    Training envs are created here; evaluation runs on separate envs seeded per call. Same config and
    seed on CPU give a bit-identical learning curve.
    """

    algorithm = "ppo"
    action_spaces: tuple[type[gym.Space], ...] = (gym.spaces.Discrete, gym.spaces.Box)

    def __init__(
        self,
        env_id: str,
        config: PPOConfig,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        env_backend: str = "gymnasium",
    ) -> None:
        self.env_id = env_id
        self.config = config
        self.seed = seed
        self.env_kwargs = dict(env_kwargs or {})
        self.env_backend = resolve_backend(env_backend, env_id, config.n_envs)
        self.envs = make_vec_env(
            env_id, config.n_envs, seed, config.vectorization, self.env_kwargs, self.env_backend
        )
        try:
            check_spaces(
                "PPO", self.envs.single_observation_space, self.envs.single_action_space, self.action_spaces
            )
            self.action_space = self.envs.single_action_space
            obs_dim = int(self.envs.single_observation_space.shape[0])
            torch.manual_seed(seed)  # network initialisation
            self.policy = ActorCritic(obs_dim, self.action_space, config)
        except Exception:
            self.envs.close()
            raise
        # One flat tensor for all weights: clipping and Adam become single-tensor operations.
        self.flat_params = flatten_parameters(self.policy.parameters())
        first = config.at_step(0)  # scheduled hyperparameters are set again before each iteration
        self.optimizer = FlatAdam(
            self.flat_params, lr=first.learning_rate, eps=config.adam_eps, max_grad_norm=first.max_grad_norm
        )
        self.rng = np.random.default_rng(seed)  # action sampling and minibatch order
        self.obs_normalizer = ObsNormalizer((obs_dim,), config.obs_clip) if config.normalize_obs else None
        self.reward_normalizer = (
            RewardNormalizer(config.n_envs, first.gamma, config.reward_clip)
            if config.normalize_reward
            else None
        )
        self.num_steps = 0
        self._obs: np.ndarray | None = None  # raw observation the next rollout starts from
        self._eval_envs: gym.vector.VectorEnv | None = None

    # --- acting ---------------------------------------------------------------------------------
    def _normalize_obs(self, obs: np.ndarray, update: bool) -> np.ndarray:
        if self.obs_normalizer is None:
            return obs.astype(np.float32, copy=False)
        return self.obs_normalizer(obs, update)

    def _to_env_action(self, actions: np.ndarray) -> np.ndarray:
        return to_env_action(self.policy.dist, actions, self.action_space)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Env actions for a batch of raw observations (normaliser statistics are not updated)."""
        head, _ = self.policy.act_numpy(self._normalize_obs(np.asarray(obs), update=False))
        if deterministic:
            return self._to_env_action(self.policy.deterministic(head))
        return self._to_env_action(self.policy.sample(head, self.rng)[0])

    # --- training -------------------------------------------------------------------------------
    def learn(self, total_steps: int, callback: Callback | None = None) -> TrainState:
        """Train for ``total_steps`` env steps (rounded up to whole rollouts).

        ``callback`` is called after every iteration with the live :class:`TrainState`; it may call
        ``state.request_stop()``. Raises NonFiniteLossError when a loss becomes NaN or infinite.
        """
        cfg = self.config
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
        obs_dim = int(self.envs.single_observation_space.shape[0])
        rollout = Rollout.allocate(cfg.n_steps, (cfg.n_envs,), obs_dim, self.policy.dist, self.action_space)
        if self._obs is None:
            self._obs, _ = self.envs.reset(seed=self.seed)
        tracker = EpisodeTracker(cfg.n_envs)
        state = TrainState(step=self.num_steps, total_steps=total_steps)
        start_steps, start_time = self.num_steps, time.perf_counter()

        while self.num_steps < start_steps + total_steps and not state.stop_requested:
            hp = self._hyperparameters_at(self.num_steps)
            # --- collect a rollout with the current policy, then its advantages ---
            next_obs = self._collect_rollout(rollout, tracker, hp.gamma)
            _, last_values = self.policy.act_numpy(next_obs)
            advantages, returns = compute_gae(
                rollout.rewards, rollout.values, rollout.dones, last_values, hp.gamma, hp.gae_lambda
            )
            # --- optimise the clipped surrogate on the rollout ---
            lr, clip = annealed(hp, progress_remaining(self.num_steps - start_steps, total_steps))
            self.optimizer.lr = lr
            samples = rollout.samples(advantages, returns)
            loss_means = self._update(samples, clip, hp)

            state.step = self.num_steps
            state.iteration += 1
            state.episode_returns, state.episode_lengths = tracker.pop()
            state.losses = update_diagnostics(
                loss_means, samples.values.numpy(), samples.returns.numpy(), lr, clip
            )
            state.sps = (self.num_steps - start_steps) / max(time.perf_counter() - start_time, 1e-9)
            if callback is not None:
                callback(state)
        return state

    def _hyperparameters_at(self, step: int) -> PPOConfig:
        """The config's constants at env step ``step``, with the optimizer's gradient clip and the reward
        normaliser's discount set to them (they change only where the config schedules them)."""
        hp = self.config.at_step(step)
        self.optimizer.max_grad_norm = hp.max_grad_norm
        if self.reward_normalizer is not None:
            self.reward_normalizer.gamma = hp.gamma
        return hp

    def _collect_rollout(self, rollout: Rollout, tracker: EpisodeTracker, gamma: float) -> np.ndarray:
        """Fill ``rollout`` with ``n_steps`` steps of every training env under the current policy
        (``gamma`` discounts the bootstrap of a time-limit truncation).

        Returns the observation after the last step, as the network sees it (for V's bootstrap).
        """
        obs = self._normalize_obs(self._obs, update=True)
        for t in range(self.config.n_steps):
            head, value = self.policy.act_numpy(obs)
            action, logprob = self.policy.sample(head, self.rng)
            next_obs, reward, done = step_envs(
                self.envs, self._to_env_action(action), tracker, self.reward_normalizer,
                self._value_of_raw_obs, gamma,
            )  # fmt: skip
            rollout.obs[t], rollout.actions[t], rollout.logprobs[t] = obs, action, logprob
            rollout.rewards[t], rollout.dones[t], rollout.values[t] = reward, done, value
            self._obs = next_obs
            obs = self._normalize_obs(next_obs, update=True)
        self.num_steps += self.config.n_envs * self.config.n_steps
        return obs

    def _value_of_raw_obs(self, obs: np.ndarray) -> np.ndarray:
        """V of raw observations (normaliser statistics used, not updated)."""
        return self.policy.act_numpy(self._normalize_obs(obs, update=False))[1]

    def _update(self, samples: RolloutSamples, clip: float, hp: PPOConfig) -> list[float] | None:
        """``n_epochs`` passes of minibatch steps on one flattened rollout, with the loss weights of
        ``hp`` (the config at this iteration's step).

        Returns the mean of each loss term over the steps taken (None when the first step was over
        the KL limit).
        """
        stats: list[torch.Tensor] = []  # per minibatch step: the stacked loss terms
        for _epoch in range(self.config.n_epochs):
            if not self._update_epoch(samples, clip, hp, stats):
                break
        return torch.stack(stats).mean(0).tolist() if stats else None

    def _update_epoch(
        self, samples: RolloutSamples, clip: float, cfg: PPOConfig, stats: list[torch.Tensor]
    ) -> bool:
        """One pass of minibatch steps over the shuffled rollout, appending each step's loss terms to
        ``stats``; False when the KL limit ended the update."""
        batch = samples.obs.shape[0]
        # Shuffle once per epoch; each minibatch is then a contiguous slice (a view, no copy).
        epoch = (
            samples
            if one_minibatch(batch, cfg.batch_size)
            else samples.select(torch.from_numpy(self.rng.permutation(batch)))
        )
        for start in range(0, batch, cfg.batch_size):
            minibatch = epoch.select(slice(start, start + cfg.batch_size))
            out, loss, backward = surrogate_step(self.policy, minibatch, clip, cfg)
            if cfg.target_kl is not None and out.approx_kl > 1.5 * cfg.target_kl:
                return False  # as SB3: skip this step and end the update
            if not math.isfinite(loss.item()):
                raise NonFiniteLossError(out.first_non_finite(), self.num_steps)

            backward()
            self.optimizer.step()  # clips the global gradient norm to max_grad_norm first
            stats.append(out.stacked().detach())
        return True

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, n_episodes: int, seed: int, deterministic: bool = True, n_envs: int = 4) -> EvalResult:
        """Run ``n_episodes`` complete episodes on separate evaluation envs seeded with ``seed``.

        Episodes are split evenly across ``min(n_envs, n_episodes)`` envs, so the result depends only
        on the policy, ``seed`` and these counts. Normaliser statistics are used but not updated.
        """
        if n_episodes < 1:
            raise ConfigError(f"n_episodes must be >= 1, got {n_episodes}")
        self._eval_envs = eval_envs(
            self._eval_envs, self.env_id, min(n_envs, n_episodes), seed, self.env_kwargs, self.env_backend
        )
        return evaluate_episodes(
            self._eval_envs, lambda obs: self.predict(obs, deterministic), n_episodes, seed
        )

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write weights, optimizer state, normaliser statistics and the config to ``path``."""
        payload: dict[str, Any] = {
            **agent_header(self),
            "num_steps": self.num_steps,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        if self.obs_normalizer is not None:
            payload["obs_rms"] = _rms_to_tensors(self.obs_normalizer.rms.state())
        if self.reward_normalizer is not None:
            payload["reward_rms"] = _rms_to_tensors(self.reward_normalizer.rms.state())
        write_checkpoint(payload, path)

    @classmethod
    def load(cls, path: str | Path, seed: int | None = None) -> PPO:
        """Rebuild an agent saved by :meth:`save` (safe loading: tensors and plain data only)."""
        payload, config, seed = read_checkpoint(path, PPOConfig, seed)
        agent = cls(payload["env_id"], config, seed, payload["env_kwargs"], payload["env_backend"])
        agent.policy.load_state_dict(payload["policy"])
        agent.optimizer.load_state_dict(payload["optimizer"])
        agent.num_steps = int(payload["num_steps"])
        if agent.obs_normalizer is not None:
            agent.obs_normalizer.rms.load_state(_rms_from_tensors(payload["obs_rms"]))
        if agent.reward_normalizer is not None:
            agent.reward_normalizer.rms.load_state(_rms_from_tensors(payload["reward_rms"]))
        return agent

    def close(self) -> None:
        """Close the training and evaluation envs."""
        self.envs.close()
        if self._eval_envs is not None:
            self._eval_envs.close()

    def __enter__(self) -> PPO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rms_to_tensors(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.items()}


def _rms_from_tensors(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state.items()}
