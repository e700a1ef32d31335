"""Every committed preset composes, resolves and holds valid hyperparameters (no training here)."""

from __future__ import annotations

import shlex

import pytest

from tests.helpers import TUNED_PRESETS
from tuner.benchmark import BenchmarkSettings
from tuner.compose import CONF_DIR, algorithm_config, compose_config
from tuner.provenance import TUNE_COMMAND
from tuner.train import RunSettings, resolve_config

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if not p.stem.endswith("_tuned"))
BENCHMARKS = sorted(p.stem for p in (CONF_DIR / "benchmark").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_is_a_valid_training_config(preset: str) -> None:
    config = resolve_config(compose_config([f"experiment={preset}"]))
    settings = RunSettings.from_config(config)
    name, _ = algorithm_config(config["algo"])
    assert preset.startswith(f"{name}_{settings.env_name}")  # <algo>_<env>: what benchmark sources expect


@pytest.mark.parametrize("preset", TUNED_PRESETS)
def test_tuned_preset_trains_and_its_header_re_runs_its_search(preset: str) -> None:
    """A tuned preset composes as a training config of its own algo and env, and its provenance header
    names the study, method, trials, code and the sweep command, which composes as a tune config."""
    config = resolve_config(compose_config([f"experiment={preset}"]))
    settings = RunSettings.from_config(config)
    name, _ = algorithm_config(config["algo"])
    assert preset == f"{name}_{settings.env_name}_tuned"
    header = [line[2:] for line in (CONF_DIR / "experiment" / f"{preset}.yaml").read_text().splitlines()
              if line.startswith("# ")]  # fmt: skip
    for field in ("Study ", "Method: ", "Trials: ", "Code: commit "):
        assert any(line.startswith(field) for line in header), f"{preset}: no {field!r} line"
    commands = [line.strip() for line in header if line.strip().startswith(TUNE_COMMAND)]
    assert commands, f"{preset}: no sweep command in its header"
    overrides = shlex.split(commands[-1])[len(TUNE_COMMAND.split()) :]
    tune = resolve_config(compose_config(overrides, config_name="tune"))
    assert tune["tune"]["export_name"] == preset and tune["algo"]["name"] == name


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_benchmark_preset_has_valid_settings(benchmark: str) -> None:
    config = resolve_config(compose_config([f"benchmark={benchmark}"], config_name="benchmark"))
    settings = BenchmarkSettings.from_config(config["benchmark"])
    assert settings.name == benchmark and config["tracking"]["experiment"] == f"benchmark_{benchmark}"
