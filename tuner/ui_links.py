"""Addresses in the MLflow UI of what a command recorded, printed when the command ends.

MLflow 3's UI opens an experiment on its GenAI overview (traces, token usage) unless the address asks
for the model-training view (``workflowType=machine_learning``), which lists the runs. The UI runs
where ``make ui`` serves it (127.0.0.1:5000) for a local store, or is the tracking server itself for an
``http(s)://`` tracking URI.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from rich.console import Console

LOCAL_UI = "http://127.0.0.1:5000"
"""Where ``make ui`` serves the UI of the local store (its HOST and PORT defaults)."""


def ui_address(tracking_uri: str) -> str:
    """The UI's address for ``tracking_uri``: the server of an ``http(s)://`` URI without its user
    and password, else :data:`LOCAL_UI`."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return LOCAL_UI
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def experiment_link(tracking_uri: str, experiment_id: str) -> str:
    """The runs list of an experiment (the model-training view, not the GenAI overview)."""
    return f"{ui_address(tracking_uri)}/#/experiments/{experiment_id}?workflowType=machine_learning"


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """One run's page. Without ``workflowType``: the page shows the run the same in both views (only
    the sidebar differs), and the address of a local run then fits on an 80-column line."""
    return f"{ui_address(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def link_lines(
    tracking_uri: str, experiment_id: str, run_id: str | None = None, run_label: str = ""
) -> list[str]:
    """Console lines that name the links, each address alone on its line (a terminal can open it and
    it is never folded): the experiment's runs, then ``run_label``'s run if given."""
    served_by = " (make ui serves it)" if ui_address(tracking_uri) == LOCAL_UI else ""
    lines = [f"runs in the MLflow UI{served_by}:", f"  {experiment_link(tracking_uri, experiment_id)}"]
    if run_id is not None:
        lines += [f"{run_label or 'the run'}:", f"  {run_link(tracking_uri, experiment_id, run_id)}"]
    return lines


def print_links(
    console: Console, tracking_uri: str, experiment_id: str, run_id: str | None = None, run_label: str = ""
) -> None:
    """Print :func:`link_lines` on ``console``, each line whole (an address is never folded)."""
    for line in link_lines(tracking_uri, experiment_id, run_id, run_label):
        console.print(line, soft_wrap=True, highlight=False)
