"""tuner.sweep_report on real, tiny in-memory Optuna studies."""

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from tuner import display, stats, sweep_report

PRUNED_TRIAL, FAILED_TRIAL = 2, 5
PLOTS = {"optimization_history.png", "param_importances.png", "parallel_coordinate.png"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def test_write_optuna_plots_writes_small_png_images(study: optuna.Study, tmp_path: Path) -> None:
    paths = sweep_report.write_optuna_plots(study, tmp_path / "plots")
    assert {p.name for p in paths} == PLOTS
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE)  # an image the MLflow UI shows offline
    assert sum(p.stat().st_size for p in paths) < 1_000_000  # the three plotly pages weighed ~14 MB


def test_a_twenty_trial_study_plots_under_one_megabyte(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=2))
    study.optimize(
        lambda t: sum(t.suggest_float(f"p{i}", 0.0, 1.0) for i in range(8)) + t.suggest_int("n", 1, 9),
        n_trials=20,
    )
    paths = sweep_report.write_optuna_plots(study, tmp_path)
    assert {p.name for p in paths} == PLOTS
    assert sum(p.stat().st_size for p in paths) < 1_000_000


@pytest.mark.parametrize(("n_complete", "n_pruned"), [(0, 0), (0, 3), (1, 0), (1, 4)])
def test_no_plots_without_two_complete_trials(n_complete: int, n_pruned: int, tmp_path: Path) -> None:
    study = single_param_study(n_complete, n_pruned)
    assert sweep_report.write_optuna_plots(study, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_a_single_param_gets_no_importance_plot(tmp_path: Path) -> None:
    paths = sweep_report.write_optuna_plots(single_param_study(3), tmp_path)
    assert {p.name for p in paths} == PLOTS - {"param_importances.png"}


def test_plots_of_a_multi_objective_study(
    tmp_path: Path, recwarn: pytest.WarningsRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3)
    )
    study.optimize(
        lambda t: (t.suggest_float("a", 0, 1) + t.suggest_int("b", 1, 4), float(t.suggest_int("c", 1, 9))),
        n_trials=6,
    )
    drawn = {}
    history = sweep_report.optuna_mpl.plot_optimization_history

    def spy(study: optuna.Study, **kwargs: object) -> object:
        drawn.update(kwargs)
        return history(study, **kwargs)

    monkeypatch.setattr(sweep_report.optuna_mpl, "plot_optimization_history", spy)
    paths = sweep_report.write_optuna_plots(study, tmp_path)
    assert {p.name for p in paths} == PLOTS
    assert drawn["target_name"] == "objective 0"
    assert not [w for w in recwarn if "target" in str(w.message)]


def test_a_plot_optuna_refuses_is_skipped(
    study: optuna.Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise ValueError("cannot evaluate importances")

    monkeypatch.setattr(sweep_report.optuna_mpl, "plot_param_importances", refuse)
    paths = sweep_report.write_optuna_plots(study, tmp_path)
    assert {p.name for p in paths} == PLOTS - {"param_importances.png"}


def test_console_table_renders_the_trials_table(study: optuna.Study) -> None:
    text = display.console_table(sweep_report.trials_table(study), title="trials", width=200)
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


def test_markdown_tables_round_floats_for_reading() -> None:
    frame = pd.DataFrame({"iqm": [79.44444444, 12345.678], "lr": [0.000312456789, 3.1e-08], "n": [3, 5]})
    rows = sweep_report.markdown_table(frame).splitlines()[2:]
    assert [[cell.strip() for cell in row.split("|")[1:4]] for row in rows] == [
        ["79.44", "0.0003125", "3"],
        ["12346", "3.1e-08", "5"],
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
    assert rows.loc["difference", "mann_whitney_p"] == result.p_value
    assert table.columns[-2:].tolist() == ["significant", "mann_whitney_p"]

    named = sweep_report.validation_table(result, baseline_name="rl-zoo", candidate_name="sweep-42")
    assert named["config"].tolist() == ["rl-zoo", "sweep-42", "difference"]

    footnote = sweep_report.validation_footnote(result.confidence)
    paths = sweep_report.write_validation_table(table, tmp_path, footnote)
    assert [p.name for p in paths] == ["validation.csv", "validation.md"]
    assert len(pd.read_csv(paths[0])) == 3
    markdown = paths[1].read_text()
    assert "| difference |" in markdown
    # One rule, said under the table: significant means the difference's CI excludes 0; the p-value is
    # named for the test it comes from.
    assert markdown.rstrip().endswith(footnote)
    assert "95% bootstrap CI of the IQM difference (tuned - default) excludes 0" in footnote
    assert "Mann-Whitney U p-value" in footnote


def test_trials_table_shows_config_names_and_values_with_reparameterised_ones_beside() -> None:
    """A trial samples log2_n_steps and one_minus_gamma; its config has n_steps and gamma, and
    learning_rate is sampled as itself: that one appears once, the reparameterised ones beside theirs."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=4))

    def objective(trial: optuna.Trial) -> float:
        k = trial.suggest_int("log2_n_steps", 5, 8)
        x = trial.suggest_float("one_minus_gamma", 1e-3, 0.1, log=True)
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        trial.set_user_attr("config_values", {"n_steps": 2**k, "gamma": 1 - x, "learning_rate": lr})
        return float(k)

    study.optimize(objective, n_trials=3)
    table = sweep_report.trials_table(study)
    assert list(table.columns[:8]) == [
        "number", "state", "value", "n_steps", "gamma", "learning_rate", "log2_n_steps", "one_minus_gamma",
    ]  # fmt: skip
    assert (table["n_steps"] == 2 ** table["log2_n_steps"]).all()
    assert np.allclose(table["gamma"], 1 - table["one_minus_gamma"])
