"""A preallocated, circular experience-replay buffer for off-policy agents (SAC, TD3, D3QN).

Transitions are stored as rows of one float32 table, ``[obs | action | next_obs | reward | terminated]``
(plus a ``discount`` column for n-step returns),
so a minibatch is a single fancy-indexing gather and every field is a column view of it. Because obs
and action are adjacent, the critic's input ``(s, a)`` is a view too, with no concatenation.

Termination and truncation are kept apart on purpose: only ``terminated`` stops bootstrapping. A
transition that ended in a time-limit truncation (or in a termination) must be stored with the real
last observation of the episode as ``next_obs`` — ``infos["final_obs"]`` under same-step autoreset —
never with the first observation of the next episode.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class ReplayBatch(NamedTuple):
    """A minibatch of transitions as torch tensors (views of one gathered float32 array).

    Attributes:
        observations: (B, obs_dim) states s.
        actions: (B, act_dim) actions a as stored (the policy's [-1, 1] space for SAC/TD3; the action
            index as a float for discrete agents).
        next_observations: (B, obs_dim) real successor states s'.
        rewards: (B,) rewards r.
        terminated: (B,) 1.0 where s' is terminal (no bootstrapping), else 0.0.
        obs_actions: (B, obs_dim + act_dim) the concatenation ``[s, a]``.
        discounts: (B,) the factor on the bootstrapped value, γ^k for a k-step return (only when the
            buffer stores discounts; else None).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    next_observations: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    obs_actions: torch.Tensor
    discounts: torch.Tensor | None = None


class ReplayBuffer:
    """Holds the last ``capacity`` transitions; adding beyond that overwrites the oldest ones.

    Args:
        capacity: maximum number of transitions (counted over all vectorised envs).
        obs_dim: observation size.
        act_dim: action size (1 for a discrete action index).
        store_discounts: keep a per-transition bootstrap discount (γ^k of an n-step return).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, store_discounts: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        o, a = obs_dim, act_dim
        self._obs = slice(0, o)
        self._act = slice(o, o + a)
        self._next_obs = slice(o + a, 2 * o + a)
        self._reward = 2 * o + a
        self._terminated = 2 * o + a + 1
        self._discount = 2 * o + a + 2 if store_discounts else None
        width = 2 * o + a + 2 + int(store_discounts)
        # np.zeros is lazily backed by the OS: a large unused capacity costs no memory.
        self.table = np.zeros((self.capacity, width), dtype=np.float32)
        self.pos = 0  # next row to write
        self.size = 0  # rows holding data

    def __len__(self) -> int:
        return self.size

    # Named column views of the table (for inspection and tests).
    @property
    def observations(self) -> np.ndarray:
        return self.table[:, self._obs]

    @property
    def actions(self) -> np.ndarray:
        return self.table[:, self._act]

    @property
    def next_observations(self) -> np.ndarray:
        return self.table[:, self._next_obs]

    @property
    def rewards(self) -> np.ndarray:
        return self.table[:, self._reward]

    @property
    def terminated(self) -> np.ndarray:
        return self.table[:, self._terminated]

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        next_obs: np.ndarray,
        discounts: np.ndarray | None = None,
    ) -> np.ndarray:
        """Store n transitions, one per row of every argument; return the table rows written.

        ``next_obs`` must hold each env's real successor state (``final_obs`` where an episode ended).
        ``discounts`` is required when the buffer stores them, and ignored otherwise.
        """
        n = obs.shape[0]
        if self._discount is not None and discounts is None:
            raise ValueError("this buffer stores discounts: pass discounts")
        if n > self.capacity:  # only the newest ``capacity`` transitions can be kept
            keep = slice(n - self.capacity, n)
            obs, actions, rewards, terminated, next_obs = (
                obs[keep],
                actions[keep],
                rewards[keep],
                terminated[keep],
                next_obs[keep],
            )
            discounts = None if discounts is None else discounts[keep]
            n = self.capacity
        end = self.pos + n
        if end <= self.capacity:
            rows: slice | np.ndarray = slice(self.pos, end)
        else:
            rows = np.arange(self.pos, end) % self.capacity
        self.table[rows, self._obs] = obs
        self.table[rows, self._act] = np.reshape(actions, (n, self.act_dim))
        self.table[rows, self._next_obs] = next_obs
        self.table[rows, self._reward] = rewards
        self.table[rows, self._terminated] = terminated
        if self._discount is not None:
            self.table[rows, self._discount] = discounts
        self.pos = end % self.capacity
        self.size = min(self.size + n, self.capacity)
        return np.arange(end - n, end) % self.capacity

    def sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``batch_size`` row indices drawn uniformly, with replacement, from the filled rows."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return rng.integers(0, self.size, size=batch_size)

    def sample(self, batch_size: int, rng: np.random.Generator) -> ReplayBatch:
        """A uniformly drawn minibatch (with replacement) as torch tensors sharing one gathered array."""
        return self.gather(self.sample_indices(batch_size, rng))

    def gather(self, indices: np.ndarray) -> ReplayBatch:
        """The transitions at table rows ``indices`` as torch tensors sharing one gathered array."""
        rows = torch.from_numpy(self.table[indices])
        return ReplayBatch(
            observations=rows[:, self._obs],
            actions=rows[:, self._act],
            next_observations=rows[:, self._next_obs],
            rewards=rows[:, self._reward],
            terminated=rows[:, self._terminated],
            obs_actions=rows[:, : self._next_obs.start],
            discounts=None if self._discount is None else rows[:, self._discount],
        )
