"""Export a trial as an ordinary experiment preset, and replay any trial from its stored overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml

from tuner.provenance import Provenance
from tuner.trial_record import OVERRIDES_ATTR, SEED_RETURNS_ATTR


def preset_name(config: Mapping[str, Any]) -> str:
    """``<algo>_<env>_tuned``: the name the best trial is exported under."""
    return f"{config['algo']['name']}_{config['env']['name']}_tuned"


def preset_text(
    trial: optuna.trial.FrozenTrial,
    config: Mapping[str, Any],
    provenance: Provenance,
    seed: int,
    name: str,
    envs: Sequence[str] = (),
) -> str:
    """YAML of a ``# @package _global_`` preset that trains ``config`` (``trial``'s training config, its
    tuned values applied: :func:`tuner.objective.trial_config`) with ``seed``.

    The whole algo node is written (base values and tuned ones, schedules as ``[[from_step, value],
    …]`` lists), so the preset does not depend on the presets or overrides the study was started with.
    A config tuned on several ``envs`` is a preset of the shared hyperparameters alone: no env, no
    budget (the env picked with ``env=<name>`` brings its own). The header comments say where it comes
    from (``provenance``), its score and how to train it.
    """
    algo = dict(config["algo"])
    algo_name = algo.pop("name")
    defaults = [{"override /algo": algo_name}]
    body: dict[str, Any] = {"defaults": defaults, "seed": seed}
    if not envs:
        defaults.append({"override /env": config["env"]["name"]})
        body["total_steps"] = config["total_steps"]
    body["algo"] = algo
    if not envs and any(o.startswith(("env.", "+env.")) for o in trial.user_attrs.get(OVERRIDES_ATTR, [])):
        body["env"] = {k: v for k, v in config["env"].items() if k != "name"}
    return _header(trial, provenance, name, envs) + yaml.safe_dump(body, sort_keys=False)


def _header(trial: optuna.trial.FrozenTrial, provenance: Provenance, name: str, envs: Sequence[str]) -> str:
    """The preset's comment lines: where it comes from, its score, and how to train it."""
    value = trial.values[0] if trial.values else float("nan")
    seed_returns = trial.user_attrs.get(SEED_RETURNS_ATTR, [])
    first = f"{seed_returns[0] if seed_returns else float('nan'):.2f}"
    if envs:
        score = f"normalised IQM {value:.2f} over envs {', '.join(envs)} × seeds"
        usage = [
            "One config for all of them; pick the env:",
            f"  python -m tuner.train experiment={name} env={envs[0]}",
        ]
    else:
        score = f"mean final eval return {value:.2f} over seeds (first seed's: {first})"
        usage = ["Train it:", f"  python -m tuner.train experiment={name}"]
    lines = [f"Tuned by rltune: trial {trial.number}, {score}.", *provenance.lines(), *usage]
    return "# @package _global_\n" + "".join(f"# {line}\n" for line in lines)


def export_preset(
    trial: optuna.trial.FrozenTrial,
    config: Mapping[str, Any],
    provenance: Provenance,
    seed: int,
    directory: str | Path,
    name: str,
    envs: Sequence[str] = (),
) -> Path:
    """Write the preset of ``trial`` (tuned on ``envs``, for a multi-env study) to
    ``directory/<name>.yaml`` and return its path."""
    path = Path(directory) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # its own: two sweep commands may export at once
    tmp.write_text(preset_text(trial, config, provenance, seed, name, envs))
    tmp.replace(path)  # atomic: never a half-written preset
    return path
