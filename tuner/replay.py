"""Replay a trial: ``python -m tuner.replay study=<name> trial=<number> [seed=<seed>]``.

Trains the trial's config again from the Hydra overrides stored on it, as ``python -m tuner.train`` with
those overrides would, and records it as a new MLflow run tagged with the trial it replays. The study is
read from the same storage settings as ``tuner.tune`` takes (``storage=local``, ``storage=postgres`` with
``RLTUNE_STORAGE``, or ``storage.url=<url>``); it is only read, so a storage or study that does not
exist is an error and nothing is created. The run is recorded where this command's ``tracking``
settings say, not where the trial's were (a stored URL has its password masked).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from algorithms import ConfigError
from tuner.app import hydra_app
from tuner.compose import compose_config, override_key
from tuner.secrets import mask_secrets
from tuner.stores import StoreMissing
from tuner.study import open_storage
from tuner.train import TrainResult, run_training
from tuner.trial_record import OVERRIDES_ATTR, SEED_RETURNS_ATTR

STORAGE_KEY = "storage.url"


def trial_overrides(storage_url: str, study_name: str, number: int) -> tuple[list[str], list[float]]:
    """The stored overrides of trial ``number`` and its recorded per-seed returns (the study is only
    read; ConfigError naming what is missing)."""
    storage = open_storage(storage_url, create=False, key=STORAGE_KEY)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise StoreMissing(
            f"no study {study_name!r} in {mask_secrets(storage_url)} ({STORAGE_KEY})"
        ) from None
    finally:
        storage.remove_session()
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise ConfigError(f"study {study_name!r} has no trial {number}; it has 0…{max(trials, default=-1)}")
    attrs = trials[number].user_attrs
    if OVERRIDES_ATTR not in attrs:
        raise ConfigError(f"trial {number} of {study_name!r} has no stored overrides (it never started)")
    return list(attrs[OVERRIDES_ATTR]), list(attrs.get(SEED_RETURNS_ATTR, []))


def replay_overrides(stored: Sequence[str], tracking: Sequence[str], seed: int | None) -> list[str]:
    """The trial's stored overrides with this command's ``tracking`` overrides in place of the stored
    ones, and ``seed`` (if given) in place of the trial's first tuning seed."""
    kept = [
        o
        for o in stored
        if override_key(o) != "tracking" and not (seed is not None and o.startswith("seed="))
    ]
    return [*kept, *tracking, *([] if seed is None else [f"seed={seed}"])]


def replay(cfg: DictConfig) -> tuple[TrainResult, list[float]]:
    """Train the trial named by ``cfg`` again; returns the result and the trial's recorded returns."""
    settings = _settings(cfg)
    stored, recorded = trial_overrides(settings["storage"], settings["study"], settings["trial"])
    overrides = replay_overrides(stored, _tracking_overrides(), settings["seed"])
    train_cfg = compose_config([*overrides, f"paths.root_dir={cfg.paths.root_dir}"])
    result = run_training(train_cfg, run_name=f"replay-{settings['study']}-trial{settings['trial']}")
    return result, recorded


def _settings(cfg: DictConfig) -> dict[str, Any]:
    """``study``, ``trial``, ``seed`` and the storage URL, type-checked; ConfigError naming the key.

    Only these keys are resolved: ``tracking``'s experiment name comes from the replayed config.
    """
    study, trial, seed, url = cfg.study, cfg.trial, cfg.seed, cfg.storage.url
    if not isinstance(study, str) or not study:
        raise ConfigError(f"study must be a study name, got {study!r}")
    if isinstance(trial, bool) or not isinstance(trial, int) or trial < 0:
        raise ConfigError(f"trial must be a trial number >= 0, got {trial!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"seed must be an integer >= 0 or null, got {seed!r}")
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{STORAGE_KEY} must be an RDB URL, got {mask_secrets(url)!r}")
    return {"study": study, "trial": trial, "seed": seed, "storage": url}


def _tracking_overrides() -> list[str]:
    """This command's own tracking choice and ``tracking.*`` overrides, for the replayed run."""
    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    choice = hydra_cfg.runtime.choices.get("tracking")
    own = [o for o in hydra_cfg.overrides.task if override_key(o) == "tracking" and "=" in o]
    return [*([f"tracking={choice}"] if choice else []), *[o for o in own if not o.startswith("tracking=")]]


@hydra_app("replay")
def main(cfg: DictConfig) -> None:
    """``python -m tuner.replay``; exit codes as in :mod:`tuner.app`."""
    result, recorded = replay(cfg)
    print(f"replayed trial {cfg.trial} of {cfg.study}: final eval return {result.mean_return:.2f}")
    if recorded:
        print(f"recorded per-seed returns of the trial: {[round(r, 2) for r in recorded]}")


if __name__ == "__main__":
    main()
