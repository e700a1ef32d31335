"""Comparison tables and plots of a benchmark, read back from MLflow: ``python -m tuner.report``.

    python -m tuner.report                               # the most recently started benchmark
    python -m tuner.report report.benchmark=classic

Reads the benchmark's parent run (its ``plan.json``: which cells, with which config fingerprint) and the
newest FINISHED run of every planned cell through MLflow (:class:`tuner.tracking.RunReader`) — no side
files. Per environment and
algorithm: final return IQM with a 95 % bootstrap interval, mean ± std, normalized score, time to the env's
threshold, normalized area under the learning curve, wall time and env-steps/s, beside the rl-zoo3
reference score. Across environments: the IQM of normalized scores with a stratified bootstrap interval,
and a performance profile. Writes CSV, markdown and PNG files under ``runs/reports/<name>/`` and logs the
same files as artifacts of a ``report`` run in the benchmark's MLflow experiment.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from rich import get_console
from rich.console import Console

from algorithms import ConfigError
from tuner.app import hydra_app
from tuner.benchmark import KIND_CELL, KIND_PARENT, PLAN_ARTIFACT, parent_run_id
from tuner.curves import RunRecord, normalized_auc, time_to_threshold
from tuner.display import console_table
from tuner.ledger import Ledger, read_ledger, record_from_run
from tuner.report_plots import aggregate_figure, curves_figure, profile_figure
from tuner.report_sources import (
    DIFFERENCES,
    KINDS,
    compared_kinds,
    difference_name,
    sources_aggregate,
    sources_table,
)
from tuner.stats import bootstrap_ci, iqm, stratified_bootstrap_ci
from tuner.sweep_report import markdown_table
from tuner.tracking import RunReader, RunRecorder, start_run
from tuner.train import resolve_config
from tuner.ui_links import print_links

KIND_REPORT = "benchmark_report"


@dataclass(frozen=True)
class Report:
    """A benchmark's tables; ``missing`` lists planned cells with no finished run."""

    name: str
    experiment: str
    """The benchmark's MLflow experiment (where the report run goes too)."""
    summary: pd.DataFrame
    aggregate: pd.DataFrame
    records: tuple[RunRecord, ...]
    missing: tuple[str, ...]
    sources: pd.DataFrame | None = None
    """Per (env, algo), the sources side by side, when the benchmark trained several
    (:mod:`tuner.report_sources`); None otherwise."""
    sources_aggregate: pd.DataFrame | None = None
    """Each source (and each difference) across the cells that ran every source."""


# --- reading MLflow ----------------------------------------------------------------------------------------
def find_benchmark(reader: RunReader, name: str | None) -> tuple[str, str, str]:
    """(benchmark name, experiment name, parent run id) of benchmark ``name``, or the newest if None.

    Raises ConfigError naming the benchmarks that exist when there is no match.
    """

    runs = reader.find_runs({"kind": KIND_PARENT, **({"benchmark": name} if name else {})})
    if not runs:
        names = sorted(
            {run.data.tags.get("benchmark", "?") for run in reader.find_runs({"kind": KIND_PARENT})}
        )
        hint = f"benchmarks here: {', '.join(names)}" if names else "run `python -m tuner.benchmark` first"
        wanted = f"benchmark {name!r}" if name else "benchmark"
        raise ConfigError(f"no {wanted} in the MLflow tracking store; {hint}")
    run = runs[0]
    return run.data.tags["benchmark"], reader.experiment_name(run.info.experiment_id), run.info.run_id


def read_records(
    reader: RunReader, name: str, experiment: str, parent_id: str, ledger: Ledger | None = None
) -> tuple[list[RunRecord], list[str]]:
    """The newest FINISHED run of every cell in the parent's plan (for a cell the tracking store lacks,
    its row in ``ledger`` with the planned fingerprint), and the cells that have neither."""

    plan = json.loads(reader.read_text(parent_id, PLAN_ARTIFACT))
    newest: dict[str, Any] = {}
    for run in reader.find_runs({"kind": KIND_CELL, "benchmark": name}, experiment, finished_only=True):
        key = run.data.tags.get("cell", "")
        if plan.get(key) == run.data.tags.get("fingerprint") and key not in newest:
            newest[key] = run  # runs come newest first
    records = {key: record_from_run(reader, run) for key, run in newest.items()}
    for (key, fingerprint), record in (ledger or {}).items():
        if key not in records and plan.get(key) == fingerprint:
            records[key] = record
    return [records[key] for key in sorted(records)], sorted(set(plan) - set(records))


# --- tables ------------------------------------------------------------------------------------------------
def summary_table(
    records: Sequence[RunRecord], confidence: float = 0.95, n_resamples: int = 10_000
) -> pd.DataFrame:
    """One row per (env, algo, source): final-return statistics, curve summaries, cost, the reference
    score."""
    rows = []
    for (env, algo, _), group in _groups(records, lambda r: (r.env, r.algo, r.source)).items():
        finals = np.array([r.final_return for r in group])
        low, high = bootstrap_ci(finals, confidence=confidence, n_resamples=n_resamples)
        first = group[0]
        threshold = first.threshold
        crossings = (
            [time_to_threshold(r.steps, r.returns, threshold) for r in group] if threshold is not None else []
        )
        reached = [steps for steps in crossings if not math.isnan(steps)]
        rows.append(
            {
                "env": env,
                "algo": algo,
                "source": first.source,
                "seeds": len(group),
                "budget_steps": first.budget_steps,
                "iqm": iqm(finals),
                "ci_low": low,
                "ci_high": high,
                "mean": float(finals.mean()),
                "std": float(finals.std(ddof=1)) if finals.size > 1 else math.nan,
                "normalized_iqm": iqm(first.normalized(finals)),
                "threshold": threshold,
                "reached": f"{len(reached)}/{len(group)}" if threshold is not None else "-",
                "median_steps_to_threshold": float(np.median(reached)) if reached else math.nan,
                "normalized_auc": _mean_auc(group),
                "wall_time_s": float(np.mean([r.wall_time_s for r in group])),
                "sps": float(np.mean([r.sps for r in group])),
                "reference": first.reference,
            }
        )
    return pd.DataFrame(rows)


def aggregate_table(
    records: Sequence[RunRecord], confidence: float = 0.95, n_resamples: int = 10_000
) -> pd.DataFrame:
    """One row per algorithm and source (``default``, ``preset``, ``tuned``): IQM of normalized final
    scores over all its envs and seeds, with a stratified bootstrap interval (seeds resampled within
    each env), and the mean normalized AUC."""
    rows = []
    by_kind = [(kind, record) for record in records for kind in record.kinds]
    for (algo, kind), pairs in _groups(by_kind, lambda p: (p[1].algo, p[0])).items():
        group = [record for _, record in pairs]
        by_env = _groups(group, lambda r: r.env)
        scores = [np.array([float(r.normalized(r.final_return)) for r in runs]) for runs in by_env.values()]
        low, high = stratified_bootstrap_ci(scores, confidence=confidence, n_resamples=n_resamples)
        rows.append(
            {
                "algo": algo,
                "source": kind,
                "envs": len(by_env),
                "runs": len(group),
                "normalized_iqm": iqm(np.concatenate(scores)),
                "ci_low": low,
                "ci_high": high,
                "normalized_auc": _mean_auc(group),
            }
        )
    return pd.DataFrame(rows)


def build_report(
    reader: RunReader,
    name: str | None,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    ledger: Ledger | None = None,
) -> Report:
    """Read benchmark ``name`` (None: the newest) from MLflow, the cells it lacks from ``ledger``, and
    compute its tables."""
    bench, experiment, parent_id = find_benchmark(reader, name)
    records, missing = read_records(reader, bench, experiment, parent_id, ledger)
    if not records:
        raise ConfigError(
            f"benchmark {bench!r} has no finished cell yet; run `python -m tuner.benchmark` first"
        )
    compared = len(compared_kinds(records)) > 1
    return Report(
        bench,
        experiment,
        summary_table(records, confidence, n_resamples),
        aggregate_table(records, confidence, n_resamples),
        tuple(records),
        tuple(missing),
        sources_table(records, confidence, n_resamples) if compared else None,
        sources_aggregate(records, confidence, n_resamples) if compared else None,
    )


def _mean_auc(runs: Sequence[RunRecord]) -> float:
    """Mean normalized area under the learning curve of ``runs``."""
    return float(np.mean([normalized_auc(r.steps, r.normalized(r.returns), r.budget_steps) for r in runs]))


def _groups(records: Sequence[Any], key: Any) -> dict[Any, list[Any]]:
    groups: dict[Any, list[Any]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return dict(sorted(groups.items()))


# --- output ------------------------------------------------------------------------------------------------
def write_outputs(report: Report, directory: Path, confidence: float = 0.95) -> list[Path]:
    """CSV and markdown tables and PNG plots of ``report`` in ``directory``; returns the files."""

    directory.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    tables = {"summary": report.summary, "aggregate": report.aggregate}
    if report.sources is not None and report.sources_aggregate is not None:
        tables |= {"sources": report.sources, "sources_aggregate": report.sources_aggregate}
    for stem, table in tables.items():
        csv_path, md_path = directory / f"{stem}.csv", directory / f"{stem}.md"
        table.to_csv(csv_path, index=False)
        md_path.write_text(markdown_table(table) + "\n")
        files += [csv_path, md_path]
    envs = report.summary["env"].unique()
    figures = {f"curves_{env}.png": curves_figure(report.records, env, confidence) for env in envs}
    figures["aggregate_iqm.png"] = aggregate_figure(report.aggregate)
    figures["performance_profile.png"] = profile_figure(report.records)
    for filename, figure in figures.items():
        path = directory / filename
        figure.savefig(path, dpi=110)
        files.append(path)
    return files


# Console columns left out first when the terminal is narrow (summary.csv / aggregate.csv have them all).
SUMMARY_DROPPABLE = ("source", "wall s", "sps", "norm. AUC", "steps to solve", "mean ± std", "rl-zoo3")
AGGREGATE_DROPPABLE = ("norm. AUC", "runs")


def print_report(report: Report, console: Console, files_in: str = "") -> None:
    """The summary and aggregate tables on the terminal, at its width (``files_in``: where the CSV
    files with every column unrounded are, named when a column is left out)."""
    summary = [
        {
            "env": row.env,
            "algo": row.algo,
            "seeds": row.seeds,
            "IQM": _fmt(row.iqm, "{:.1f}"),
            "95% CI": f"[{_fmt(row.ci_low, '{:.1f}')}, {_fmt(row.ci_high, '{:.1f}')}]",
            "norm. IQM": _fmt(row.normalized_iqm, "{:.2f}"),
            "solved": row.reached,
            "rl-zoo3": _fmt(row.reference, "{:.1f}"),
            "mean ± std": f"{_fmt(row.mean, '{:.1f}')} ± {_fmt(row.std, '{:.1f}')}",
            "steps to solve": _fmt(row.median_steps_to_threshold, "{:,.0f}"),
            "norm. AUC": _fmt(row.normalized_auc, "{:.2f}"),
            "sps": _fmt(row.sps, "{:,.0f}"),
            "wall s": _fmt(row.wall_time_s, "{:.0f}"),
            "source": row.source,
        }
        for row in report.summary.itertuples()
    ]
    title = f"benchmark {report.name}: final evaluation return per env and algorithm"
    console.print(console_table(summary, title, console.width, SUMMARY_DROPPABLE, files_in))
    aggregate = [
        {
            "algo": row.algo,
            "source": row.source,
            "envs": row.envs,
            "runs": row.runs,
            "norm. IQM": _fmt(row.normalized_iqm, "{:.2f}"),
            "95% CI (stratified)": f"[{_fmt(row.ci_low, '{:.2f}')}, {_fmt(row.ci_high, '{:.2f}')}]",
            "norm. AUC": _fmt(row.normalized_auc, "{:.2f}"),
        }
        for row in report.aggregate.itertuples()
    ]
    title = "across envs: IQM of normalized final scores (0 random policy, 1 best rl-zoo3 score)"
    console.print(console_table(aggregate, title, console.width, AGGREGATE_DROPPABLE, files_in))
    if report.sources is not None and report.sources_aggregate is not None:
        print_sources(report.sources, report.sources_aggregate, console, files_in)
    if report.missing:
        missing = ", ".join(report.missing)
        console.print(f"[yellow]{len(report.missing)} planned cells have no finished run: {missing}")


def print_sources(table: pd.DataFrame, aggregate: pd.DataFrame, console: Console, files_in: str) -> None:
    """The sources side by side (IQM [CI] of each, the differences), then across envs."""
    kinds = [kind for kind in KINDS if f"{kind}_iqm" in table]
    differences = [difference_name(*pair) for pair in DIFFERENCES if difference_name(*pair) in table]
    rows = []
    for row in table.to_dict("records"):
        shown = {"env": row["env"], "algo": row["algo"]}
        for name in (*kinds, *differences):
            value = row[f"{name}_iqm"] if name in kinds else row[name]
            low, high = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
            shown[name.replace("-", " − ")] = _interval(value, low, high, "{:.1f}")
        shown["rl-zoo3"] = _fmt(row["reference"], "{:.1f}")
        rows.append(shown)
    title = "sources side by side: final-return IQM [95% CI] on the benchmark's seeds"
    console.print(console_table(rows, title, console.width, ("rl-zoo3",), files_in))
    summary = [
        {
            "source": row["source"],
            "cells": row["cells"],
            "norm. IQM": _fmt(row["normalized_iqm"], "{:.3f}"),
            "95% CI (stratified)": f"[{_fmt(row['ci_low'], '{:.3f}')}, {_fmt(row['ci_high'], '{:.3f}')}]",
        }
        for row in aggregate.to_dict("records")
    ]
    title = "sources across the envs and algorithms that ran them all: IQM of normalized final scores"
    console.print(console_table(summary, title, console.width, (), files_in))


def _interval(value: Any, low: Any, high: Any, fmt: str) -> str:
    """``value [low, high]``, each formatted (``-`` when missing)."""
    return f"{_fmt(value, fmt)} [{_fmt(low, fmt)}, {_fmt(high, fmt)}]"


def _fmt(value: Any, fmt: str) -> str:
    """``value`` formatted, or ``-`` when it is missing (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def publish(
    report: Report, files: Sequence[Path], reader: RunReader, uri: str, artifact_dir: str
) -> RunRecorder:
    """Log ``files`` as artifacts of the benchmark's report run, nested under the benchmark's run; the
    ended run. A benchmark has one report run: a later report of it reopens the run and replaces its
    files and figures (the metrics keep their history)."""
    earlier = reader.find_runs({"kind": KIND_REPORT, "benchmark": report.name}, report.experiment)
    parent = parent_run_id(reader, report.experiment, report.name)
    with start_run(
        uri,
        report.experiment,
        artifact_dir,
        run_name=f"report-{report.name}",
        tags={"kind": KIND_REPORT, "benchmark": report.name},
        parent_run_id=parent,
        resume_run_id=earlier[0].info.run_id if earlier else None,
    ) as run:
        for path in files:
            run.log_artifact(path)
        for _, row in report.aggregate.iterrows():
            suffix = f"/{row['source']}" if report.sources is not None else ""
            run.log_metrics({f"normalized_iqm/{row['algo']}{suffix}": float(row["normalized_iqm"])}, 0)
    return run


@dataclass(frozen=True)
class ReportSettings:
    """The validated ``report`` node of conf/report.yaml (see the comments there)."""

    benchmark: str | None
    out_dir: str
    confidence: float
    n_resamples: int
    ledger: str | None = None
    """A benchmark ledger (:mod:`tuner.ledger`) whose cells complete the tracking store's."""

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> ReportSettings:
        """Read and check ``cfg.report``; ConfigError naming the key and the value otherwise."""
        benchmark, out_dir = node.get("benchmark"), node.get("out_dir")
        if benchmark is not None and (not isinstance(benchmark, str) or not benchmark):
            raise ConfigError(f"report.benchmark must be a benchmark name or null, got {benchmark!r}")
        if not isinstance(out_dir, str) or not out_dir:
            raise ConfigError(f"report.out_dir must be a directory path, got {out_dir!r}")
        confidence = node.get("confidence")
        if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 < confidence < 1:
            raise ConfigError(f"report.confidence must be a number in (0, 1), e.g. 0.95, got {confidence!r}")
        resamples = node.get("n_resamples")
        if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
            raise ConfigError(f"report.n_resamples must be an integer >= 100, got {resamples!r}")
        ledger = node.get("ledger")
        if ledger is not None and (not isinstance(ledger, str) or not Path(ledger).is_file()):
            # Unlike a benchmark's ledger (created with its first cell), a report's is only read: a path
            # that names no file is a mistake, not an empty ledger.
            raise ConfigError(
                f"report.ledger must be an existing CSV file (a benchmark's ledger=), got {ledger!r}"
            )
        return cls(benchmark, out_dir, float(confidence), resamples, ledger)


@hydra_app("report")
def main(cfg: DictConfig) -> None:
    """``python -m tuner.report``: build, print, write and publish the report; exit codes as in
    :mod:`tuner.app` (2 when there is no benchmark to report on)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one file: no progress bar

    console = get_console()
    config = resolve_config(cfg)
    settings, tracking = ReportSettings.from_config(config["report"]), config["tracking"]
    reader = RunReader(tracking["uri"])
    ledger = read_ledger(settings.ledger)
    report = build_report(reader, settings.benchmark, settings.confidence, settings.n_resamples, ledger)
    directory = Path(settings.out_dir) / report.name
    print_report(report, console, str(directory))
    files = write_outputs(report, directory, settings.confidence)
    run = publish(report, files, reader, tracking["uri"], tracking["artifact_dir"])
    console.print(f"wrote {len(files)} files to {directory}")
    print_links(console, tracking["uri"], run.experiment_id, run.run_id, "the report run")


if __name__ == "__main__":
    main()
