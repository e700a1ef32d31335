"""Saved agents: one file each, tensors and plain data only, so loading runs no pickled code."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

ConfigT = TypeVar("ConfigT")


class SavedAgent(Protocol):
    """What every agent's checkpoint starts with."""

    algorithm: str
    env_id: str
    env_kwargs: dict[str, Any]
    env_backend: str  # resolved: gymnasium, vector, envpool
    config: Any  # the algorithm's frozen config dataclass
    seed: int


class ConfigClass(Protocol[ConfigT]):
    """A config dataclass that builds itself from a mapping."""

    def from_dict(self, values: dict[str, Any]) -> ConfigT: ...


def agent_header(agent: SavedAgent) -> dict[str, Any]:
    """The fields that say which agent a checkpoint holds: algorithm, env id, kwargs and backend, config,
    seed."""
    return {
        "algorithm": agent.algorithm,
        "env_id": agent.env_id,
        "env_kwargs": agent.env_kwargs,
        "env_backend": agent.env_backend,
        "config": dataclasses.asdict(agent.config),
        "seed": agent.seed,
    }


def write_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path``, creating its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def read_checkpoint(
    path: str | Path, config_cls: ConfigClass[ConfigT], seed: int | None
) -> tuple[dict[str, Any], ConfigT, int]:
    """(payload, its config, the seed to rebuild with: ``seed``, or the saved one when None), loaded
    with ``torch.load(weights_only=True)``."""
    payload = torch.load(path, weights_only=True)
    payload.setdefault("env_backend", "gymnasium")  # checkpoints from before env backends existed
    return payload, config_cls.from_dict(payload["config"]), payload["seed"] if seed is None else seed
