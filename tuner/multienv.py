"""One config tuned on several environments: the envs of ``tune.envs``, their budgets and the objective.

With ``tune.envs=[cartpole,acrobot,lunarlander]`` a trial trains its config on every env × tuning seed
and scores the IQM of the returns normalised per env, ``(return − random_score) / (reference −
random_score)``, with each env config's ``random_score`` and ``reference.<algo>.score`` (0: a random
policy, 1: the published reference). Each env trains for ``tune.budget_steps.<env>`` when
``tune.budget_steps`` is a mapping that names it, for ``tune.budget_steps`` when it is a number, and for
its config's ``budget_steps`` otherwise.

Every env's training config is composed as the sweep's own, with ``env=<name>``: the command's other
overrides (``algo.*``, ``env.eval.*``, ``env.backend``, …) apply to every env; all runs record into the
sweep's MLflow experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from algorithms import ConfigError
from tuner.compose import compose_config, known_envs, override_key
from tuner.curves import normalize
from tuner.stats import iqm
from tuner.train import resolve_config

ENV_RETURNS_ATTR = "env_returns"  # trial user attr: env → final eval return of each tuning seed
NORMALIZED_ATTR = "normalized_scores"  # trial user attr: every env × seed's normalised return, env order


@dataclass(frozen=True)
class EnvTask:
    """One environment of a multi-environment study.

    Attributes:
        name: the env config's name (``conf/env/<name>.yaml``).
        env: the resolved ``env`` node its runs train on.
        budget_steps: env steps of each of its training runs.
        random_score: mean return of a uniformly random policy (normalised score 0).
        reference_score: the published score of the tuned algorithm (normalised score 1).
    """

    name: str
    env: Mapping[str, Any]
    budget_steps: int
    random_score: float
    reference_score: float

    def normalize(self, returns: Sequence[float]) -> list[float]:
        """``returns`` on this env's scale: 0 for a random policy, 1 at the reference score."""
        return normalize(returns, self.random_score, self.reference_score).tolist()


def env_names(value: Any) -> tuple[str, ...]:
    """``tune.envs``: None (one env, the env group's), or distinct env config names; ConfigError otherwise."""
    if value is None:
        return ()
    known = known_envs()
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigError(
            f"tune.envs must be null or a non-empty list of env configs ({', '.join(known)}); got {value!r}"
        )
    for name in value:
        if name not in known:
            raise ConfigError(f"tune.envs: unknown env {name!r}; choose from {', '.join(known)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"tune.envs names an env twice: {list(value)}")
    return tuple(str(name) for name in value)


def env_budgets(value: Any, envs: Sequence[str]) -> dict[str, int]:
    """The budgets ``tune.budget_steps`` sets for ``envs``: every env for a number, the named ones for a
    mapping, none for null (each env then trains for its config's ``budget_steps``)."""
    if value is None:
        return {}
    if isinstance(value, bool) or not isinstance(value, int | Mapping):
        raise ConfigError(
            f"tune.budget_steps must be an integer, a mapping env -> steps or null with tune.envs; got "
            f"{value!r} (quote a mapping on a shell command line: 'tune.budget_steps={{{envs[0]}:50000}}')"
        )
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(envs))
        if unknown:
            raise ConfigError(
                f"tune.budget_steps names envs that tune.envs does not: {unknown}; tune.envs: {list(envs)}"
            )
        budgets = dict(value)
    else:
        budgets = dict.fromkeys(envs, value)
    for name, steps in budgets.items():
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ConfigError(f"tune.budget_steps.{name} must be an integer >= 1, got {steps!r}")
    return budgets


def load_tasks(
    envs: Sequence[str], budgets: Mapping[str, int], algo: str, overrides: Sequence[str], root_dir: str
) -> tuple[EnvTask, ...]:
    """Compose each env of ``envs`` as the sweep (``overrides``: the tune command's) with ``env=<name>``;
    ConfigError naming the env and the key when its config lacks a random or reference score."""
    kept = [o for o in overrides if not (override_key(o) == "env" and "." not in o.split("=", 1)[0])]
    tasks = []
    for name in envs:
        composed = compose_config([*kept, f"env={name}", f"paths.root_dir={root_dir}"], config_name="tune")
        env = resolve_config(composed)["env"]
        random_score, reference = (
            env.get("random_score"),
            ((env.get("reference") or {}).get(algo) or {}).get("score"),
        )
        for key, score in (("random_score", random_score), (f"reference.{algo}.score", reference)):
            if not isinstance(score, int | float) or isinstance(score, bool):
                raise ConfigError(
                    f"tune.envs: env {name!r} has no {key} (conf/env/{name}.yaml: {key}={score!r}), which "
                    f"normalises its returns; add it, or leave {name} out of tune.envs"
                )
        if reference == random_score:
            raise ConfigError(
                f"tune.envs: env {name!r} has reference.{algo}.score equal to its random_score ({reference})"
            )
        budget = budgets.get(name, env.get("budget_steps"))
        tasks.append(EnvTask(name, env, int(budget), float(random_score), float(reference)))
    return tuple(tasks)


def normalized_scores(tasks: Sequence[EnvTask], returns_by_env: Mapping[str, Sequence[float]]) -> list[float]:
    """Every env × seed return of ``returns_by_env`` normalised on its env's scale, in the order of
    ``tasks`` (envs that ``returns_by_env`` lacks are left out: a trial reports after each env)."""
    return [
        s for task in tasks if task.name in returns_by_env for s in task.normalize(returns_by_env[task.name])
    ]


def aggregate_score(tasks: Sequence[EnvTask], returns_by_env: Mapping[str, Sequence[float]]) -> float:
    """The objective of a multi-env trial: the IQM of its normalised env × seed returns."""
    return iqm(np.asarray(normalized_scores(tasks, returns_by_env)))
