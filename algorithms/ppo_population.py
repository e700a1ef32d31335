"""A population of PPO agents trained in lockstep as one batched model.

On a CPU, a small PPO spends most of its time in the fixed cost of each call on tiny tensors, not in
arithmetic. K agents that share a network shape, a rollout shape and an update schedule can instead be
stacked: one batched matmul per layer computes all K actors and K critics, one backward pass yields all
K gradients, and one optimizer call updates all K weight sets. Each member is still an ordinary PPO
(:mod:`algorithms.ppo`) with its own weights, Adam state, envs, random generator and normalisers, and
its own values of the hyperparameters in :data:`MEMBER_HYPERPARAMETERS`; nothing flows between members.
The envs of all K members are one batched env of K × n_envs envs (member k owns block k), stepped in
one call. A population of one computes what :class:`algorithms.ppo.PPO` computes for the same config and
seed; so does each member, on a backend that reseeds part of its envs (all but EnvPool, see
:mod:`algorithms.common.env_backends`).

Slots are filled with :meth:`PopulationPPO.start_member` and emptied with :meth:`~PopulationPPO.stop_member`;
restarting a slot gives it fresh weights, optimizer state, episodes in its own envs (reseeded) and
generator, leaving the others as they were (a tuner refills a pruned trial's slot this way). The loop:
:meth:`~PopulationPPO.learn_iteration`
collects one rollout per active member and updates them all; :meth:`~PopulationPPO.evaluate` runs
evaluation episodes for several members side by side.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from algorithms.common import distributions as D
from algorithms.common.env_backends import resolve_backend
from algorithms.common.envs import EpisodeTracker, EvalEpisodes, check_spaces, eval_envs, make_vec_env
from algorithms.common.errors import ConfigError, NonFiniteLossError
from algorithms.common.networks import StackedMLP
from algorithms.common.normalize import ObsNormalizer, RewardNormalizer
from algorithms.common.optim import MemberAdam, flatten_by_member
from algorithms.common.types import EvalResult, TrainState
from algorithms.ppo import (
    LOSS_KEYS,
    PPO,
    SCHEDULABLE_FIELDS,
    ActorCritic,
    PPOConfig,
    Rollout,
    RolloutSamples,
    SurrogateLosses,
    SurrogateStep,
    annealed,
    autograd_step,
    compute_gae,
    deterministic_actions,
    learning_rewards,
    one_minibatch,
    progress_remaining,
    resolve_policy_dist,
    sample_actions,
    to_env_action,
    update_diagnostics,
    writes_out_backward,
    written_out_step,
)

MEMBER_HYPERPARAMETERS = SCHEDULABLE_FIELDS
"""PPOConfig fields each member sets for itself (each a constant or a schedule). Every other field
(n_envs, n_steps, batch_size, n_epochs, net_arch, normalisation, ...) is structural: shared by the whole
population."""

WRITE_GRADS_MIN_WEIGHTS = 1 << 18
"""Populations whose networks hold at least this many weights in all (1 MiB of float32, the size of a
core's L2 cache) have their gradients written in place (``StackedMLP(write_grads=True)``): it saves
reading and writing the gradient buffer several times an update, which pays for large networks, while
its Python-level backward costs more than that saves for small ones (timings in
bench/results/sweep_speed.md, "Gradients written in place for large populations")."""


def structural_fields(config: PPOConfig) -> dict[str, Any]:
    """The config's structural settings: every field but :data:`MEMBER_HYPERPARAMETERS`."""
    values = dataclasses.asdict(config)
    return {k: v for k, v in values.items() if k not in MEMBER_HYPERPARAMETERS}


@dataclass
class Member:
    """One slot's agent: what a single :class:`~algorithms.ppo.PPO` would hold, minus the weights.

    Attributes:
        config: the member's full config (its structural fields equal the population's).
        seed: seeds the envs, the network initialisation and the generator.
        total_steps: the member's budget in env steps; it stops rolling out once reached.
        env_block: its envs' indices in the population's batched training envs.
        rng: action sampling and minibatch order.
        obs: raw observation its next rollout starts from.
        tracker: its finished training episodes.
        obs_normalizer: running observation statistics, when the population normalises observations.
        reward_normalizer: running return statistics, when the population normalises rewards.
        num_steps: env steps trained so far.
        iteration: rollouts + updates done so far.
        started: ``time.perf_counter()`` when the member was started (for its steps per second).
        eval_envs: its evaluation envs, kept between evaluations.
    """

    config: PPOConfig
    seed: int
    total_steps: int
    env_block: slice
    rng: np.random.Generator
    obs: np.ndarray
    tracker: EpisodeTracker
    obs_normalizer: ObsNormalizer | None
    reward_normalizer: RewardNormalizer | None
    num_steps: int = 0
    iteration: int = 0
    started: float = field(default_factory=time.perf_counter)
    eval_envs: gym.vector.VectorEnv | None = None

    @property
    def finished(self) -> bool:
        """The member has used its budget."""
        return self.num_steps >= self.total_steps

    def normalize_obs(self, obs: np.ndarray, update: bool) -> np.ndarray:
        """Observations as the network sees them (standardised when the population normalises)."""
        if self.obs_normalizer is None:
            return obs.astype(np.float32, copy=False)
        return self.obs_normalizer(obs, update)

    def close(self) -> None:
        """Close the member's evaluation envs (its training envs belong to the population)."""
        if self.eval_envs is not None:
            self.eval_envs.close()


@dataclass(frozen=True)
class IterationResult:
    """What one :meth:`PopulationPPO.learn_iteration` did.

    Attributes:
        states: per slot that trained, its :class:`TrainState` after the iteration (step, episodes,
            losses, steps per second), as a single PPO's callback would see it.
        diverged: slots whose loss became NaN or infinite; they did not update, and are now empty.
    """

    states: dict[int, TrainState]
    diverged: dict[int, NonFiniteLossError]


class PopulationPPO:
    """K PPO agents on one environment id, sharing a structure, trained as one batched model.

    Args:
        env_id: the Gymnasium id every member trains on.
        config: the structural settings (its member hyperparameters are only defaults).
        n_members: K, the number of slots.
        env_kwargs: keyword arguments for ``gymnasium.make``.
        env_backend: who steps the K × n_envs training envs and the evaluation envs (``auto`` resolved
            for ``env_id``).
        env_seed: seeds the batched env once, when made; each member's block is then reseeded with
            its own seed when it starts (except on EnvPool, which continues each env's stream).
    """

    algorithm = "ppo"
    action_spaces: tuple[type[gym.Space], ...] = PPO.action_spaces

    def __init__(
        self,
        env_id: str,
        config: PPOConfig,
        n_members: int,
        env_kwargs: Mapping[str, Any] | None = None,
        env_backend: str = "gymnasium",
        env_seed: int = 0,
    ) -> None:
        if not isinstance(n_members, int) or isinstance(n_members, bool) or n_members < 1:
            raise ConfigError(f"n_members must be an integer >= 1, got {n_members!r}")
        self.env_id = env_id
        self.config = config
        self.n_members = n_members
        self.env_kwargs = dict(env_kwargs or {})
        self.env_backend = resolve_backend(env_backend, env_id, n_members * config.n_envs)
        self.envs = make_vec_env(env_id, n_members * config.n_envs, env_seed, config.vectorization,
                                 self.env_kwargs, self.env_backend)  # fmt: skip
        try:
            spaces = (self.envs.single_observation_space, self.envs.single_action_space)
            check_spaces("PPO", *spaces, self.action_spaces)
            self.envs.reset(seed=env_seed)  # a partial reset needs every env started once
        except Exception:
            self.envs.close()
            raise
        self.action_space = self.envs.single_action_space
        self.obs_dim = int(self.envs.single_observation_space.shape[0])
        self._idle_action = idle_action(self.action_space)
        self.dist = resolve_policy_dist(config.policy_dist, self.action_space)
        head_dim = ActorCritic(self.obs_dim, self.action_space, config).head_dim
        self.head_dim = head_dim

        # Member k's actor is stacked network 2k and its critic 2k + 1: the same pairing as PPO's
        # two-member ActorCritic, so a member's weights copy over slice for slice.
        self.net = StackedMLP(
            n_members=2 * n_members,
            in_dim=self.obs_dim,
            hidden=config.net_arch,
            out_dims=(head_dim, 1) * n_members,
            activation=config.activation,
            ortho_init=config.ortho_init,
            out_gains=(0.01, 1.0) * n_members,
        )
        self.log_std = nn.Parameter(
            torch.full((n_members, head_dim), float(config.log_std_init)),
            requires_grad=self.dist == "gaussian",
        )
        # Member k's weights (actor, critic, log-std) are row k of the flat buffer viewed as (K, -1).
        self.flat_params = flatten_by_member([*self.net.parameters(), self.log_std], n_members)
        self.net.write_grads = sum(p.numel() for p in self.net.parameters()) >= WRITE_GRADS_MIN_WEIGHTS
        accumulated = None  # the whole buffer: autograd adds every gradient to it
        if self.net.write_grads:  # only log-std's gradient still goes through autograd
            accumulated = [self.log_std.grad] if self.log_std.grad is not None else []
        self.optimizer = MemberAdam(self.flat_params, n_members, eps=config.adam_eps, accumulated=accumulated)

        # Member hyperparameters as arrays, one row per slot.
        self._gamma = np.zeros((n_members, 1))
        self._gae_lambda = np.zeros((n_members, 1))
        self._clip = torch.zeros(n_members, 1)
        self._ent_coef = torch.zeros(n_members)
        self._vf_coef = torch.zeros(n_members)
        self.members: list[Member | None] = [None] * n_members

    # --- slots ----------------------------------------------------------------------------------
    @property
    def active_slots(self) -> list[int]:
        """Slots holding a member that has not used its budget yet."""
        return [k for k, m in enumerate(self.members) if m is not None and not m.finished]

    def start_member(self, slot: int, config: PPOConfig, seed: int, total_steps: int) -> None:
        """(Re)start ``slot`` as a new member: fresh weights, Adam state, envs, generator and normalisers.

        ConfigError when ``config``'s structural fields differ from the population's, naming them.
        """
        self._check_slot(slot)
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
        ours, theirs = structural_fields(self.config), structural_fields(config)
        differing = sorted(k for k in ours if ours[k] != theirs[k])
        if differing:
            shown = ", ".join(f"{k}={theirs[k]!r} (population: {ours[k]!r})" for k in differing)
            raise ConfigError(
                f"a member may differ from the population only in {', '.join(MEMBER_HYPERPARAMETERS)}; "
                f"got {shown}"
            )
        self.stop_member(slot)
        block = slice(slot * config.n_envs, (slot + 1) * config.n_envs)
        torch.manual_seed(seed)  # the network initialisation of PPO with this seed
        fresh = ActorCritic(self.obs_dim, self.action_space, config)
        self.net.load_members(fresh.net, members=slice(2 * slot, 2 * slot + 2))
        with torch.no_grad():
            self.log_std[slot] = fresh.log_std
        self.optimizer.reset_member(slot)
        self.members[slot] = Member(
            config=config,
            seed=seed,
            total_steps=total_steps,
            env_block=block,
            obs=self._reset_block(block, seed),
            rng=np.random.default_rng(seed),
            tracker=EpisodeTracker(config.n_envs),
            obs_normalizer=ObsNormalizer((self.obs_dim,), config.obs_clip) if config.normalize_obs else None,
            reward_normalizer=(
                RewardNormalizer(config.n_envs, config.gamma, config.reward_clip)
                if config.normalize_reward
                else None
            ),
        )
        self._apply_hyperparameters(slot, config.at_step(0))

    def _apply_hyperparameters(self, slot: int, hp: PPOConfig) -> None:
        """Make member ``slot`` train with the constants of ``hp`` (its config at the current step):
        the rows of the per-member arrays the rollout, the advantages and the update read."""
        self.optimizer.lr[slot] = hp.learning_rate
        self.optimizer.max_grad_norm[slot] = hp.max_grad_norm
        self._gamma[slot] = hp.gamma
        self._gae_lambda[slot] = hp.gae_lambda
        self._clip[slot] = hp.clip_range
        self._ent_coef[slot] = hp.ent_coef
        self._vf_coef[slot] = hp.vf_coef
        member = self.members[slot]
        if member is not None and member.reward_normalizer is not None:
            member.reward_normalizer.gamma = hp.gamma

    def _reset_block(self, block: slice, seed: int) -> np.ndarray:
        """New episodes in the envs of ``block`` only, env i of it seeded ``seed + i``; their first
        observations."""
        mask = np.zeros(self.envs.num_envs, dtype=bool)
        mask[block] = True
        seeds: list[int | None] = [None] * self.envs.num_envs
        seeds[block] = [seed + i for i in range(block.stop - block.start)]
        obs, _ = self.envs.reset(seed=seeds, options={"reset_mask": mask})
        return obs[block]

    def stop_member(self, slot: int) -> None:
        """Empty ``slot``: its envs idle; its weights stay but no longer train."""
        self._check_slot(slot)
        member = self.members[slot]
        if member is not None:
            member.close()
            self.members[slot] = None

    # --- population-based training: exploit and explore ----------------------------------------
    def exploit(self, target: int, source: int) -> None:
        """Make member ``target`` continue from member ``source``'s learning state: weights (actor,
        critic, log-std), Adam moments and step count, normaliser statistics, its place in training (env
        steps and iterations done, which set the schedules' and the annealing's position) and its
        hyperparameters. ``target`` keeps its own envs and their running episodes, random generator,
        seed, budget and evaluation envs; ``source`` is not changed."""
        src, dst = self._member(source), self._member(target)
        if target == source:
            return
        self.optimizer.copy_member(target, source)  # the flat buffer's row: every trained weight
        with torch.no_grad():
            self.log_std[target] = self.log_std[source]  # a constant (categorical) is not in the buffer
        if src.obs_normalizer is not None and dst.obs_normalizer is not None:
            dst.obs_normalizer.rms.load_state(src.obs_normalizer.rms.state())
        if src.reward_normalizer is not None and dst.reward_normalizer is not None:
            # The statistics move; the running returns stay, they belong to the target's own episodes.
            dst.reward_normalizer.rms.load_state(src.reward_normalizer.rms.state())
        dst.config = src.config
        dst.num_steps, dst.iteration = src.num_steps, src.iteration
        self._apply_hyperparameters(target, dst.config.at_step(dst.num_steps))

    def set_hyperparameters(self, slot: int, values: Mapping[str, Any]) -> None:
        """Explore: member ``slot`` trains on with ``values`` (names from
        :data:`MEMBER_HYPERPARAMETERS`, each a constant or a schedule; the others keep theirs) from its
        next iteration. ConfigError for any other name or an invalid value."""
        member = self._member(slot)
        member.config = member_configs(member.config, [values])[0]
        self._apply_hyperparameters(slot, member.config.at_step(member.num_steps))

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.n_members:
            raise ConfigError(f"slot must be in 0 … {self.n_members - 1}, got {slot}")

    def _member(self, slot: int) -> Member:
        member = self.members[slot]
        if member is None:
            raise ConfigError(f"slot {slot} is empty")
        return member

    # --- one iteration: rollouts, advantages, update -----------------------------------------
    def learn_iteration(self) -> IterationResult:
        """Collect one rollout per active member, compute advantages, update them all at once."""
        slots = self.active_slots
        if not slots:
            return IterationResult({}, {})
        cfg = self.config
        members = {k: self._member(k) for k in slots}
        hps = {k: m.config.at_step(m.num_steps) for k, m in members.items()}
        for k, hp in hps.items():
            self._apply_hyperparameters(k, hp)
        rollout = Rollout.allocate(
            cfg.n_steps, (self.n_members, cfg.n_envs), self.obs_dim, self.dist, self.action_space
        )
        # --- collect a rollout per member with its current policy, then the advantages ---
        next_obs = self._collect_rollouts(members, rollout)
        _, last_values = self._act_numpy(next_obs)
        advantages, returns = compute_gae(
            rollout.rewards, rollout.values, rollout.dones, last_values, self._gamma, self._gae_lambda
        )
        # --- optimise every member's clipped surrogate on its own rollout ---
        lr = self.optimizer.lr.clone()
        clip = self._clip.clone()
        for k, m in members.items():
            lr[k], clip[k] = annealed(hps[k], progress_remaining(m.num_steps, m.total_steps))
        self.optimizer.lr = lr
        active = torch.zeros(self.n_members, dtype=torch.bool)
        active[slots] = True
        stats, counts, diverged = self._update(members, active, rollout.samples(advantages, returns), clip)

        states: dict[int, TrainState] = {}
        now = time.perf_counter()
        for k, m in members.items():
            if k in diverged:
                self.stop_member(k)
                continue
            m.iteration += 1
            loss_means = (stats[:, k] / counts[k]).tolist() if counts[k] > 0 else None
            values, member_returns = rollout.values[:, k].reshape(-1), returns[:, k].reshape(-1)
            episode_returns, episode_lengths = m.tracker.pop()
            states[k] = TrainState(
                step=m.num_steps,
                iteration=m.iteration,
                total_steps=m.total_steps,
                episode_returns=episode_returns,
                episode_lengths=episode_lengths,
                losses=update_diagnostics(loss_means, values, member_returns, float(lr[k]), float(clip[k])),
                sps=m.num_steps / max(now - m.started, 1e-9),
            )
        return IterationResult(states, diverged)

    def _collect_rollouts(self, members: Mapping[int, Member], rollout: Rollout) -> np.ndarray:
        """Fill each member's rows of ``rollout`` with ``n_steps`` steps of its envs under its policy.

        Returns the observations after the last step, as the networks see them, shape (K, n_envs, obs).
        """
        obs = np.zeros((self.n_members, self.config.n_envs, self.obs_dim), dtype=np.float32)
        for k, m in members.items():
            obs[k] = m.normalize_obs(m.obs, update=True)
        rows = np.array(list(members))  # the active members' rows in the (K, ...) arrays
        log_std = self.log_std.detach().numpy()
        value_fns = {k: self._value_of_raw_obs(k) for k in members}
        # Every env steps each time, the idle slots' with a fixed action: one call for the population.
        env_actions = np.stack([self._idle_action] * self.envs.num_envs)
        for t in range(self.config.n_steps):
            heads, values = self._act_numpy(obs)
            actions, logprobs = self._sample(heads[rows], log_std[rows], members)
            rollout.obs[t, rows], rollout.actions[t, rows] = obs[rows], actions
            rollout.logprobs[t, rows], rollout.values[t, rows] = logprobs, values[rows]
            for i, m in enumerate(members.values()):
                env_actions[m.env_block] = to_env_action(self.dist, actions[i], self.action_space)
            next_obs, reward, terminated, truncated, infos = self.envs.step(env_actions)
            final_obs = infos.get("final_obs")
            for k, m in members.items():
                b = m.env_block
                rollout.rewards[t, k], rollout.dones[t, k] = learning_rewards(
                    reward[b], terminated[b], truncated[b], None if final_obs is None else final_obs[b],
                    m.tracker, m.reward_normalizer, value_fns[k], np.float32(self._gamma[k, 0]),
                )  # fmt: skip
                m.obs = next_obs[b]
                obs[k] = m.normalize_obs(m.obs, update=True)
        for m in members.values():
            m.num_steps += self.config.n_envs * self.config.n_steps
        return obs

    def _value_of_raw_obs(self, slot: int) -> Callable[[np.ndarray], np.ndarray]:
        """V of member ``slot`` for raw observations, through its own actor-critic pair as PPO computes
        it (its normaliser statistics used, not updated)."""
        member, pair = self._member(slot), slice(2 * slot, 2 * slot + 2)
        return lambda obs: self.net.forward_numpy(member.normalize_obs(obs, update=False), pair)[1, :, 0]

    def _sample(
        self, heads: np.ndarray, log_std: np.ndarray, members: Mapping[int, Member]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions and log-probabilities for the active members' heads, each from its own generator
        (the same draws a single PPO makes), the arithmetic done once for all of them."""
        n_envs = heads.shape[1]
        if self.dist == "categorical":
            uniform = np.stack([m.rng.random(n_envs) for m in members.values()])
            return D.categorical_from_uniform(heads, uniform)
        if self.dist == "gaussian":
            noise = np.stack([m.rng.standard_normal(heads.shape[1:]) for m in members.values()])
            return D.gaussian_from_noise(heads, log_std[:, None, :], noise)
        drawn = [
            sample_actions(self.dist, heads[i], log_std[i], m.rng) for i, m in enumerate(members.values())
        ]
        return np.stack([a for a, _ in drawn]), np.stack([lp for _, lp in drawn])

    def _act_numpy(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(actor head outputs (K, B, head), values (K, B)) for per-member observations (K, B, obs)."""
        out = self.net.forward_numpy(np.repeat(obs, 2, axis=0))
        return out[0::2, :, : self.head_dim], out[1::2, :, 0]

    def _forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The autograd form of :meth:`_act_numpy`."""
        out = self.net(obs.repeat_interleave(2, dim=0))
        return out[0::2, :, : self.head_dim], out[1::2, :, 0]

    def _log_prob_entropy(
        self, head: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(a|s) and entropy per member and sample, shape (K, batch)."""
        n_members, batch = head.shape[:2]
        flat_head = head.reshape(n_members * batch, -1)
        flat_actions = actions.reshape(n_members * batch, *actions.shape[2:])
        if self.dist == "categorical":
            log_prob, entropy = D.categorical_log_prob_entropy(flat_head, flat_actions)
        elif self.dist == "gaussian":
            log_std = (
                self.log_std[:, None, :]
                .expand(n_members, batch, self.head_dim)
                .reshape(n_members * batch, -1)
            )
            log_prob, entropy = D.gaussian_log_prob_entropy(flat_head, log_std, flat_actions)
        else:
            log_prob, entropy = D.beta_log_prob_entropy(flat_head, flat_actions)
        return log_prob.view(n_members, batch), entropy.view(n_members, batch)

    def _update(
        self,
        members: Mapping[int, Member],
        active: torch.Tensor,
        samples: RolloutSamples,
        clip: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[int, NonFiniteLossError]]:
        """``n_epochs`` passes of minibatch steps for every active member, each on its own rollout.

        Returns the summed loss terms (5, K), the number of steps each member took, and the members
        whose loss turned non-finite (they stop updating at once; the others go on).
        """
        cfg = self.config
        n_members, batch = samples.obs.shape[:2]
        stats = torch.zeros(len(LOSS_KEYS), n_members)
        counts = torch.zeros(n_members)
        diverged: dict[int, NonFiniteLossError] = {}
        for _epoch in range(cfg.n_epochs):
            epoch = samples if one_minibatch(batch, cfg.batch_size) else self._shuffled(samples, members)
            for start in range(0, batch, cfg.batch_size):
                minibatch = epoch.select((slice(None), slice(start, start + cfg.batch_size)))
                step = self._surrogate_step(minibatch, clip)
                out = step.losses
                if cfg.target_kl is not None:  # as SB3: a member past the KL limit ends its update here
                    active = active & ~(out.approx_kl > 1.5 * cfg.target_kl)
                active = self._minibatch_step(step, active, members, diverged)
                if not bool(active.any()):
                    break
                stats += torch.where(active, out.stacked().detach(), 0.0)
                counts += active.float()
            if not bool(active.any()):
                break
        return stats, counts, diverged

    @staticmethod
    def _shuffled(samples: RolloutSamples, members: Mapping[int, Member]) -> RolloutSamples:
        """Every member's rollout in a new order, each shuffled with its member's generator as a single
        PPO would shuffle it (the other rows keep theirs)."""
        n_members, batch = samples.obs.shape[:2]
        perm = np.tile(np.arange(batch), (n_members, 1))
        for k, m in members.items():
            perm[k] = m.rng.permutation(batch)
        return samples.select((torch.arange(n_members)[:, None], torch.from_numpy(perm)))

    def _surrogate_step(self, minibatch: RolloutSamples, clip: torch.Tensor) -> SurrogateStep:
        """Every member's losses on its minibatch rows, and how to take their gradient: written out
        where PPO's single agent writes it out (:func:`~algorithms.ppo.surrogate_step`), else autograd."""
        cfg = self.config
        if not writes_out_backward(self.dist, self.net):
            head, newvalue = self._forward(minibatch.obs)
            newlogprob, entropy = self._log_prob_entropy(head, minibatch.actions)
            return autograd_step(
                newvalue, newlogprob, entropy, minibatch, clip, cfg, self._vf_coef, self._ent_coef
            )
        # Member k's actor is stacked network 2k, its critic 2k + 1 (see __init__).
        output, inputs = self.net.forward_keeping_inputs(minibatch.obs.repeat_interleave(2, dim=0))

        def write_network_grads(grad_head: torch.Tensor, grad_value: torch.Tensor) -> None:
            grad_output = torch.zeros_like(output)
            grad_output[0::2, :, : self.head_dim] = grad_head
            grad_output[1::2, :, 0] = grad_value
            self.net.backward_written_out(inputs, grad_output)

        head, newvalue = output[0::2, :, : self.head_dim], output[1::2, :, 0]
        return written_out_step(
            self.dist, head, newvalue, self.log_std, write_network_grads, minibatch, clip, cfg,
            self._vf_coef, self._ent_coef,
        )  # fmt: skip

    def _minibatch_step(
        self,
        step: SurrogateStep,
        active: torch.Tensor,
        members: Mapping[int, Member],
        diverged: dict[int, NonFiniteLossError],
    ) -> torch.Tensor:
        """One optimizer step for the ``active`` members whose loss is finite; returns those members.

        An active member whose loss turned NaN or infinite is added to ``diverged`` and takes no step.
        """
        out, loss = step.losses, step.loss
        finite = torch.isfinite(loss)
        for k in torch.nonzero(active & ~finite).flatten().tolist():
            one = SurrogateLosses(*(term[k] for term in out))
            diverged[k] = NonFiniteLossError(one.first_non_finite(), members[k].num_steps)
        active = active & finite
        if bool(active.any()):
            with warnings.catch_warnings():
                # The weights are strided views into the member-major buffer, by design; autograd
                # accumulates into them in place and only notes that the layout is unusual.
                warnings.filterwarnings("ignore", message="grad and param do not obey")
                step.backward(active)
            self.optimizer.step(active)  # each member's gradient norm clipped to its own limit
        return active

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(
        self,
        seeds: Mapping[int, int],
        n_episodes: int,
        deterministic: bool = True,
        n_envs: int = 4,
    ) -> dict[int, EvalResult]:
        """Evaluate the members of ``seeds`` (slot → eval seed) side by side, one batched forward a step.

        Each member runs exactly the episodes :meth:`algorithms.ppo.PPO.evaluate` would run with that
        seed: ``n_episodes`` on its own ``min(n_envs, n_episodes)`` envs, normaliser statistics frozen.
        """
        if n_episodes < 1:
            raise ConfigError(f"n_episodes must be >= 1, got {n_episodes}")
        runs: dict[int, EvalEpisodes] = {}
        for k, seed in seeds.items():
            m = self._member(k)
            m.eval_envs = eval_envs(
                m.eval_envs, self.env_id, min(n_envs, n_episodes), seed, self.env_kwargs, self.env_backend
            )
            runs[k] = EvalEpisodes(m.eval_envs, n_episodes, seed)
        width = min(n_envs, n_episodes)
        obs = np.zeros((self.n_members, width, self.obs_dim), dtype=np.float32)
        log_std = self.log_std.detach().numpy()
        while any(not run.done for run in runs.values()):
            running = {k: run for k, run in runs.items() if not run.done}
            for k, run in running.items():
                obs[k] = self._member(k).normalize_obs(run.obs, update=False)
            heads, _ = self._act_numpy(obs)
            for k, run in running.items():
                if deterministic:
                    action = deterministic_actions(self.dist, heads[k])
                else:
                    action = sample_actions(self.dist, heads[k], log_std[k], self._member(k).rng)[0]
                run.step(to_env_action(self.dist, action, self.action_space))
        return {k: run.result() for k, run in runs.items()}

    # --- a member as a single agent ---------------------------------------------------------------
    def member_agent(self, slot: int) -> PPO:
        """A single-agent :class:`PPO` holding a copy of member ``slot`` (to save, replay or compare).

        Weights, Adam moments of its own and normaliser statistics are copied; the caller closes it.
        """
        m = self._member(slot)
        agent = PPO(self.env_id, m.config, m.seed, self.env_kwargs, self.env_backend)
        agent.policy.net.load_members(self.net, source_members=slice(2 * slot, 2 * slot + 2))
        with torch.no_grad():
            agent.policy.log_std.copy_(self.log_std[slot])
        agent.num_steps = m.num_steps
        if m.obs_normalizer is not None and agent.obs_normalizer is not None:
            agent.obs_normalizer.rms.load_state(m.obs_normalizer.rms.state())
        if m.reward_normalizer is not None and agent.reward_normalizer is not None:
            agent.reward_normalizer.rms.load_state(m.reward_normalizer.rms.state())
        return agent

    def close(self) -> None:
        """Close every member's evaluation envs and the batched training envs."""
        for slot in range(self.n_members):
            self.stop_member(slot)
        self.envs.close()

    def __enter__(self) -> PopulationPPO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def idle_action(action_space: gym.Space) -> np.ndarray:
    """The action an empty slot's envs take: the middle of a Box, action 0 of a Discrete space."""
    if isinstance(action_space, gym.spaces.Box):
        return ((action_space.low + action_space.high) / 2).astype(action_space.dtype)
    return np.asarray(0, dtype=action_space.dtype)


def member_configs(base: PPOConfig, overrides: Sequence[Mapping[str, Any]]) -> list[PPOConfig]:
    """One config per member: ``base`` with each mapping of member hyperparameters applied."""
    configs = []
    for values in overrides:
        unknown = sorted(set(values) - set(MEMBER_HYPERPARAMETERS))
        if unknown:
            raise ConfigError(
                f"{', '.join(unknown)} cannot differ between members; "
                f"choose from {', '.join(MEMBER_HYPERPARAMETERS)}"
            )
        configs.append(dataclasses.replace(base, **values))
    return configs
