"""Figures of a benchmark report: learning curves with CI bands, aggregate IQMs, a performance profile.

Plain ``matplotlib.figure.Figure`` objects (no pyplot state, no GUI backend), as in :mod:`tuner.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tuner.curves import RunRecord
from tuner.stats import bootstrap_ci, iqm, performance_profile

CURVE_RESAMPLES = 2000  # per evaluation point; the bands are a visual aid, the tables use more


def curves_figure(records: Sequence[RunRecord], env: str, confidence: float = 0.95) -> Figure:
    """Evaluation return against env steps on ``env``: per algorithm the IQM over seeds at each
    evaluation, with a percentile-bootstrap band; the env's threshold and references as lines."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    on_env = [r for r in records if r.env == env]
    for algo in sorted({r.algo for r in on_env}):
        runs = [r for r in on_env if r.algo == algo]
        length = min(len(r.returns) for r in runs)  # seeds share the schedule; a pruned one would be shorter
        returns = np.array([r.returns[:length] for r in runs])
        steps = np.array([r.steps[:length] for r in runs]).mean(axis=0)
        centre = np.array([iqm(column) for column in returns.T])
        bands = np.array(
            [bootstrap_ci(column, confidence=confidence, n_resamples=CURVE_RESAMPLES) for column in returns.T]
        )
        (line,) = ax.plot(steps, centre, marker="o", markersize=3, label=f"{algo} (IQM of {len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(steps, bands[:, 0], bands[:, 1], color=line.get_color(), alpha=0.2)
    if on_env:
        first = on_env[0]
        if first.threshold is not None:
            ax.axhline(first.threshold, color="gray", linestyle="--", linewidth=1, label="solved threshold")
        ax.axhline(first.random_score, color="gray", linestyle=":", linewidth=1, label="random policy")
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(f"{env}: IQM over seeds, {confidence:.0%} bootstrap band")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(loc="best", fontsize="small")
    return fig


def aggregate_figure(aggregate: pd.DataFrame) -> Figure:
    """Normalized-score IQM per algorithm with its stratified bootstrap interval (one row each)."""
    fig = Figure(figsize=(6, 0.6 * max(len(aggregate), 2) + 1.2), layout="constrained")
    ax = fig.subplots()
    ys = np.arange(len(aggregate))
    centre = aggregate["normalized_iqm"].to_numpy(dtype=float)
    low = aggregate["ci_low"].to_numpy(dtype=float)
    high = aggregate["ci_high"].to_numpy(dtype=float)
    errors = np.vstack([centre - low, high - centre])
    ax.errorbar(centre, ys, xerr=np.nan_to_num(errors), fmt="o", capsize=4)
    ax.set_yticks(ys, [f"{a} ({e} envs)" for a, e in zip(aggregate["algo"], aggregate["envs"], strict=True)])
    ax.axvline(0, color="gray", linestyle=":", linewidth=1)
    ax.axvline(1, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("IQM of normalized final score (0 random, 1 reference)")
    ax.set_title("Aggregate across environments")
    ax.grid(alpha=0.3, axis="x")
    return fig


def profile_figure(records: Sequence[RunRecord]) -> Figure:
    """Performance profile: share of an algorithm's runs whose normalized final score exceeds τ."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    scores = {
        algo: np.array([float(r.normalized(r.final_return)) for r in records if r.algo == algo])
        for algo in sorted({r.algo for r in records})
    }
    top = max([1.2, *(float(s.max()) for s in scores.values() if s.size)])
    taus = np.linspace(0.0, top, 200)
    for algo, values in scores.items():
        ax.plot(taus, performance_profile(values, taus), label=f"{algo} ({values.size} runs)")
    ax.set_xlabel("normalized score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_title("Performance profile")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig
