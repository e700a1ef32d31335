"""The "did tuning help?" report card: its figures by hand, and on a real tiny sweep."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.helpers import long_lines, run_tune, runs_by_name
from tuner.report_card import AGGREGATE, build_card, card_markdown, card_summary, write_card


def study_of(values: list[float], pruned_at: list[int]) -> optuna.Study:
    """A study of complete trials with these values (each holding its tuning seeds' returns, value ± 10)
    and pruned trials stopped at these steps."""
    study = optuna.create_study(direction="maximize")
    distributions = {"x": FloatDistribution(0, 1)}
    for i, value in enumerate(values):
        study.add_trial(
            create_trial(
                value=value,
                params={"x": i / 10},
                distributions=distributions,
                user_attrs={"seed_returns": [value - 10, value + 10]},
            )
        )
    for step in pruned_at:
        study.add_trial(
            create_trial(
                state=TrialState.PRUNED,
                params={"x": 0.9},
                distributions=distributions,
                intermediate_values={step // 2: 1.0, step: 2.0},
            )
        )
    return study


def test_the_card_s_figures_by_hand() -> None:
    study = study_of([100.0, 110.0, 90.0], pruned_at=[512])
    default = {"cartpole": [10.0, 20.0, 30.0]}
    tuned = {"cartpole": [40.0, 50.0, 60.0]}
    card = build_card(default, tuned, study, n_seeds=2, budget_steps=2048, scores={"cartpole": (0.0, 100.0)})
    assert card.default["cartpole"].value == pytest.approx(20.0)  # IQM of 3 values: their mean
    assert card.tuned[AGGREGATE].value == pytest.approx(0.5)  # normalised by (0, 100)
    assert card.default[AGGREGATE].value == pytest.approx(0.2)
    assert (card.improvement.value, card.improvement.low, card.improvement.high) == (1.0, 1.0, 1.0)
    assert card.gap is not None and card.gap.value == pytest.approx(
        110.0 - 50.0
    )  # best trial's seeds: 100, 120
    assert card.gap.low <= card.gap.value <= card.gap.high
    assert (card.cost.complete, card.cost.pruned, card.cost.failed) == (3, 1, 0)
    assert card.cost.env_steps == 3 * 2 * 2048 + 512 * 2
    summary = card_summary(card)
    assert f"{AGGREGATE}: default 0.20" in summary and "P(tuned > default) 1.00 [1.00, 1.00]" in summary
    markdown = card_markdown(card)
    assert "| cartpole | 20.00 [10.00, 30.00] | 50.00 [40.00, 60.00] |" in markdown
    assert "| x |" in markdown  # importances of the one parameter


def test_without_reference_scores_there_is_no_aggregate(tmp_path: Path) -> None:
    study = study_of([1.0, 2.0], pruned_at=[])
    card = build_card({"lunar": [1.0, 2.0]}, {"lunar": [1.0, 2.0]}, study, 1, 100)
    assert AGGREGATE not in card.tuned and card.improvement.value == 0.5
    assert card.importances == []  # two trials are too few
    written = write_card(card, tmp_path)
    assert [p.name for p in written] == ["report_card.md", "performance_profile.png"]
    assert all(p.stat().st_size > 0 for p in written)


def test_a_sweep_prints_the_card_and_keeps_it_on_the_sweep_run(tmp_path: Path) -> None:
    result = run_tune(tmp_path, "tune.n_trials=3", "tune.validate_seeds=2")
    assert result.returncode == 0, result.stderr
    assert "did tuning help? aggregate (normalised): default" in result.stdout
    assert "P(tuned > default)" in result.stdout and "generalisation gap" in result.stdout
    assert long_lines(result.stdout) == []
    (sweep,) = runs_by_name(tmp_path)["sweep-ppo_cartpole"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    artifacts = {a.path for a in client.list_artifacts(sweep.info.run_id)}
    assert {"report_card.md", "performance_profile.png", "importance.png"} <= artifacts
