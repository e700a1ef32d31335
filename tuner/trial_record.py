"""A trial's record: its MLflow run and its Optuna trial, opened together and ended together.

Both executors (one trial at a time in :mod:`tuner.objective`, K seeds at once in
:mod:`tuner.population`) record a trial through a :class:`TrialRecord`: the same run name, tags, params,
``overrides.txt``, seed runs, objective metrics and Optuna ``tell``, and one way to end each outcome.
A trial ends exactly once, through :meth:`~TrialRecord.complete`, :meth:`~TrialRecord.prune`,
:meth:`~TrialRecord.fail`, or, on an interrupt or an error, :meth:`~TrialRecord.abandon` (which leaves
the Optuna trial to the worker, who sends it back to the queue).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.multienv import ENV_RETURNS_ATTR, NORMALIZED_ATTR, EnvTask, aggregate_score, normalized_scores
from tuner.search import SearchSpace
from tuner.secrets import mask_secrets
from tuner.study import FAIL_REASON_ATTR, TRIAL_RUN_ATTR
from tuner.tracking import FAILED, FINISHED, RunRecorder, open_run
from tuner.train import RunSettings

log = logging.getLogger(__name__)

OVERRIDES_ATTR = "overrides"  # trial user attr: Hydra overrides that replay the trial with tuner.train
VALUES_ATTR = "config_values"  # trial user attr: the sampled values as config fields (after reparams)
SEED_RETURNS_ATTR = "seed_returns"  # trial user attr: final eval return of each tuning seed


@dataclass(frozen=True)
class TrialSetup:
    """Everything a worker needs to run trials of one study.

    Attributes:
        base_config: the resolved training config (conf/train.yaml's keys) that sampled values override.
        base_overrides: the Hydra overrides of the tune command that also apply to tuner.train.
        space: the search space.
        seeds: tuning seeds; one training run each.
        budget_steps: env steps per seed.
        tracking: ``uri``, ``experiment`` and ``artifact_dir`` of the MLflow store.
        sweep_run_id: the MLflow run the trial runs nest under.
        multi_objective: report (mean return, wall-clock seconds) instead of the return alone.
        trial_artifacts: each seed's run keeps its model.pt and learning_curve.png.
        tasks: the envs of a multi-environment study (``tune.envs``), in the order trials train them;
            empty when the study tunes on one env (``base_config``'s).
    """

    base_config: Mapping[str, Any]
    base_overrides: tuple[str, ...]
    space: SearchSpace
    seeds: tuple[int, ...]
    budget_steps: int
    tracking: Mapping[str, str]
    sweep_run_id: str | None
    multi_objective: bool
    trial_artifacts: bool = False
    tasks: tuple[EnvTask, ...] = ()


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended, for the worker's log and progress display."""

    number: int
    state: TrialState
    value: float | None
    reason: str = ""


class TrialRecord:
    """The MLflow run (``trial-N``, under the sweep run) and the Optuna state of one claimed trial.

    Open it with :meth:`open`; use it as a context manager where the trial's work is one block, so that
    an exception ends the run (KILLED for an interrupt, FAILED otherwise) and propagates.
    """

    def __init__(self, study: optuna.Study, trial: optuna.Trial, setup: TrialSetup, run: RunRecorder) -> None:
        self.study = study
        self.trial = trial
        self.setup = setup
        self.run = run

    @classmethod
    def open(
        cls,
        study: optuna.Study,
        trial: optuna.Trial,
        setup: TrialSetup,
        values: Mapping[str, Any],
        overrides: Sequence[str],
        tags: Mapping[str, Any] | None = None,
    ) -> TrialRecord:
        """Create the trial's run: its tags (plus ``tags``), the sampled ``values`` as params and the
        Hydra ``overrides`` that replay it as ``overrides.txt``; the trial's run attr points to it."""
        run = open_run(
            **setup.tracking,
            run_name=f"trial-{trial.number}",
            tags={**trial_tags(study, trial), **(tags or {})},
            parent_run_id=setup.sweep_run_id,
        )
        try:
            trial.set_user_attr(TRIAL_RUN_ATTR, run.run_id)
            run.log_params({"trial": {"number": trial.number}, "sampled": dict(values)})
            run.log_text("\n".join(overrides) + "\n", "overrides.txt")
        except BaseException as exc:
            run.end_for(exc)
            raise
        return cls(study, trial, setup, run)

    def __enter__(self) -> TrialRecord:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is not None:
            self.abandon(exc)

    # --- seeds and intermediate values -------------------------------------------------------------
    def seed_run_name(self, seed: int, env: str | None = None) -> str:
        """The name of the trial's run for ``seed`` (on ``env``, in a multi-env study), nested under the
        trial's run."""
        return f"trial-{self.trial.number}-{f'{env}-' if env else ''}seed{seed}"

    def open_seed_run(
        self, seed: int, settings: RunSettings, tags: Mapping[str, Any], env: str | None = None
    ) -> RunRecorder:
        """Create the run of one seed (on ``env``, in a multi-env study) under the trial's run, in the
        tracking store of the seed's ``settings``, with ``tags``."""
        return open_run(
            settings.tracking_uri,
            settings.experiment,
            settings.artifact_dir,
            run_name=self.seed_run_name(seed, env),
            tags=tags,
            parent_run_id=self.run.run_id,
        )

    def seed_finished(self, index: int, mean_return: float) -> None:
        """Log the final evaluation return of the trial's ``index``-th seed (``trial/seed_return``)."""
        self.run.log_metric("trial/seed_return", mean_return, index)

    def env_finished(
        self, index: int, env_returns: Mapping[str, Sequence[float]], wall_time_s: float
    ) -> TrialOutcome | None:
        """A multi-env trial's seeds have finished its ``index``-th env (``env_returns``: env → seed
        returns of the envs done). Log the env's mean return (``trial/<env>/mean_return``), report the
        objective so far at the env steps a seed has trained by then, and end the trial: COMPLETE after
        the last env, PRUNED before it when the pruner says so; None when it goes on to the next env.

        Both executors end every env here, so a trial reports at the same steps in the same order
        whether it trains alone or in a population, and the pruner compares like with like.
        """
        tasks = self.setup.tasks
        returns = env_returns[tasks[index].name]
        self.run.log_metric(f"trial/{tasks[index].name}/mean_return", sum(returns) / len(returns), 0)
        steps_done = sum(task.budget_steps for task in tasks[: index + 1])
        last = index == len(tasks) - 1
        # Optuna takes no intermediate values for several objectives; the last env is reported too.
        objective = aggregate_score(tasks, env_returns)
        stop = not self.setup.multi_objective and self.report(objective, steps_done)
        if last:
            return self.complete([], wall_time_s, env_returns)
        return self.prune(steps_done, [], env_returns) if stop else None

    def report(self, value: float, step: int) -> bool:
        """Report the running objective at ``step`` to Optuna; whether the pruner stops the trial."""
        self.trial.report(value, step)
        return self.trial.should_prune()

    # --- ends ----------------------------------------------------------------------------------------
    def complete(
        self,
        seed_returns: Sequence[float],
        wall_time_s: float,
        env_returns: Mapping[str, Sequence[float]] | None = None,
    ) -> TrialOutcome:
        """End COMPLETE: the objective (mean of ``seed_returns``; for a multi-env study, the IQM of the
        normalised ``env_returns``: env → seed returns) in MLflow and Optuna; with a multi-objective study
        the wall time in seconds is the second objective."""
        if env_returns is not None:
            self._keep_env_returns(env_returns)
            objective = aggregate_score(self.setup.tasks, env_returns)
        else:
            objective = sum(seed_returns) / len(seed_returns)
            self.trial.set_user_attr(SEED_RETURNS_ATTR, list(seed_returns))
        self.run.log_metrics({"trial/objective": objective, "trial/wall_time_s": wall_time_s}, 0)
        self.run.set_tags({"optuna_state": TrialState.COMPLETE.name})
        self.run.end(FINISHED)
        self.study.tell(self.trial, [objective, wall_time_s] if self.setup.multi_objective else objective)
        return TrialOutcome(self.trial.number, TrialState.COMPLETE, objective)

    def prune(
        self,
        step: int,
        seed_returns: Sequence[float],
        env_returns: Mapping[str, Sequence[float]] | None = None,
    ) -> TrialOutcome:
        """End PRUNED at env step ``step`` (the latest report); ``seed_returns`` are the final returns of
        the seeds that finished before (``env_returns``, of the envs that did, for a multi-env study).
        The run ends FINISHED: it ran as asked, the pruner stopped it."""
        self.run.set_tags({"optuna_state": TrialState.PRUNED.name, "pruned_step": step})
        self.run.end(FINISHED)
        if env_returns is not None:
            self._keep_env_returns(env_returns)
        else:
            self.trial.set_user_attr(SEED_RETURNS_ATTR, list(seed_returns))
        self.study.tell(self.trial, state=TrialState.PRUNED)
        return TrialOutcome(self.trial.number, TrialState.PRUNED, None)

    def _keep_env_returns(self, env_returns: Mapping[str, Sequence[float]]) -> None:
        """A multi-env trial's returns as user attrs: env → seed returns, every seed's return in env order
        (``seed_returns``) and their normalised scores."""
        self.trial.set_user_attr(ENV_RETURNS_ATTR, {env: list(r) for env, r in env_returns.items()})
        self.trial.set_user_attr(SEED_RETURNS_ATTR, [r for returns in env_returns.values() for r in returns])
        self.trial.set_user_attr(NORMALIZED_ATTR, normalized_scores(self.setup.tasks, env_returns))

    def fail(self, reason: str) -> TrialOutcome:
        """End FAIL with ``reason`` (the run's ``failure_reason``, the trial's ``fail_reason``); the
        study goes on without it."""
        log.info("trial %d failed: %s", self.trial.number, reason)  # the sweep's trial line says it
        try:
            self.run.set_tags({"optuna_state": TrialState.FAIL.name})
        finally:
            self.run.end(FAILED, reason)
        self.trial.set_user_attr(FAIL_REASON_ATTR, reason)
        self.study.tell(self.trial, state=TrialState.FAIL)
        return TrialOutcome(self.trial.number, TrialState.FAIL, None, reason)

    def abandon(self, exc: BaseException) -> None:
        """End the run as ``exc`` says (KILLED for an interrupt, FAILED otherwise), leaving the Optuna
        trial RUNNING for the worker to send back to the queue; nothing when the run has ended."""
        if not self.run.ended:
            self.run.end_for(exc)


def record_sampled(trial: optuna.Trial, values: Mapping[str, Any], overrides: Sequence[str]) -> None:
    """Keep what the trial sampled on the Optuna trial: the values as config fields and the Hydra
    overrides that replay it (masked), before anything can fail."""
    trial.set_user_attr(VALUES_ATTR, dict(values))
    trial.set_user_attr(OVERRIDES_ATTR, mask_secrets(list(overrides)))


def trial_tags(study: optuna.Study, trial: optuna.Trial) -> dict[str, Any]:
    """Tags of a trial's MLflow run: which study and trial it belongs to."""
    return {"optuna_study": study.study_name, "optuna_trial": trial.number, "kind": "trial"}
