"""Database plumbing for the logbook: engines, the transient-error classifier,
error translation and alembic migrations run from code.

How it fails: :func:`is_transient` decides what ``jobboard.retry.database_retry``
retries (dropped connections, deadlocks, serialization failures, SQLite
"database is locked"). :func:`translate` turns whatever is left into the
jobboard error tree: ``LogbookUnavailable`` for a database that stayed
unreachable through the retries, ``LogbookError`` for everything else, so no
SQLAlchemy exception leaves the package.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Connection, Engine, create_engine, event, exc as sa_exc, text
from sqlalchemy.engine import make_url

from jobboard.errors import LogbookError, LogbookUnavailable


MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "logbook_alembic_version"
SQLITE_BUSY_TIMEOUT_MS = 5000

# PostgreSQL SQLSTATEs worth another try: serialization failure, deadlock,
# admin shutdown / crash shutdown / cannot connect now, too many connections.
_PG_TRANSIENT = {"40001", "40P01", "57P01", "57P02", "57P03", "53300"}
# MySQL / MariaDB error codes: lock wait timeout, deadlock, too many
# connections, can't connect, server gone away, lost connection.
_MYSQL_TRANSIENT = {1205, 1213, 1040, 2002, 2003, 2006, 2013, 2055}
_SQLITE_TRANSIENT = ("database is locked", "database table is locked",
                     "database schema has changed")
_MISSING_TABLE = ("no such table", "does not exist", "doesn't exist")


def is_transient(exc: BaseException) -> bool:
    """True for database errors that a fresh attempt can get past."""
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:                         # psycopg
        return sqlstate.startswith("08") or sqlstate in _PG_TRANSIENT
    module = type(orig).__module__ or ""
    if module.startswith("psycopg") and isinstance(exc, sa_exc.OperationalError):
        return True                                  # no SQLSTATE: the connection failed
    if module.startswith("pymysql") and orig is not None and orig.args:
        return orig.args[0] in _MYSQL_TRANSIENT
    text = str(orig).lower()
    return any(marker in text for marker in _SQLITE_TRANSIENT)


def translate(exc: BaseException, op: str, url: str) -> LogbookError:
    """Map a SQLAlchemy (or driver) error to the jobboard error tree."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0:1]
    reason = detail[0] if detail else type(exc).__name__
    where = safe_url(url)
    if is_transient(exc):
        return LogbookUnavailable(f"logbook database {where} unavailable during {op}: {reason}")
    if any(marker in reason.lower() for marker in _MISSING_TABLE):
        return LogbookError(f"logbook schema missing or outdated in {where} ({reason}); "
                            "run `jobboard logbook upgrade`")
    return LogbookError(f"logbook {op} failed on {where}: {reason}")


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported elsewhere
        return "<bad url>"


def is_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")


def make_engine(url: str, options: dict[str, Any] | None = None) -> Engine:
    """An engine with pre-ping (dropped connections are replaced before use);
    SQLite files get WAL and a busy timeout so threads and processes share them."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "future": True}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                  "check_same_thread": False}
    elif backend in ("mysql", "mariadb"):
        kwargs["pool_recycle"] = 3600
    kwargs.update(options or {})
    engine = create_engine(url, **kwargs)
    if backend == "sqlite":
        _sqlite_pragmas(engine, wal=is_sqlite_file(url))
    return engine


def _sqlite_pragmas(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                # WAL is durable across power loss with NORMAL only up to the
                # last checkpoint; FULL keeps "a write that returned is committed".
                cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()


# -- migrations ----------------------------------------------------------------


def alembic_config(connection: Connection | None = None) -> Any:
    """An alembic Config built in code (no alembic.ini in the cwd needed);
    migrations run on ``connection``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_table", VERSION_TABLE)
    config.attributes["connection"] = connection
    return config


@functools.lru_cache(maxsize=1)
def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision. Conductors starting together
    on a fresh database would race to create the same tables: the migration
    runs under a database-wide lock (on the connection that migrates), and
    whoever comes second finds it done."""
    from alembic import command

    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return
        conn.rollback()
        with _migration_lock(conn):
            if current_revision(conn) != head:
                command.upgrade(alembic_config(conn), "head")
            conn.commit()


MIGRATION_LOCK_ID = 0x6A6F62626F617264   # "jobboard"


@contextlib.contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """Held while migrating: a file lock next to a SQLite file, a session
    advisory lock on PostgreSQL, a named lock on MySQL."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        if not is_sqlite_file(str(conn.engine.url)):
            yield
            return
        with open(f"{conn.engine.url.database}.migrate.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        return
    statements = {
        "postgresql": (f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})",
                       f"SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"),
        "mysql": ("SELECT GET_LOCK('jobboard_migrate', 60)",
                  "SELECT RELEASE_LOCK('jobboard_migrate')"),
    }.get(dialect)
    if statements is None:
        yield
        return
    lock, unlock = statements
    conn.execute(text(lock))
    conn.commit()
    try:
        yield
    finally:
        conn.rollback()
        conn.execute(text(unlock))
        conn.commit()
