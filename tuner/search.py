"""Hyperparameter search spaces declared in YAML (``conf/search/<algo>.yaml``), checked before a study starts.

A space names fields of an algorithm's config dataclass and how to sample each one::

    algo: ppo
    params:
      learning_rate: {type: float, low: 1.0e-5, high: 2.0e-3, log: true}
      gamma:         {type: float, low: 1.0e-4, high: 0.03, log: true, reparam: one_minus}  # γ = 1 − x
      n_steps:       {type: int, low: 5, high: 12, reparam: pow2}                          # 2^k
      batch_size:    {type: int, low: 2, high: 10, reparam: pow2, cap: [n_envs, n_steps]}  # ≤ a rollout

:meth:`SearchSpace.from_config` validates the whole space (field names, types, bounds, and that the
algorithm's config accepts the values at both ends of every range) and raises one
:class:`~algorithms.ConfigError` naming the offending parameter. :meth:`SearchSpace.suggest` samples a
trial through Optuna's ``suggest_*`` API, so samplers see the real distributions; Optuna records the
sampled quantity under :attr:`ParamSpec.optuna_name` (``one_minus_gamma``, ``log2_n_steps``), and the
config gets the mapped value under the field name. :func:`to_overrides` turns config values into Hydra
override strings that compose back to exactly the same values.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf

from algorithms import ALGORITHMS, ConfigError, get_algorithm

ParamType = Literal["float", "int", "categorical"]
PARAM_TYPES: tuple[str, ...] = ("float", "int", "categorical")
"""Valid values of a parameter's ``type``."""
REPARAMS: dict[str, str] = {
    "one_minus": "float x -> 1 - x; with log: true this is rl-zoo3's 1 - log-uniform",
    "pow2": "int k -> 2**k",
    "pow2_two_layers": "int k -> [2**k, 2**k], two hidden layers of 2**k units (for net_arch)",
}
"""Valid values of a parameter's ``reparam``, with what each one does."""
_REPARAM_TYPE = {"one_minus": "float", "pow2": "int", "pow2_two_layers": "int"}
_REPARAM_PREFIX = {"one_minus": "one_minus_", "pow2": "log2_", "pow2_two_layers": "log2_width_"}
_KEYS: dict[str, frozenset[str]] = {
    "float": frozenset({"type", "low", "high", "log", "step", "reparam"}),
    "int": frozenset({"type", "low", "high", "log", "step", "reparam", "cap"}),
    "categorical": frozenset({"type", "choices", "values", "reparam"}),
}
_SPACE_KEYS = ("algo", "params")
MIN_UPDATES_PER_TRIAL = 4
"""A trial's budget holds at least this many rollouts (PPO) or training phases (SAC, TD3, D3QN) after
the warm-up: fewer would score a policy that barely trained, and annealed schedules would reach 0 inside
the first one. :meth:`SearchSpace.for_budget` narrows a space so that every sample keeps to it."""


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars replaced by the equivalent Python scalar."""
    return value.item() if isinstance(value, np.generic) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class ParamSpec:
    """How one config field is sampled. Invalid combinations raise ConfigError naming the field."""

    name: str
    """The config field this parameter sets (e.g. ``gamma``)."""
    type: ParamType
    """``float``, ``int`` or ``categorical``."""
    low: float | int | None = None
    """Lower bound of the sampled quantity (before ``reparam``), inclusive; float and int only."""
    high: float | int | None = None
    """Upper bound of the sampled quantity (before ``reparam``), inclusive; float and int only."""
    log: bool = False
    """Sample uniformly in log space (needs ``low > 0``); float and int only."""
    step: float | int | None = None
    """Discretisation step from ``low``; ``high - low`` must be a multiple of it. Not with ``log``."""
    choices: tuple[Any, ...] | None = None
    """The values of a categorical parameter: scalars (str, int, float, bool) or None."""
    reparam: str | None = None
    """A key of :data:`REPARAMS` mapping the sampled quantity to the config value, or None."""
    values: tuple[tuple[Any, Any], ...] | None = None
    """Categorical only: (choice, config value) pairs, for values Optuna cannot hold as choices
    (``choices: [tiny, small]`` with ``values: {tiny: [64], small: [64, 64]}`` for ``net_arch``)."""
    cap: tuple[str, ...] | None = None
    """Int only: config fields whose product caps the config value, e.g. ``[n_envs, n_steps]`` for a
    batch no larger than one rollout, which is how Stable-Baselines3 trains rl-zoo3's oversized batches
    (one minibatch of the whole rollout). Optuna still records the sampled quantity; the config, the
    trial's recorded values and its overrides get the capped one. Fields not searched take the base
    config's value. None: no cap."""

    def __post_init__(self) -> None:
        where = f"search.params.{self.name}"
        if self.cap is not None:
            if self.type != "int":
                raise ConfigError(f"{where}: cap applies to an int parameter, not a {self.type} one")
            if not self.cap or not all(isinstance(f, str) for f in self.cap):
                raise ConfigError(
                    f"{where}: cap must be a non-empty list of config field names, e.g. [n_envs, n_steps]"
                )
            if self.name in self.cap:
                raise ConfigError(f"{where}: cap cannot name the parameter itself")
        if self.type not in PARAM_TYPES:
            raise ConfigError(f"{where}: unknown type {self.type!r}; choose one of: {', '.join(PARAM_TYPES)}")
        if self.reparam is not None:
            if self.reparam not in REPARAMS:
                valid = "; ".join(f"{k} ({v})" for k, v in REPARAMS.items())
                raise ConfigError(f"{where}: unknown reparam {self.reparam!r}; valid reparams: {valid}")
            needed = _REPARAM_TYPE[self.reparam]
            if self.type != needed:
                raise ConfigError(
                    f"{where}: reparam {self.reparam} needs type {needed}, got type {self.type}"
                )
        if self.type == "categorical":
            self._check_categorical(where)
        else:
            self._check_numeric(where)

    def _check_categorical(self, where: str) -> None:
        for key in ("low", "high", "step"):
            if getattr(self, key) is not None:
                raise ConfigError(f"{where}: a categorical parameter takes choices, not {key}")
        if self.log:
            raise ConfigError(f"{where}: a categorical parameter takes choices, not log")
        if not isinstance(self.choices, tuple) or not self.choices:
            raise ConfigError(f"{where}: a categorical parameter needs a non-empty list of choices")
        for choice in self.choices:
            if choice is not None and not isinstance(choice, str | int | float | bool):
                raise ConfigError(
                    f"{where}: choices must be scalars (str, int, float, bool) or null, got {choice!r}; "
                    "name them and give their config values under values: {name: value}"
                )
        if self.values is not None and sorted(map(str, dict(self.values))) != sorted(map(str, self.choices)):
            raise ConfigError(
                f"{where}: values must give exactly one config value per choice {list(self.choices)}"
            )

    def _check_numeric(self, where: str) -> None:
        if self.values is not None:
            raise ConfigError(f"{where}: values belong to a categorical parameter")
        if self.choices is not None:
            raise ConfigError(f"{where}: a {self.type} parameter takes low/high, not choices")
        for key in ("low", "high"):
            value = getattr(self, key)
            if value is None:
                raise ConfigError(f"{where}: a {self.type} parameter needs both low and high (missing {key})")
            if not _is_number(value) or not math.isfinite(value):
                raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
            if self.type == "int" and not isinstance(value, int):
                raise ConfigError(f"{where}: {key} of an int parameter must be an integer, got {value!r}")
        assert self.low is not None and self.high is not None
        if not isinstance(self.log, bool):
            raise ConfigError(f"{where}: log must be true or false, got {self.log!r}")
        if self.low >= self.high:
            raise ConfigError(f"{where}: low ({self.low!r}) must be < high ({self.high!r})")
        if self.log and self.low <= 0:
            raise ConfigError(f"{where}: log: true needs low > 0, got low={self.low!r}")
        if self.reparam in ("pow2", "pow2_two_layers") and self.low < 0:
            raise ConfigError(f"{where}: pow2 needs an exponent low >= 0 (2**k an integer), got {self.low!r}")
        if self.step is not None:
            if self.log:
                raise ConfigError(f"{where}: step cannot be combined with log: true")
            valid_type = isinstance(self.step, int) if self.type == "int" else _is_number(self.step)
            if not valid_type or isinstance(self.step, bool) or not self.step > 0:
                raise ConfigError(f"{where}: step must be a positive {self.type}, got {self.step!r}")
            span = Decimal(repr(self.high)) - Decimal(repr(self.low))
            if span % Decimal(repr(self.step)) != 0:
                raise ConfigError(
                    f"{where}: high - low ({self.high!r} - {self.low!r}) must be a multiple of step "
                    f"({self.step!r})"
                )

    @classmethod
    def from_mapping(cls, name: str, node: Mapping[str, Any]) -> ParamSpec:
        """Parse one ``params.<name>`` entry of a search YAML; ConfigError names the field on any error."""
        where = f"search.params.{name}"
        if not isinstance(node, Mapping):
            raise ConfigError(f"{where}: expected a mapping like {{type: float, low: ..., high: ...}}")
        kind = node.get("type")
        if kind is None:
            raise ConfigError(f"{where}: missing type; choose one of: {', '.join(PARAM_TYPES)}")
        if kind not in PARAM_TYPES:
            raise ConfigError(f"{where}: unknown type {kind!r}; choose one of: {', '.join(PARAM_TYPES)}")
        unknown = sorted(set(node) - _KEYS[kind])
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), sorted(_KEYS[kind]), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r} for a {kind} parameter{hint} "
                f"Valid keys: {', '.join(sorted(_KEYS[kind]))}"
            )
        choices = node.get("choices")
        if kind == "categorical" and choices is not None:
            if isinstance(choices, str) or not isinstance(choices, Sequence):
                raise ConfigError(f"{where}: choices must be a list, got {choices!r}")
            choices = tuple(choices)
        values = node.get("values")
        if values is not None:
            if not isinstance(values, Mapping):
                raise ConfigError(
                    f"{where}: values must be a mapping {{choice: config value}}, got {values!r}"
                )
            values = tuple((k, _plain(v)) for k, v in values.items())
        cap = node.get("cap")
        if cap is not None:
            if isinstance(cap, str) or not isinstance(cap, Sequence):
                raise ConfigError(f"{where}: cap must be a list of config field names, got {cap!r}")
            cap = tuple(cap)
        low, high = node.get("low"), node.get("high")
        if kind == "float":  # YAML's `1` is an int; a float range takes it as 1.0
            low = float(low) if _is_number(low) else low
            high = float(high) if _is_number(high) else high
        return cls(
            name=name,
            type=kind,
            low=low,
            high=high,
            log=node.get("log", False),
            step=node.get("step"),
            choices=choices,
            reparam=node.get("reparam"),
            values=values,
            cap=cap,
        )

    def narrowed(self, limit: float, why: str) -> ParamSpec:
        """This parameter without the values whose config value exceeds ``limit`` (an int range loses
        its top, a categorical those choices); ConfigError naming ``why`` when none is left."""
        where = f"search.params.{self.name}"
        if self.type == "categorical":
            assert self.choices is not None
            kept = tuple(c for c in self.choices if _numbers([self.to_value(c)], self.name)[0] <= limit)
            if not kept:
                raise ConfigError(
                    f"{where}: no choice of {list(self.choices)} fits {why} (at most {limit:g})"
                )
            values = None if self.values is None else tuple((k, v) for k, v in self.values if k in kept)
            return dataclasses.replace(self, choices=kept, values=values)
        if self.type != "int" or self.reparam == "pow2_two_layers":
            raise ConfigError(f"{where}: a field the budget bounds is searched as an int or a categorical")
        assert self.low is not None and self.high is not None
        step = int(self.step or 1)
        fitting = [k for k in range(int(self.low), int(self.high) + 1, step) if self.to_value(k) <= limit]
        if not fitting:
            raise ConfigError(
                f"{where}: its smallest value {self.to_value(self.low)} does not fit {why} (at most "
                f"{limit:g}); raise the budget or lower {where}.low"
            )
        if fitting[-1] == self.high:
            return self
        if fitting[-1] == self.low and self.cap is None:  # one value left: a categorical of it
            return ParamSpec(self.name, "categorical", choices=(self.to_value(fitting[-1]),))
        return dataclasses.replace(self, high=fitting[-1])

    @property
    def optuna_name(self) -> str:
        """The name Optuna records the sampled quantity under: ``one_minus_<name>``, ``log2_<name>``
        or plain ``<name>``."""
        return _REPARAM_PREFIX.get(self.reparam or "", "") + self.name

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution of the sampled quantity (before ``reparam``)."""
        if self.type == "categorical":
            assert self.choices is not None
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return optuna.distributions.FloatDistribution(
            float(self.low), float(self.high), log=self.log, step=self.step
        )

    def end_values(self) -> tuple[Any, ...]:
        """The config values at the ends of the range (every choice for a categorical)."""
        if self.type == "categorical":
            assert self.choices is not None
            return tuple(self.to_value(c) for c in self.choices)
        return self.to_value(self.low), self.to_value(self.high)

    def to_value(self, sampled: Any) -> Any:
        """The config value for a sampled quantity (applies ``reparam``), as a plain Python scalar."""
        sampled = _plain(sampled)
        if self.type == "categorical":
            return dict(self.values)[sampled] if self.values is not None else sampled
        if self.type == "int":
            k = int(sampled)
            if self.reparam == "pow2_two_layers":
                return [2**k, 2**k]
            return 2**k if self.reparam == "pow2" else k
        x = float(sampled)
        return 1.0 - x if self.reparam == "one_minus" else x

    def contains(self, value: Any) -> bool:
        """Whether config ``value`` is one this parameter can sample (within the bounds, up to float
        round-off of the reparam; a choice; a power of two in range). Optuna accepts an enqueued value
        outside the distribution with only a warning, so check before enqueuing a known config."""
        try:
            sampled = self.to_sampled(value)
        except ConfigError:
            return False
        if self.type == "categorical":
            return True
        assert self.low is not None and self.high is not None
        slack = (
            4 * sys.float_info.epsilon * max(1.0, abs(self.low), abs(self.high))
            if self.type == "float"
            else 0
        )
        return self.low - slack <= sampled <= self.high + slack

    def to_sampled(self, value: Any) -> Any:
        """The sampled quantity that gives config ``value`` (inverse of :meth:`to_value`), e.g. to enqueue
        a known config. ConfigError if no sample can give it (not a power of two, not a choice)."""
        value = _plain(value)
        where = f"search.params.{self.name}"
        if self.type == "categorical":
            assert self.choices is not None
            for choice in self.choices:
                mapped = self.to_value(choice)
                if isinstance(mapped, list | tuple) and isinstance(value, list | tuple):
                    mapped, value = list(mapped), list(value)
                if mapped == value and isinstance(mapped, bool) == isinstance(value, bool):
                    return choice
            raise ConfigError(f"{where}: {value!r} is not one of the choices {list(self.choices)!r}")
        if self.type == "int" and self.reparam == "pow2_two_layers":
            if not isinstance(value, list | tuple) or len(value) != 2 or value[0] != value[1]:
                raise ConfigError(f"{where}: expected two equal layer widths, got {value!r}")
            value = value[0]
        if self.type == "int":
            if not _is_number(value) or not math.isfinite(value) or value != int(value):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            k = int(value)
            if self.reparam in ("pow2", "pow2_two_layers"):
                if k < 1 or k & (k - 1):
                    raise ConfigError(
                        f"{where}: {value!r} is not a power of two, so {self.optuna_name} cannot express it"
                    )
                return k.bit_length() - 1
            return k
        if not _is_number(value):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return 1.0 - float(value) if self.reparam == "one_minus" else float(value)


@dataclass(frozen=True)
class SearchSpace:
    """The parameters tuned for one algorithm; build it with :meth:`from_config` to get it validated."""

    algo: str
    """Name of the algorithm (``algorithms.get_algorithm``) whose config fields the params are."""
    params: tuple[ParamSpec, ...]
    """The tuned parameters, in YAML order."""
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    """Values of the config fields that a ``cap`` names but the space does not search, taken from the
    base config (or the config dataclass's defaults)."""

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"search.params.{duplicates[0]}: listed more than once")

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any], algo: str, base: Mapping[str, Any] | None = None
    ) -> SearchSpace:
        """Parse and validate a ``search`` node (``cfg.search``) for tuning algorithm ``algo``.

        ``base`` holds the hyperparameters the trials start from (e.g. ``cfg.algo``; a ``name`` key is
        ignored; None: the config dataclass defaults). Each end of each range is built into the
        algorithm's config alone over ``base``; a value the config rejects raises ConfigError naming the
        parameter — unless the error is about another field too (e.g. batch_size > n_envs * n_steps),
        which depends on the combination and is left to the trial.
        """
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)  # type: ignore[assignment]
        if not isinstance(node, Mapping):
            raise ConfigError(f"search: expected a mapping with keys {', '.join(_SPACE_KEYS)}, got {node!r}")
        spec = get_algorithm(algo)
        unknown = sorted(set(node) - set(_SPACE_KEYS))
        if unknown:
            raise ConfigError(
                f"search: unknown key {unknown[0]!r}; a search space has only {', '.join(_SPACE_KEYS)}"
            )
        node_algo = node.get("algo")
        if node_algo is None:
            raise ConfigError(f"search: missing 'algo' (the algorithm the space is for, e.g. algo: {algo})")
        if node_algo != algo:
            other = f" (or algo={node_algo})" if node_algo in ALGORITHMS else ""
            raise ConfigError(
                f"search: this space is for algo {node_algo!r} but the algorithm being tuned is {algo!r}; "
                f"use search={algo}{other}"
            )
        params_node = node.get("params")
        if not isinstance(params_node, Mapping) or not params_node:
            raise ConfigError("search.params: expected a non-empty mapping of config field -> distribution")
        fields = sorted(f.name for f in dataclasses.fields(spec.config_cls))
        params = []
        for name, param_node in params_node.items():
            if name not in fields:
                close = difflib.get_close_matches(str(name), fields, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"search.params.{name}: not a field of {spec.config_cls.__name__}{hint} "
                    f"Valid fields: {', '.join(fields)}"
                )
            params.append(ParamSpec.from_mapping(str(name), param_node))
        base_values = _base_values(base)
        fixed = _cap_inputs(params, base_values, spec.config_cls, fields)
        space = cls(algo=algo, params=tuple(params), fixed=fixed)
        space._check_bounds(base_values, fields)
        return space

    def _check_bounds(self, base: dict[str, Any], fields: list[str]) -> None:
        config_cls = get_algorithm(self.algo).config_cls
        try:
            config_cls.from_dict(base)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"search: the base {self.algo} config is invalid before any search: {exc}"
            ) from exc
        for param in self.params:
            others = [f for f in fields if f != param.name]
            for value in param.end_values():
                try:
                    config_cls.from_dict({**base, param.name: value})
                except ConfigError as exc:
                    if any(re.search(rf"\b{re.escape(f)}\b", str(exc)) for f in others):
                        continue  # an interaction with another field, not a bound error
                    raise ConfigError(
                        f"search.params.{param.name}: {config_cls.__name__} rejects the value {value!r} "
                        f"in this range: {exc}"
                    ) from exc
                except (ValueError, TypeError) as exc:
                    raise ConfigError(
                        f"search.params.{param.name}: {config_cls.__name__} rejects the value {value!r} "
                        f"in this range: {exc}"
                    ) from exc

    def for_budget(self, budget_steps: int, base: Mapping[str, Any] | None = None) -> SearchSpace:
        """This space narrowed so that every config it samples fits the trial budget ``budget_steps``.

        The rule (:data:`MIN_UPDATES_PER_TRIAL`): the warm-up before the first update plus that many
        rollouts (the env steps between two updates, the product of the config's ``ROLLOUT_FIELDS``) fit
        into the budget. A searched rollout field loses the values that cannot fit even with the other
        fields at their largest; a searched warm-up field loses those that leave no room for the
        rollouts. ConfigError naming ``tune.budget_steps`` when no value is left, or when the base
        config's unsearched fields break the rule.
        """
        config_cls = get_algorithm(self.algo).config_cls
        values = {**_dataclass_defaults(config_cls), **_base_values(base)}
        searched = {p.name: p for p in self.params}
        bounded = (*config_cls.ROLLOUT_FIELDS, config_cls.WARMUP_FIELD)
        largest = {n: max(_numbers(p.end_values(), n)) for n, p in searched.items() if n in bounded}
        narrowed = dict(searched)
        rollout_fields = config_cls.ROLLOUT_FIELDS
        for name in rollout_fields:
            others = math.prod(largest.get(f, values[f]) for f in rollout_fields if f != name)
            limit = budget_steps // (MIN_UPDATES_PER_TRIAL * others)
            if name in searched:
                narrowed[name] = searched[name].narrowed(limit, f"tune.budget_steps={budget_steps}")
                largest[name] = max(_numbers(narrowed[name].end_values(), name))
        rollout = math.prod(largest.get(f, values[f]) for f in rollout_fields)
        warmup_field = config_cls.WARMUP_FIELD
        room = budget_steps - MIN_UPDATES_PER_TRIAL * rollout
        if warmup_field in searched:
            narrowed[warmup_field] = searched[warmup_field].narrowed(
                room, f"tune.budget_steps={budget_steps}"
            )
        elif (warmup_field is not None and values[warmup_field] > room) or room < 0:
            fields = " × ".join(f"algo.{f}" for f in rollout_fields)
            warmup = f"algo.{warmup_field} ({values[warmup_field]}) + " if warmup_field else ""
            raise ConfigError(
                f"tune.budget_steps ({budget_steps}) must hold {warmup}{MIN_UPDATES_PER_TRIAL} updates of "
                f"{fields} ({rollout}) env steps; raise it, or lower those fields"
            )
        return dataclasses.replace(self, params=tuple(narrowed[p.name] for p in self.params))

    @property
    def names(self) -> tuple[str, ...]:
        """The config field names of the tuned parameters."""
        return tuple(p.name for p in self.params)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Optuna distributions keyed by Optuna parameter name (for ``study.ask`` or ``create_trial``)."""
        return {p.optuna_name: p.distribution() for p in self.params}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every parameter through ``trial.suggest_*``; config values keyed by field name."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.type == "categorical":
                assert p.choices is not None
                sampled: Any = trial.suggest_categorical(p.optuna_name, list(p.choices))
            elif p.type == "int":
                sampled = trial.suggest_int(
                    p.optuna_name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
                )
            else:
                sampled = trial.suggest_float(
                    p.optuna_name, float(p.low), float(p.high), step=p.step, log=p.log
                )
            values[p.name] = p.to_value(sampled)
        return self._capped(values)

    def _capped(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with every ``cap`` applied (in place; also returned)."""
        merged = {**self.fixed, **values}
        for p in self.params:
            if p.cap is not None:
                limit = math.prod(int(merged[f]) for f in p.cap)
                values[p.name] = merged[p.name] = min(values[p.name], limit)
        return values

    def out_of_range(self, values: Mapping[str, Any]) -> list[str]:
        """The searched fields whose value in ``values`` the space cannot sample (see
        :meth:`ParamSpec.contains`), e.g. ``ent_coef=0.0`` against a log range; missing fields count too."""
        return [p.name for p in self.params if p.name not in values or not p.contains(values[p.name])]

    def values_from_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Config values keyed by field name from Optuna params (e.g. ``FrozenTrial.params``).

        Keys that are not in the space are ignored; a missing one raises ConfigError.
        """
        values: dict[str, Any] = {}
        for p in self.params:
            if p.optuna_name not in params:
                raise ConfigError(
                    f"search.params.{p.name}: no Optuna param {p.optuna_name!r} in {dict(params)!r}"
                )
            values[p.name] = p.to_value(params[p.optuna_name])
        return self._capped(values)

    def params_from_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Optuna params keyed by Optuna name from config values (inverse of :meth:`values_from_params`),
        e.g. ``study.enqueue_trial(space.params_from_values(defaults))``.

        Only the searched fields are read (a full config mapping is fine); a missing one raises ConfigError.
        """
        params: dict[str, Any] = {}
        for p in self.params:
            if p.name not in values:
                raise ConfigError(f"search.params.{p.name}: no value for {p.name!r}")
            params[p.optuna_name] = p.to_sampled(values[p.name])
        return params


def _dataclass_defaults(config_cls: type) -> dict[str, Any]:
    """The default value of each field of the config dataclass ``config_cls`` that has one."""
    return {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}


def _numbers(values: Sequence[Any], name: str) -> list[float]:
    """``values`` of a field the budget bounds, which must be numbers; ConfigError naming it otherwise."""
    if not all(_is_number(v) for v in values):
        raise ConfigError(
            f"search.params.{name}: a field the budget bounds takes numbers, got {list(values)}"
        )
    return list(values)


def _base_values(base: Mapping[str, Any] | None) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, DictConfig):
        base = OmegaConf.to_container(base, resolve=True)  # type: ignore[assignment]
    return {str(k): v for k, v in base.items() if k != "name"}


def _cap_inputs(
    params: Sequence[ParamSpec], base: Mapping[str, Any], config_cls: type, fields: Sequence[str]
) -> dict[str, Any]:
    """The base values of the unsearched fields that caps name; ConfigError names a bad cap."""
    searched = {p.name: p for p in params}
    defaults = _dataclass_defaults(config_cls)
    fixed: dict[str, Any] = {}
    for param in params:
        for name in param.cap or ():
            where = f"search.params.{param.name}.cap"
            if name not in fields:
                close = difflib.get_close_matches(name, list(fields), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{where}: {name!r} is not a field of {config_cls.__name__}{hint}")
            if name in searched:
                if searched[name].type != "int" or searched[name].reparam == "pow2_two_layers":
                    raise ConfigError(f"{where}: {name!r} is searched but not as a plain or pow2 int")
                continue
            value = base.get(name, defaults.get(name))
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where}: {name} must be an integer in the base config, got {value!r}")
            fixed[name] = value
    return fixed


def load_search_space(node: Mapping[str, Any], algo_node: Mapping[str, Any]) -> SearchSpace:
    """The validated space of ``cfg.search`` for the algorithm of ``cfg.algo`` (its ``name``), with
    ``cfg.algo``'s hyperparameters as the base for the bound checks."""
    return SearchSpace.from_config(node, str(algo_node.get("name", "")), base=algo_node)


# ----------------------------------------------------------------------------------------------------
# Hydra override strings
# ----------------------------------------------------------------------------------------------------
_BACKSLASHES_BEFORE_SPECIAL = re.compile(r"(\\+)(?='|\$\{|$)")


def format_override_value(value: Any) -> str:
    """``value`` in Hydra's override grammar, so that composing it yields exactly ``value``.

    Floats use ``repr`` (shortest exact form, ``inf``/``nan`` included), bools ``true``/``false``,
    None ``null``, strings are single-quoted, lists and tuples ``[a,b]``.
    """
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        # Backslashes only escape in front of a quote, an interpolation or the closing quote.
        escaped = _BACKSLASHES_BEFORE_SPECIAL.sub(lambda m: m.group(1) * 2, value)
        escaped = escaped.replace("'", "\\'").replace("${", "\\${")
        return f"'{escaped}'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_override_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a Hydra override value")


def to_overrides(values: Mapping[str, Any], prefix: str = "algo") -> list[str]:
    """Hydra overrides ``<prefix>.<key>=<value>`` (e.g. ``algo.learning_rate=0.000123``) that compose
    back to exactly ``values``; an empty ``prefix`` gives top-level ``<key>=<value>``."""
    lead = f"{prefix}." if prefix else ""
    return [f"{lead}{key}={format_override_value(value)}" for key, value in values.items()]
