"""Isolated logbook databases for tests and benchmarks, on real servers.

:func:`isolated_database` yields a SQLAlchemy URL of a database nobody else
uses: a SQLite file in a temporary directory, a freshly created PostgreSQL
schema (selected through ``search_path`` in the URL), or a fresh MySQL /
MariaDB database; each is dropped afterwards. Server addresses come from
``JOBBOARD_TEST_POSTGRES_URL`` and ``JOBBOARD_TEST_MYSQL_URL`` (defaults:
the local servers with trust auth, database ``test``).

Fails with :class:`DatabaseUnavailable` (saying which server and why) when
a server cannot be reached; :func:`skip_or_fail` is the tests' answer to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import NoReturn

BACKENDS = ("sqlite", "postgresql", "mysql")
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
CONNECT_TIMEOUT = 3


class DatabaseUnavailable(RuntimeError):
    """The database server for a backend cannot be reached or used."""


def skip_or_fail(exc: DatabaseUnavailable, backend: str = "postgresql") -> NoReturn:
    """A test's answer to a missing server: skip, except PostgreSQL under
    ``CI=true``, which CI installs, so its absence fails the test."""
    import pytest

    if backend == "postgresql" and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {exc}")
    pytest.skip(str(exc))


def postgres_base_url() -> str:
    return os.environ.get("JOBBOARD_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def mysql_base_url() -> str:
    return os.environ.get("JOBBOARD_TEST_MYSQL_URL", DEFAULT_MYSQL_URL)


def _admin_engine(url: str, backend: str):  # -> sqlalchemy.Engine
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    args = {"connect_timeout": CONNECT_TIMEOUT}
    try:
        return create_engine(url, poolclass=NullPool, connect_args=args,
                             isolation_level="AUTOCOMMIT")
    except ImportError as exc:
        raise DatabaseUnavailable(f"{backend} driver not installed: {exc}") from exc


def _execute(engine, statement: str, backend: str) -> None:
    from sqlalchemy import exc as sa_exc, text

    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    except sa_exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise DatabaseUnavailable(f"{backend} at {engine.url!r} unusable: {reason}") from exc


@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="jobboard-logbook-")
    try:
        yield f"sqlite:///{directory}/logbook.db"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def postgresql_database() -> Iterator[str]:
    base = postgres_base_url()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = _admin_engine(base, "postgresql")
    try:
        _execute(admin, f'CREATE SCHEMA "{schema}"', "postgresql")
        sep = "&" if "?" in base else "?"
        try:
            yield f"{base}{sep}options=-csearch_path%3D{schema}"
        finally:
            with contextlib.suppress(DatabaseUnavailable):
                _execute(admin, f'DROP SCHEMA "{schema}" CASCADE', "postgresql")
    finally:
        admin.dispose()


@contextlib.contextmanager
def mysql_database() -> Iterator[str]:
    from sqlalchemy.engine import make_url

    base = make_url(mysql_base_url())
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = _admin_engine(base.render_as_string(hide_password=False), "mysql")
    try:
        _execute(admin, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4", "mysql")
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            with contextlib.suppress(DatabaseUnavailable):
                _execute(admin, f"DROP DATABASE `{name}`", "mysql")
    finally:
        admin.dispose()


def isolated_database(backend: str) -> contextlib.AbstractContextManager[str]:
    """A context manager yielding the URL of a fresh, empty database.

    Raises:
        ValueError: an unknown backend name.
        DatabaseUnavailable: the server cannot be reached.
    """
    makers = {"sqlite": sqlite_database, "postgresql": postgresql_database,
              "mysql": mysql_database}
    if backend not in makers:
        raise ValueError(f"unknown backend {backend!r}; one of {BACKENDS}")
    return makers[backend]()
