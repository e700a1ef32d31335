"""D3QN: dueling (Wang et al. 2016) double (van Hasselt et al. 2016) deep Q-learning (Mnih et al. 2015)
for discrete actions, with three of Rainbow's additions (Hessel et al. 2018) as switches: n-step
returns, proportional prioritized replay and noisy linear layers.

Reads top to bottom like the papers: the config; the Q-network (a torso and either one Q head or the
dueling value and advantage streams, optionally noisy); then the agent — act ε-greedily (or greedily on
a noisy net), store (n-step) transitions, and per gradient step: build the double-Q target from the
target network, regress Q(s, a) on it with the Huber loss (importance-weighted under prioritized
replay), clip the gradient, step Adam, and refresh priorities; every ``target_update_interval`` env
steps, copy (or Polyak-average) the online weights into the target network.

Turning ``n_step=1``, ``prioritized=False`` and ``noisy=False`` gives dueling double DQN; adding
``dueling=False`` and ``double_q=False`` gives the DQN of Stable-Baselines3, whose defaults these are.
Names follow CleanRL (``td_target``, ``old_val``) where it has them.

Speed, without changing the algorithm: acting runs in numpy on zero-copy views of the weights; the
online network evaluates ``s`` and ``s'`` of a double-Q batch in one call; Adam and gradient clipping
run on one flat buffer (:class:`FlatAdam`); the hard target update is one ``copy_``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from algorithms.common.config import (
    require_choice,
    require_in_range,
    require_int,
    require_positive,
)
from algorithms.common.errors import NonFiniteLossError
from algorithms.common.networks import NUMPY_ACTIVATIONS, StackedMLP, activation_fn
from algorithms.common.nstep import NStepAccumulator
from algorithms.common.off_policy import (
    OffPolicyAgent,
    OffPolicyConfig,
    polyak_update,
    stats_to_dict,
)
from algorithms.common.optim import FlatAdam, flatten_parameters
from algorithms.common.prioritized import PrioritizedSampler
from algorithms.common.types import VecStep


# ----------------------------------------------------------------------------------------------------
# 1. Hyperparameters
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class D3QNConfig(OffPolicyConfig):
    """D3QN hyperparameters. Defaults are Stable-Baselines3's DQN ones, with the dueling head and
    double-Q targets on; invalid values raise ConfigError at once.

    The fields every off-policy algorithm has, and their checks, are :class:`OffPolicyConfig`'s; this
    class declares D3QN's own and redeclares those whose default differs.
    """

    learning_rate: float = 1e-4
    """Adam step size. Typical 1e-5 … 3e-3 (log scale)."""
    batch_size: int = 32
    """Transitions per gradient step. Typical 32 … 512."""
    tau: float = 1.0
    """Target update coefficient in (0, 1]: 1 copies the online weights (hard update), less averages."""
    train_freq: int = 4
    """Vectorised env steps between two training phases. Typical 1 … 256."""
    target_update_interval: int = 10_000
    """Env steps between two target-network updates. Typical 1 … 20 000 (hard updates: 250 … 10 000)."""
    exploration_fraction: float = 0.1
    """Share of the training budget over which ε falls linearly from its initial to its final value."""
    exploration_initial_eps: float = 1.0
    """ε at the start of training, in [0, 1]."""
    exploration_final_eps: float = 0.05
    """ε after ``exploration_fraction`` of the budget, in [0, 1]. Typical 0.01 … 0.2."""
    max_grad_norm: float = 10.0
    """Clip the global gradient L2 norm to this. Typical 0.5 … 10."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the torso."""
    dueling: bool = True
    """Dueling head: Q(s, a) = V(s) + A(s, a) − mean_a' A(s, a') instead of one Q output per action."""
    double_q: bool = True
    """Double-Q target: the online net picks argmax_a' Q(s', a'), the target net values it."""
    n_step: int = 1
    """Return horizon of the stored transitions (cut at episode ends). Typical 1 … 5."""
    prioritized: bool = False
    """Proportional prioritized replay with importance weights."""
    per_alpha: float = 0.6
    """Prioritisation exponent in [0, 1] (0: uniform). Typical 0.4 … 0.7."""
    per_beta: float = 0.4
    """Initial importance-weight exponent in [0, 1], annealed linearly to 1 over each ``learn`` call."""
    per_eps: float = 1e-6
    """Added to |TD error| to form a priority, > 0."""
    noisy: bool = False
    """Factorised-Gaussian noisy linear layers (Fortunato et al. 2018) explore instead of ε-greedy."""
    noisy_sigma: float = 0.5
    """Initial noise scale σ₀ of the noisy layers (σ = σ₀ / √fan_in), > 0. Typical 0.1 … 0.5."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_int("target_update_interval", self.target_update_interval, 1)
        require_in_range("exploration_fraction", self.exploration_fraction, 0.0, 1.0)
        require_in_range("exploration_initial_eps", self.exploration_initial_eps, 0.0, 1.0)
        require_in_range("exploration_final_eps", self.exploration_final_eps, 0.0, 1.0)
        require_positive("max_grad_norm", self.max_grad_norm)
        for name in ("dueling", "double_q", "prioritized", "noisy"):
            require_choice(name, getattr(self, name), (True, False))
        require_int("n_step", self.n_step, 1)
        require_in_range("per_alpha", self.per_alpha, 0.0, 1.0)
        require_in_range("per_beta", self.per_beta, 0.0, 1.0)
        require_positive("per_eps", self.per_eps)
        require_positive("noisy_sigma", self.noisy_sigma)


# ----------------------------------------------------------------------------------------------------
# 2. The Q-network
# ----------------------------------------------------------------------------------------------------
def dueling_q_values(out: torch.Tensor) -> torch.Tensor:
    """Q from a dueling head's output ``[V | A_1 … A_n]`` (last axis): V + A − mean(A).

    Subtracting the mean advantage makes V and A identifiable (Wang et al. 2016, eq. 9).
    """
    value, advantage = out[..., :1], out[..., 1:]
    return value + advantage - advantage.mean(-1, keepdim=True)


def dueling_q_gradient(grad_q: torch.Tensor) -> torch.Tensor:
    """d loss / d ``[V | A]`` from d loss / d Q through :func:`dueling_q_values`: V gets the sum over the
    actions, A_j its own share less the mean share."""
    return torch.cat((grad_q.sum(-1, keepdim=True), grad_q - grad_q.mean(-1, keepdim=True)), dim=-1)


def huber_td_gradient(
    old_val: torch.Tensor, td_target: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """d loss / d Q(s, a) of the mean (importance-weighted) Huber loss with δ = 1, per sample: the TD
    error clamped to [−1, 1], over the batch size."""
    grad = torch.clamp(old_val - td_target, -1.0, 1.0) / old_val.shape[0]
    return grad if weights is None else grad * weights


def dueling_q_values_numpy(out: np.ndarray) -> np.ndarray:
    """:func:`dueling_q_values` in numpy, for acting."""
    value, advantage = out[..., :1], out[..., 1:]
    return value + advantage - advantage.mean(-1, keepdims=True)


def td_targets(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    discounts: torch.Tensor | float,
    next_q_target: torch.Tensor,
    next_q_online: torch.Tensor | None,
) -> torch.Tensor:
    """y = R + γ^k (1 − d) Q'(s', a*) for a batch.

    a* = argmax_a Q(s', a) of the online net when ``next_q_online`` is given (double Q-learning: the
    online net selects, the target net evaluates), else of the target net itself (DQN's max).
    ``discounts`` is γ^k per transition (n-step) or the scalar γ.
    """
    if next_q_online is not None:
        next_q = next_q_target.gather(1, next_q_online.argmax(1, keepdim=True))[:, 0]
    else:
        next_q = next_q_target.amax(1)
    return rewards + discounts * (1.0 - terminated) * next_q


class NoisyLinear(nn.Module):
    """y = (μ_w + σ_w ⊙ ε_w) x + μ_b + σ_b ⊙ ε_b with factorised noise ε_w = f(ε_out) f(ε_in)ᵀ,
    f(x) = sign(x) √|x| (Fortunato et al. 2018, section 3.2).

    The noise is held in buffers and changes only in :meth:`reset_noise`; ``noise=False`` in
    :meth:`forward` uses the mean weights (for evaluation).
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features), sigma0 * bound))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), sigma0 * bound))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))

    def reset_noise(self, generator: torch.Generator) -> None:
        """Draw fresh factorised noise."""
        for eps in (self.eps_in, self.eps_out):
            x = torch.randn(eps.shape, generator=generator)
            eps.copy_(x.sign() * x.abs().sqrt())

    def forward(self, x: torch.Tensor, noise: bool = True) -> torch.Tensor:
        if not noise:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        return F.linear(x, weight, self.bias_mu + self.bias_sigma * self.eps_out)


class NoisyMLP(nn.Module):
    """An MLP whose every layer is a :class:`NoisyLinear` (the NoisyNet variant of the Q-network)."""

    def __init__(
        self, in_dim: int, hidden: tuple[int, ...], out_dim: int, activation: str, sigma0: float
    ) -> None:
        super().__init__()
        sizes = (in_dim, *hidden, out_dim)
        self.layers = nn.ModuleList(
            NoisyLinear(fan_in, fan_out, sigma0) for fan_in, fan_out in itertools.pairwise(sizes)
        )
        self.activation = activation
        self.act = activation_fn(activation)

    def reset_noise(self, generator: torch.Generator) -> None:
        """Fresh noise in every layer."""
        for layer in self.layers:
            layer.reset_noise(generator)

    def forward(self, x: torch.Tensor, noise: bool = True) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, noise)
            if i < last:
                x = self.act(x)
        return x

    def forward_numpy(self, x: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """The same function in numpy for acting: with fresh factorised noise from ``rng`` in every
        layer, or with the mean weights when ``rng`` is None. Leaves the torch noise buffers alone."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            weight = layer.weight_mu.detach().numpy()
            bias = layer.bias_mu.detach().numpy()
            if rng is not None:
                eps_in, eps_out = (
                    np.sign(e) * np.sqrt(np.abs(e))
                    for e in (
                        rng.standard_normal(weight.shape[1], dtype=np.float32),
                        rng.standard_normal(weight.shape[0], dtype=np.float32),
                    )
                )
                weight = weight + layer.weight_sigma.detach().numpy() * np.outer(eps_out, eps_in)
                bias = bias + layer.bias_sigma.detach().numpy() * eps_out
            x = x @ weight.T + bias
            if i < last:
                x = NUMPY_ACTIVATIONS[self.activation](x)
        return x


class QNetwork:
    """Q(s, ·) for every action: a torso MLP and a head of ``n_actions`` outputs, or ``1 + n_actions``
    (value and advantages) when dueling. Plain layers are one :class:`StackedMLP` member with
    nn.Linear's initialisation (as SB3's DQN); noisy layers a :class:`NoisyMLP`."""

    def __init__(self, obs_dim: int, n_actions: int, config: D3QNConfig) -> None:
        self.dueling = config.dueling
        out_dim = n_actions + 1 if config.dueling else n_actions
        self.net: nn.Module
        if config.noisy:
            self.net = NoisyMLP(obs_dim, config.net_arch, out_dim, config.activation, config.noisy_sigma)
        else:
            self.net = StackedMLP(1, obs_dim, config.net_arch, (out_dim,), config.activation, False, (1.0,))

    def parameters(self) -> list[nn.Parameter]:
        """The trainable weights, in a fixed order (flattened into one buffer by the agent)."""
        return list(self.net.parameters())

    def reset_noise(self, generator: torch.Generator) -> None:
        """Fresh noise for a noisy network (no-op otherwise)."""
        if isinstance(self.net, NoisyMLP):
            self.net.reset_noise(generator)

    def __call__(self, obs: torch.Tensor, noise: bool = True) -> torch.Tensor:
        """Q-values, shape (B, n_actions)."""
        out = self.net(obs, noise) if isinstance(self.net, NoisyMLP) else self.net(obs)[0]
        return dueling_q_values(out) if self.dueling else out

    @property
    def writes_out_backward(self) -> bool:
        """Whether :meth:`q_with_backward` covers this network: plain layers, tanh or ReLU."""
        return isinstance(self.net, StackedMLP) and self.net.writes_out_backward

    def q_with_backward(self, obs: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], None]]:
        """Q-values computed without autograd, and the call that back-propagates d loss / d Q (same
        shape) into the weights' ``.grad``, written out: for DQN's small network and batch, recording
        the graph costs more than the arithmetic (bench/results/throughput.md)."""
        assert isinstance(self.net, StackedMLP)
        out, inputs = self.net.forward_keeping_inputs(obs)
        net = self.net

        def backward(grad_q: torch.Tensor) -> None:
            grad_out = dueling_q_gradient(grad_q) if self.dueling else grad_q
            net.backward_written_out(inputs, grad_out.unsqueeze(0))

        return (dueling_q_values(out[0]) if self.dueling else out[0]), backward

    def q_numpy(self, obs: np.ndarray, noise_rng: np.random.Generator | None = None) -> np.ndarray:
        """Q-values for acting, in numpy without autograd. A noisy net draws fresh noise from
        ``noise_rng`` (None: its mean weights); plain layers ignore it."""
        obs = obs.astype(np.float32, copy=False)
        if isinstance(self.net, NoisyMLP):
            out = self.net.forward_numpy(obs, noise_rng)
        else:
            out = self.net.forward_numpy(obs)[0]
        return dueling_q_values_numpy(out) if self.dueling else out


# ----------------------------------------------------------------------------------------------------
# 3. The agent
# ----------------------------------------------------------------------------------------------------
class D3QN(OffPolicyAgent):
    """A D3QN agent bound to one environment id, one config and one seed.

    Training envs are created here; evaluation runs on separate envs seeded per call. Same config and
    seed on CPU give a bit-identical learning curve.
    """

    algorithm = "d3qn"
    config_cls = D3QNConfig
    action_spaces: tuple[type[gym.Space], ...] = (gym.spaces.Discrete,)
    loss_keys = ("td_loss", "q_values", "epsilon")

    def __init__(
        self,
        env_id: str,
        config: D3QNConfig,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        env_backend: str = "gymnasium",
    ) -> None:
        self._setup(env_id, config, seed, env_kwargs, env_backend, store_discounts=config.n_step > 1)
        obs_dim, n_actions = self.runner.obs_dim, self.runner.n_actions
        torch.manual_seed(seed)  # network initialisation
        self.q_network = QNetwork(obs_dim, n_actions, config)
        self.target_network = QNetwork(obs_dim, n_actions, config)
        self.q_flat = flatten_parameters(self.q_network.parameters())
        self.target_flat = flatten_parameters(self.target_network.parameters())
        self.target_flat.requires_grad_(False)
        for p in self.target_network.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.target_flat.copy_(self.q_flat)
        self.optimizer = FlatAdam(self.q_flat, lr=config.learning_rate, max_grad_norm=config.max_grad_norm)
        self.noise_generator = torch.Generator().manual_seed(seed)
        self.nstep = (
            NStepAccumulator(config.n_step, config.gamma, config.n_envs, obs_dim, 1)
            if config.n_step > 1
            else None
        )
        self.sampler = (
            PrioritizedSampler(config.buffer_size, config.per_alpha, config.per_eps)
            if config.prioritized
            else None
        )
        self.target_updates = 0  # target refreshes so far (one per target_update_interval env steps)
        self._schedule = (0, 1)  # (first env step, env steps) of the current learn call

    # --- schedules ------------------------------------------------------------------------------
    def _progress(self) -> float:
        """Share of the current ``learn`` call's budget done, in [0, 1]."""
        start, total = self._schedule
        return min(1.0, max(0.0, (self.runner.num_steps - start) / total))

    @property
    def epsilon(self) -> float:
        """Current ε of ε-greedy: linear from initial to final over ``exploration_fraction`` (0 if noisy)."""
        cfg = self.config
        if cfg.noisy:
            return 0.0
        if cfg.exploration_fraction == 0.0:
            return cfg.exploration_final_eps
        fraction = min(1.0, self._progress() / cfg.exploration_fraction)
        start, end = cfg.exploration_initial_eps, cfg.exploration_final_eps
        return start + fraction * (end - start)

    def _beta(self) -> float:
        """Importance-weight exponent, annealed linearly from ``per_beta`` to 1 over the budget."""
        return self.config.per_beta + self._progress() * (1.0 - self.config.per_beta)

    # --- acting ---------------------------------------------------------------------------------
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Greedy action indices for a batch of observations (mean weights of a noisy net); with
        ``deterministic=False``, the exploration policy instead."""
        if not deterministic:
            return self._explore(np.asarray(obs))
        return self.q_network.q_numpy(np.asarray(obs)).argmax(-1)

    def _explore(self, obs: np.ndarray) -> np.ndarray:
        if self.config.noisy:  # the noise explores: fresh noise every step, then greedy
            return self.q_network.q_numpy(obs, self.runner.rng).argmax(-1)
        actions = self.q_network.q_numpy(obs).argmax(-1)
        rng = self.runner.rng
        explore = rng.random(actions.shape[0]) < self.epsilon
        if explore.any():
            actions = np.where(explore, rng.integers(0, self.runner.n_actions, actions.shape[0]), actions)
        return actions

    # --- storing --------------------------------------------------------------------------------
    def _store(self, step: VecStep) -> None:
        """Add one vectorised step to the replay: as n-step windows and/or with maximal priority."""
        buffer = self.runner.buffer
        if self.nstep is not None:
            t = self.nstep.add(step)
            rows = buffer.add(t.obs, t.actions, t.returns, t.terminated, t.next_obs, t.discounts)
        else:
            rows = buffer.add(step.obs, step.actions, step.rewards, step.terminated, step.next_obs)
        if self.sampler is not None and rows.size:
            self.sampler.on_add(rows)

    # --- training -------------------------------------------------------------------------------
    def _start_learning(self, total_steps: int) -> None:
        """The ε and β schedules run over each ``learn`` call's budget."""
        self._schedule = (self.runner.num_steps, max(1, total_steps))

    def _custom_store(self) -> bool:
        return self.nstep is not None or self.sampler is not None

    def _update_target(self) -> None:
        """Refresh the target network once per ``target_update_interval`` env steps passed."""
        due = self.runner.num_steps // self.config.target_update_interval
        if due > self.target_updates:
            polyak_update(self.target_flat, self.q_flat, self.config.tau)
            self.target_updates = due

    def _train(self, gradient_steps: int) -> None:
        """``gradient_steps`` Q-learning updates, each on a fresh minibatch from the replay buffer."""
        cfg = self.config
        rng, buffer = self.runner.rng, self.runner.buffer
        batch_size = cfg.batch_size
        self._update_target()
        for _ in range(gradient_steps):
            if self.sampler is not None:
                indices, weights_np = self.sampler.sample(batch_size, buffer.size, self._beta(), rng)
                weights = torch.from_numpy(weights_np)
            else:
                indices = buffer.sample_indices(batch_size, rng)
                weights = None
            b = buffer.gather(indices)
            actions = b.actions[:, 0].long()
            discounts = b.discounts if b.discounts is not None else cfg.gamma
            if cfg.noisy:
                self.q_network.reset_noise(self.noise_generator)
                self.target_network.reset_noise(self.noise_generator)

            # Online Q on s (its gradient taken below) and, for the double-Q argmax, on s' — one call.
            online_obs = torch.cat((b.observations, b.next_observations)) if cfg.double_q else b.observations
            q_online, backward = self._online_q(online_obs)
            q_all = q_online[:batch_size]
            next_q_online = q_online[batch_size:].detach() if cfg.double_q else None

            with torch.no_grad():
                next_q_target = self.target_network(b.next_observations)
                td_target = td_targets(b.rewards, b.terminated, discounts, next_q_target, next_q_online)

            old_val = q_all.gather(1, actions[:, None])[:, 0]
            elementwise = F.smooth_l1_loss(old_val, td_target, reduction="none")  # Huber, δ = 1
            loss = elementwise.mean() if weights is None else (weights * elementwise).mean()
            if not math.isfinite(loss.item()):
                raise NonFiniteLossError("td_loss", self.runner.num_steps)
            if backward is None:
                loss.backward()
            else:  # the same gradient, written out: only Q(s, a) of the first batch_size rows has one
                grad_q = torch.zeros_like(q_online)
                grad_q[:batch_size].scatter_(
                    1, actions[:, None], huber_td_gradient(old_val, td_target, weights)[:, None]
                )
                backward(grad_q)
            self.optimizer.step()
            if self.sampler is not None:
                self.sampler.update_priorities(indices, (old_val.detach() - td_target).numpy())
            self.n_updates += 1
            self._stats.append(torch.stack((loss.detach(), old_val.detach().mean())))

    def _online_q(self, obs: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], None] | None]:
        """Online Q-values of ``obs`` and the call that writes out their backward, or Q-values recorded
        by autograd (and None) for a network whose backward is not written out (noisy layers, other
        activations)."""
        if self.q_network.writes_out_backward:
            return self.q_network.q_with_backward(obs)
        return self.q_network(obs), None

    def _pop_losses(self) -> dict[str, float]:
        losses = stats_to_dict(self._stats, self.loss_keys[:2])  # epsilon is no per-update stat
        self._stats = []
        return losses | {"epsilon": self.epsilon}

    # --- persistence (OffPolicyAgent.save / load; the replay buffer and priorities are not saved) ---
    def _extra_state(self) -> dict[str, Any]:
        return {"target_updates": self.target_updates}

    def _restore_extra_state(self, payload: Mapping[str, Any]) -> None:
        self.target_updates = int(payload["target_updates"])

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"q": self.q_flat, "target": self.target_flat}

    def _optimizers(self) -> dict[str, FlatAdam]:
        return {"q": self.optimizer}
