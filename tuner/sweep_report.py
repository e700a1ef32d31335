"""What a sweep stores when its study ends: the trials table, Optuna's plots and the validation table.

Nothing here talks to MLflow: the functions return data frames and strings or write files into a
folder, and the caller hands those to :mod:`tuner.tracking`. Plots are plotly figures from
``optuna.visualization`` saved as self-contained HTML (plotly.js embedded), which the MLflow UI shows
as artifacts without network access.
"""

from __future__ import annotations

import io
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tuner.stats import Comparison
from tuner.study import FAIL_REASON_ATTR, fail_reason, retried_numbers

log = logging.getLogger(__name__)

TRIALS_CSV = "trials.csv"
TRIALS_MD = "trials.md"
VALIDATION_CSV = "validation.csv"
VALIDATION_MD = "validation.md"
MIN_COMPLETE_TRIALS_FOR_PLOTS = 2
CONSOLE_WIDTH = 120

# Order of the trials table: finished trials first, best value first within each state.
_STATE_ORDER = (
    TrialState.COMPLETE,
    TrialState.PRUNED,
    TrialState.FAIL,
    TrialState.RUNNING,
    TrialState.WAITING,
)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of ``study``, best finished trials first.

    Columns, in order: ``number``, ``state`` (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ...),
    the objective value(s), one column per sampled parameter under its Optuna name (empty where a trial
    did not sample it), ``duration_s`` (empty while running), ``pruned_step`` (the last reported step of
    a pruned trial) and ``fail_reason`` (why a FAIL trial failed, see :func:`tuner.study.fail_reason`).

    A single-objective study has one ``value`` column; a multi-objective one has ``value_<metric>`` per
    objective (``value_0``, ``value_1``, ... when the study has no metric names). A parameter whose
    name clashes with one of these columns is shown as ``param_<name>``. Pruned trials carry the value
    Optuna stores for them (their last intermediate value).

    Rows are ordered by state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING), then by the first
    objective from best to worst (descending for a maximized objective), then by trial number.
    """
    value_columns = _value_columns(study)
    reserved = {"number", "state", *value_columns, "duration_s", "pruned_step", FAIL_REASON_ATTR}
    trials = sorted(study.get_trials(deepcopy=False), key=_sort_key(study))
    retried = retried_numbers(trials)
    param_names = list(dict.fromkeys(name for trial in trials for name in trial.params))
    param_columns = {name: f"param_{name}" if name in reserved else name for name in param_names}

    rows = []
    for trial in trials:
        values = trial.values or [math.nan] * len(value_columns)
        row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
        row.update(zip(value_columns, values, strict=True))
        row.update({param_columns[name]: trial.params.get(name) for name in param_names})
        row["duration_s"] = trial.duration.total_seconds() if trial.duration is not None else math.nan
        row["pruned_step"] = trial.last_step if trial.state == TrialState.PRUNED else None
        row[FAIL_REASON_ATTR] = fail_reason(trial, retried)
        rows.append(row)

    columns = ["number", "state", *value_columns, *param_columns.values()]
    table = pd.DataFrame(rows, columns=[*columns, "duration_s", "pruned_step", FAIL_REASON_ATTR])
    table["number"] = table["number"].astype(int)
    table["pruned_step"] = table["pruned_step"].astype("Int64")
    floats = [*value_columns, "duration_s"]
    table[floats] = table[floats].astype(float)
    table[FAIL_REASON_ATTR] = table[FAIL_REASON_ATTR].astype(object)
    return table


def write_trials_table(df: pd.DataFrame, directory: str | Path) -> list[Path]:
    """Write ``df`` (from :func:`trials_table`) as ``trials.csv`` and ``trials.md`` into ``directory``.

    The folder is created if needed. Returns the paths written.
    """
    return _write_csv_and_markdown(df, Path(directory), TRIALS_CSV, TRIALS_MD)


def write_optuna_plots(study: optuna.Study, directory: str | Path) -> list[Path]:
    """Save Optuna's plots of ``study`` as self-contained HTML files in ``directory``; return those written.

    Writes ``optimization_history.html``, ``param_importances.html`` and ``parallel_coordinate.html``.
    A plot that cannot be drawn is skipped (and logged) rather than raised: none is written with fewer
    than two completed trials with a finite value, the importances need at least two parameters and the
    parallel coordinates at least one. A multi-objective study is plotted against its first objective.
    """
    directory = Path(directory)
    target, target_name = _plot_target(study)
    complete = [
        trial
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if math.isfinite(trial.values[0])
    ]
    n_params = len({name for trial in complete for name in trial.params})
    if len(complete) < MIN_COMPLETE_TRIALS_FOR_PLOTS:
        log.info("no Optuna plots: %d completed trial(s) with a finite value", len(complete))
        return []

    plots: list[tuple[str, Callable[[], Any]]] = [
        (
            "optimization_history.html",
            lambda: optuna.visualization.plot_optimization_history(
                study, target=target, target_name=target_name
            ),
        )
    ]
    if n_params >= 2:
        plots.append(("param_importances.html", lambda: _importances_figure(study, target, target_name)))
    else:
        log.info("no parameter importance plot: the study has %d parameter(s)", n_params)
    if n_params >= 1:
        plots.append(
            (
                "parallel_coordinate.html",
                lambda: optuna.visualization.plot_parallel_coordinate(
                    study, target=target, target_name=target_name
                ),
            )
        )

    written = []
    for filename, make_figure in plots:
        try:
            figure = make_figure()
        except ValueError as exc:  # Optuna's way of saying the study does not fit this plot
            log.warning("skipping Optuna plot %s: %s", filename, exc)
            continue
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / filename
        figure.write_html(path, include_plotlyjs=True, full_html=True)
        written.append(path)
    return written


def summary_table(
    rows: Sequence[Mapping[str, Any]] | pd.DataFrame, title: str | None = None, width: int = CONSOLE_WIDTH
) -> str:
    """Render ``rows`` (dicts or a data frame) as a plain-text rich table for the console.

    Columns are the data frame's, or the keys of the dicts in order of first appearance; numbers are
    right-aligned and floats shown with 6 significant digits; missing values are blank. The result has
    no colour codes and is at most ``width`` characters wide.
    """
    records, columns = _records(rows)
    table = Table(title=Text(title) if title else None)
    for column in columns:
        numeric = all(_is_number(r.get(column)) for r in records if not _is_missing(r.get(column)))
        table.add_column(Text(str(column)), justify="right" if numeric and records else "left")
    for record in records:
        table.add_row(*(Text(_format_cell(record.get(column))) for column in columns))
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False).print(table)
    return buffer.getvalue()


def markdown_table(df: pd.DataFrame) -> str:
    """``df`` as a GitHub markdown table (no index), missing values blank and ``|`` in text escaped."""
    rows = [[_markdown_cell(value) for value in row] for row in df.itertuples(index=False)]
    cells = pd.DataFrame(rows, columns=list(df.columns), dtype=object)
    return cells.to_markdown(index=False, missingval="")


def validation_table(
    comparison: Comparison, baseline_name: str = "default", candidate_name: str = "tuned"
) -> pd.DataFrame:
    """The held-out validation as a table: rows ``baseline_name``, ``candidate_name`` and ``difference``.

    Columns: ``config``, ``n``, ``iqm``, ``ci_low``, ``ci_high`` (the bootstrap interval at the
    comparison's confidence level, 95 % by default), ``mean``, ``std``, ``significant`` and ``p_value``.
    The difference row is candidate − baseline: the IQM difference with its interval, the difference
    of means, whether the interval excludes 0 and the Mann–Whitney U p-value; its ``n`` and ``std`` and
    the first two rows' ``significant`` and ``p_value`` are empty.
    """
    c = comparison
    table = pd.DataFrame(
        {
            "config": [baseline_name, candidate_name, "difference"],
            "n": pd.array([c.n_baseline, c.n_candidate, None], dtype="Int64"),
            "iqm": [c.baseline_iqm, c.candidate_iqm, c.difference],
            "ci_low": [c.baseline_ci[0], c.candidate_ci[0], c.difference_ci[0]],
            "ci_high": [c.baseline_ci[1], c.candidate_ci[1], c.difference_ci[1]],
            "mean": [c.baseline_mean, c.candidate_mean, c.candidate_mean - c.baseline_mean],
            "std": [c.baseline_std, c.candidate_std, math.nan],
            "significant": pd.array([None, None, c.significant], dtype="boolean"),
            "p_value": [math.nan, math.nan, c.p_value],
        }
    )
    return table


def write_validation_table(df: pd.DataFrame, directory: str | Path) -> list[Path]:
    """Write ``df`` (from :func:`validation_table`) as ``validation.csv`` and ``validation.md``.

    The folder is created if needed. Returns the paths written.
    """
    return _write_csv_and_markdown(df, Path(directory), VALIDATION_CSV, VALIDATION_MD)


def _value_columns(study: optuna.Study) -> list[str]:
    n_objectives = len(study.directions)
    if n_objectives == 1:
        return ["value"]
    names = study.metric_names or [str(i) for i in range(n_objectives)]
    return [f"value_{name}" for name in names]


def _sort_key(study: optuna.Study) -> Callable[[FrozenTrial], tuple[int, int, float, int]]:
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0

    def key(trial: FrozenTrial) -> tuple[int, int, float, int]:
        rank = _STATE_ORDER.index(trial.state) if trial.state in _STATE_ORDER else len(_STATE_ORDER)
        first = trial.values[0] if trial.values else math.nan
        if math.isnan(first):
            return (rank, 1, 0.0, trial.number)
        return (rank, 0, sign * first, trial.number)

    return key


def _plot_target(study: optuna.Study) -> tuple[Callable[[FrozenTrial], float] | None, str]:
    """Target and axis name for Optuna's plots: the value, or the first objective of a multi-objective."""
    if len(study.directions) == 1:
        return None, (study.metric_names or ["Objective Value"])[0]
    name = study.metric_names[0] if study.metric_names else "objective 0"
    return (lambda trial: trial.values[0]), name


def _importances_figure(
    study: optuna.Study, target: Callable[[FrozenTrial], float] | None, target_name: str
) -> Any:
    if target is None:
        return optuna.visualization.plot_param_importances(study)
    # Optuna's default evaluator (PED-ANOVA) assumes that a lower target is better when a target is
    # given, so a maximized first objective is negated; the plot shows only the importances.
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    oriented = (lambda trial: -target(trial)) if maximize else target
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*low `target` values", category=UserWarning)
        return optuna.visualization.plot_param_importances(study, target=oriented, target_name=target_name)


def _write_csv_and_markdown(df: pd.DataFrame, directory: Path, csv_name: str, md_name: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = directory / csv_name, directory / md_name
    df.to_csv(csv_path, index=False)
    md_path.write_text(markdown_table(df) + "\n", encoding="utf-8")
    return [csv_path, md_path]


def _records(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> tuple[list[Mapping[str, Any]], list[Any]]:
    if isinstance(rows, pd.DataFrame):
        return list(rows.to_dict("records")), list(rows.columns)
    records = list(rows)
    return records, list(dict.fromkeys(key for record in records for key in record))


def _is_missing(value: Any) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _format_cell(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, bool | numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        return f"{float(value):.6g}"
    return str(value)


def _markdown_cell(value: Any) -> Any:
    if _is_missing(value):
        return None  # tabulate's missing value, shown blank
    if isinstance(value, bool | np.bool_):
        return str(bool(value))  # tabulate would print a lone True as 1
    if isinstance(value, str):
        return value.replace("|", r"\|").replace("\r", " ").replace("\n", " ")
    return value
