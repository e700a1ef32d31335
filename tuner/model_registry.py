"""Recorded agents in MLflow: a training run's config and model, and MLflow's Model Registry.

A run recorded by ``tuner.train`` (``make train``, a sweep's validation runs, a benchmark cell) holds its
resolved config as ``config.yaml`` and its agent as ``model.pt``. :func:`fetch_run` downloads both;
:func:`fetch_model` does so for a registered version (``models:/<name>/<version>``), whose source is the
run it was registered from; :func:`register_model` registers a run's ``model.pt`` as a new version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from algorithms import ConfigError
from tuner.secrets import mask_secrets
from tuner.tracking import tag_values
from tuner.train import CONFIG_ARTIFACT, MODEL_ARTIFACT

MODEL_URI = re.compile(r"^models:/(?P<name>[^/]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class RecordedAgent:
    """A recorded agent, downloaded.

    Attributes:
        run_id: the MLflow run that holds the model.
        run_name: that run's name.
        experiment: the name of its experiment.
        config: the run's resolved training config (its ``config.yaml``).
        model_path: the downloaded ``model.pt``.
        model_uri: ``models:/<name>/<version>`` when it was loaded from the registry, else None.
    """

    run_id: str
    run_name: str
    experiment: str
    config: dict[str, Any]
    model_path: Path
    model_uri: str | None = None


def fetch_run(uri: str, run_id: str, destination: Path) -> RecordedAgent:
    """Download run ``run_id``'s config and model into ``destination``; ConfigError when the run does
    not exist or has no model."""
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"run={run_id}: no such MLflow run in {mask_secrets(uri)} (tracking.uri)") from None
    names = {a.path for a in client.list_artifacts(run_id)}
    if MODEL_ARTIFACT not in names or CONFIG_ARTIFACT not in names:
        kind = run.data.tags.get("kind", "training")
        raise ConfigError(
            f"run={run_id} ({run.info.run_name}, a {kind} run) has no {MODEL_ARTIFACT}: pick a run made by "
            "make train or a sweep's validation seed run, trained with tracking.log_models=true"
        )
    destination.mkdir(parents=True, exist_ok=True)
    model = Path(client.download_artifacts(run_id, MODEL_ARTIFACT, str(destination)))
    config = yaml.safe_load(
        Path(client.download_artifacts(run_id, CONFIG_ARTIFACT, str(destination))).read_text()
    )
    experiment = client.get_experiment(run.info.experiment_id).name
    return RecordedAgent(run_id, run.info.run_name, experiment, config, model)


def fetch_model(uri: str, model_uri: str, destination: Path) -> RecordedAgent:
    """Download the registered version ``models:/<name>/<version>`` (its run's config and model)."""
    match = MODEL_URI.match(model_uri)
    if match is None:
        raise ConfigError(f"model must be models:/<name>/<version>, got {model_uri!r}")
    client = MlflowClient(tracking_uri=uri)
    try:
        version = client.get_model_version(match["name"], match["version"])
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise ConfigError(
            f"model={model_uri}: no such registered model version in {mask_secrets(uri)}; "
            f"registered models: {', '.join(known) or 'none'}"
        ) from None
    if not version.run_id:
        raise ConfigError(f"model={model_uri} was not registered from a run; rltune loads run models only")
    recorded = fetch_run(uri, version.run_id, destination)
    return RecordedAgent(**{**recorded.__dict__, "model_uri": model_uri})


def register_model(uri: str, name: str, run_id: str, description: str, tags: Mapping[str, Any]) -> str:
    """Register run ``run_id``'s ``model.pt`` as a new version of the registered model ``name`` (created
    on first use), with ``description`` and ``tags`` on the version; returns ``models:/<name>/<version>``."""
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"rltune agents registered as {name!r}")
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/{MODEL_ARTIFACT}",
        run_id=run_id,
        tags=tag_values(tags),
        description=mask_secrets(description),
    )
    return f"models:/{name}/{version.version}"
