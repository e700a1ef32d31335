"""Composing rltune's Hydra configs outside a Hydra app (benchmarks, tests, notebooks).

``python -m tuner.train`` composes through ``@hydra.main``; everything else that needs the same
presets calls :func:`compose_config`, so a preset is defined once, in ``conf/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from algorithms import ALGORITHMS, ConfigError, build_config

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def envs_label(env_name: str, envs: Sequence[str] | None) -> str:
    """What a study is named after: its envs joined by ``-`` (``tune.envs``), else its one env's name.

    conf/tune.yaml's default study and export names call it as ``${rltune.envs:${env.name},${tune.envs}}``.
    """
    return "-".join(envs) if envs else env_name


OmegaConf.register_new_resolver("rltune.envs", envs_label, replace=True)


def known_envs() -> list[str]:
    """The env config names (``conf/env/*.yaml``), sorted."""
    return sorted(p.stem for p in (CONF_DIR / "env").glob("*.yaml"))


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

    Raises ConfigError naming a bad or unknown hyperparameter by its config key (``algo.gamma must be
    …``), or prefixed with ``algo:`` when the message is about several fields.
    """
    hyperparameters = {key: value for key, value in algo.items() if key != "name"}
    name = str(algo.get("name", ""))
    try:
        return name, build_config(name, hyperparameters)
    except ConfigError as exc:
        first_word = str(exc).split(" ", 1)[0]
        if first_word in hyperparameters or first_word in _field_names(name):
            raise ConfigError(f"algo.{exc}") from exc
        raise ConfigError(f"algo: {exc}") from exc


def _field_names(algo: str) -> set[str]:
    """The hyperparameter names of algorithm ``algo`` (empty for an unknown one)."""
    spec = ALGORITHMS.get(algo)
    return set() if spec is None else {f.name for f in dataclasses.fields(spec.config_cls)}


def override_key(override: str) -> str:
    """The top-level config key a Hydra override sets (``+algo.x=1`` → ``algo``)."""
    key = override.lstrip("+~").split("=", 1)[0]
    return key.split(".", 1)[0].split("@", 1)[0]
