"""What ``jobboard conductor`` checks before it starts, and the option type
of its durations.

:func:`check_allow` refuses ``--allow`` prefixes none of which can be
imported (the conductor would refuse every job) and warns about each one
that cannot; :func:`session_timeout_note` says when ZooKeeper granted
another session timeout than ``--session-timeout`` asked for (the server
clamps it to its ``minSessionTimeout..maxSessionTimeout``).

A conductor whose logbook is unusable must not start "without a word" and
then fail every job: :func:`check_logbook` opens the logbook, brings its
schema up to date (under the migration lock) and probes it, all within
about :data:`LOGBOOK_CHECK_TIMEOUT` seconds, and turns any failure into one
line naming the password-free URL and what to do. :func:`read_secret_file`
reads a shared secret (``--notify-secret-file``) from a file only its owner
can read.

How it fails: :func:`check_logbook`, :func:`check_allow` and
:func:`read_secret_file` raise
:class:`~jobboard.errors.ConfigError` with one line (the CLI prints it as
``error: ...`` and exits 1); nothing else escapes them but a bug.
"""

from __future__ import annotations

import importlib.util
import math
import os
import stat
from typing import Any, Callable

import click

from jobboard.errors import ConfigError, LogbookError, LogbookSchemaError, LogbookUnavailable

from jobboard.cli.logbook_access import check_driver, prepare_default, sqlite_path
from jobboard.config import open_to_others, read_private_file

__all__ = ["LOGBOOK_CHECK_TIMEOUT", "MAX_SECRET_FILE", "Seconds", "check_allow",
           "check_logbook", "logbook_refusal", "read_secret_file", "session_timeout_note"]

#: Seconds the start-up check of the logbook may take: a database that does
#: not answer in this time is reported, not waited for.
LOGBOOK_CHECK_TIMEOUT = 5.0
#: Bytes a secret file may hold at most.
MAX_SECRET_FILE = 4096

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

    check_driver(url)
    prepare_default(url)
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


def _importable(prefix: str) -> bool:
    try:
        return importlib.util.find_spec(prefix.rstrip(".")) is not None
    except (ImportError, ValueError):   # a parent package missing, or a bad name
        return False


def check_allow(prefixes: tuple[str, ...], warn: Callable[[str], None]) -> None:
    """Say at start which ``--allow`` prefixes import nothing here.

    Raises:
        ConfigError: none of them can be imported: every job would be refused.
    """
    missing = [prefix for prefix in prefixes if not _importable(prefix)]
    if not missing:
        return
    if len(missing) == len(prefixes):
        raise ConfigError(
            f"conductor not started: no module {', '.join(missing)} can be imported here, so "
            "every flow factory would be refused; check --allow and that the flows' package "
            "is installed or on PYTHONPATH")
    for prefix in missing:
        warn(f"--allow {prefix}: no such module can be imported here; jobs whose factory is "
             "in it will fail")


def session_timeout_note(asked: float, granted_ms: int | None, hosts: str) -> str | None:
    """A warning when ZooKeeper granted a session timeout other than the one
    asked for; None when it granted that one (or is not known)."""
    if granted_ms is None or abs(granted_ms - asked * 1000) < 1:
        return None
    granted = granted_ms / 1000
    bound = "maximum" if granted < asked else "minimum"
    return (f"--session-timeout {asked:g} is outside what ZooKeeper at {hosts} allows: it "
            f"granted {granted:g}s (its {bound}, maxSessionTimeout/minSessionTimeout in "
            f"zoo.cfg); a dead conductor's jobs are reclaimed after {granted:g}s")


def read_secret_file(path: str | os.PathLike[str], flag: str) -> bytes:
    """The shared secret in a private file (``--notify-secret-file``): its
    bytes without one trailing newline, read once at start.

    Args:
        path: the file.
        flag: how the user named it, for the message (``--notify-secret-file``).

    Raises:
        ConfigError: the file is missing, not a regular file, unreadable,
            empty, larger than :data:`MAX_SECRET_FILE` bytes, owned by
            another user than this one or root, or open to group or others
            in any way (mode ``& 077``; as ssh checks keys: a secret others
            can read signs forgeries). The
            message names the file, never its content.
    """
    what = f"secret file {path} ({flag})"
    secret, status = read_private_file(path, what, limit=MAX_SECRET_FILE)
    if status.st_uid not in (os.geteuid(), 0):
        raise ConfigError(f"{what} belongs to another user (uid {status.st_uid}); it must "
                          "be this user's or root's")
    if open_to_others(status.st_mode):
        raise ConfigError(f"{what} is open to group or others (mode "
                          f"{stat.S_IMODE(status.st_mode):04o}); keep it private: chmod 600 "
                          f"{path} (a Kubernetes secret volume: defaultMode 0400)")
    if not secret:
        raise ConfigError(f"{what} is empty; put the shared secret in it")
    return secret
