"""Figures of a training run. Plain ``matplotlib.figure.Figure`` objects: no pyplot state, no GUI backend."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

SMOOTHING_EPISODES = 20
CURVE_DPI = 72
"""Pixels per inch of the saved curve (576 x 324): every validation and benchmark run stores one."""


def learning_curve(
    episodes: Sequence[tuple[int, float]],
    evaluations: Sequence[tuple[int, float, float]],
    title: str,
    reference_lines: Sequence[tuple[str, float]] = (),
) -> Figure:
    """Episodic returns and evaluation points against env steps.

    Args:
        episodes: ``(env step, return)`` of each finished training episode; drawn as dots with a running
            mean over the last ``SMOOTHING_EPISODES`` episodes.
        evaluations: ``(env step, mean return, std return)`` of each evaluation; drawn with ±std bars.
        title: the figure title.
        reference_lines: ``(label, return)`` pairs drawn as horizontal lines, e.g. the solved threshold.
    """
    fig = Figure(figsize=(8, 4.5), dpi=CURVE_DPI, layout="constrained")
    ax = fig.subplots()
    if episodes:
        steps, returns = (np.asarray(column, dtype=float) for column in zip(*episodes, strict=True))
        ax.scatter(steps, returns, s=4, alpha=0.25, color="tab:blue", label="training episode")
        window = min(SMOOTHING_EPISODES, len(returns))
        running = np.convolve(returns, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], running, color="tab:blue", label=f"mean of last {window} episodes")
    if evaluations:
        steps, means, stds = (np.asarray(column, dtype=float) for column in zip(*evaluations, strict=True))
        ax.errorbar(
            steps, means, yerr=stds, fmt="o-", color="tab:orange", capsize=3, label="evaluation (±std)"
        )
    styles = itertools.cycle(("--", ":", "-."))
    for (label, value), style in zip(reference_lines, styles, strict=False):
        ax.axhline(value, color="gray", linestyle=style, linewidth=1, label=label)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episodic return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(loc="best", fontsize="small")
    return fig
