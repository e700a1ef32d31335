"""Replay a trial: ``python -m tuner.replay study=<name> trial=<number> [seed=<seed>]``.

Trains the trial's config again from the Hydra overrides stored on the trial, as ``python -m tuner.train``
with those overrides would, and records it as a new MLflow run tagged with the trial it replays.
"""

from __future__ import annotations

import sys

import hydra
import optuna
from omegaconf import DictConfig

from algorithms import ConfigError, NonFiniteLossError, UnsupportedSpaceError
from tuner.compose import CONF_DIR, compose_config
from tuner.objective import OVERRIDES_ATTR, SEED_RETURNS_ATTR
from tuner.secrets import mask_secrets
from tuner.train import TrainResult, run_training

EXIT_CONFIG_ERROR = 2


def trial_overrides(storage: str, study_name: str, number: int) -> tuple[list[str], list[float]]:
    """The stored overrides of trial ``number`` and its recorded per-seed returns."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise ConfigError(f"no study {study_name!r} in {mask_secrets(storage)}") from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise ConfigError(f"study {study_name!r} has no trial {number}; it has 0…{max(trials, default=-1)}")
    attrs = trials[number].user_attrs
    if OVERRIDES_ATTR not in attrs:
        raise ConfigError(f"trial {number} of {study_name!r} has no stored overrides (it never started)")
    return list(attrs[OVERRIDES_ATTR]), list(attrs.get(SEED_RETURNS_ATTR, []))


def replay(cfg: DictConfig) -> tuple[TrainResult, list[float]]:
    """Train the trial named by ``cfg`` again; returns the result and the trial's recorded returns.

    The stored overrides carry the trial's first tuning seed; ``seed=…`` replaces it.
    """
    overrides, recorded = trial_overrides(str(cfg.storage), str(cfg.study), int(cfg.trial))
    if cfg.seed is not None:
        overrides = [o for o in overrides if not o.startswith("seed=")] + [f"seed={int(cfg.seed)}"]
    train_cfg = compose_config([*overrides, f"paths.root_dir={cfg.paths.root_dir}"])
    result = run_training(train_cfg, run_name=f"replay-{cfg.study}-trial{cfg.trial}")
    return result, recorded


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="replay")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    try:
        result, recorded = replay(cfg)
    except (ConfigError, UnsupportedSpaceError) as exc:
        print(mask_secrets(f"error: {exc}"), file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    except NonFiniteLossError as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"replayed trial {cfg.trial} of {cfg.study}: final eval return {result.mean_return:.2f}")
    if recorded:
        print(f"recorded per-seed returns of the trial: {[round(r, 2) for r in recorded]}")


if __name__ == "__main__":
    main()
