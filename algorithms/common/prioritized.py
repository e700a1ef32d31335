"""Proportional prioritized experience replay (Schaul et al. 2016) on a vectorised sum-tree.

The tree is one flat float64 array in heap layout: leaf ``i`` (a replay row) sits at
``capacity_pow2 + i`` and every internal node holds the sum of its two children, so the root is the
total priority. All operations act on whole batches with numpy — one vectorised step per tree level —
never on one transition at a time in Python:

- :meth:`SumTree.update` writes a batch of leaves, then recomputes their ancestors level by level
  (from the children, so repeated indices in one batch are harmless);
- :meth:`SumTree.find` descends from the root for a batch of prefix sums at once.

:class:`PrioritizedSampler` draws stratified samples (one uniform draw per equal slice of the total)
with probability ``p_i^α / Σ p^α`` and returns importance weights ``(N · P(i))^-β`` normalised by the
largest weight in the batch.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """Leaf values over ``capacity`` slots with O(log n) batched update and prefix-sum search.

    Args:
        capacity: number of leaves (replay rows).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.leaf_offset = 1 << max(0, (self.capacity - 1).bit_length())  # leaves start here
        self.depth = self.leaf_offset.bit_length() - 1  # levels below the root
        self.nodes = np.zeros(2 * self.leaf_offset, dtype=np.float64)  # nodes[1] is the root

    @property
    def total(self) -> float:
        """Sum of all leaf values."""
        return float(self.nodes[1])

    def values(self, indices: np.ndarray) -> np.ndarray:
        """Leaf values at ``indices``."""
        return self.nodes[self.leaf_offset + np.asarray(indices)]

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set the leaves ``indices`` to ``values`` (>= 0) and refresh every ancestor sum."""
        nodes = self.leaf_offset + np.asarray(indices, dtype=np.int64)
        self.nodes[nodes] = values  # with repeated indices the last value wins, as in a loop
        for _ in range(self.depth):
            nodes = np.unique(nodes >> 1)
            self.nodes[nodes] = self.nodes[2 * nodes] + self.nodes[2 * nodes + 1]

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """For each ``s`` in ``prefix_sums`` (in [0, total)), the leaf ``i`` whose cumulative range
        ``[Σ_{j<i} v_j, Σ_{j<=i} v_j)`` contains ``s``."""
        target = np.array(prefix_sums, dtype=np.float64)
        nodes = np.ones(target.shape, dtype=np.int64)
        for _ in range(self.depth):
            left = 2 * nodes
            left_sum = self.nodes[left]
            go_right = target >= left_sum
            target = np.where(go_right, target - left_sum, target)
            nodes = left + go_right
        leaves = nodes - self.leaf_offset
        # Round-off can steer a search into an empty leaf right of the data; clamp into range.
        return np.minimum(leaves, self.capacity - 1)


class PrioritizedSampler:
    """Chooses replay rows in proportion to ``priority^α`` and weighs them by ``(N · P(i))^-β``.

    New rows get the largest priority seen so far, so every transition is replayed at least once
    with high probability. After a gradient step, :meth:`update_priorities` sets the replayed rows'
    priorities to ``|TD error| + eps``.

    Args:
        capacity: replay capacity (rows).
        alpha: how much prioritisation is used, in [0, 1] (0: uniform). Typical 0.4 … 0.7.
        eps: added to |TD error| so no row gets zero probability.
    """

    def __init__(self, capacity: int, alpha: float, eps: float = 1e-6) -> None:
        self.tree = SumTree(capacity)
        self.alpha = alpha
        self.eps = eps
        self.max_priority = 1.0
        self._new_rows: list[np.ndarray] = []  # written since the last sample, priority not yet set

    def on_add(self, rows: np.ndarray) -> None:
        """Give freshly written rows the largest priority so far.

        Deferred until the next :meth:`sample`, so the tree is updated once per training phase for
        all rows written since, not once per env step.
        """
        self._new_rows.append(np.asarray(rows, dtype=np.int64))

    def _flush_new_rows(self) -> None:
        if self._new_rows:
            rows = np.concatenate(self._new_rows)
            self._new_rows = []
            self.tree.update(rows, np.full(rows.shape, self.max_priority**self.alpha))

    def sample(
        self, batch_size: int, size: int, beta: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` row indices among the first ``size`` rows, and their importance weights.

        Stratified: the total priority is cut into ``batch_size`` equal slices and one prefix sum is
        drawn uniformly in each. Weights ``(size · P(i))^-β`` are divided by their batch maximum.
        """
        self._flush_new_rows()
        total = self.tree.total
        if size == 0 or total <= 0.0:
            raise ValueError("cannot sample from an empty replay buffer")
        bounds = np.arange(batch_size + 1, dtype=np.float64) * (total / batch_size)
        prefix = rng.uniform(bounds[:-1], bounds[1:])
        indices = np.minimum(self.tree.find(prefix), size - 1)
        probs = self.tree.values(indices) / total
        weights = (size * np.maximum(probs, 1e-12)) ** (-beta)
        return indices, (weights / weights.max()).astype(np.float32)

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """Set the priorities of replayed rows from their absolute TD errors."""
        self._flush_new_rows()  # rows sampled from must not be overwritten by a stale max priority
        priorities = np.abs(np.asarray(td_errors, dtype=np.float64)) + self.eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(indices, priorities**self.alpha)
