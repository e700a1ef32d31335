"""PostgreSQL helpers for the scale-out set-up: create a study's or the MLflow server's database on first use.

    python -m tuner.postgres MLFLOW_BACKEND_STORE_URI     # create the database named by that variable's URL

The URL is read from the named environment variable rather than the command line, so a password in it is
neither echoed by make nor visible in the process list.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import zlib
from collections.abc import Iterator

import sqlalchemy

from algorithms import ConfigError
from tuner.secrets import mask_secrets
from tuner.stores import CONNECT_TIMEOUT_S

log = logging.getLogger(__name__)

SCHEMA_LOCK_KEY = 0x72_6C_74_75_6E_65  # "rltune": the advisory lock id held while a schema is created


def ensure_database(url: str) -> None:
    """Create the database named in a PostgreSQL ``url`` if the server does not have it yet.

    Connects to the server's ``postgres`` maintenance database with the same credentials; a role that may
    not create databases gets a ConfigError saying to create it (``createdb``). Unreachable servers raise
    ConfigError too, with any password masked.
    """
    name = sqlalchemy.engine.make_url(url).database
    engine = sqlalchemy.create_engine(
        maintenance_url(url),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if not exists:
                log.info("creating PostgreSQL database %r", name)
                quoted = connection.dialect.identifier_preparer.quote(name)
                connection.execute(sqlalchemy.text(f"CREATE DATABASE {quoted}"))
    except sqlalchemy.exc.ProgrammingError as exc:
        if "already exists" in str(exc):  # another worker created it meanwhile
            return
        raise ConfigError(
            f"PostgreSQL database {name!r} does not exist and cannot be created with {mask_secrets(url)}: "
            f"{mask_secrets(str(exc.orig).strip())}; create it with `createdb {name}`"
        ) from exc
    except sqlalchemy.exc.IntegrityError as exc:
        # Two workers issued CREATE DATABASE at the same moment: PostgreSQL rejects the second with a
        # unique violation on the catalog rather than "already exists". The database exists either way.
        if "pg_database_datname_index" in str(exc):
            return
        raise ConfigError(
            f"cannot create PostgreSQL database {name!r}: {mask_secrets(str(exc.orig).strip())}"
        ) from exc
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise _unreachable(url, exc) from exc
    finally:
        engine.dispose()


def maintenance_url(url: str) -> str:
    """``url`` with the server's ``postgres`` maintenance database in place of its own (to check the
    server, or create the database, before the database exists). ConfigError if ``url`` names none."""
    target = sqlalchemy.engine.make_url(url)
    if not target.database:
        raise ConfigError(f"the PostgreSQL URL {mask_secrets(url)} names no database (…/dbname)")
    return target.set(database="postgres").render_as_string(hide_password=False)


def _unreachable(url: str, exc: Exception) -> ConfigError:
    """The error for a server that refused ``url``, its first line and any password masked."""
    reason = mask_secrets(str(getattr(exc, "orig", exc)).strip().splitlines()[0])
    return ConfigError(f"cannot reach PostgreSQL at {mask_secrets(url)}: {reason}")


def schema_lock(url: str) -> contextlib.AbstractContextManager[None]:
    """Hold the advisory lock of schema creation on the database of ``url`` for the block.

    Opening an Optuna RDB storage creates its tables when they are missing. Two workers that open a fresh
    database at the same moment both try, and PostgreSQL rejects one of them with a unique violation
    (``pg_type_typname_nsp_index``); taking this lock around the open makes the second wait and then
    find the tables.
    """
    return advisory_lock(url, SCHEMA_LOCK_KEY)


def study_lock_key(study_name: str) -> int:
    """The advisory lock id of one study's sweep bookkeeping (budget top-up, sweep run)."""
    return zlib.crc32(f"rltune-study:{study_name}".encode())


@contextlib.contextmanager
def advisory_lock(url: str, key: int) -> Iterator[None]:
    """Hold PostgreSQL's advisory lock ``key`` on the database of ``url`` for the block.

    The lock is per connection, so it also goes when a killed process's connection does.
    """
    # NullPool: closing the connection really closes it, which releases the lock even if the block fails.
    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )
    try:
        connection = engine.connect()
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
    except sqlalchemy.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise _unreachable(url, exc) from exc
    try:
        yield
    finally:
        connection.close()
        engine.dispose()


def main(argv: list[str]) -> int:
    """Create the database of the URL in environment variable ``argv[0]``; exit 2 with a message if not."""
    if len(argv) != 1 or not os.environ.get(argv[0]):
        print(
            "usage: python -m tuner.postgres ENV_VAR   (ENV_VAR holds a postgresql:// URL)", file=sys.stderr
        )
        return 2
    url = os.environ[argv[0]]
    if not url.startswith("postgresql"):
        return 0  # another backend (e.g. sqlite): nothing to create
    try:
        ensure_database(url)
    except ConfigError as exc:
        print(mask_secrets(f"error: {exc}"), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
