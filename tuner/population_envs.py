"""Population mode on several envs (``tune.population=K`` with ``tune.envs``): a population per env.

A :class:`~algorithms.ppo_population.PopulationPPO` trains one env id (its networks are sized for that
env's spaces), so a multi-env study keeps one population per env of ``tune.envs``. A claimed trial
starts in the first env's population, exactly as in population mode. When its seeds have finished that
env, their runs end, the trial records the env's returns and reports its objective so far (the IQM of
the normalised returns of the envs done) at the env steps a seed has trained by then, as a sequential
multi-env trial does, so the pruner compares like with like. Unless pruned, it waits for free slots in
the next env's population, where its seeds start afresh (new weights, same seeds) on that env. It ends
COMPLETE after the last env.

Every env's population has the first one's size and structure. The first population retires (and the
next samples a new structure) only when no trial trains or waits on any env, and the later envs'
populations retire with it, so one structure runs at a time. The worker claims a new trial only while
no trial waits for a later env: trials flow through the envs instead of piling up before a full one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna

from algorithms.ppo_population import PopulationPPO
from tuner.compose import algorithm_config
from tuner.multienv import EnvTask
from tuner.objective import trial_config
from tuner.population import (
    PopulationExecutor,
    PopulationState,
    RunningTrial,
    end_env,
    end_runs,
    iterate,
    open_seed_runs,
    retire,
    start_members,
    stop_heartbeat,
)
from tuner.study import TuneSettings
from tuner.tracking import RunSignals
from tuner.train import RunSettings
from tuner.trial_record import TrialOutcome, TrialSetup


@dataclass
class EnvStage:
    """A later env of the study: its population and the trials waiting for its slots, oldest first."""

    task: EnvTask
    state: PopulationState
    waiting: list[RunningTrial] = field(default_factory=list)


class MultiEnvPopulationExecutor(PopulationExecutor):
    """The worker's :class:`~tuner.worker.TrialExecutor` in population mode with ``tune.envs``: the
    first env's population is :class:`~tuner.population.PopulationExecutor`'s; each later env has one
    more, which trials enter as they finish the env before."""

    def __init__(
        self,
        study: optuna.Study,
        setup: TrialSetup,
        settings: TuneSettings,
        report: Callable[[TrialOutcome], None],
    ) -> None:
        super().__init__(study, setup, settings, report)
        # One heartbeat per trial, wherever it is: the stages share the first population's.
        heartbeats = self.state.heartbeats
        self.stages = [EnvStage(task, PopulationState(heartbeats=heartbeats)) for task in setup.tasks[1:]]

    def _states(self) -> list[PopulationState]:
        """Every env's population state, in the order of ``tune.envs``."""
        return [self.state, *(stage.state for stage in self.stages)]

    def has_room(self) -> bool:
        return super().has_room() and not any(stage.waiting for stage in self.stages)

    def busy(self) -> bool:
        return any(state.trials for state in self._states()) or any(stage.waiting for stage in self.stages)

    def advance(self, signals: RunSignals) -> None:
        """One iteration of every env's population that has trials, then the waiting trials placed."""
        for index, state in enumerate(self._states()):
            if state.trials:
                iterate(state, signals, self.report, env_done=self._env_done_callback(index))
        for stage in self.stages:
            while stage.waiting and self._place_waiting(stage):
                pass

    def settle(self) -> bool:
        """Nothing trains or waits on any env: the later envs' populations retire with the first."""
        for stage in self.stages:
            if stage.state.population is not None:
                retire(stage.state)
        return super().settle()

    def abandon(self, exc: BaseException) -> list[optuna.Trial]:
        abandoned = super().abandon(exc)
        for stage in self.stages:
            running = [*stage.state.trials.values(), *stage.waiting]
            stage.state.trials.clear()
            stage.waiting.clear()
            for trial in running:
                end_runs(trial, exc)
                abandoned.append(trial.record.trial)
        return abandoned

    def close(self) -> None:
        super().close()
        for stage in self.stages:
            if stage.state.population is not None:
                stage.state.population.close()

    def _env_done_callback(self, index: int) -> Callable[[RunningTrial], None]:
        return lambda trial: self._env_done(index, trial)

    def _env_done(self, index: int, trial: RunningTrial) -> None:
        """A trial's seeds finished env ``index``: record its returns, report, and end the trial (after
        the last env, or pruned) or send it to wait for the next env."""
        state, number = self._states()[index], trial.record.trial.number
        trial.env_returns[self.setup.tasks[index].name] = end_env(state, trial)
        outcome = trial.record.env_finished(index, trial.env_returns, time.perf_counter() - trial.started)
        del state.trials[number]
        if outcome is None:
            trial.seeds, trial.evals = [], {}
            self.stages[index].waiting.append(trial)
            return
        stop_heartbeat(state, number)
        self.report(outcome)

    def _place_waiting(self, stage: EnvStage) -> bool:
        """Start the stage's oldest waiting trial in free slots of its env's population (made now if the
        env has none); False when the slots are taken."""
        trial, state, seeds = stage.waiting[0], stage.state, self.setup.seeds
        if state.population is None:
            assert self.state.population is not None  # the first env's retires only when all are idle
            config = trial_config(self.setup, trial.values, seeds[0], stage.task)
            settings = RunSettings.from_config(config)
            _, algo_config = algorithm_config(config["algo"])
            state.population = PopulationPPO(
                settings.env_id,
                algo_config,
                self.state.population.n_members,
                settings.env_kwargs,
                settings.env_backend,
                env_seed=seeds[0],
            )
        slots = state.free_slots(state.population.n_members)[: len(seeds)]
        if len(slots) < len(seeds):
            return False
        stage.waiting.pop(0)
        state.trials[trial.record.trial.number] = trial  # from here on, an error ends its runs
        open_seed_runs(trial, state.population, slots, stage.task)
        start_members(state.population, trial)
        return True
