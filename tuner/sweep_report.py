"""What a sweep stores when its study ends: the trials table, Optuna's plots and the validation table.

Nothing here talks to MLflow: the functions return data frames and strings or write files into a
folder, and the caller hands those to :mod:`tuner.tracking`. Plots are Optuna's matplotlib figures
(``optuna.visualization.matplotlib``) saved as PNG: the MLflow UI shows them without network access, and
three of them weigh some tens of kB, where the plotly versions embed plotly.js (several MB) each.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import optuna.visualization.matplotlib as optuna_mpl
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tuner.display import display_value, is_missing
from tuner.multienv import ENV_RETURNS_ATTR
from tuner.stats import Comparison
from tuner.study import FAIL_REASON_ATTR, fail_reason, retried_numbers
from tuner.trial_record import VALUES_ATTR

log = logging.getLogger(__name__)

PlotTarget = Callable[[FrozenTrial], float] | None
"""What Optuna's plots show of a trial: its value (None) or a function of it."""

TRIALS_CSV = "trials.csv"
TRIALS_MD = "trials.md"
PBT_EVENTS_CSV = "pbt_events.csv"
PBT_EVENTS_MD = "pbt_events.md"
VALIDATION_CSV = "validation.csv"
VALIDATION_MD = "validation.md"
MIN_COMPLETE_TRIALS_FOR_PLOTS = 2
PLOT_DPI = 80  # the three PNGs of a 20-trial study stay well under 1 MB together

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

    Columns, in order: ``number``, ``state`` (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ...), the
    objective value(s), in a multi-env study each env's mean return (``return_<env>``, empty for an env a
    pruned trial did not reach), the trial's config values under the config's own names (``n_steps=128``,
    ``gamma=0.998``, from the trial's ``config_values``), then the sampled parameters whose Optuna name or
    value is not a config value's (a reparameterised ``log2_n_steps=7``, ``one_minus_gamma``; every
    parameter of a study that records no config values), ``duration_s`` (empty while running),
    ``pruned_step`` (the last reported step of a pruned trial) and ``fail_reason`` (why a FAIL trial
    failed, see :func:`tuner.study.fail_reason`). Cells are empty where a trial lacks the value.

    A single-objective study has one ``value`` column; a multi-objective one has ``value_<metric>`` per
    objective (``value_0``, ``value_1``, ... when the study has no metric names). A parameter whose
    name clashes with one of these columns is shown as ``param_<name>``. Pruned trials carry the value
    Optuna stores for them (their last intermediate value).

    Rows are ordered by state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING), then by the first
    objective from best to worst (descending for a maximized objective), then by trial number.
    """
    value_columns = _value_columns(study)
    trials = sorted(study.get_trials(deepcopy=False), key=_sort_key(study))
    retried = retried_numbers(trials)
    config_names = list(
        dict.fromkeys(name for trial in trials for name in trial.user_attrs.get(VALUES_ATTR, {}))
    )
    search_names = _search_only_params(trials)
    env_columns = _env_return_columns(trials)
    reserved = {
        "number",
        "state",
        *value_columns,
        *env_columns.values(),
        *config_names,
        "duration_s",
        "pruned_step",
        FAIL_REASON_ATTR,
    }
    search_columns = {name: f"param_{name}" if name in reserved else name for name in search_names}

    rows = []
    for trial in trials:
        values = trial.values or [math.nan] * len(value_columns)
        config = trial.user_attrs.get(VALUES_ATTR, {})
        row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
        row.update(zip(value_columns, values, strict=True))
        env_returns = trial.user_attrs.get(ENV_RETURNS_ATTR, {})
        row.update({column: _mean(env_returns.get(env)) for env, column in env_columns.items()})
        row.update({name: _cell_value(config.get(name)) for name in config_names})
        row.update({search_columns[name]: trial.params.get(name) for name in search_names})
        row["duration_s"] = trial.duration.total_seconds() if trial.duration is not None else math.nan
        row["pruned_step"] = trial.last_step if trial.state == TrialState.PRUNED else None
        row[FAIL_REASON_ATTR] = fail_reason(trial, retried)
        rows.append(row)

    columns = [
        "number",
        "state",
        *value_columns,
        *env_columns.values(),
        *config_names,
        *search_columns.values(),
    ]
    table = pd.DataFrame(rows, columns=[*columns, "duration_s", "pruned_step", FAIL_REASON_ATTR])
    table["number"] = table["number"].astype(int)
    table["pruned_step"] = table["pruned_step"].astype("Int64")
    floats = [*value_columns, *env_columns.values(), "duration_s"]
    table[floats] = table[floats].astype(float)
    table[FAIL_REASON_ATTR] = table[FAIL_REASON_ATTR].astype(object)
    return table


def _env_return_columns(trials: Sequence[FrozenTrial]) -> dict[str, str]:
    """env → the column of a multi-env study's mean return on that env (``return_<env>``), in the order
    the trials trained them; empty for a one-env study."""
    envs: dict[str, None] = {}
    for trial in trials:
        envs.update(dict.fromkeys(trial.user_attrs.get(ENV_RETURNS_ATTR, {})))
    return {env: f"return_{env}" for env in envs}


def _mean(values: Sequence[float] | None) -> float:
    """The mean of ``values``; NaN for none (an env a pruned trial did not reach)."""
    return sum(values) / len(values) if values else math.nan


def _search_only_params(trials: Sequence[FrozenTrial]) -> list[str]:
    """The parameters some trial sampled under a name, or with a value, that its config values lack:
    the search's own quantities, shown beside the config's."""
    names: dict[str, None] = {}
    for trial in trials:
        config = trial.user_attrs.get(VALUES_ATTR, {})
        for name, value in trial.params.items():
            if name not in config or config[name] != value:
                names[name] = None
    return list(names)


def _cell_value(value: Any) -> Any:
    """A config value as one table cell: a list (a network's layer sizes) as its text."""
    return str(value) if isinstance(value, list | tuple | dict) else value


def write_trials_table(df: pd.DataFrame, directory: str | Path) -> list[Path]:
    """Write ``df`` (from :func:`trials_table`) as ``trials.csv`` and ``trials.md`` into ``directory``.

    The folder is created if needed. Returns the paths written.
    """
    return _write_csv_and_markdown(df, Path(directory), TRIALS_CSV, TRIALS_MD)


def write_pbt_events_table(df: pd.DataFrame, directory: str | Path) -> list[Path]:
    """Write population-based training's exploit events (one row per exploit: step, members, trials,
    each value before and after) as ``pbt_events.csv`` and ``pbt_events.md`` into ``directory``."""
    return _write_csv_and_markdown(df, Path(directory), PBT_EVENTS_CSV, PBT_EVENTS_MD)


def write_optuna_plots(study: optuna.Study, directory: str | Path) -> list[Path]:
    """Save Optuna's plots of ``study`` as PNG images in ``directory``; return those written.

    Writes ``optimization_history.png``, ``param_importances.png`` and ``parallel_coordinate.png``.
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
        ("optimization_history.png", lambda: _history_axes(study, target, target_name))
    ]
    if n_params >= 2:
        plots.append(("param_importances.png", lambda: _importances_axes(study, target, target_name)))
    else:
        log.info("no parameter importance plot: the study has %d parameter(s)", n_params)
    if n_params >= 1:
        plots.append(("parallel_coordinate.png", lambda: _parallel_axes(study, target, target_name)))
    return [path for filename, draw in plots if (path := _save_plot(draw, directory / filename))]


def _save_plot(draw: Callable[[], Any], path: Path) -> Path | None:
    """Draw one Optuna plot and save it as ``path``; None (logged) where Optuna refuses the study."""
    with warnings.catch_warnings(), matplotlib.rc_context({"figure.dpi": PLOT_DPI}):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the matplotlib API's
        warnings.simplefilter("ignore", UserWarning)  # matplotlib's, on a parameter with a single value
        try:
            axes = draw()
        except ValueError as exc:  # Optuna's way of saying the study does not fit this plot
            log.warning("skipping Optuna plot %s: %s", path.name, exc)
            return None
    figure = axes.get_figure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def markdown_table(df: pd.DataFrame) -> str:
    """``df`` as a GitHub markdown table (no index) for reading: floats to 4 significant digits (the
    CSV beside it keeps them whole), missing values blank and ``|`` in text escaped."""
    rows = [[_markdown_cell(value) for value in row] for row in df.itertuples(index=False)]
    cells = pd.DataFrame(rows, columns=list(df.columns), dtype=object)
    return cells.to_markdown(index=False, missingval="")


def validation_table(
    comparison: Comparison, baseline_name: str = "default", candidate_name: str = "tuned"
) -> pd.DataFrame:
    """The held-out validation as a table: rows ``baseline_name``, ``candidate_name`` and ``difference``.

    Columns: ``config``, ``n``, ``iqm``, ``ci_low``, ``ci_high`` (the bootstrap interval at the
    comparison's confidence level, 95 % by default), ``mean``, ``std``, ``significant`` and
    ``mann_whitney_p``. The difference row is candidate − baseline: the IQM difference with its interval,
    the difference of means, whether the interval excludes 0 (the one rule for ``significant``, see
    :func:`validation_footnote`) and the two-sided Mann–Whitney U p-value of the seed returns; its ``n``
    and ``std`` and the first two rows' ``significant`` and ``mann_whitney_p`` are empty.
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
            "mann_whitney_p": [math.nan, math.nan, c.p_value],
        }
    )
    return table


def validation_footnote(confidence: float) -> str:
    """What the validation table's ``significant`` and ``mann_whitney_p`` mean."""
    return (
        f"significant: the {confidence:.0%} bootstrap CI of the IQM difference (tuned - default) "
        "excludes 0. mann_whitney_p: two-sided Mann-Whitney U p-value of the seed returns, a second "
        "opinion that does not decide significant."
    )


def write_validation_table(df: pd.DataFrame, directory: str | Path, footnote: str = "") -> list[Path]:
    """Write ``df`` (from :func:`validation_table`) as ``validation.csv`` and ``validation.md`` (with
    ``footnote`` under the table).

    The folder is created if needed. Returns the paths written.
    """
    return _write_csv_and_markdown(df, Path(directory), VALIDATION_CSV, VALIDATION_MD, footnote)


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


def _plot_target(study: optuna.Study) -> tuple[PlotTarget, str]:
    """Target and axis name for Optuna's plots: the value, or the first objective of a multi-objective."""
    if len(study.directions) == 1:
        return None, (study.metric_names or ["Objective Value"])[0]
    name = study.metric_names[0] if study.metric_names else "objective 0"
    return (lambda trial: trial.values[0]), name


def _history_axes(study: optuna.Study, target: PlotTarget, target_name: str) -> Any:
    return optuna_mpl.plot_optimization_history(study, target=target, target_name=target_name)


def _parallel_axes(study: optuna.Study, target: PlotTarget, target_name: str) -> Any:
    return optuna_mpl.plot_parallel_coordinate(study, target=target, target_name=target_name)


def _importances_axes(study: optuna.Study, target: PlotTarget, target_name: str) -> Any:
    if target is None:
        return optuna_mpl.plot_param_importances(study)
    # Optuna's default evaluator (PED-ANOVA) assumes that a lower target is better when a target is
    # given, so a maximized first objective is negated; the plot shows only the importances.
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    oriented = (lambda trial: -target(trial)) if maximize else target
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*low `target` values", category=UserWarning)
        return optuna_mpl.plot_param_importances(study, target=oriented, target_name=target_name)


def _write_csv_and_markdown(
    df: pd.DataFrame, directory: Path, csv_name: str, md_name: str, footnote: str = ""
) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = directory / csv_name, directory / md_name
    df.to_csv(csv_path, index=False)
    md_path.write_text(markdown_table(df) + "\n" + (f"\n{footnote}\n" if footnote else ""), encoding="utf-8")
    return [csv_path, md_path]


def _markdown_cell(value: Any) -> Any:
    if is_missing(value):
        return None  # tabulate's missing value, shown blank
    if isinstance(value, bool | np.bool_):
        return str(bool(value))  # tabulate would print a lone True as 1
    if isinstance(value, str):
        return value.replace("|", r"\|").replace("\r", " ").replace("\n", " ")
    if isinstance(value, float | np.floating):
        return display_value(value)
    return value
