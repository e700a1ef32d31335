"""rltune's agents. Pure PyTorch + Gymnasium: nothing here imports the tuner, Hydra, Optuna or MLflow.

``ALGORITHMS`` maps an algorithm name to its config dataclass and agent class; every agent has the same
surface: ``Agent(env_id, config, seed, env_kwargs, env_backend)``, ``learn``, ``evaluate``, ``predict``,
``save``, ``Agent.load`` and ``close``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from algorithms.common.errors import ConfigError, NonFiniteLossError, UnsupportedSpaceError
from algorithms.common.registry import ALGORITHMS, AlgorithmSpec, register
from algorithms.common.types import Agent, Callback, EvalResult, TrainState
from algorithms.d3qn import D3QN, D3QNConfig
from algorithms.ppo import PPO, PPOConfig
from algorithms.sac import SAC, SACConfig
from algorithms.sacd import SACD, SACDConfig
from algorithms.td3 import TD3, TD3Config

register("ppo", PPOConfig, PPO)
register("sac", SACConfig, SAC)
register("td3", TD3Config, TD3)
register("d3qn", D3QNConfig, D3QN)
register("sacd", SACDConfig, SACD)


def get_algorithm(name: str) -> AlgorithmSpec:
    """The spec registered as ``name``; ConfigError listing the valid names otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(
            f"unknown algorithm {name!r}; choose one of: {', '.join(sorted(ALGORITHMS))}"
        ) from None


def load_agent(path: str | Path) -> Agent:
    """The agent saved at ``path`` by any algorithm's ``save``: its header names the algorithm, whose
    ``load`` rebuilds it (``torch.load(weights_only=True)``: tensors and plain data only)."""
    try:
        header = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    algorithm = header.get("algorithm") if isinstance(header, dict) else None
    if not isinstance(algorithm, str):
        raise ConfigError(f"{path} is not an rltune checkpoint (no algorithm in its header)")
    return get_algorithm(algorithm).agent_cls.load(path)


def build_config(name: str, values: dict[str, Any]) -> Any:
    """The validated config of algorithm ``name`` from a plain mapping of hyperparameters."""
    return get_algorithm(name).config_cls.from_dict(values)


__all__ = [
    "ALGORITHMS",
    "D3QN",
    "PPO",
    "SAC",
    "SACD",
    "TD3",
    "Agent",
    "AlgorithmSpec",
    "Callback",
    "ConfigError",
    "D3QNConfig",
    "EvalResult",
    "NonFiniteLossError",
    "PPOConfig",
    "SACConfig",
    "SACDConfig",
    "TD3Config",
    "TrainState",
    "UnsupportedSpaceError",
    "build_config",
    "get_algorithm",
    "load_agent",
]
