"""What the pruner sees of a sequential multi-seed trial, and which Optuna sampler and pruner each config
name builds."""

from __future__ import annotations

import math

import optuna
import pytest

from tuner.compose import CONF_DIR, compose_config
from tuner.objective import PruningReporter
from tuner.study import build_pruner, build_sampler, is_multi_objective


class RecordingTrial:
    """The two calls a PruningReporter makes on an Optuna trial, recorded; prunes from ``prune_at`` on."""

    def __init__(self, prune_at: int | None = None) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune_at is not None and self.reports[-1][1] >= self.prune_at


def test_the_first_seed_reports_each_evaluation_at_its_own_env_step() -> None:
    """Every trial reports its first seed's evaluations at the env steps they were made, so the pruner
    compares like with like and a plot of the values shows no drop at a seed boundary."""
    trial = RecordingTrial()
    reporter = PruningReporter(trial)  # type: ignore[arg-type]
    assert reporter(500, 60.0) is False
    assert reporter(1000, 90.0) is False
    assert trial.reports == [(60.0, 500), (90.0, 1000)]
    assert reporter.pruned_at is None


def test_a_seed_stops_when_the_pruner_says_so_and_a_non_finite_return_is_not_reported() -> None:
    trial = RecordingTrial(prune_at=500)
    reporter = PruningReporter(trial)  # type: ignore[arg-type]
    assert reporter(300, math.nan) is False and trial.reports == []
    assert reporter(400, 20.0) is False
    assert reporter(500, 30.0) is True
    assert reporter.pruned_at == 500 and trial.reports[-1] == (30.0, 500)


SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "none": optuna.pruners.NopPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_name_builds_that_optuna_sampler(name: str) -> None:
    sampler = build_sampler(compose_config([f"sampler={name}"], "tune").sampler)
    assert type(sampler) is SAMPLERS[name]
    assert is_multi_objective(sampler) == (name == "nsga2")


@pytest.mark.parametrize("name", PRUNERS)
def test_each_pruner_name_builds_that_optuna_pruner(name: str) -> None:
    assert type(build_pruner(compose_config([f"pruner={name}"], "tune").pruner)) is PRUNERS[name]


def test_every_sampler_and_pruner_config_is_listed_here() -> None:
    assert {p.stem for p in (CONF_DIR / "sampler").glob("*.yaml")} == set(SAMPLERS)
    assert {p.stem for p in (CONF_DIR / "pruner").glob("*.yaml")} == set(PRUNERS)


def test_a_fixed_sampler_seed_is_offset_per_worker_so_workers_draw_differently() -> None:
    node = compose_config(["sampler=random", "sampler.seed=7"], "tune").sampler
    draws = []
    for offset in (0, 0, 1):
        study = optuna.create_study(sampler=build_sampler(node, seed_offset=offset))
        draws.append(study.ask().suggest_float("x", 0, 1))
    assert draws[0] == draws[1] != draws[2]
