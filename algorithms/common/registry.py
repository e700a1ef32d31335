"""The algorithm registry: name → config dataclass and agent class.

Filled by :mod:`algorithms` (the package's ``__init__``) as it imports each algorithm, so it is complete
whenever any agent exists; modules below the algorithms read it without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm's name, config dataclass and agent class."""

    name: str
    config_cls: type
    agent_cls: type


ALGORITHMS: dict[str, AlgorithmSpec] = {}
"""Every registered algorithm by name."""


def register(name: str, config_cls: type, agent_cls: type) -> None:
    """Add an algorithm to :data:`ALGORITHMS` under ``name``."""
    ALGORITHMS[name] = AlgorithmSpec(name, config_cls, agent_cls)


def supporting_algorithms(action_space: gym.Space) -> list[str]:
    """Names of the registered algorithms whose agents accept ``action_space``'s type."""
    return sorted(
        name for name, spec in ALGORITHMS.items() if isinstance(action_space, spec.agent_cls.action_spaces)
    )
