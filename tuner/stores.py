"""Checking a store before anything is written to it, and locking its first use.

rltune writes to two stores: the Optuna storage (``tune.storage``) and the MLflow tracking store
(``tracking.uri``). A command checks both before it creates anything in either, so that a bad URL, a
server that is down, a corrupted SQLite file or a runs directory it cannot write ends the command in a
few seconds with one line naming the store, and leaves nothing behind. Read-only commands (replay,
report, a worker joining a study) open a store only if it exists, and never create one.

Two commands that use a fresh SQLite file at the same moment would both create its tables, and one
would fail; :func:`sqlite_lock` serialises that, like the PostgreSQL advisory lock in
:mod:`tuner.postgres`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy
from filelock import FileLock

from algorithms import ConfigError
from tuner.secrets import mask_secrets

CONNECT_TIMEOUT_S = 5  # a store that does not answer within this is reported as unreachable


class StoreMissing(ConfigError):  # noqa: N818 (a ConfigError: what is wrong, not that it is an error)
    """The store (or the study in it) does not exist yet; a read-only command reports it, a joining
    worker waits for it."""


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for another backend or ``:memory:``."""
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def check_sqlite(path: Path, what: str, key: str, create: bool) -> None:
    """Check the SQLite file of a store: a readable database, and writable (or creatable) if ``create``.
    Where the file may be written, a transaction left open by a killed writer is rolled back here.

    Raises StoreMissing when the file does not exist and ``create`` is False, ConfigError naming
    ``what`` (e.g. "MLflow tracking store"), the file and the config ``key`` otherwise.
    """
    if path.exists():
        # Read-write where allowed: a writer killed mid-transaction leaves a hot rollback journal, which
        # only a read-write connection may roll back; a read-only one fails with "readonly database".
        file_writable = os.access(path, os.W_OK)
        mode = "rw" if file_writable and os.access(path.parent, os.W_OK | os.X_OK) else "ro"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=60)) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot use {what} {path} ({key}): {exc}") from exc
        if create and not file_writable:
            raise ConfigError(f"cannot write {what} {path} ({key}): permission denied")
        return
    if not create:
        raise StoreMissing(f"no {what} at {path} ({key}): it does not exist yet")
    check_writable_dir(path.parent, what, key)


def check_writable_dir(directory: Path, what: str, key: str) -> None:
    """ConfigError unless ``directory`` exists and is writable, or can be created (its nearest existing
    ancestor is a writable directory)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot create {what} in {directory} ({key}): {existing} is not a writable directory"
        )


@contextlib.contextmanager
def sqlite_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of the SQLite database ``path`` (the file ``<database>.lock`` beside it)
    for the block.

    It serialises what SQLite's own locking does not: the first use of a fresh database, which creates
    its tables (two processes doing that at once collide), claims of trials, and a study's budget
    top-up. None of these holds it while taking it again, which would wait forever.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        yield


def lock_if_sqlite(url: str) -> contextlib.AbstractContextManager[None]:
    """:func:`sqlite_lock` of the database of a ``sqlite:///`` URL; nothing for any other backend."""
    path = sqlite_path(url)
    return contextlib.nullcontext() if path is None else sqlite_lock(path)


def check_server(url: str, what: str, key: str, shown: str | None = None) -> None:
    """ConfigError unless the database server of an SQLAlchemy ``url`` accepts a connection within
    :data:`CONNECT_TIMEOUT_S` (StoreMissing when the server says the database does not exist). The
    message names ``shown`` (default ``url``), password masked."""
    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = mask_secrets(str(getattr(exc, "orig", exc)).strip().splitlines()[0])
        error = StoreMissing if "does not exist" in reason else ConfigError
        raise error(f"cannot reach {what} {mask_secrets(shown or url)} ({key}): {reason}") from exc
    except Exception as exc:  # a driver that is not installed, a malformed URL
        raise ConfigError(
            f"cannot use {what} {mask_secrets(shown or url)} ({key}): {mask_secrets(str(exc))}"
        ) from exc
    finally:
        engine.dispose()


def check_http(url: str, what: str, key: str) -> None:
    """ConfigError unless the server at ``url`` answers its ``/health`` endpoint (MLflow's) within
    :data:`CONNECT_TIMEOUT_S`."""
    health = url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=CONNECT_TIMEOUT_S) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code} from {mask_secrets(health)}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise ConfigError(f"cannot reach {what} {mask_secrets(url)} ({key}): {mask_secrets(reason)}")
