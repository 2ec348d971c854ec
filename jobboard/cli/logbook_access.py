"""How the command line opens a logbook: never creating one by reading,
naming the driver a URL lacks, and making the default location's directory.

* :func:`require_existing`: a read command on a SQLite logbook whose file
  does not exist stops with "no logbook at PATH" (opening it would create an
  empty database and answer "no logbook for job", as if the job had none).
* :func:`driver_problem`: ``mysql://`` means the MySQLdb driver, which is
  rarely installed; the message says to write ``mysql+pymysql://`` (and the
  same for a PostgreSQL driver that is missing).
* :func:`prepare_default`: commands that create the logbook (``logbook
  upgrade``, ``conductor``) make the default location's directory
  (``$XDG_STATE_HOME/jobboard``); a directory named in an explicit URL is
  never created.

How it fails: :class:`~jobboard.errors.ConfigError` with one line; opening
raises what :class:`~jobboard.logbook.Logbook` raises.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from jobboard import config
from jobboard.errors import ConfigError

__all__ = ["driver_problem", "open_logbook", "prepare_default", "require_existing",
           "sqlite_path"]

# SQLAlchemy driver name -> the module it imports, and the URL to suggest instead.
_DRIVERS = {"mysqldb": "MySQLdb", "pymysql": "pymysql", "mariadbconnector": "mariadb",
            "mysqlconnector": "mysql.connector", "psycopg": "psycopg",
            "psycopg2": "psycopg2", "pg8000": "pg8000", "asyncpg": "asyncpg"}
_INSTEAD = {"mysql": ("mysql+pymysql", "jobboard[mysql]"),
            "mariadb": ("mysql+pymysql", "jobboard[mysql]"),
            "postgresql": ("postgresql+psycopg", "jobboard[postgres]")}


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite logbook URL; None for another database, an
    in-memory one or a URL that does not parse."""
    from jobboard.logbook._db import sqlite_file   # imported when used: commands start faster

    try:
        database = sqlite_file(url)
    except Exception:  # noqa: BLE001 - not a URL: the Logbook reports it
        return None
    return None if database is None else Path(database).expanduser()


def driver_problem(url: str) -> str | None:
    """One line when ``url`` names a database driver that is not installed
    (``mysql://`` without MySQLdb), saying which URL to use; None otherwise."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    except Exception:  # noqa: BLE001 - a bad URL is reported by the Logbook
        return None
    module = _DRIVERS.get(driver)
    if module is None or _installed(module):
        return None
    shown = parsed.render_as_string(hide_password=True)
    instead = _INSTEAD.get(backend)
    if instead is None:
        return f"logbook {shown}: its driver {module} is not installed"
    scheme, extra = instead
    if parsed.drivername == scheme:
        return (f"logbook {shown}: its driver {module} is not installed; "
                f"pip install '{extra}'")
    fixed = parsed.set(drivername=scheme).render_as_string(hide_password=True)
    return (f"logbook {shown} needs the {module} driver, which is not installed: "
            f"write {fixed} instead (pip install '{extra}')")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_driver(url: str) -> None:
    """Raises:
        ConfigError: :func:`driver_problem`'s line."""
    problem = driver_problem(url)
    if problem is not None:
        raise ConfigError(f"{problem} (--logbook / JOBBOARD_LOGBOOK)")


def require_existing(url: str) -> None:
    """Refuse to read a SQLite logbook that does not exist.

    Raises:
        ConfigError: "no logbook at PATH", with what to do.
    """
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise ConfigError(f"no logbook at {path}: point --logbook / JOBBOARD_LOGBOOK at the "
                          "fleet's logbook (`jobboard logbook upgrade` creates one)")


def prepare_default(url: str) -> None:
    """Make the directory of the default logbook when ``url`` is it."""
    if url != config.default_logbook_url():
        return
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def open_logbook(url: str, *, auto_upgrade: bool | None = None, retry_attempts: int = 6,
                 retry_max_delay: float = 20.0, **options: Any) -> Any:
    """A :class:`~jobboard.logbook.Logbook` on ``url`` once its driver is
    known to be installed."""
    from jobboard.logbook import Logbook

    check_driver(url)
    return Logbook(url, auto_upgrade=auto_upgrade, retry_attempts=retry_attempts,
                   retry_max_delay=retry_max_delay, **options)
