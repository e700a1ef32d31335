"""Helpers shared by the test modules: running rltune's commands, scanning what they left, faults."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import optuna
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def command(
    module: str, *overrides: str, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> <overrides>`` from the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=ROOT,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def commands_two_at_a_time(
    jobs: Mapping[str, tuple[str, Sequence[str]]], dirs: Mapping[str, Path]
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run each ``name -> (module, overrides)`` with ``paths.runs_dir=dirs[name]``, two at a time (one
    per core); their results by name."""

    def one(name: str) -> subprocess.CompletedProcess[str]:
        module, overrides = jobs[name]
        return command(module, f"paths.runs_dir={dirs[name]}", *overrides)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(jobs, pool.map(one, jobs), strict=True))


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: …`` line a command printed on stderr (asserting it printed only that)."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def files_under(directory: Path) -> list[Path]:
    """Every regular file below ``directory``."""
    return sorted(p for p in directory.rglob("*") if p.is_file())


def files_containing(directory: Path, secret: str) -> list[Path]:
    """The files below ``directory`` whose bytes contain ``secret`` (databases and logs included)."""
    needle = secret.encode()
    return [p for p in files_under(directory) if needle in p.read_bytes()]


def mlflow_values(uri: str) -> list[str]:
    """Every param and tag value of every run in every experiment of the tracking store ``uri``."""
    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    values: list[str] = []
    for run in client.search_runs(ids, max_results=5000) if ids else []:
        values += [*run.data.params.values(), *run.data.tags.values(), run.info.run_name or ""]
    return values


def optuna_values(storage: str) -> list[str]:
    """The user attributes of every study, and the user and system attributes of every trial, in the
    Optuna ``storage``, as text."""
    values: list[str] = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        values.append(repr(study.user_attrs))
        values += [repr((t.user_attrs, t.system_attrs)) for t in study.get_trials(deepcopy=False)]
    return values


@contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """``path`` as an existing directory this process cannot create anything in, for the block.

    As root, permissions do not stop writes, so the directory is made immutable (``chattr +i``); as
    another user it loses its write bits. Fails the test if the directory can still be written.
    """
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        undo = ["chattr", "-i", str(path)]
    else:
        path.chmod(0o555)
        undo = ["chmod", "755", str(path)]
    try:
        probe = path / "probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            raise AssertionError(f"{path} is still writable; this test needs a directory it cannot write")
        yield path
    finally:
        subprocess.run(undo, check=True)


def child_pids(pid: int) -> list[int]:
    """The process ids of ``pid``'s direct children (Linux /proc)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        children += [int(p) for p in text.split()]
    return children


def wait_for(condition: object, timeout: float, what: str, poll: float = 0.2) -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def containing(texts: Sequence[str], secret: str) -> list[str]:
    """The texts among ``texts`` that contain ``secret`` (an empty list when none does)."""
    return [t for t in texts if secret in t]
