"""Summaries of one run's learning curve (evaluation return against env steps) for benchmark reports.

A curve is the run's ``eval/mean_return`` history: evaluations every ``env.eval.freq_steps`` during
training and the final one. Scores are normalized per environment so that 0 is a uniformly random policy
and 1 the reference score (rl-zoo3's), which makes areas and aggregates comparable across environments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def normalize(returns: npt.ArrayLike, random_score: float, reference_score: float) -> np.ndarray:
    """``(return − random) / (reference − random)``: 0 for a random policy, 1 at the reference score.

    Raises:
        ValueError: the reference equals the random score (the scale is undefined).
    """
    if reference_score == random_score:
        raise ValueError(f"reference score equals the random score ({random_score}); cannot normalize")
    return (np.asarray(returns, dtype=float) - random_score) / (reference_score - random_score)


def time_to_threshold(steps: npt.ArrayLike, returns: npt.ArrayLike, threshold: float) -> float:
    """Env steps of the first evaluation whose return reaches ``threshold``; NaN if none does.

    The curve is only known at its evaluation points, so this is an upper bound on the true crossing,
    with the evaluation spacing as its resolution.
    """
    steps_arr, returns_arr = _curve(steps, returns)
    reached = np.flatnonzero(returns_arr >= threshold)
    return float(steps_arr[reached[0]]) if reached.size else math.nan


def normalized_auc(steps: npt.ArrayLike, normalized_returns: npt.ArrayLike, budget_steps: float) -> float:
    """Area under the normalized learning curve divided by the budget: the curve's mean height.

    Trapezoids between evaluation points; before the first evaluation the curve starts at 0 (a random
    policy) at step 0, and after the last it stays flat up to ``budget_steps``. 1 means the reference
    score from the first step; learning faster raises it even when final scores tie.

    Raises:
        ValueError: empty or mismatched curve, unsorted steps, or a budget not beyond step 0.
    """
    steps_arr, values = _curve(steps, normalized_returns)
    if budget_steps <= 0:
        raise ValueError(f"budget_steps must be positive, got {budget_steps}")
    xs = np.concatenate([[0.0], steps_arr, [max(float(budget_steps), float(steps_arr[-1]))]])
    ys = np.concatenate([[0.0], values, [values[-1]]])
    return float(np.trapezoid(ys, xs) / xs[-1])


def _curve(steps: npt.ArrayLike, values: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    steps_arr = np.asarray(steps, dtype=float)
    values_arr = np.asarray(values, dtype=float)
    if steps_arr.ndim != 1 or steps_arr.size == 0 or steps_arr.shape != values_arr.shape:
        raise ValueError(
            f"expected two non-empty 1-D arrays of equal length, got {steps_arr.shape} and {values_arr.shape}"
        )
    if np.any(np.diff(steps_arr) < 0):
        raise ValueError("curve steps must be sorted")
    return steps_arr, values_arr


@dataclass(frozen=True)
class RunRecord:
    """What the report needs from one finished cell run.

    Attributes:
        algo, env, seed, source: the cell (``env`` is the conf/env name).
        steps, returns: the evaluation curve (env step, mean eval return), the final evaluation last.
        budget_steps: the cell's training budget.
        threshold: the env's solved threshold, None where it has none.
        random_score: mean return of a random policy on the env.
        reference: the env's rl-zoo3 reference score for this algorithm, None where it has none.
        env_reference: the env's normalization reference: the best rl-zoo3 score of any algorithm.
        wall_time_s: training plus evaluation time; sps: training env-steps per second.
        kinds: the benchmark sources (``default``, ``preset``, ``tuned``) the run stands for.
    """

    algo: str
    env: str
    seed: int
    source: str
    steps: tuple[float, ...]
    returns: tuple[float, ...]
    budget_steps: int
    threshold: float | None
    random_score: float
    reference: float | None
    env_reference: float
    wall_time_s: float
    sps: float
    kinds: tuple[str, ...] = ("default",)

    @property
    def final_return(self) -> float:
        """Mean return of the final evaluation."""
        return self.returns[-1]

    def normalized(self, values: Sequence[float] | float) -> np.ndarray:
        """``values`` on the env's normalized scale (0 random, 1 the env's reference)."""
        return normalize(values, self.random_score, self.env_reference)
