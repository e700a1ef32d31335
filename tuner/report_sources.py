"""Sources of hyperparameters side by side: the tables of a benchmark that trains several sources of
the same (algo, env), e.g. ``benchmark.sources=[default,preset,tuned]``, on the benchmark's own seeds.

Per (env, algo): each source's final-return IQM with its bootstrap interval, and the differences tuned −
preset and tuned − default with the interval of a difference of IQMs (each source's seeds resampled on
their own: :func:`tuner.stats.compare`). Across envs and algorithms: each source's IQM of normalised
scores over the (env, algo) cells that have every source, its interval stratified by cell, and each
difference with its stratified interval (:func:`tuner.stats.stratified_difference_ci`). A pair without an
rltune preset trains its defaults once, and those runs stand for both ``default`` and ``preset``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tuner.curves import RunRecord
from tuner.stats import bootstrap_ci, compare, iqm, stratified_bootstrap_ci, stratified_difference_ci

KINDS = ("default", "preset", "tuned")
DIFFERENCES = (("tuned", "preset"), ("tuned", "default"))
"""(candidate, baseline) pairs whose difference candidate − baseline the tables give, when both ran."""


def compared_kinds(records: Sequence[RunRecord]) -> tuple[str, ...]:
    """The sources the records stand for, in the order default, preset, tuned."""
    present = {kind for record in records for kind in record.kinds}
    return tuple(kind for kind in KINDS if kind in present)


def by_cell(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    """The records by (env, algo), in that order."""
    cells: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        cells.setdefault((record.env, record.algo), []).append(record)
    return dict(sorted(cells.items()))


def difference_name(candidate: str, baseline: str) -> str:
    """The column of candidate − baseline in :func:`sources_table`."""
    return f"{candidate}-{baseline}"


def sources_table(
    records: Sequence[RunRecord], confidence: float = 0.95, n_resamples: int = 10_000
) -> pd.DataFrame:
    """One row per (env, algo): each source's label, seeds and final-return IQM [CI], the differences
    (``tuned-preset``, ``tuned-default``) with their intervals, and the rl-zoo3 reference."""
    kinds = compared_kinds(records)
    rows = []
    for (env, algo), group in by_cell(records).items():
        finals = {kind: [r.final_return for r in group if kind in r.kinds] for kind in kinds}
        row: dict[str, Any] = {"env": env, "algo": algo}
        for kind in kinds:
            row |= _source_columns(kind, group, finals[kind], confidence, n_resamples)
        for candidate, baseline in DIFFERENCES:
            if candidate in kinds and baseline in kinds:
                row |= _difference_columns(candidate, baseline, finals, confidence, n_resamples)
        row["reference"] = group[0].reference
        rows.append(row)
    return pd.DataFrame(rows)


def _source_columns(
    kind: str, group: Sequence[RunRecord], finals: Sequence[float], confidence: float, n_resamples: int
) -> dict[str, Any]:
    """``<kind>_source`` (its label), ``<kind>_seeds`` and ``<kind>_iqm`` with its interval."""
    if not finals:
        return {f"{kind}_source": "-", f"{kind}_seeds": 0, f"{kind}_iqm": math.nan,
                f"{kind}_ci_low": math.nan, f"{kind}_ci_high": math.nan}  # fmt: skip
    low, high = bootstrap_ci(finals, confidence=confidence, n_resamples=n_resamples)
    label = next(r.source for r in group if kind in r.kinds)
    return {f"{kind}_source": label, f"{kind}_seeds": len(finals), f"{kind}_iqm": iqm(finals),
            f"{kind}_ci_low": low, f"{kind}_ci_high": high}  # fmt: skip


def _difference_columns(
    candidate: str,
    baseline: str,
    finals: dict[str, list[float]],
    confidence: float,
    n_resamples: int,
) -> dict[str, float]:
    """``<candidate>-<baseline>``: the difference of IQMs and its interval (NaN when one side has no run)."""
    name = difference_name(candidate, baseline)
    if not finals[candidate] or not finals[baseline]:
        return {name: math.nan, f"{name}_ci_low": math.nan, f"{name}_ci_high": math.nan}
    result = compare(finals[baseline], finals[candidate], confidence=confidence, n_resamples=n_resamples)
    return {name: result.difference, f"{name}_ci_low": result.difference_ci[0],
            f"{name}_ci_high": result.difference_ci[1]}  # fmt: skip


def sources_aggregate(
    records: Sequence[RunRecord], confidence: float = 0.95, n_resamples: int = 10_000
) -> pd.DataFrame:
    """Across the (env, algo) cells that ran every source: one row per source with the IQM of its
    normalised final scores and a stratified interval, then one row per difference (``tuned − preset``,
    ``tuned − default``). When some cells have no preset (their defaults stand for it), rows for preset,
    tuned and ``tuned − preset`` over the other cells follow, named with :data:`OWN_PRESET`."""
    kinds = compared_kinds(records)
    complete = [group for group in by_cell(records).values() if all(_scores(group, k).size for k in kinds)]
    if not complete:
        return pd.DataFrame(columns=["source", "cells", "runs", "normalized_iqm", "ci_low", "ci_high"])
    rows = _aggregate_rows(complete, kinds, DIFFERENCES, "", confidence, n_resamples)
    # Where a pair has no preset its default runs stand for it, and tuned − preset there is tuned −
    # default: the same comparison over the cells with a preset of their own says what tuning adds to one.
    own = [group for group in complete if not any({"default", "preset"} <= set(r.kinds) for r in group)]
    if {"preset", "tuned"} <= set(kinds) and own and len(own) < len(complete):
        rows += _aggregate_rows(
            own, ("preset", "tuned"), (("tuned", "preset"),), OWN_PRESET, confidence, n_resamples
        )
    return pd.DataFrame(rows)


OWN_PRESET = " (cells with a preset)"
"""Suffix of the :func:`sources_aggregate` rows over the cells whose preset is not their defaults."""


def _aggregate_rows(
    cells: Sequence[Sequence[RunRecord]],
    kinds: Sequence[str],
    differences: Sequence[tuple[str, str]],
    suffix: str,
    confidence: float,
    n_resamples: int,
) -> list[dict[str, Any]]:
    """A row per source in ``kinds`` and per difference, over ``cells``; names end with ``suffix``."""
    strata = {kind: [_scores(group, kind) for group in cells] for kind in kinds}
    rows = []
    for kind in kinds:
        low, high = stratified_bootstrap_ci(strata[kind], confidence=confidence, n_resamples=n_resamples)
        rows.append(_aggregate_row(kind + suffix, strata[kind], iqm(np.concatenate(strata[kind])), low, high))
    for candidate, baseline in differences:
        if candidate in kinds and baseline in kinds:
            difference = iqm(np.concatenate(strata[candidate])) - iqm(np.concatenate(strata[baseline]))
            low, high = stratified_difference_ci(
                strata[baseline], strata[candidate], confidence=confidence, n_resamples=n_resamples
            )
            name = f"{candidate} − {baseline}{suffix}"
            rows.append(_aggregate_row(name, strata[candidate], difference, low, high))
    return rows


def _scores(group: Sequence[RunRecord], kind: str) -> np.ndarray:
    """The normalised final scores of the runs of ``group`` that stand for source ``kind``."""
    return np.array([float(r.normalized(r.final_return)) for r in group if kind in r.kinds])


def _aggregate_row(
    source: str, strata: Sequence[np.ndarray], value: float, low: float, high: float
) -> dict[str, Any]:
    return {"source": source, "cells": len(strata), "runs": int(sum(s.size for s in strata)),
            "normalized_iqm": value, "ci_low": low, "ci_high": high}  # fmt: skip
