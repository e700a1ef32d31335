"""Composing rltune's Hydra configs outside a Hydra app (benchmarks, tests, notebooks).

``python -m tuner.train`` composes through ``@hydra.main``; everything else that needs the same
presets calls :func:`compose_config`, so a preset is defined once, in ``conf/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from algorithms import ConfigError, build_config

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, as the Hydra app would compose it.

    ``paths.root_dir`` (the app's launch directory) defaults to the current directory.
    """
    root = [] if any(o.startswith("paths.root_dir=") for o in overrides) else [f"paths.root_dir={Path.cwd()}"]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app, whose search path is conf/ too
        return compose(config_name=config_name, overrides=[*root, *overrides])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=[*root, *overrides])


def algorithm_config(algo: Mapping[str, Any]) -> tuple[str, Any]:
    """(algorithm name, validated config dataclass) from a resolved ``algo`` node.

    Raises ConfigError, prefixed with ``algo:``, naming a bad or unknown hyperparameter.
    """
    hyperparameters = {key: value for key, value in algo.items() if key != "name"}
    name = str(algo.get("name", ""))
    try:
        return name, build_config(name, hyperparameters)
    except ConfigError as exc:
        raise ConfigError(f"algo: {exc}") from exc
