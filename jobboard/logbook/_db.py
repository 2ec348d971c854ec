"""Database plumbing for the logbook: engines with bounded timeouts, the
transient-error classifier, error translation and alembic migrations run
from code.

How it fails: :func:`is_transient` decides what ``jobboard.retry.database_retry``
retries (dropped connections, deadlocks, serialization failures, SQLite
"database is locked", a PostgreSQL that refuses connections). :func:`translate`
turns whatever is left into the jobboard error tree: ``LogbookUnavailable``
for a database that stayed unreachable through the retries,
``LogbookSchemaError`` for a missing table or column (no schema, or one older
than this release), ``LogbookError`` for everything else (a database that
does not exist, refused credentials, a bad statement), so no SQLAlchemy
exception leaves the package.

Timeouts (every call to the database is bounded; none waits forever through
an outage). :data:`DEFAULT_TIMEOUTS`, for the logbook's own calls:

- connect: 5 s (psycopg/libpq ``connect_timeout``, pymysql ``connect_timeout``);
- a reply to a sent request: 30 s (pymysql ``read_timeout``/``write_timeout``;
  libpq ``tcp_user_timeout`` for data the server never acknowledges, and TCP
  keepalives, 5 s idle + 3 probes 2 s apart, for a server that vanished while
  we wait for it);
- a free pooled connection: 10 s (``pool_timeout``);
- PostgreSQL, on the server: a row lock waited for 30 s at most
  (``lock_timeout``), and a session idle inside a transaction for 15 s
  ended (``idle_in_transaction_session_timeout``: a holder paused or hung
  mid-write loses its transaction, which is retried on its next write and
  fenced if a successor took over, instead of blocking that successor);
- SQLite: 5 s busy timeout on a locked file.

:data:`PROBE_TIMEOUTS` (3 s each) bound ``Logbook.check()``;
:data:`MIGRATE_TIMEOUTS` (a 600 s reply) let a long ``ALTER TABLE`` finish;
the migration lock is waited for :data:`MIGRATION_LOCK_TIMEOUT` seconds at
most. Each call is then retried by ``database_retry`` within its
``retry_max_delay``, so a call through a 60 s outage raises
``LogbookUnavailable`` after at most about ``retry_max_delay`` + 30 s.
Settings given in the URL's query or in ``engine_options["connect_args"]``
win over these defaults.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Connection, Engine, create_engine, event, exc as sa_exc, text
from sqlalchemy.engine import make_url

from jobboard.errors import LogbookError, LogbookSchemaError, LogbookUnavailable


MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "logbook_alembic_version"


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for: a connection, a reply, a free pooled connection,
    a locked SQLite file."""

    connect: float = 5.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 10.0
    sqlite_busy: float = 5.0
    idle_in_transaction: float = 15.0


DEFAULT_TIMEOUTS = Timeouts()
PROBE_TIMEOUTS = Timeouts(connect=3.0, read=3.0, write=3.0, pool=3.0, sqlite_busy=3.0)
MIGRATE_TIMEOUTS = Timeouts(read=600.0, write=600.0, idle_in_transaction=600.0)
MIGRATION_LOCK_TIMEOUT = 120
SQLITE_BUSY_TIMEOUT_MS = int(DEFAULT_TIMEOUTS.sqlite_busy * 1000)

# PostgreSQL SQLSTATEs worth another try: serialization failure, deadlock,
# admin shutdown / crash shutdown / cannot connect now, too many connections,
# a lock not granted within lock_timeout.
_PG_TRANSIENT = {"40001", "40P01", "57P01", "57P02", "57P03", "53300", "55P03"}
# MySQL / MariaDB error codes: lock wait timeout, deadlock, too many
# connections, can't connect, server gone away, lost connection.
_MYSQL_TRANSIENT = {1205, 1213, 1040, 2002, 2003, 2006, 2013, 2055}
_SQLITE_TRANSIENT = ("database is locked", "database table is locked",
                     "database schema has changed")
# A connection refused for good: no such database or role, bad credentials.
_PG_CONFIG_MARKERS = ("does not exist", "authentication failed", "no pg_hba.conf entry",
                      "permission denied")
_MYSQL_CONFIG = {1044, 1045, 1049, 1698}
# A table or column this release needs is not there: undefined table/column.
_PG_SCHEMA = {"42P01", "42703"}
_MYSQL_SCHEMA = {1146, 1054}
_SCHEMA_MARKERS = ("no such table", "no such column", "has no column named",
                   "doesn't exist", "unknown column")


def _orig(exc: BaseException) -> BaseException | None:
    return getattr(exc, "orig", None)


def _mysql_code(orig: BaseException | None) -> int | None:
    if orig is None or not (type(orig).__module__ or "").startswith(("pymysql", "MySQLdb")):
        return None
    code = orig.args[0] if orig.args else None
    return code if isinstance(code, int) else None


def _is_psycopg(orig: BaseException | None) -> bool:
    return orig is not None and (type(orig).__module__ or "").startswith("psycopg")


def is_config_error(exc: BaseException) -> bool:
    """True for a connection refused for good: the database or the role does
    not exist, the credentials are wrong. No retry gets past these."""
    orig = _orig(exc)
    code = _mysql_code(orig)
    if code is not None:
        return code in _MYSQL_CONFIG
    if _is_psycopg(orig) and getattr(orig, "sqlstate", None) is None:
        message = str(orig).lower()
        return any(marker in message for marker in _PG_CONFIG_MARKERS)
    return False


def is_schema_error(exc: BaseException) -> bool:
    """True when a table or column the statement needs is missing."""
    if not isinstance(exc, sa_exc.DBAPIError) or is_config_error(exc):
        return False
    orig = _orig(exc)
    code = _mysql_code(orig)
    if code is not None:          # before the SQLSTATE: newer pymysql has one too
        return code in _MYSQL_SCHEMA
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in _PG_SCHEMA
    message = str(orig or exc).lower()
    return any(marker in message for marker in _SCHEMA_MARKERS)


def is_transient(exc: BaseException) -> bool:
    """True for database errors that a fresh attempt can get past."""
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = _mysql_code(orig)
    if code is not None:          # before the SQLSTATE: newer pymysql has one too
        return code in _MYSQL_TRANSIENT
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:                         # psycopg
        return sqlstate.startswith("08") or sqlstate in _PG_TRANSIENT
    if _is_psycopg(orig) and isinstance(exc, sa_exc.OperationalError):
        # No SQLSTATE: the connection failed (server down, refused, timed
        # out), unless the server answered that the database or role is wrong.
        return not is_config_error(exc)
    message = str(orig).lower()
    return any(marker in message for marker in _SQLITE_TRANSIENT)


def _reason(exc: BaseException) -> str:
    detail = str(_orig(exc) or exc).strip().splitlines()[0:1]
    return detail[0] if detail else type(exc).__name__


def translate(exc: BaseException, op: str, url: str) -> LogbookError:
    """Map a SQLAlchemy (or driver) error to the jobboard error tree."""
    reason = _reason(exc)
    where = safe_url(url)
    if is_transient(exc):
        return LogbookUnavailable(f"logbook database {where} unavailable during {op}: {reason}")
    if is_config_error(exc):
        return LogbookError(f"cannot use logbook database {where}: {reason}")
    if is_schema_error(exc):
        return LogbookSchemaError(
            f"logbook schema in {where} is missing or outdated ({reason}); "
            "run `jobboard logbook upgrade`", url=where, head=head_revision())
    return LogbookError(f"logbook {op} failed on {where}: {reason}")


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported elsewhere
        return "<bad url>"


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL; None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def is_sqlite_file(url: str) -> bool:
    return sqlite_file(url) is not None


def _connect_args(url: str, timeouts: Timeouts) -> dict[str, Any]:
    """Driver timeouts for ``timeouts``, minus what the URL sets itself."""
    parsed = make_url(url)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    args: dict[str, Any] = {}
    if backend == "sqlite":
        args = {"timeout": timeouts.sqlite_busy, "check_same_thread": False}
    elif backend == "postgresql" and driver in ("psycopg", "psycopg2"):
        args = {"connect_timeout": max(2, round(timeouts.connect)),
                "tcp_user_timeout": int(timeouts.read * 1000),
                "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                "keepalives_count": 3}
        # Server-side bounds: a row lock waited for at most as long as a reply,
        # and a session idle inside a transaction (its process paused or hung
        # mid-write) ended, so its locks do not hold the job's next writer.
        # The URL's own options come after these, so theirs win.
        given = parsed.query.get("options", ())
        given = [given] if isinstance(given, str) else list(given)
        return {**{key: value for key, value in args.items() if key not in parsed.query},
                "options": " ".join([
                    f"-c lock_timeout={int(timeouts.read * 1000)}",
                    "-c idle_in_transaction_session_timeout="
                    f"{int(timeouts.idle_in_transaction * 1000)}", *given])}
    elif backend in ("mysql", "mariadb") and driver in ("pymysql", "mysqldb"):
        args = {"connect_timeout": max(1, round(timeouts.connect)),
                "read_timeout": max(1, round(timeouts.read)),
                "write_timeout": max(1, round(timeouts.write))}
    return {key: value for key, value in args.items() if key not in parsed.query}


def make_engine(url: str, options: dict[str, Any] | None = None, *,
                timeouts: Timeouts = DEFAULT_TIMEOUTS, pool_size: int | None = None) -> Engine:
    """An engine with bounded timeouts (see the module docstring); SQLite
    files get WAL and a busy timeout so threads and processes share them.
    ``options`` (keyword arguments of ``create_engine``) win over these
    defaults; their ``connect_args`` are merged into the driver's timeouts.
    ``pool_size``: the connections a connection pool keeps open (SQLAlchemy's
    default, 5, when None); beyond them, up to 10 more are opened when needed
    and closed again on return, a new connection (on PostgreSQL, a new server
    process) for each.

    No pre-ping: it would cost a round trip on every checkout, on the hot
    path. A pooled connection that died (server restart, idle cut) fails its
    first statement with a disconnect error; SQLAlchemy then invalidates it
    and every pooled connection older than it, :func:`is_transient` says
    retry (``connection_invalidated``), and the retry gets a fresh one. The
    logbook's writes are fenced idempotent upserts, so running one again
    after a connection died before or during its commit is harmless."""
    parsed = make_url(url)
    options = dict(options or {})
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": False}
    connect_args = _connect_args(url, timeouts)
    connect_args.update(options.pop("connect_args", None) or {})
    kwargs["connect_args"] = connect_args
    if "poolclass" not in options and (backend != "sqlite" or is_sqlite_file(url)):
        kwargs["pool_timeout"] = timeouts.pool          # a QueuePool
        if pool_size is not None:
            kwargs["pool_size"] = pool_size
    if backend in ("mysql", "mariadb"):
        kwargs["pool_recycle"] = 3600
    kwargs.update(options)
    engine = create_engine(url, **kwargs)
    if backend == "sqlite":
        busy_ms = int(float(connect_args.get("timeout", timeouts.sqlite_busy)) * 1000)
        _sqlite_pragmas(engine, wal=is_sqlite_file(url), busy_ms=busy_ms)
    return engine


def _sqlite_pragmas(engine: Engine, *, wal: bool, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                # WAL is durable across power loss with NORMAL only up to the
                # last checkpoint; FULL keeps "a write that returned is committed".
                cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
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


def known_revision(revision: str) -> bool:
    """Whether this release has a migration named ``revision``."""
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for unknown ids
        return False


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def check(engine: Engine, url: str) -> None:
    """Connect and read the schema revision: one round trip on a fresh
    connection. Raises as ``Logbook.check`` documents."""
    where = safe_url(url)
    head = head_revision()
    database = sqlite_file(url)
    if database is not None and not Path(database).exists():
        raise LogbookSchemaError(f"no logbook schema in {where} (no such file); "
                                 "run `jobboard logbook upgrade`", url=where, head=head)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    except sa_exc.SQLAlchemyError as exc:
        if is_schema_error(exc):
            raise LogbookSchemaError(f"no logbook schema in {where}; "
                                     "run `jobboard logbook upgrade`", url=where,
                                     head=head) from exc
        raise translate(exc, "check", url) from exc
    revisions = sorted(row[0] for row in rows)
    if not revisions:
        raise LogbookSchemaError(f"no logbook schema in {where}; "
                                 "run `jobboard logbook upgrade`", url=where, head=head)
    if revisions != [head]:
        revision = ",".join(revisions)
        fix = ("run `jobboard logbook upgrade`" if all(known_revision(r) for r in revisions)
               else "it was migrated by a newer jobboard release; upgrade jobboard")
        raise LogbookSchemaError(
            f"logbook schema in {where} is at revision {revision}, this release needs "
            f"{head}; {fix}", url=where, revision=revision, head=head)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest by default). Conductors
    starting together on a fresh database would race to create the same
    tables: the migration runs under a database-wide lock (on the connection
    that migrates), and whoever comes second finds it done.

    Raises:
        LogbookError: the lock was not acquired within MIGRATION_LOCK_TIMEOUT.
    """
    from alembic import command

    target = head_revision() if revision == "head" else revision
    with engine.connect() as conn:
        if current_revision(conn) == target:
            return
        conn.rollback()
        with _migration_lock(conn), _sqlite_foreign_keys_off(conn):
            if current_revision(conn) != target:
                command.upgrade(alembic_config(conn), revision)
            conn.commit()


@contextlib.contextmanager
def _sqlite_foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite alters a table by copying it and dropping the original; with
    foreign keys on, that drop would cascade to the rows that reference it.
    The pragma only takes effect outside a transaction, so it is set before
    the migration begins one."""
    if conn.dialect.name != "sqlite":
        yield
        return
    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
    conn.commit()
    try:
        yield
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise LogbookError(f"migration left {len(broken)} dangling references: "
                               f"{broken[:3]}")
    finally:
        conn.rollback()
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()


MIGRATION_LOCK_ID = 0x6A6F62626F617264   # "jobboard"
MYSQL_LOCK_NAME = "jobboard_migrate"


@contextlib.contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """Held while migrating: a file lock next to a SQLite file, a session
    advisory lock on PostgreSQL, a named lock on MySQL; each waited for at
    most MIGRATION_LOCK_TIMEOUT seconds."""
    dialect = conn.dialect.name
    where = safe_url(str(conn.engine.url))
    timed_out = LogbookError(
        f"another process has been migrating the logbook schema in {where} for over "
        f"{MIGRATION_LOCK_TIMEOUT}s (the migration lock was not released); try again")
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
    if dialect == "postgresql":
        conn.execute(text("SELECT set_config('lock_timeout', :t, false)"),
                     {"t": f"{MIGRATION_LOCK_TIMEOUT}s"})
        try:
            conn.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
        except sa_exc.DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == "55P03":    # lock_not_available
                raise timed_out from exc
            raise
        conn.commit()
        try:
            yield
        finally:
            conn.rollback()
            conn.execute(text(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))
            conn.execute(text("RESET lock_timeout"))
            conn.commit()
        return
    if dialect in ("mysql", "mariadb"):
        got = conn.execute(text("SELECT GET_LOCK(:n, :t)"),
                           {"n": MYSQL_LOCK_NAME, "t": MIGRATION_LOCK_TIMEOUT}).scalar()
        conn.commit()
        if got != 1:        # 0: timed out; NULL: an error (e.g. killed)
            raise timed_out
        try:
            yield
        finally:
            conn.rollback()
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": MYSQL_LOCK_NAME})
            conn.commit()
        return
    yield
