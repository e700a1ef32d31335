"""Held-out validation: retrain the default and the tuned config on fresh seeds and compare them.

Tuning picks the best of many noisy trials, so its best value is biased upwards. Retraining both
configs on seeds the study never saw (``tune.validate_seeds``, disjoint from the tuning seeds) gives
an unbiased comparison: IQM and 95 % bootstrap CI of each, and whether the difference is significant.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from tuner.stats import Comparison, compare
from tuner.train import TrainResult, run_training


@dataclass(frozen=True)
class ValidationJob:
    """One training run of the validation: a config, a seed, and where to record it."""

    label: str  # "default" or "tuned"
    config: Mapping[str, Any]
    seed: int
    parent_run_id: str | None
    env: str | None = None  # the env config's name, in a multi-env study's run names


@dataclass(frozen=True)
class Validation:
    """What a held-out validation found.

    Attributes:
        comparison: tuned against default (IQMs, their difference and its CI).
        scores: label (``default``, ``tuned``) → final eval return of each seed, in seed order.
        run_ids: label → the MLflow run of each seed (each keeps its ``model.pt``), in seed order.
    """

    comparison: Comparison
    scores: dict[str, list[float]]
    run_ids: dict[str, list[str]]


def _train(job: ValidationJob) -> TrainResult:
    """Train one validation seed (in a worker process) and return its result.

    ``run_training`` sets the torch threads and denormal flushing from the config's ``torch_threads``.
    """

    config = {**job.config, "seed": job.seed, "progress": False}
    result = run_training(
        OmegaConf.create(config),
        parent_run_id=job.parent_run_id,
        run_name=f"validation-{job.label}-{f'{job.env}-' if job.env else ''}seed{job.seed}",
    )
    return result


def run_validation(
    default_config: Mapping[str, Any],
    tuned_config: Mapping[str, Any],
    seeds: Sequence[int],
    parent_run_ids: Mapping[str, str | None],
    n_workers: int,
    env: str | None = None,
) -> Validation:
    """Train both configs on every seed (``n_workers`` processes) and compare tuned against default
    (``env``: the env's name in the run names, for one env of a multi-env study)."""
    jobs = [
        ValidationJob(label, config, seed, parent_run_ids.get(label), env)
        for label, config in (("default", default_config), ("tuned", tuned_config))
        for seed in seeds
    ]
    context = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited Hydra or MLflow state
    with ProcessPoolExecutor(max_workers=max(1, n_workers), mp_context=context) as pool:
        results = list(pool.map(_train, jobs))
    scores: dict[str, list[float]] = {"default": [], "tuned": []}
    run_ids: dict[str, list[str]] = {"default": [], "tuned": []}
    for job, result in zip(jobs, results, strict=True):
        scores[job.label].append(result.mean_return)
        run_ids[job.label].append(result.run_id)
    return Validation(compare(scores["default"], scores["tuned"], seed=0), scores, run_ids)
