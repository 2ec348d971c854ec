"""What ``jobboard conductor`` checks before it starts, and the option type
of its durations.

A conductor whose logbook is unusable must not start "without a word" and
then fail every job: :func:`check_logbook` opens the logbook, brings its
schema up to date (under the migration lock) and probes it, all within
about :data:`LOGBOOK_CHECK_TIMEOUT` seconds, and turns any failure into one
line naming the password-free URL and what to do.

How it fails: :func:`check_logbook` raises
:class:`~jobboard.errors.ConfigError` with that line (the CLI prints it as
``error: ...`` and exits 1); nothing else escapes it but a bug.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from jobboard.errors import ConfigError, LogbookError, LogbookSchemaError, LogbookUnavailable

__all__ = ["LOGBOOK_CHECK_TIMEOUT", "Seconds", "check_logbook", "logbook_refusal",
           "sqlite_path"]

#: Seconds the start-up check of the logbook may take: a database that does
#: not answer in this time is reported, not waited for.
LOGBOOK_CHECK_TIMEOUT = 5.0

_FLAG = "--logbook / JOBBOARD_LOGBOOK"


class Seconds(click.FloatRange):
    """A positive, finite number of seconds (0, ``nan`` and ``inf`` refused).
    A :class:`click.FloatRange`, so a config file's value is checked as a
    number, then by :meth:`convert`."""

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a positive number of seconds", param, ctx)
        return number


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite logbook URL; None for another database, an
    in-memory one or a URL that does not parse."""
    from jobboard.logbook._db import sqlite_file   # imported when used: commands start faster

    try:
        database = sqlite_file(url)
    except Exception:  # noqa: BLE001 - not a URL: the Logbook reports it
        return None
    return None if database is None else Path(database).expanduser()


def logbook_refusal(url: str, exc: Exception) -> str:
    """One line for a logbook the conductor cannot use: what is wrong, with
    the password-free URL, and what to do."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparseable URL: show nothing of it
        return f"conductor not started: the logbook URL is not a database URL; fix {_FLAG}"
    safe = parsed.render_as_string(hide_password=True)
    message = " ".join(str(exc).split())
    if parsed.password and str(parsed.password) in message:
        message = message.replace(str(parsed.password), "***")
    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        return (f"conductor not started: logbook {safe} cannot be created: directory "
                f"{path.parent} does not exist; create it or point {_FLAG} elsewhere")
    if message.startswith("cannot use logbook URL"):
        hint = (f"fix {_FLAG} (for example sqlite:///var/lib/jobboard/logbook.db or "
                "postgresql+psycopg://USER@HOST/DATABASE)")
    elif isinstance(exc, LogbookSchemaError):
        hint = "run `jobboard logbook upgrade` with this --logbook and read its error"
    elif isinstance(exc, LogbookUnavailable):
        hint = f"check that the database server is up and that {_FLAG} names it"
    else:
        hint = f"check the database name, user and password in {_FLAG}"
    if safe not in message:
        message = f"logbook {safe}: {message}"
    return f"conductor not started: {message}; {hint}"


def check_logbook(url: str) -> None:
    """Refuse a logbook the conductor cannot use: open it with its schema
    brought up to date, and probe it.

    Raises:
        ConfigError: unreachable, schema not current, bad database or
            credentials, bad URL; the message is :func:`logbook_refusal`'s.
    """
    from sqlalchemy.engine import make_url

    from jobboard.logbook import Logbook

    try:
        backend = make_url(url).get_backend_name()
    except Exception:  # noqa: BLE001 - Logbook reports a bad URL itself
        backend = ""
    options: dict[str, Any] = {}
    if backend in ("postgresql", "mysql", "mariadb"):
        # a host that drops packets must not hold the start for minutes
        options["connect_args"] = {"connect_timeout": max(1, int(LOGBOOK_CHECK_TIMEOUT))}
    try:
        with Logbook(url, auto_upgrade=True, retry_attempts=3,
                     retry_max_delay=LOGBOOK_CHECK_TIMEOUT, engine_options=options) as book:
            book.check()
    except LogbookError as exc:
        raise ConfigError(logbook_refusal(url, exc)) from None
