"""Validation helpers for the frozen config dataclasses, and building a config from a plain mapping."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from algorithms.common.errors import ConfigError

ConfigT = TypeVar("ConfigT")


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
        item = typing.get_args(expected)[0]
        return isinstance(value, list | tuple) and all(_has_type(v, item) for v in value)
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
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(expected)[0]).removeprefix('an ').removeprefix('a ')}s"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def config_from_mapping(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
    """Build the dataclass ``cls`` from ``values``, naming any unknown key and its closest field, or a
    value of the wrong type.

    Lists become tuples so the frozen config stays hashable.
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
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)
