"""rltune's agents. Pure PyTorch + Gymnasium: nothing here imports the tuner, Hydra, Optuna or MLflow.

``ALGORITHMS`` maps an algorithm name to its config dataclass and agent class; every agent has the same
surface: ``Agent(env_id, config, seed, env_kwargs, env_backend)``, ``learn``, ``evaluate``, ``predict``,
``save``, ``Agent.load`` and ``close``.
"""

from __future__ import annotations

from typing import Any

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
]
