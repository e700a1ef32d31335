"""What a tuned preset's header is built from: the recorded sweep commands and the source commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna

from tuner.provenance import COMMANDS_ATTR, record_command, source_commit


def test_a_resumed_sweep_adds_its_command_once_and_secrets_are_masked() -> None:
    study = optuna.create_study()
    storage = "tune.storage=postgresql://rl:hunter2@db:5432/optuna"
    record_command(study, ["algo=ppo", storage, "tune.n_trials=8"])
    record_command(study, ["algo=ppo", storage, "tune.n_trials=8"])  # the same command resumed
    record_command(study, ["algo=ppo", storage, "tune.n_trials=16", "~search.params.n_steps"])
    commands = study.user_attrs[COMMANDS_ATTR]
    assert commands == [
        "python -m tuner.tune algo=ppo 'tune.storage=postgresql://rl:***@db:5432/optuna' tune.n_trials=8",
        "python -m tuner.tune algo=ppo 'tune.storage=postgresql://rl:***@db:5432/optuna' tune.n_trials=16 "
        "'~search.params.n_steps'",  # quoted as a shell needs it
    ]
    assert not any("hunter2" in c for c in commands)


def git(directory: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=directory, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def test_source_commit_names_the_head_and_marks_uncommitted_changes(tmp_path: Path) -> None:
    assert source_commit(tmp_path) == "unknown"  # not a git checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "a")
    head = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "notes.txt").write_text("untracked files do not change the code\n")
    assert source_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == f"{head}+dirty"
