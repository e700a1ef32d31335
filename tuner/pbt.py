"""Population-based training's decisions (Jaderberg et al. 2017): who copies whom, and the new values.

Every ``pbt.interval_steps`` env steps the members are ranked by their score; each member in the bottom
quantile *exploits* one drawn uniformly from the top quantile (it continues from that member's weights,
optimizer state, normaliser statistics and place in training: :meth:`PopulationPPO.exploit`) and then
*explores*: each of its member hyperparameters that the search space tunes is, with probability
``resample_probability``, drawn afresh from the space, and otherwise multiplied by one of
``perturb_factors`` drawn at random. Perturbation acts on the quantity the space samples (``1 − γ`` for
``reparam: one_minus``, the exponent for ``pow2``), a categorical moves to a neighbouring choice, and the
result is clipped into the range, so a value never leaves its space.

A PBT member may train several seeds (one population slot each); its score is the mean over its seeds,
and exploiting copies seed ``i`` of the source into seed ``i`` of the target. Each member's history of
values, inherited on exploit, is its lineage: :func:`lineage_schedule` turns the winner's into the
piecewise-constant schedules that PPOConfig takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algorithms import ConfigError
from algorithms.ppo_population import MEMBER_HYPERPARAMETERS, PopulationPPO
from tuner.search import ParamSpec


@dataclass(frozen=True)
class PBTSettings:
    """The ``pbt`` config node, validated.

    Attributes:
        interval_steps: env steps each member trains between two decisions (rounded up to whole
            rollouts by the training loop). Typical: a tenth to a twentieth of the budget.
        last_n_evals: a member's score is the mean of its last this many evaluations (over its seeds).
        quantile: fraction of the members in the bottom (and in the top) group, in (0, 0.5].
        resample_probability: chance that explore draws a value afresh instead of perturbing it, [0, 1].
        perturb_factors: the factors a perturbation multiplies by, one drawn at random (e.g. 0.8, 1.2).
    """

    interval_steps: int
    last_n_evals: int = 2
    quantile: float = 0.25
    resample_probability: float = 0.25
    perturb_factors: tuple[float, ...] = (0.8, 1.2)

    def __post_init__(self) -> None:
        factors = self.perturb_factors
        checks = (
            ("interval_steps", _is_int(self.interval_steps) and self.interval_steps >= 1, "an integer >= 1"),
            ("last_n_evals", _is_int(self.last_n_evals) and self.last_n_evals >= 1, "an integer >= 1"),
            ("quantile", _is_number(self.quantile) and 0 < self.quantile <= 0.5, "a number in (0, 0.5]"),
            ("resample_probability", _is_number(self.resample_probability)
             and 0 <= self.resample_probability <= 1, "a number in [0, 1]"),
            ("perturb_factors", isinstance(factors, tuple) and len(factors) > 0
             and all(_is_number(f) and f > 0 for f in factors), "a non-empty list of numbers > 0"),
        )  # fmt: skip
        for key, ok, what in checks:
            if not ok:
                value = getattr(self, key)
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f"pbt.{key} must be {what}, got {shown!r}")

    @classmethod
    def from_mapping(
        cls, node: Mapping[str, Any], budget_steps: int, eval_freq_steps: int = 0
    ) -> PBTSettings:
        """Build from the ``pbt`` node; ``interval_steps: null`` means a tenth of ``budget_steps``, or
        ``eval_freq_steps`` if that is longer (members are ranked by their evaluations)."""
        known = {"interval_steps", "last_n_evals", "quantile", "resample_probability", "perturb_factors"}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ConfigError(f"unknown setting pbt.{unknown[0]}; valid settings: {', '.join(sorted(known))}")
        values = dict(node)
        if values.get("interval_steps") is None:
            values["interval_steps"] = max(1, budget_steps // 10, eval_freq_steps)
        if isinstance(values.get("perturb_factors"), list | tuple):
            values["perturb_factors"] = tuple(values["perturb_factors"])
        return cls(**values)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- exploit: who copies whom ---------------------------------------------------------------------
def quantile_size(n_members: int, quantile: float) -> int:
    """Members in the bottom (and in the top) group: ``ceil(n × quantile)``, at most half of them."""
    return min(math.ceil(n_members * quantile), n_members // 2)


def exploit_pairs(
    scores: Sequence[float], quantile: float, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(target, source) member indices: each member of the bottom quantile with a source drawn
    uniformly from the top quantile. A NaN score ranks lowest; of equal scores the lower index ranks lower."""
    n = quantile_size(len(scores), quantile)
    if n == 0:
        return []
    ranked = sorted(range(len(scores)), key=lambda i: (-math.inf if math.isnan(scores[i]) else scores[i], i))
    bottom, top = ranked[:n], ranked[-n:]
    return [(target, int(top[rng.integers(n)])) for target in bottom]


# --- explore: new values inside the space ----------------------------------------------------------
def resample(spec: ParamSpec, rng: np.random.Generator) -> Any:
    """A config value drawn from ``spec``'s distribution (uniform, log-uniform, stepped, or a choice)."""
    if spec.type == "categorical":
        assert spec.choices is not None
        return spec.to_value(spec.choices[int(rng.integers(len(spec.choices)))])
    low, high = float(spec.low), float(spec.high)  # type: ignore[arg-type]
    if spec.type == "int" and not spec.log:  # every grid point equally likely, the ends included
        step = int(spec.step or 1)
        return spec.to_value(int(low) + step * int(rng.integers((int(high) - int(low)) // step + 1)))
    x = math.exp(rng.uniform(math.log(low), math.log(high))) if spec.log else rng.uniform(low, high)
    return spec.to_value(_onto_grid(spec, x))


def perturb(spec: ParamSpec, value: Any, factor: float) -> Any:
    """``value`` with its sampled quantity multiplied by ``factor`` and clipped into the range; a
    categorical moves one choice down (factor < 1) or up (factor > 1), staying at an end."""
    sampled = spec.to_sampled(value)
    if spec.type == "categorical":
        assert spec.choices is not None
        index = list(spec.choices).index(sampled) + (1 if factor > 1 else -1 if factor < 1 else 0)
        return spec.to_value(spec.choices[min(max(index, 0), len(spec.choices) - 1)])
    low, high = float(spec.low), float(spec.high)  # type: ignore[arg-type]
    x = sampled * factor
    if spec.type == "int" and round(x) == sampled and factor != 1:  # small ints: move at least one step
        x = sampled + (spec.step or 1) * (1 if factor > 1 else -1)
    return spec.to_value(_onto_grid(spec, min(max(x, low), high)))


def _onto_grid(spec: ParamSpec, x: float) -> float:
    """``x`` (inside the range) rounded to the parameter's grid: its ``step`` from ``low``, or integers."""
    low, high = float(spec.low), float(spec.high)  # type: ignore[arg-type]
    step = spec.step if spec.step is not None else (1 if spec.type == "int" else None)
    if step is None:
        return x
    return min(low + round((x - low) / step) * step, high)


def explore(
    values: Mapping[str, Any], specs: Sequence[ParamSpec], settings: PBTSettings, rng: np.random.Generator
) -> dict[str, Any]:
    """New values for the searched member hyperparameters in ``values``: each resampled with
    ``settings.resample_probability``, else perturbed by a factor drawn from ``settings.perturb_factors``."""
    new: dict[str, Any] = {}
    for spec in specs:
        if rng.random() < settings.resample_probability:
            new[spec.name] = resample(spec, rng)
        else:
            factor = settings.perturb_factors[int(rng.integers(len(settings.perturb_factors)))]
            new[spec.name] = perturb(spec, values[spec.name], factor)
    return new


def member_specs(params: Sequence[ParamSpec]) -> list[ParamSpec]:
    """The searched parameters PBT explores: those each population member sets for itself."""
    return [p for p in params if p.name in MEMBER_HYPERPARAMETERS]


# --- one decision on a population, and the lineages -----------------------------------------------
@dataclass(frozen=True)
class ExploitEvent:
    """One exploit and explore: at env ``step`` member ``target`` took member ``source``'s state and
    moved from ``old`` to ``new`` values (those of the explored hyperparameters)."""

    step: int
    target: int
    source: int
    old: dict[str, Any]
    new: dict[str, Any]


@dataclass
class Lineages:
    """Each PBT member's history of explored values: ``(from_step, values)`` pairs, oldest first; an
    exploit gives the target a copy of the source's history before its own new entry."""

    histories: list[list[tuple[int, dict[str, Any]]]] = field(default_factory=list)

    @classmethod
    def start(cls, initial: Sequence[Mapping[str, Any]]) -> Lineages:
        """One history per member, starting at step 0 with its initial values."""
        return cls([[(0, dict(values))] for values in initial])

    def add(self, values: Mapping[str, Any]) -> int:
        """A new member starting at step 0 with ``values``; its index."""
        self.histories.append([(0, dict(values))])
        return len(self.histories) - 1

    def record(self, event: ExploitEvent) -> None:
        """Apply ``event``: the target inherits the source's history and continues with its new values."""
        self.histories[event.target] = [*self.histories[event.source], (event.step, dict(event.new))]

    def current(self, member: int) -> dict[str, Any]:
        """The values member ``member`` trains with now."""
        return dict(self.histories[member][-1][1])


def plan_decision(
    scores: Sequence[float],
    lineages: Lineages,
    specs: Sequence[ParamSpec],
    settings: PBTSettings,
    step: int,
    rng: np.random.Generator,
) -> list[ExploitEvent]:
    """The exploits and explores of one decision at env ``step`` (member ``i`` scored ``scores[i]``),
    not yet applied: each bottom member, its source, and the source's values explored."""
    return [
        ExploitEvent(step, target, source, lineages.current(target),
                     explore(lineages.current(source), specs, settings, rng))
        for target, source in exploit_pairs(scores, settings.quantile, rng)
    ]  # fmt: skip


def apply_event(
    population: PopulationPPO, slots: Sequence[Sequence[int]], event: ExploitEvent, lineages: Lineages
) -> None:
    """Carry out ``event`` (member ``i`` trains in the population slots ``slots[i]``, one per seed): the
    target's slots exploit the matching slots of the source, then take the new values; the lineage
    records it."""
    for target_slot, source_slot in zip(slots[event.target], slots[event.source], strict=True):
        population.exploit(target_slot, source_slot)
        population.set_hyperparameters(target_slot, event.new)
    lineages.record(event)


def pbt_step(
    population: PopulationPPO,
    slots: Sequence[Sequence[int]],
    scores: Sequence[float],
    specs: Sequence[ParamSpec],
    settings: PBTSettings,
    lineages: Lineages,
    step: int,
    rng: np.random.Generator,
) -> list[ExploitEvent]:
    """One whole PBT decision at env ``step``: :func:`plan_decision`, then :func:`apply_event` for each
    of its events, which are returned."""
    events = plan_decision(scores, lineages, specs, settings, step, rng)
    for event in events:
        apply_event(population, slots, event, lineages)
    return events


def lineage_schedule(history: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """Config values for one lineage: a constant for a hyperparameter that never changed, else a list
    of ``[from_step, value]`` pairs (a change to the same value is dropped)."""
    names = list(history[0][1])
    result: dict[str, Any] = {}
    for name in names:
        pairs: list[list[Any]] = []
        for from_step, values in history:
            if not pairs or pairs[-1][1] != values[name]:
                if pairs and pairs[-1][0] == from_step:
                    pairs[-1][1] = values[name]
                else:
                    pairs.append([from_step, values[name]])
        result[name] = pairs[0][1] if len(pairs) == 1 else pairs
    return result
