"""Every committed preset composes, resolves and holds valid hyperparameters (no training here)."""

from __future__ import annotations

import pytest

from tuner.compose import CONF_DIR, algorithm_config, compose_config
from tuner.train import RunSettings, resolve_config

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if not p.stem.endswith("_tuned"))
BENCHMARKS = sorted(p.stem for p in (CONF_DIR / "benchmark").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_is_a_valid_training_config(preset: str) -> None:
    config = resolve_config(compose_config([f"experiment={preset}"]))
    settings = RunSettings.from_config(config)
    name, _ = algorithm_config(config["algo"])
    assert preset.startswith(f"{name}_{settings.env_name}")  # <algo>_<env>: what benchmark sources expect


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_benchmark_preset_has_valid_settings(benchmark: str) -> None:
    from tuner.benchmark import BenchmarkSettings

    config = resolve_config(compose_config([f"benchmark={benchmark}"], config_name="benchmark"))
    settings = BenchmarkSettings.from_config(config["benchmark"])
    assert settings.name == benchmark and config["tracking"]["experiment"] == f"benchmark_{benchmark}"
