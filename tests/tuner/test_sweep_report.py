"""tuner.sweep_report on real, tiny in-memory Optuna studies."""

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from tuner import stats, sweep_report

PRUNED_TRIAL, FAILED_TRIAL = 2, 5
PLOTS = {"optimization_history.html", "param_importances.html", "parallel_coordinate.html"}


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    y = trial.suggest_float("y", -2.0, 2.0)
    if trial.number == PRUNED_TRIAL:
        trial.report(-9.0, step=10)
        trial.report(-8.0, step=20)
        raise optuna.TrialPruned()
    if trial.number == FAILED_TRIAL:
        trial.set_user_attr("fail_reason", "loss is NaN | diverged")
        raise ValueError("diverged")
    return -((x - 0.5) ** 2) - (y + 0.5) ** 2


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(quadratic, n_trials=8, catch=(ValueError,))
    return study


def single_param_study(n_complete: int, n_pruned: int = 0) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number < n_pruned:
            trial.report(x, step=1)
            raise optuna.TrialPruned()
        return x

    study.optimize(objective, n_trials=n_pruned + n_complete)
    return study


def test_trials_table_has_a_row_per_trial_with_its_state(study: optuna.Study) -> None:
    table = sweep_report.trials_table(study)
    assert len(table) == 8
    assert list(table.columns) == [
        "number",
        "state",
        "value",
        "x",
        "y",
        "duration_s",
        "pruned_step",
        "fail_reason",
    ]
    assert table["state"].value_counts().to_dict() == {"COMPLETE": 6, "PRUNED": 1, "FAIL": 1}
    by_number = table.set_index("number")
    assert by_number.loc[PRUNED_TRIAL, "state"] == "PRUNED"
    assert by_number.loc[PRUNED_TRIAL, "pruned_step"] == 20
    assert by_number.loc[FAILED_TRIAL, "state"] == "FAIL"
    assert by_number.loc[FAILED_TRIAL, "fail_reason"] == "loss is NaN | diverged"
    assert math.isnan(by_number.loc[FAILED_TRIAL, "value"])
    assert by_number["pruned_step"].isna().sum() == 7
    assert by_number["fail_reason"].isna().sum() == 7
    assert (table["duration_s"] >= 0).all()
    assert by_number.loc[0, "x"] == study.trials[0].params["x"]


def test_trials_table_puts_the_best_finished_trials_first(study: optuna.Study) -> None:
    table = sweep_report.trials_table(study)
    assert list(table["state"]) == ["COMPLETE"] * 6 + ["PRUNED", "FAIL"]
    complete = table["value"].iloc[:6]
    assert complete.is_monotonic_decreasing
    assert table["number"].iloc[0] == study.best_trial.number
    assert complete.iloc[0] == pytest.approx(study.best_value)


def test_trials_table_of_a_multi_objective_study_with_a_running_trial() -> None:
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=2)
    )
    study.optimize(lambda t: (t.suggest_float("lr", 1e-4, 1e-2, log=True) * 100, 1.5), n_trials=3)
    study.ask()  # stays RUNNING
    table = sweep_report.trials_table(study)
    assert list(table.columns[:5]) == ["number", "state", "value_0", "value_1", "lr"]
    assert list(table["state"]) == ["COMPLETE"] * 3 + ["RUNNING"]
    assert table["value_0"].iloc[:3].is_monotonic_decreasing
    assert math.isnan(table["duration_s"].iloc[3])
    assert math.isnan(table["lr"].iloc[3])


def test_trials_table_uses_metric_names_and_renames_clashing_params() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["return", "wall_clock_s"])
    study.optimize(lambda t: (t.suggest_int("state", 0, 3), 2.0), n_trials=2)
    table = sweep_report.trials_table(study)
    assert {"value_return", "value_wall_clock_s", "param_state"} <= set(table.columns)
    assert set(table["state"]) == {"COMPLETE"}


def test_trials_table_of_an_empty_study() -> None:
    table = sweep_report.trials_table(optuna.create_study())
    assert table.empty
    assert list(table.columns) == ["number", "state", "value", "duration_s", "pruned_step", "fail_reason"]


def test_write_trials_table(study: optuna.Study, tmp_path: Path) -> None:
    table = sweep_report.trials_table(study)
    paths = sweep_report.write_trials_table(table, tmp_path / "report")
    assert [p.name for p in paths] == ["trials.csv", "trials.md"]
    back = pd.read_csv(paths[0])
    assert len(back) == 8
    assert back["number"].tolist() == table["number"].tolist()
    markdown = paths[1].read_text()
    lines = markdown.splitlines()
    assert len(lines) == 2 + 8
    assert lines[0].split("|")[1].strip() == "number"
    assert r"loss is NaN \| diverged" in markdown  # the pipe does not split the cell
    assert "nan" not in markdown.replace("NaN", "")  # missing values are blank


def test_write_optuna_plots_writes_self_contained_html(study: optuna.Study, tmp_path: Path) -> None:
    paths = sweep_report.write_optuna_plots(study, tmp_path / "plots")
    assert {p.name for p in paths} == PLOTS
    for path in paths:
        text = path.read_text()
        assert "plotly" in text
        assert len(text) > 1_000_000  # plotly.js is embedded, not loaded from the network


@pytest.mark.parametrize(("n_complete", "n_pruned"), [(0, 0), (0, 3), (1, 0), (1, 4)])
def test_no_plots_without_two_complete_trials(n_complete: int, n_pruned: int, tmp_path: Path) -> None:
    study = single_param_study(n_complete, n_pruned)
    assert sweep_report.write_optuna_plots(study, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_a_single_param_gets_no_importance_plot(tmp_path: Path) -> None:
    paths = sweep_report.write_optuna_plots(single_param_study(3), tmp_path)
    assert {p.name for p in paths} == PLOTS - {"param_importances.html"}


def test_plots_of_a_multi_objective_study(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3)
    )
    study.optimize(
        lambda t: (t.suggest_float("a", 0, 1) + t.suggest_int("b", 1, 4), float(t.suggest_int("c", 1, 9))),
        n_trials=6,
    )
    paths = sweep_report.write_optuna_plots(study, tmp_path)
    assert {p.name for p in paths} == PLOTS
    assert "objective 0" in (tmp_path / "optimization_history.html").read_text()
    assert not [w for w in recwarn if "target" in str(w.message)]


def test_a_plot_optuna_refuses_is_skipped(
    study: optuna.Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise ValueError("cannot evaluate importances")

    monkeypatch.setattr(optuna.visualization, "plot_param_importances", refuse)
    paths = sweep_report.write_optuna_plots(study, tmp_path)
    assert {p.name for p in paths} == PLOTS - {"param_importances.html"}


def test_summary_table_renders_dicts_as_plain_text() -> None:
    rows = [
        {"trial": 3, "return": 487.123456789, "lr": 0.000312},
        {"trial": 7, "note": "[bold]kept[/bold]"},
    ]
    text = sweep_report.summary_table(rows, title="best trials")
    assert "best trials" in text
    for expected in ("trial", "return", "lr", "note", "487.123", "0.000312", "[bold]kept[/bold]"):
        assert expected in text
    assert "\x1b" not in text  # no colour codes
    assert max(len(line) for line in text.splitlines()) <= sweep_report.CONSOLE_WIDTH


def test_summary_table_renders_a_data_frame(study: optuna.Study) -> None:
    text = sweep_report.summary_table(sweep_report.trials_table(study), title="trials", width=200)
    assert "PRUNED" in text and "loss is NaN | diverged" in text
    assert " nan " not in text.lower().replace("loss is nan", "")


def test_markdown_table() -> None:
    frame = pd.DataFrame({"name": ["a|b", None], "value": [1.5, math.nan], "ok": [True, False]})
    assert sweep_report.markdown_table(frame).splitlines() == [
        "| name   |   value | ok    |",
        "|:-------|--------:|:------|",
        r"| a\|b   |     1.5 | True  |",
        "|        |         | False |",
    ]


def test_validation_table_matches_compare(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    baseline, candidate = rng.normal(100, 20, size=8), rng.normal(180, 20, size=8)
    result = stats.compare(baseline, candidate, n_resamples=2000)
    table = sweep_report.validation_table(result)
    assert table["config"].tolist() == ["default", "tuned", "difference"]
    rows = table.set_index("config")
    assert rows.loc["default", "n"] == 8 and rows.loc["tuned", "n"] == 8
    assert rows.loc["default", "iqm"] == result.baseline_iqm == stats.iqm(baseline)
    assert rows.loc["tuned", "iqm"] == result.candidate_iqm
    assert (rows.loc["default", "ci_low"], rows.loc["default", "ci_high"]) == result.baseline_ci
    assert (rows.loc["tuned", "ci_low"], rows.loc["tuned", "ci_high"]) == result.candidate_ci
    assert (rows.loc["difference", "ci_low"], rows.loc["difference", "ci_high"]) == result.difference_ci
    assert rows.loc["difference", "iqm"] == pytest.approx(result.candidate_iqm - result.baseline_iqm)
    assert rows.loc["default", "mean"] == pytest.approx(baseline.mean())
    assert rows.loc["tuned", "std"] == pytest.approx(candidate.std(ddof=1))
    assert rows.loc["difference", "significant"]
    assert rows.loc["difference", "p_value"] == result.p_value
    assert table.columns[-2:].tolist() == ["significant", "p_value"]

    named = sweep_report.validation_table(result, baseline_name="rl-zoo", candidate_name="sweep-42")
    assert named["config"].tolist() == ["rl-zoo", "sweep-42", "difference"]

    paths = sweep_report.write_validation_table(table, tmp_path)
    assert [p.name for p in paths] == ["validation.csv", "validation.md"]
    assert len(pd.read_csv(paths[0])) == 3
    assert "| difference |" in paths[1].read_text()
