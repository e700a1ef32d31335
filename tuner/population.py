"""Population mode (``tune.population=K``): a worker trains K trial seeds at once as one batched PPO.

The worker claims trials from the study as usual, but instead of training them one after another it
places each trial's seeds in the free slots of a :class:`~algorithms.ppo_population.PopulationPPO` and
steps all slots together. Each trial is still a real Optuna trial with its own MLflow runs
(sweep → trial → seed), its own intermediate reports and its own pruning decision; when the pruner
stops a trial, its slots are refilled at once with the next claimed trial (fresh weights, optimizer
state and envs), so the batch stays full until the study's budget is claimed.

Members of one population share the structural settings (everything but
:data:`~algorithms.ppo_population.MEMBER_HYPERPARAMETERS`). The first trial of a population samples
them freely; the next trials get them fixed through Optuna's ``PartialFixedSampler`` and sample only the
member hyperparameters. After ``tune.population_trials`` trials a population retires: it finishes its
running trials, and the next trial samples a new structure for the next population.

A trial's seeds run side by side, so it reports the mean evaluation return of its seeds at each
evaluation's env step (with one seed, exactly what a sequential trial reports). With several envs
(``tune.envs``) this population trains the first env and :mod:`tuner.population_envs` adds one per later
env; a trial then reports after each env instead.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from algorithms import ConfigError, EvalResult
from algorithms.common.networks import configure_torch_cpu
from algorithms.ppo_population import MEMBER_HYPERPARAMETERS, PopulationPPO, structural_fields
from tuner.compose import algorithm_config
from tuner.multienv import EnvTask
from tuner.objective import open_record, seed_config, trial_config, trial_overrides
from tuner.progress import TrainProgress
from tuner.study import TuneSettings, budget_status, time_left
from tuner.tracking import FAILED, FINISHED, RunRecorder, RunSignals
from tuner.train import RunSettings, TrainingMonitor, finish_run, run_tags
from tuner.trial_record import TrialOutcome, TrialRecord, TrialSetup, record_sampled

log = logging.getLogger(__name__)

POPULATION_ATTR = "population"  # trial user attr: index of the population (in this worker) it ran in


@dataclass
class SeedRun:
    """One seed of a trial, training in one slot, recorded in its own MLflow run."""

    slot: int
    seed: int
    settings: RunSettings
    config: dict[str, Any]
    run: RunRecorder
    monitor: TrainingMonitor
    final: EvalResult | None = None


@dataclass
class RunningTrial:
    """A claimed trial whose seeds occupy slots of the population."""

    record: TrialRecord
    values: dict[str, Any]
    seeds: list[SeedRun]
    started: float = field(default_factory=time.perf_counter)
    evals: dict[int, dict[int, float]] = field(default_factory=dict)
    """Evaluation returns so far: env step → {seed index: mean return}."""
    env_returns: dict[str, list[float]] = field(default_factory=dict)
    """A multi-env trial's final returns on the envs it has trained: env → one per seed."""


@dataclass
class PopulationState:
    """Everything the worker loop keeps between iterations (passed explicitly, never global).

    Attributes:
        population: the batched model, or None before the first trial of a population.
        structure: Optuna params (name → value) the population fixed for the trials that join it.
        started: trials started in the current population.
        number: index of the current population in this worker.
        trials: running trials by trial number.
        deferred: a claimed trial whose fixed params (a retry) need a new population; it starts once
            the current one has drained.
    """

    population: PopulationPPO | None = None
    structure: dict[str, Any] = field(default_factory=dict)
    started: int = 0
    number: int = 0
    trials: dict[int, RunningTrial] = field(default_factory=dict)
    deferred: tuple[optuna.Trial, dict[str, Any]] | None = None
    heartbeats: dict[int, contextlib.ExitStack] = field(default_factory=dict)
    """The running heartbeat of each claimed trial, by trial number."""

    def free_slots(self, n_members: int) -> list[int]:
        """Slots no running trial occupies."""
        used = {seed.slot for trial in self.trials.values() for seed in trial.seeds}
        return [k for k in range(n_members) if k not in used]


class PopulationExecutor:
    """The worker's :class:`~tuner.worker.TrialExecutor` in population mode: claimed trials fill the free
    slots of one :class:`~algorithms.ppo_population.PopulationPPO` and train together, one iteration of
    every member per :meth:`advance`; finished trials go to ``report``."""

    def __init__(
        self,
        study: optuna.Study,
        setup: TrialSetup,
        settings: TuneSettings,
        report: Callable[[TrialOutcome], None],
    ) -> None:
        configure_torch_cpu(int(setup.base_config.get("torch_threads", 1)))
        self.study = study
        self.setup = setup
        self.settings = settings
        self.report = report
        self.state = PopulationState()

    def has_room(self) -> bool:
        """Free slots for a trial's seeds, in a population that is not retiring, with no trial deferred
        to the next population."""
        state = self.state
        if state.deferred is not None:
            return False
        if state.population is not None and state.started >= self.settings.population_trials:
            return False  # retiring: let the running trials finish
        return len(state.free_slots(_capacity(state, self.settings))) >= len(self.setup.seeds)

    def start(self, trial: optuna.Trial, heartbeat: contextlib.ExitStack) -> None:
        """Sample the trial (the population's structure fixed) and place it."""
        self.state.heartbeats[trial.number] = heartbeat
        self._place(trial, _suggest(self.study, trial, self.setup, self.state))

    def busy(self) -> bool:
        return bool(self.state.trials)

    def advance(self, signals: RunSignals) -> None:
        iterate(self.state, signals, self.report)

    def settle(self) -> bool:
        """A drained population retires, and a deferred trial starts the next one; whether there is
        work again (that trial, or waiting trials to claim)."""
        state = self.state
        if state.population is None:
            return False
        retire(state)
        if state.deferred is not None:
            trial, values = state.deferred
            state.deferred = None
            self._place(trial, values)
            return True
        return budget_status(self.study).waiting > 0 and time_left(self.study, self.settings.timeout)

    def abandon(self, exc: BaseException) -> list[optuna.Trial]:
        """End the running trials' MLflow runs as ``exc`` says; they and a deferred trial go back."""
        abandoned = []
        for number in list(self.state.trials):
            running = self.state.trials.pop(number)
            end_runs(running, exc)
            abandoned.append(running.record.trial)
        if self.state.deferred is not None:
            abandoned.append(self.state.deferred[0])
        return abandoned

    def close(self) -> None:
        for heartbeat in self.state.heartbeats.values():
            heartbeat.close()
        if self.state.population is not None:
            self.state.population.close()

    def _place(self, trial: optuna.Trial, values: dict[str, Any]) -> None:
        """Start ``trial`` in free slots, making a population if there is none; defer it when it needs
        another structure (a retry with other fixed params); fail it when its config is invalid."""
        state, setup, settings = self.state, self.setup, self.settings
        config = trial_config(setup, values, setup.seeds[0])
        try:
            _, algo_config = algorithm_config(config["algo"])
        except ConfigError as exc:
            stop_heartbeat(state, trial.number)
            self.report(open_record(self.study, trial, setup, values).fail(f"invalid sampled config: {exc}"))
            return
        if state.population is None:
            settings_0 = RunSettings.from_config(config)
            status = budget_status(self.study)
            ahead = worker_share(status.waiting, status.running, settings.n_workers)
            n_seeds = len(setup.seeds)
            n_members = population_size(settings.population, n_seeds, settings.population_trials, ahead)
            state.population = PopulationPPO(
                settings_0.env_id,
                algo_config,
                n_members,
                settings_0.env_kwargs,
                settings_0.env_backend,
                env_seed=setup.seeds[0],
            )
            state.structure = _structure_params(trial, setup)
            state.number += 1
        elif structural_fields(algo_config) != structural_fields(state.population.config):
            state.deferred = (trial, values)
            return
        _start_trial(self.study, trial, values, setup, state, setup.tasks[0] if setup.tasks else None)
        state.started += 1


def retire(state: PopulationState) -> None:
    """Close the drained population; the next trial samples a new structure."""
    assert state.population is not None
    state.population.close()
    state.population = None
    state.structure = {}
    state.started = 0


def _capacity(state: PopulationState, settings: TuneSettings) -> int:
    """Slots of the current population, or the most a new one may have."""
    return state.population.n_members if state.population is not None else settings.population


def worker_share(waiting: int, running: int, n_workers: int) -> int:
    """Trials a worker's new population plans for: its even share of the study's unfinished trials
    (``waiting`` or ``running``, the trial in hand counted as running), but no more than it can still
    take (the waiting ones and the one in hand).

    Trials other workers are running count toward their share: a worker that starts a population while
    another already trains ten of a 20-trial study plans for the other ten, not half of them.
    """
    return max(1, min(waiting + 1, -(-(waiting + running) // n_workers)))


def population_size(max_members: int, n_seeds: int, population_trials: int, trials_ahead: int) -> int:
    """Members of a new population: at most ``max_members`` (``tune.population``), and no more than its
    trials fill in equal waves.

    A population takes ``min(population_trials, trials_ahead)`` trials of ``n_seeds`` members each. An
    empty slot still costs its share of every batched matmul, so rather than a full first wave and a
    nearly empty last one (16 + 4 of 16 slots for 20 trials), the trials are spread over the fewest
    waves the limit allows (10 + 10).
    """
    trials = max(1, min(population_trials, trials_ahead))
    per_wave = max(1, max_members // n_seeds)
    waves = -(-trials // per_wave)
    return n_seeds * -(-trials // waves)


def _suggest(
    study: optuna.Study, trial: optuna.Trial, setup: TrialSetup, state: PopulationState
) -> dict[str, Any]:
    """Sample the trial's values, the population's structural params fixed (if it has any yet)."""
    base_sampler = study.sampler
    if state.structure:
        with warnings.catch_warnings():  # PartialFixedSampler is marked experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.PartialFixedSampler(state.structure, base_sampler)
    try:
        values = setup.space.suggest(trial)
    finally:
        study.sampler = base_sampler
    record_sampled(trial, values, trial_overrides(setup, values))
    return values


def _structure_params(trial: optuna.Trial, setup: TrialSetup) -> dict[str, Any]:
    """The trial's sampled Optuna params that are structural (not member hyperparameters)."""
    return {
        p.optuna_name: trial.params[p.optuna_name]
        for p in setup.space.params
        if p.name not in MEMBER_HYPERPARAMETERS and p.optuna_name in trial.params
    }


def _start_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    values: Mapping[str, Any],
    setup: TrialSetup,
    state: PopulationState,
    task: EnvTask | None,
) -> RunningTrial:
    """Open the trial's MLflow run and its seeds' runs (on ``task``, the first env of a multi-env study)
    in free slots, and start a member per seed."""
    assert state.population is not None
    slots = state.free_slots(state.population.n_members)[: len(setup.seeds)]
    running = open_trial(study, trial, values, setup, state, slots, task=task)
    start_members(state.population, running)
    return running


def start_members(population: PopulationPPO, running: RunningTrial) -> None:
    """Start a fresh member for each of the trial's seeds, in the seed's slot."""
    for seed in running.seeds:
        _, algo_config = algorithm_config(seed.config["algo"])
        population.start_member(seed.slot, algo_config, seed.seed, seed.settings.total_steps)


def open_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    values: Mapping[str, Any],
    setup: TrialSetup,
    state: PopulationState,
    slots: Sequence[int],
    tags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] | None = None,
    task: EnvTask | None = None,
) -> RunningTrial:
    """Open the trial's MLflow run (with ``tags``, and ``overrides`` that replay it, by default those
    of ``values``) and a run per seed (on ``task``, for a multi-env study), seed ``i`` in ``slots[i]``,
    and make it one of the running trials; the slots' members are the caller's to start (or to keep)."""
    assert state.population is not None
    trial.set_user_attr(POPULATION_ATTR, state.number)
    record = TrialRecord.open(
        study, trial, setup, values, overrides or trial_overrides(setup, values),
        tags={"population": state.number, **(tags or {})},
    )  # fmt: skip
    running = RunningTrial(record, dict(values), seeds=[])
    state.trials[trial.number] = running  # from here on, an error ends its runs with the others
    open_seed_runs(running, state.population, slots, task)
    return running


def open_seed_runs(
    running: RunningTrial, population: PopulationPPO, slots: Sequence[int], task: EnvTask | None
) -> None:
    """Open a run per seed of the trial (on ``task``'s env and budget, for a multi-env study), seed
    ``i`` in ``slots[i]`` of ``population``, nested under the trial's run."""
    record = running.record
    for slot, seed in zip(slots, record.setup.seeds, strict=True):
        config = seed_config(record.setup, running.values, seed, task)
        settings = RunSettings.from_config(config)
        seed_run = record.open_seed_run(
            seed,
            settings,
            {**run_tags(settings, population.env_backend), "population_slot": slot},
            env=task.name if task is not None else None,
        )
        monitor = TrainingMonitor(None, settings, seed_run, TrainProgress(settings.total_steps, "", False))
        running.seeds.append(SeedRun(slot, seed, settings, config, seed_run, monitor))
        seed_run.log_params(config)
        seed_run.log_text(OmegaConf.to_yaml(config), "config.yaml")


def iterate(
    state: PopulationState,
    signals: RunSignals,
    finished: Callable[[TrialOutcome], None],
    prune: bool = True,
    env_done: Callable[[RunningTrial], None] | None = None,
) -> dict[int, float]:
    """One iteration of every member, then the evaluations due, the reports and the trials that end
    (``prune``: as the pruner decides). Returns the mean evaluation return of each trial whose seeds
    were all evaluated, by trial number.

    ``env_done``: in a multi-env study, what follows when a trial's seeds have all finished this
    population's env (instead of ending the trial COMPLETE); such a trial reports after each env, not
    after each evaluation.
    """
    population = state.population
    assert population is not None
    with signals.allowed():
        result = population.learn_iteration()
    by_slot = {seed.slot: (trial, seed) for trial in state.trials.values() for seed in trial.seeds}
    for slot, train_state in result.states.items():
        by_slot[slot][1].monitor.record(train_state)
    for slot, error in result.diverged.items():
        trial = by_slot[slot][0]
        if trial.record.trial.number in state.trials:
            finished(end_trial(state, trial, TrialState.FAIL, f"training diverged: {error}"))

    # Evaluate every seed that passed an evaluation point or its budget, all members at once.
    due: dict[int, tuple[RunningTrial, SeedRun]] = {}
    for trial in state.trials.values():
        for seed in trial.seeds:
            member = population.members[seed.slot]
            if member is None:
                continue
            if member.finished or seed.monitor.eval_due(member.num_steps):
                due[seed.slot] = (trial, seed)
    reported: dict[int, float] = {}
    if not due:
        return reported
    n_episodes = next(iter(due.values()))[1].settings.eval_episodes
    with signals.allowed():
        results = population.evaluate(
            {slot: seed.settings.eval_seed for slot, (_, seed) in due.items()}, n_episodes
        )

    for trial in {id(t): t for t, _ in due.values()}.values():
        step = 0
        for index, seed in enumerate(trial.seeds):
            if seed.slot not in results:
                continue
            member = population.members[seed.slot]
            assert member is not None
            step = member.num_steps
            seed.monitor.evaluate(step, results[seed.slot])
            if member.finished:
                seed.final = results[seed.slot]
            else:
                seed.monitor.record_eval(step, results[seed.slot])
            trial.evals.setdefault(step, {})[index] = results[seed.slot].mean_return
        if len(trial.evals.get(step, {})) < len(trial.seeds):
            continue  # seeds report together; they always reach a step together
        value = sum(trial.evals[step].values()) / len(trial.seeds)
        reported[trial.record.trial.number] = value
        if env_done is not None:
            if all(seed.final is not None for seed in trial.seeds):
                env_done(trial)
            continue
        should_prune = trial.record.report(value, step) and prune
        if all(seed.final is not None for seed in trial.seeds):
            finished(end_trial(state, trial, TrialState.COMPLETE))
        elif should_prune:
            finished(end_trial(state, trial, TrialState.PRUNED))
    return reported


def end_trial(
    state: PopulationState,
    trial: RunningTrial,
    outcome: TrialState,
    reason: str = "",
    keep_members: bool = False,
) -> TrialOutcome:
    """End the trial's seed runs and then the trial itself as ``outcome`` (``reason``: why it failed),
    and free its slots (``keep_members``: its members stay, to train on as another trial)."""
    population, number = state.population, trial.record.trial.number
    assert population is not None
    try:
        returns = _end_seed_runs(population, trial, outcome, reason)
        if outcome == TrialState.COMPLETE:
            for index, value in enumerate(returns):
                trial.record.seed_finished(index, value)
            ended = trial.record.complete(returns, time.perf_counter() - trial.started)
        elif outcome == TrialState.PRUNED:  # right after its latest report; no seed had finished
            ended = trial.record.prune(max(trial.evals, default=0), [])
        else:
            ended = trial.record.fail(reason)
    finally:
        for seed in trial.seeds:
            if not keep_members:
                population.stop_member(seed.slot)
        stop_heartbeat(state, number)
    del state.trials[number]  # only now: on an error it is still running, for the worker to retry
    return ended


def end_env(state: PopulationState, trial: RunningTrial) -> list[float]:
    """End the seed runs of a multi-env trial whose seeds have all finished this population's env, and
    free their slots; the seeds' final returns. The trial stays in ``state.trials`` for the caller to
    move on (so that an error until then still ends its runs)."""
    assert state.population is not None
    try:
        return _end_seed_runs(state.population, trial, TrialState.COMPLETE, "")
    finally:
        for seed in trial.seeds:
            state.population.stop_member(seed.slot)


def _end_seed_runs(
    population: PopulationPPO, trial: RunningTrial, outcome: TrialState, reason: str
) -> list[float]:
    """End the seed runs of a trial that ends ``outcome``: each finished or stopped member's final
    evaluation and saved agent recorded (FINISHED), or FAILED with ``reason``; their final returns."""
    returns: list[float] = []
    for seed in trial.seeds:
        member = population.members[seed.slot]
        seed.monitor.stopped_early = outcome == TrialState.PRUNED
        if outcome == TrialState.FAIL or member is None:
            seed.run.end(FAILED, reason)
            continue
        last = seed.final or seed.monitor.last_result
        assert last is not None
        agent = population.member_agent(seed.slot)
        try:
            elapsed = time.perf_counter() - trial.started
            result = finish_run(seed.run, seed.monitor, agent, seed.config, member.num_steps, last, elapsed)
        finally:
            agent.close()
        returns.append(result.mean_return)
        seed.run.end(FINISHED)
    return returns


def end_runs(trial: RunningTrial, exc: BaseException) -> None:
    """End a trial's MLflow runs (seeds first) as the exception says: KILLED for an interrupt."""
    for seed in trial.seeds:
        with contextlib.suppress(BaseException):  # one store error must not keep the others RUNNING
            seed.run.end_for(exc)
    with contextlib.suppress(BaseException):
        trial.record.abandon(exc)


def stop_heartbeat(state: PopulationState, number: int) -> None:
    """Stop the heartbeat of trial ``number`` (it has ended)."""
    heartbeat = state.heartbeats.pop(number, None)
    if heartbeat is not None:
        heartbeat.close()


def check_population(
    settings: TuneSettings, algo: str, multi_objective: bool, run_settings: RunSettings
) -> None:
    """ConfigError when population mode (or population-based training) cannot run this sweep, naming
    what to change; ``run_settings`` are a trial's (its evaluation schedule)."""
    if settings.method == "pbt":
        _check_pbt(settings, algo, run_settings)
    if not settings.population:
        return
    if algo != "ppo":
        raise ConfigError(f"tune.population trains PPO only; got algo={algo} (set tune.population=0)")
    if multi_objective:
        raise ConfigError("tune.population needs a single-objective sampler (tpe, random, cmaes, gp)")
    if settings.population < settings.n_seeds:
        raise ConfigError(
            f"tune.population ({settings.population}) must be >= tune.n_seeds ({settings.n_seeds}): "
            "a trial's seeds train side by side"
        )


def _check_pbt(settings: TuneSettings, algo: str, run_settings: RunSettings) -> None:
    """What population-based training needs beyond population mode (ConfigError naming the key)."""
    assert settings.pbt is not None
    if algo != "ppo":
        raise ConfigError(f"tune.method=pbt trains PPO only; got algo={algo} (set tune.method=search)")
    if settings.n_workers != 1:
        raise ConfigError(
            f"tune.method=pbt trains one population in one process; got tune.n_workers={settings.n_workers} "
            "(set tune.n_workers=1)"
        )
    freq = run_settings.eval_freq_steps
    if not freq or freq > settings.pbt.interval_steps:
        raise ConfigError(
            f"pbt.interval_steps ({settings.pbt.interval_steps}) must be at least env.eval.freq_steps "
            f"({freq}): members are ranked by their evaluations"
        )
