"""Where a tuned config comes from: the sweep commands that ran its study, how the study searched, what it
counted, and the source commit — what an exported preset's header states so that anyone can re-run the
search."""

from __future__ import annotations

import datetime as dt
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna

from tuner.secrets import mask_secrets
from tuner.study import SWEEP_RUN_ATTR, BudgetStatus, TuneSettings, budget_status

COMMANDS_ATTR = "commands"  # study user attr: every distinct sweep command that ran it, in order
TUNE_COMMAND = "python -m tuner.tune"
REPO_DIR = Path(__file__).resolve().parent.parent


def record_command(study: optuna.Study, overrides: Sequence[str]) -> None:
    """Append the sweep command (``python -m tuner.tune`` and its Hydra overrides, secrets masked,
    shell-quoted) to the study's ``commands``, unless it is the one recorded last (a resumed sweep)."""
    command = " ".join([TUNE_COMMAND, *(shlex.quote(o) for o in mask_secrets(list(overrides)))])
    commands = list(study.user_attrs.get(COMMANDS_ATTR, []))
    if not commands or commands[-1] != command:
        study.set_user_attr(COMMANDS_ATTR, [*commands, command])


def source_commit(directory: Path = REPO_DIR) -> str:
    """The git commit the code runs from (``<sha>+dirty`` with uncommitted changes to tracked files), or
    ``unknown`` outside a git checkout."""
    try:
        sha = _git(directory, "rev-parse", "HEAD")
        dirty = _git(directory, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def _git(directory: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=directory, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


@dataclass(frozen=True)
class Provenance:
    """What a tuned preset's header states.

    Attributes:
        study_name: the Optuna study.
        commands: the sweep commands that ran it (a resumed or extended study has several).
        method: how trials were chosen and run, in words (sampler, pruner, population or PBT).
        status: the study's trials counted by state.
        seeds: tuning seeds of every trial.
        budget: env steps of each training run (per env for a multi-env study).
        experiment: the MLflow experiment holding the sweep run.
        sweep_run_id: the sweep's MLflow run.
        commit: the source commit (:func:`source_commit`).
        date: the day of the export (ISO 8601).
    """

    study_name: str
    commands: tuple[str, ...]
    method: str
    status: BudgetStatus
    seeds: tuple[int, ...]
    budget: str
    experiment: str
    sweep_run_id: str
    commit: str
    date: str

    def lines(self) -> list[str]:
        """The header's comment lines (without ``# ``)."""
        runs = self.commands or (f"{TUNE_COMMAND} (not recorded: the study predates command records)",)
        status = self.status
        return [
            f"Study {self.study_name!r}, MLflow experiment {self.experiment!r}, "
            f"sweep run {self.sweep_run_id}.",
            f"Method: {self.method}.",
            f"Trials: {status.complete} complete, {status.pruned} pruned, {status.failed} failed; "
            f"seeds {list(self.seeds)}; {self.budget} env steps per run.",
            f"Code: commit {self.commit}, exported {self.date}. Re-run the search with:",
            *(f"  {command}" for command in runs),
        ]


def describe_method(settings: TuneSettings, study: optuna.Study) -> str:
    """How the study chose and ran its trials, e.g. ``TPESampler, MedianPruner, population mode (8
    slots) per worker``."""
    if settings.method == "pbt":
        how = f"population-based training ({settings.population} members)"
    else:
        slots = (
            f"population mode ({settings.population} slots)" if settings.population else "one trial at a time"
        )
        how = f"{type(study.sampler).__name__}, {type(study.pruner).__name__}, {slots} per worker"
    envs = f" on envs {', '.join(settings.envs)}" if settings.envs else ""
    return f"{how}{envs}"


def study_provenance(
    settings: TuneSettings, study: optuna.Study, experiment: str, budgets: Sequence[int]
) -> Provenance:
    """The provenance of ``study``'s best trial as exported now (``budgets``: each env's steps)."""
    budget = " / ".join(str(b) for b in budgets) if budgets else str(settings.budget_steps)
    return Provenance(
        study_name=study.study_name,
        commands=tuple(study.user_attrs.get(COMMANDS_ATTR, ())),
        method=describe_method(settings, study),
        status=budget_status(study),
        seeds=settings.seeds,
        budget=budget,
        experiment=experiment,
        sweep_run_id=str(study.user_attrs.get(SWEEP_RUN_ATTR, "")),
        commit=source_commit(),
        date=dt.date.today().isoformat(),
    )
