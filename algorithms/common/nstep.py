"""n-step returns for replay (Sutton 1988; as used by Rainbow, Hessel et al. 2018).

Instead of ``(s_t, a_t, r_t, s_{t+1})`` the buffer receives ``(s_t, a_t, R_t^(k), s_{t+k})`` with
``R_t^(k) = Σ_{j<k} γ^j r_{t+j}`` and the bootstrap discount ``γ^k``; ``k = n`` except where the
episode ends inside the window, where the window is cut at the last step:

- a **termination** at step ``t+k-1`` stores ``terminated = 1`` (no bootstrap at all);
- a **truncation** (time limit) stores ``terminated = 0`` and ``s_{t+k}`` = the episode's real last
  observation, so the value of that state is still bootstrapped with ``γ^k``.

:class:`NStepAccumulator` keeps the last ``n`` steps of every env in small ring arrays and emits the
finished windows of a vectorised step as arrays, ready for :meth:`ReplayBuffer.add`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from algorithms.common.types import VecStep


class NStepTransitions(NamedTuple):
    """Transitions ready for the replay buffer (first axis: transitions)."""

    obs: np.ndarray
    actions: np.ndarray
    returns: np.ndarray
    terminated: np.ndarray
    next_obs: np.ndarray
    discounts: np.ndarray


class NStepAccumulator:
    """Turns a stream of vectorised env steps into k-step transitions (k <= n).

    Args:
        n: the return horizon, >= 1 (1 gives ordinary one-step transitions with discount γ).
        gamma: discount factor.
        n_envs: number of vectorised envs.
        obs_dim: observation size.
        act_dim: stored action size (1 for a discrete action index).
    """

    def __init__(self, n: int, gamma: float, n_envs: int, obs_dim: int, act_dim: int) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.gamma, self.n_envs = n, gamma, n_envs
        self.powers = gamma ** np.arange(n + 1, dtype=np.float64)  # γ^0 … γ^n
        self.obs = np.zeros((n, n_envs, obs_dim), dtype=np.float32)
        self.actions = np.zeros((n, n_envs, act_dim), dtype=np.float32)
        self.rewards = np.zeros((n, n_envs), dtype=np.float64)
        self.pending = np.zeros(n_envs, dtype=np.int64)  # steps in each env's open window
        self.t = 0  # vectorised steps seen; step t lives in slot t % n

    def add(self, step: VecStep) -> NStepTransitions:
        """Record one vectorised step and return the transitions it completes.

        Envs whose window is full emit their oldest step as an n-step transition; envs whose episode
        ended emit every pending step, each with the shortened horizon up to the end.
        """
        obs, actions, rewards, terminated, truncated, next_obs = step
        slot = self.t % self.n
        self.obs[slot] = obs
        self.actions[slot] = np.reshape(actions, (self.n_envs, -1))
        self.rewards[slot] = rewards
        self.pending += 1
        self.t += 1
        done = np.logical_or(terminated, truncated)
        parts: list[NStepTransitions] = []
        full = np.flatnonzero((self.pending == self.n) & ~done)
        if full.size:
            parts.append(self._oldest_of_full_windows(full, next_obs))
        for env in np.flatnonzero(done):
            parts.extend(self._ended_episode(int(env), bool(terminated[env]), next_obs[env]))
        if not parts:
            return _empty(self.obs.shape[2], self.actions.shape[2])
        return NStepTransitions(*(np.concatenate(field) for field in zip(*parts, strict=True)))

    def _oldest_of_full_windows(self, full: np.ndarray, next_obs: np.ndarray) -> NStepTransitions:
        """The oldest step of each env in ``full`` (whose window holds n steps), as an n-step transition."""
        n = self.n
        order = (self.t - n + np.arange(n)) % n  # slots of the window, oldest first
        returns = self.powers[:n] @ self.rewards[order][:, full]
        self.pending[full] -= 1
        return NStepTransitions(
            self.obs[order[0], full],
            self.actions[order[0], full],
            returns,
            np.zeros(full.size),
            next_obs[full],
            np.full(full.size, self.powers[n]),
        )

    def _ended_episode(self, env: int, terminated: bool, next_obs: np.ndarray) -> list[NStepTransitions]:
        """Every pending step of ``env``, whose episode just ended, each with its horizon cut at the end
        (``next_obs``: the episode's real last observation)."""
        k = int(self.pending[env])
        order = (self.t - k + np.arange(k)) % self.n  # the pending steps, oldest first
        rewards_env = self.rewards[order, env]
        parts = []
        for start in range(k):  # window from each pending step to the episode's end
            length = k - start
            parts.append(
                NStepTransitions(
                    self.obs[order[start], env][None],
                    self.actions[order[start], env][None],
                    np.array([self.powers[:length] @ rewards_env[start:]]),
                    np.array([float(terminated)]),
                    next_obs[None],
                    np.array([self.powers[length]]),
                )
            )
        self.pending[env] = 0
        return parts


def _empty(obs_dim: int, act_dim: int) -> NStepTransitions:
    return NStepTransitions(
        np.zeros((0, obs_dim), np.float32),
        np.zeros((0, act_dim), np.float32),
        np.zeros(0),
        np.zeros(0),
        np.zeros((0, obs_dim), np.float32),
        np.zeros(0),
    )
