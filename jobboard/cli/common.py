"""What every ``jobboard`` command shares: the connection options, ``--json``,
job id arguments, output (JSON, tables, durations) and the exit codes.

How it fails: option callbacks raise :class:`click.BadParameter` (a usage
error, exit 2); resolving credentials raises
:class:`~jobboard.errors.ConfigError` (exit 1). Nothing here talks to
ZooKeeper or a database.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable

import click
from click.core import ParameterSource

from jobboard import config
from jobboard.errors import ConfigError, InvalidArgument

__all__ = ["Auth", "CONNECT_TIMEOUT", "Connection", "DAEMON_CONNECT_TIMEOUT", "ExitCode",
           "age", "ago", "board_options", "emit_json", "job_id_argument", "json_option",
           "logbook_option", "print_table", "warn"]

#: Resolved ZooKeeper digest credentials, as ``Board.connect(auth=...)`` takes them.
Auth = tuple[str, str] | None

#: Seconds a one-shot command waits for ZooKeeper; daemons wait longer.
CONNECT_TIMEOUT = 5.0
DAEMON_CONNECT_TIMEOUT = 10.0


class ExitCode(IntEnum):
    """The exit status of every command. ``post --wait`` tells how the job
    ended; the others use 0, 1 and 2 only (``fsck`` exits 1 when it left a
    finding unrepaired)."""

    OK = 0            # done; for `post --wait`: the job is COMPLETE
    ERROR = 1         # a user error, an unreachable server, a refused action
    USAGE = 2         # a bad flag, argument or option value
    FAILED = 3        # `post --wait`: the job ended FAILED
    CANCELLED = 4     # `post --wait`: the job ended CANCELLED
    DEAD = 5          # `post --wait`: the job was dead-lettered
    TIMEOUT = 6       # `post --wait --timeout`: not finished in time (it goes on)


# Where a value came from, most explicit first (flag > env > config file > default).
_SOURCE_RANK = {ParameterSource.COMMANDLINE: 0, ParameterSource.PROMPT: 0,
                ParameterSource.ENVIRONMENT: 1, ParameterSource.DEFAULT_MAP: 2,
                ParameterSource.DEFAULT: 3}


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


@dataclass(frozen=True)
class Connection:
    """The board and logbook a command works on, from its options."""

    zk: str
    root: str
    logbook: str
    auth: Auth


def _resolve_auth(auth: str | None, auth_file: str | None) -> Auth:
    """The credentials from the most explicit source; two at the same level
    (``--auth`` with ``--auth-file``, both variables, both config keys) are
    refused rather than guessed between."""
    ctx = click.get_current_context()
    given = sorted((_SOURCE_RANK.get(ctx.get_parameter_source(name), 3), name, value)
                   for name, value in (("auth", auth), ("auth_file", auth_file)) if value)
    if not given:
        return None
    if len(given) == 2 and given[0][0] == given[1][0]:
        source = ctx.get_parameter_source("auth")
        if source in (ParameterSource.COMMANDLINE, ParameterSource.PROMPT):
            raise click.UsageError("--auth and --auth-file cannot be used together; "
                                   "keep --auth-file (--auth shows the password in ps)")
        if source is ParameterSource.ENVIRONMENT:
            raise ConfigError("both JOBBOARD_AUTH and JOBBOARD_AUTH_FILE are set; unset one")
        raise ConfigError("the config file sets both auth and auth_file; keep auth_file")
    _rank, name, value = given[0]
    if name == "auth":
        return config.parse_auth(value)
    return config.read_auth_file(value, warn=warn)


def _logbook_click_option() -> Callable:
    return click.option(
        "--logbook", envvar="JOBBOARD_LOGBOOK", default=config.default_logbook_url,
        show_default=config.DEFAULT_LOGBOOK_HELP,
        help="SQLAlchemy URL of the logbook (without XDG_STATE_HOME: "
             "~/.local/state/jobboard/logbook.db).")


def logbook_option(func: Callable) -> Callable:
    """``--logbook``/``JOBBOARD_LOGBOOK`` alone, for commands that use no
    ZooKeeper (the command receives ``logbook``: a URL)."""
    return _logbook_click_option()(func)


def board_options(func: Callable) -> Callable:
    """The connection options of a command that uses the board: ``--zk``,
    ``--root``, ``--logbook``, ``--auth-file``, ``--auth``. The command
    receives them as one ``conn``: a :class:`Connection` with the
    credentials resolved."""

    @functools.wraps(func)
    def with_connection(*args: Any, zk: str, root: str, logbook: str, auth: str | None,
                        auth_file: str | None, **kwargs: Any) -> Any:
        conn = Connection(zk=zk, root=root, logbook=logbook,
                          auth=_resolve_auth(auth, auth_file))
        return func(*args, conn=conn, **kwargs)

    options = [
        click.option("--zk", envvar="JOBBOARD_ZK", default=config.DEFAULT_ZK,
                     show_default=True,
                     help="ZooKeeper hosts (host:port[,host:port...][/chroot])."),
        click.option("--root", envvar="JOBBOARD_ROOT", default=config.DEFAULT_ROOT,
                     show_default=True, help="Root znode of the board."),
        _logbook_click_option(),
        click.option("--auth-file", envvar="JOBBOARD_AUTH_FILE", default=None,
                     metavar="PATH", show_envvar=True,
                     help="File holding USER:PASSWORD for ZooKeeper digest ACLs "
                          "(keep it mode 600)."),
        click.option("--auth", envvar="JOBBOARD_AUTH", default=None, metavar="USER:PASSWORD",
                     show_envvar=True,
                     help="ZooKeeper digest credentials. Visible to every user in ps: "
                          "prefer --auth-file or JOBBOARD_AUTH."),
    ]
    for option in reversed(options):
        with_connection = option(with_connection)
    return with_connection


def json_option(func: Callable) -> Callable:
    """``--json``: the command prints one JSON object on stdout (parameter
    ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object on stdout.")(func)


def _job_id_text(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from jobboard.board.lookup import check_job_id_text

    try:
        return check_job_id_text(value)
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc), param_hint="JOB_ID") from None


#: A job id argument: a uuid or a unique prefix of one, checked for its form
#: before the command runs (resolve it with ``jobboard.board.lookup``).
job_id_argument = click.argument("job_id", callback=_job_id_text)


def emit_json(document: dict[str, Any]) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table; empty tables say so."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


def _span(seconds: float, digits: str = ".1f") -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:{digits}}{unit}"
    return f"{seconds:{digits}}s"


def age(epoch: float | None) -> str:
    """How long ago ``epoch`` was, ``1.5m``; ``-`` for none."""
    if not epoch:
        return "-"
    return _span(max(0.0, time.time() - epoch))


def ago(epoch: Any) -> str:
    """``3s ago``, ``5m ago``; ``-`` for none."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or epoch <= 0:
        return "-"
    seconds = max(0.0, time.time() - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def due(not_before: float | None, *, now: float | None = None) -> str:
    """``in 5.0m`` for a job not claimable yet; ``-`` otherwise."""
    now = time.time() if now is None else now
    if not not_before or not_before <= now:
        return "-"
    return f"in {_span(not_before - now)}"


def pairs(values: tuple[str, ...], flag: str) -> dict[str, Any]:
    """K=V pairs; V is read as JSON when it parses (numbers, lists, true), else text."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint=flag)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def listen_error(addr: str, port: int, exc: OSError, flag: str) -> str:
    """One line for a port that cannot be served."""
    import errno

    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {addr}:{port}: address in use; pick another {flag}"
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {addr}:{port}: permission denied (ports below 1024 "
                f"need privileges); pick another {flag}")
    return f"cannot listen on {addr}:{port}: {exc.strerror or exc}"
