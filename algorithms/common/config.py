"""Validation helpers for the frozen config dataclasses, and building a config from a plain mapping."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from algorithms.common.errors import ConfigError

ConfigT = TypeVar("ConfigT")

Schedule = tuple[tuple[int, float], ...]
"""A piecewise-constant schedule: ``((from_step, value), …)``, the first from step 0, steps increasing;
the value at env step ``t`` is that of the last pair whose ``from_step <= t``."""


def schedule_value(value: float | Schedule, step: int) -> float:
    """The value of a constant or :data:`Schedule` at env step ``step``."""
    if not isinstance(value, tuple):
        return value
    current = value[0][1]
    for from_step, scheduled in value:
        if from_step > step:
            break
        current = scheduled
    return current


def check_schedule(name: str, value: float | Schedule, check: Callable[[str, float], None]) -> None:
    """Run ``check`` on a constant, or on every value of a :data:`Schedule` after checking its steps:
    integers, the first 0, strictly increasing. Raises ConfigError naming ``name``."""
    if not isinstance(value, tuple):
        check(name, value)
        return
    steps = [pair[0] if isinstance(pair, tuple) and len(pair) == 2 else None for pair in value]
    valid_steps = all(isinstance(t, int) and not isinstance(t, bool) for t in steps)
    if not value or not valid_steps or steps[0] != 0 or any(a >= b for a, b in itertools.pairwise(steps)):
        raise ConfigError(
            f"{name} must be a number or a list of [from_step, value] pairs starting at step 0 with "
            f"increasing integer steps, got {value!r}"
        )
    for from_step, scheduled in value:
        check(f"{name} (from step {from_step})", scheduled)


def require_positive(name: str, value: float) -> None:
    """Raise ConfigError unless ``value > 0``."""
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def require_non_negative(name: str, value: float) -> None:
    """Raise ConfigError unless ``value >= 0``."""
    if not value >= 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")


def require_in_range(name: str, value: float, low: float, high: float) -> None:
    """Raise ConfigError unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value!r}")


def require_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def require_int(name: str, value: object, minimum: int) -> None:
    """Raise ConfigError unless ``value`` is an integer (not a bool) ``>= minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def require_net_arch(name: str, value: tuple[int, ...]) -> None:
    """Raise ConfigError unless ``value`` is a non-empty sequence of positive integers."""
    if not value or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in value):
        raise ConfigError(f"{name} must be a non-empty list of positive integers, got {value!r}")


def require_field_types(cls: type, values: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first field of ``values`` whose value does not have the type that
    the dataclass ``cls`` declares for it (before any range check compares it).

    A float field takes an int too (YAML writes ``1`` for ``1.0``); no number field takes a bool.
    """
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        expected = hints.get(name)
        if expected is not None and not _has_type(value, expected):
            raise ConfigError(f"{name} must be {_type_name(expected)}, got {value!r}")


def _has_type(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(expected))
    if origin is tuple:
        args = typing.get_args(expected)
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            return all(_has_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args, strict=True))
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(expected))
    if expected == Schedule:
        return "a list of [from_step, value] pairs"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(expected)[0]).removeprefix('an ').removeprefix('a ')}s"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def config_from_mapping(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    """Build the dataclass ``cls`` from ``values``, naming any unknown key and its closest field, or a
    value of the wrong type.

    Lists become tuples, nested ones too, so the frozen config stays hashable.
    """
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(fields), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown {cls.__name__} field {key!r}{hint} Valid fields: {', '.join(sorted(fields))}"
        )
    require_field_types(cls, values)
    return cls(**{k: _frozen(v) for k, v in values.items()})


def _frozen(value: Any) -> Any:
    """``value`` with every list turned into a tuple, at any depth."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value
