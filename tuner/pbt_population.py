"""Population-based training (``tune.method=pbt``): population mode whose members exploit and explore.

The worker claims ``tune.n_trials`` trials (one per PBT member, sampled as usual, the structure fixed by
the first) and trains them as one :class:`~algorithms.ppo_population.PopulationPPO`, exactly as
population mode does, but nothing is pruned. Every ``pbt.interval_steps`` env steps the members are
ranked by the mean of their last ``pbt.last_n_evals`` evaluations (:mod:`tuner.pbt`), and each member of
the bottom quantile continues from a top member with explored hyperparameters.

How that is recorded: **each stretch of a member's training under one set of hyperparameters is an
Optuna trial** (a segment). When a member exploits, its segment's trial ends PRUNED at the decision's
step (its reports are its learning curve so far), and a new trial, enqueued with the explored values as
its params, continues in the same slots. Each segment's trial carries user attributes ``pbt_member``
(which member), ``pbt_parent`` (the segment it copied, None for a member's first), ``pbt_start_step``,
and ``pbt_lineage``: the ``[from_step, values]`` history that led to it, parents' included. Members that
reach the budget end their last segments COMPLETE with their final evaluation, so the best COMPLETE
trial is the best member, and its lineage is the schedule the sweep exports. Every decision's exploit
events are kept on the study (user attribute ``pbt_events``) for the sweep's table. Each seed run logs
its segment's hyperparameters as ``pbt/<name>`` metrics at its first and last env step.

An interrupted PBT sweep does not resume its population: the running segments go back to the queue,
and the next command trains them again from fresh weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tuner.display import describe_values
from tuner.objective import trial_overrides
from tuner.pbt import (
    ExploitEvent,
    Lineages,
    PBTSettings,
    apply_event,
    lineage_schedule,
    member_specs,
    plan_decision,
)
from tuner.population import PopulationExecutor, RunningTrial, end_trial, iterate, open_trial
from tuner.search import ParamSpec
from tuner.study import TuneSettings, claim_trial, heartbeat
from tuner.tracking import RunSignals
from tuner.trial_record import VALUES_ATTR, TrialOutcome, TrialSetup, record_sampled

MEMBER_ATTR = "pbt_member"  # trial user attr: the PBT member whose segment the trial is
PARENT_ATTR = "pbt_parent"  # trial user attr: the trial (segment) it copied, None for a first segment
START_ATTR = "pbt_start_step"  # trial user attr: the env step the segment starts at
LINEAGE_ATTR = "pbt_lineage"  # trial user attr: [[from_step, values], …] that led to this segment
EVENTS_ATTR = "pbt_events"  # study user attr: every exploit event, in order


@dataclass
class PBTState:
    """What population-based training keeps between iterations.

    Attributes:
        settings: the ``pbt`` node.
        specs: the searched member hyperparameters (what explore changes).
        lineages: each member's history of explored values.
        members: running trial number → member index.
        scores: each member's evaluations so far (means over its seeds); a copy of its source's after an
            exploit, since its weights are then the source's.
        next_decision: the env step of the next decision.
        rng: draws the exploit sources and the explored values.
        events: every exploit so far, as the study's ``pbt_events`` attribute keeps them.
    """

    settings: PBTSettings
    specs: list[ParamSpec]
    lineages: Lineages = field(default_factory=Lineages)
    members: dict[int, int] = field(default_factory=dict)
    scores: list[list[float]] = field(default_factory=list)
    next_decision: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    events: list[dict[str, Any]] = field(default_factory=list)


class PBTExecutor(PopulationExecutor):
    """The worker's :class:`~tuner.worker.TrialExecutor` for ``tune.method=pbt`` (one worker)."""

    def __init__(
        self,
        study: optuna.Study,
        setup: TrialSetup,
        settings: TuneSettings,
        report: Callable[[TrialOutcome], None],
        storage: RDBStorage,
    ) -> None:
        super().__init__(study, setup, settings, report)
        assert settings.pbt is not None
        self.storage = storage
        self.pbt = PBTState(
            settings.pbt,
            member_specs(setup.space.params),
            next_decision=settings.pbt.interval_steps,
            rng=np.random.default_rng(setup.seeds[0]),
        )

    def start(self, trial: optuna.Trial, heartbeat: contextlib.ExitStack) -> None:
        """Place a member's first segment, as population mode places a trial."""
        super().start(trial, heartbeat)
        running = self.state.trials.get(trial.number)
        if running is None:  # failed or deferred
            return
        explored = {spec.name: running.values[spec.name] for spec in self.pbt.specs}
        member = self.pbt.lineages.add(explored)
        self.pbt.members[trial.number] = member
        self.pbt.scores.append([])
        _mark_segment(trial, member, None, 0, self.pbt.lineages.histories[member])
        _log_hyperparameters(running, explored, 0)

    def advance(self, signals: RunSignals) -> None:
        """One iteration of every member (nothing pruned), then a decision if one is due."""
        reported = iterate(self.state, signals, self.report, prune=False)
        for number, value in reported.items():
            if number in self.pbt.members:
                self.pbt.scores[self.pbt.members[number]].append(value)
        for number in [n for n in self.pbt.members if n not in self.state.trials]:
            del self.pbt.members[number]  # ended: completed at the budget, or failed
        if self._decision_due():
            self._decide()

    def _decision_due(self) -> bool:
        population = self.state.population
        if population is None or len(self.pbt.members) < 2:
            return False
        steps = [population.members[seed.slot] for t in self.state.trials.values() for seed in t.seeds]
        return all(m is not None and not m.finished and m.num_steps >= self.pbt.next_decision for m in steps)

    def _decide(self) -> None:
        """Rank the running members, end each bottom member's segment and continue it as a new one."""
        pbt, state = self.pbt, self.state
        assert state.population is not None
        by_member = {member: state.trials[number] for number, member in pbt.members.items()}
        step = min(state.population.members[s.slot].num_steps for t in by_member.values() for s in t.seeds)
        n_scores = pbt.settings.last_n_evals
        scores = [
            float(np.mean(pbt.scores[m][-n_scores:])) if m in by_member and pbt.scores[m] else math.nan
            for m in range(len(pbt.scores))
        ]
        slots = {m: [seed.slot for seed in trial.seeds] for m, trial in by_member.items()}
        events = plan_decision(scores, pbt.lineages, pbt.specs, pbt.settings, step, pbt.rng)
        for event in events:
            if event.target not in by_member or event.source not in by_member:
                continue  # a member that ended (failed) takes no part
            self._continue_member(event, by_member[event.target], by_member[event.source], slots)
        pbt.next_decision = step + pbt.settings.interval_steps

    def _continue_member(
        self,
        event: ExploitEvent,
        target: RunningTrial,
        source: RunningTrial,
        slots: Mapping[int, list[int]],
    ) -> None:
        """End ``target``'s segment, exploit and explore, and open the member's next segment's trial."""
        pbt, state = self.pbt, self.state
        assert state.population is not None
        _log_hyperparameters(target, event.old, event.step)
        self.report(end_trial(state, target, TrialState.PRUNED, keep_members=True))
        del pbt.members[target.record.trial.number]
        apply_event(state.population, [slots.get(m, []) for m in range(len(pbt.scores))], event, pbt.lineages)
        pbt.scores[event.target] = list(pbt.scores[event.source])
        values = {**target.values, **event.new}
        trial = self._claim_segment(event.new)
        state.heartbeats[trial.number] = heartbeat(self.storage, trial, self.settings.heartbeat_interval)
        history = pbt.lineages.histories[event.target]
        # Replaying the segment (tuner.replay, overrides.txt) trains its whole lineage as schedules.
        overrides = trial_overrides(self.setup, {**values, **lineage_schedule(history)})
        record_sampled(trial, values, overrides)
        _mark_segment(trial, event.target, source.record.trial.number, event.step, history)
        tags = {MEMBER_ATTR: event.target, PARENT_ATTR: source.record.trial.number, START_ATTR: event.step}
        running = open_trial(
            self.study, trial, values, self.setup, state, slots[event.target], tags, overrides
        )
        for seed, source_seed in zip(running.seeds, source.seeds, strict=True):
            seed.monitor.start_at(event.step, source_seed.monitor.last_result)
        _log_hyperparameters(running, event.new, event.step)
        pbt.members[trial.number] = event.target
        pbt.events.append(
            _event_record(event, source.record.trial.number, target.record.trial.number, trial.number)
        )
        self.study.set_user_attr(EVENTS_ATTR, pbt.events)

    def _claim_segment(self, explored: Mapping[str, Any]) -> optuna.Trial:
        """Enqueue a trial whose params are the population's structure and the ``explored`` values, and
        claim it."""
        params = {
            **self.state.structure,
            **{spec.optuna_name: spec.to_sampled(explored[spec.name]) for spec in self.pbt.specs},
        }
        self.study.enqueue_trial(params, skip_if_exists=False)
        newest = max(t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        trial = claim_trial(self.study, self.storage, newest)
        assert trial is not None, "a trial this worker just enqueued was taken by another"
        self.setup.space.suggest(trial)  # the enqueued params, recorded as the trial's own
        return trial


def _mark_segment(
    trial: optuna.Trial, member: int, parent: int | None, start: int, history: list[tuple[int, dict]]
) -> None:
    """The segment's PBT user attributes (see the module docstring)."""
    trial.set_user_attr(MEMBER_ATTR, member)
    trial.set_user_attr(PARENT_ATTR, parent)
    trial.set_user_attr(START_ATTR, start)
    trial.set_user_attr(LINEAGE_ATTR, [[from_step, dict(values)] for from_step, values in history])


def _log_hyperparameters(trial: RunningTrial, values: Mapping[str, Any], step: int) -> None:
    """``pbt/<name>`` of the explored values on each of the trial's seed runs at ``step``."""
    for seed in trial.seeds:
        seed.run.log_metrics({f"pbt/{name}": float(value) for name, value in values.items()}, step)


def _event_record(event: ExploitEvent, source_trial: int, ended_trial: int, new_trial: int) -> dict[str, Any]:
    """An exploit event as the study keeps it: step, members, the trials involved, old and new values."""
    return {
        "step": event.step,
        "from_member": event.source,
        "to_member": event.target,
        "source_trial": source_trial,
        "ended_trial": ended_trial,
        "new_trial": new_trial,
        "old": event.old,
        "new": event.new,
    }


# --- after the sweep ----------------------------------------------------------------------------------
def lineage_values(trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    """The config values that retrain a PBT segment's member: its sampled values with every explored
    hyperparameter that changed along its lineage as a ``[[from_step, value], …]`` schedule; None for a
    trial that is not a PBT segment."""
    history = trial.user_attrs.get(LINEAGE_ATTR)
    if not history:
        return None
    return {**trial.user_attrs.get(VALUES_ATTR, {}), **lineage_schedule(history)}


def describe_lineage(trial: optuna.trial.FrozenTrial) -> str:
    """The segments that led to a PBT trial, one line each: from which step, which values."""
    history = trial.user_attrs.get(LINEAGE_ATTR, [])
    return "\n".join(f"  from step {step}: {describe_values(values)}" for step, values in history)


def events_table(study: optuna.Study) -> pd.DataFrame:
    """The study's exploit events, one row each: step, members, trials, and old → new of each value."""
    rows = []
    for event in study.user_attrs.get(EVENTS_ATTR, []):
        row = {k: v for k, v in event.items() if k not in ("old", "new")}
        for name, value in event["new"].items():
            row[f"{name}_old"], row[f"{name}_new"] = event["old"].get(name), value
        rows.append(row)
    return pd.DataFrame(rows)
