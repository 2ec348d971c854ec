"""The ``jobboard`` command.

Every command reads ``--zk``/``JOBBOARD_ZK``, ``--root``/``JOBBOARD_ROOT``,
``--logbook``/``JOBBOARD_LOGBOOK`` and the ZooKeeper credentials
(``--auth-file``/``JOBBOARD_AUTH_FILE``, ``JOBBOARD_AUTH``, or ``--auth``,
which ``ps`` shows to everyone). ``--json`` prints one JSON document on
stdout.

How it fails: every user error (a bad flag or config file, an unreachable
ZooKeeper, a refused operation) is one line on stderr starting with
``error:``, exit code 1 (2 for usage errors), never a traceback. Only an
unexpected crash of a conductor prints a traceback. The admin commands
(``abandon``, ``transfer``, ``cancel``, ``retry``, ``trash``) act or refuse
by the job's state (the table in :mod:`jobboard.cli_admin`); a conductor
refuses to start on a logbook it cannot use (:mod:`jobboard.cli_preflight`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import threading
import time
from typing import Any, Callable, Iterator, NoReturn

import click
from click.core import ParameterSource

from jobboard import cli_preflight as preflight
from jobboard import config
from jobboard.errors import BoardUnavailable, ConfigError, JobBoardError
from jobboard.states import JobState

#: Resolved ZooKeeper digest credentials, as ``Board.connect(auth=...)`` takes them.
Auth = tuple[str, str] | None

# Where a value came from, most explicit first (flag > env > config file > default).
_SOURCE_RANK = {ParameterSource.COMMANDLINE: 0, ParameterSource.PROMPT: 0,
                ParameterSource.ENVIRONMENT: 1, ParameterSource.DEFAULT_MAP: 2,
                ParameterSource.DEFAULT: 3}

#: Seconds a one-shot command waits for ZooKeeper; daemons wait longer.
CONNECT_TIMEOUT = 5.0
DAEMON_CONNECT_TIMEOUT = 10.0


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


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
    return config.read_auth_file(value, warn=_warn)


def common_options(func: Callable) -> Callable:
    """The connection options every command shares. The command receives
    ``auth`` already resolved: ``(user, password)`` or None."""

    @functools.wraps(func)
    def with_auth(*args: Any, auth: str | None, auth_file: str | None, **kwargs: Any) -> Any:
        return func(*args, auth=_resolve_auth(auth, auth_file), **kwargs)

    options = [
        click.option("--zk", envvar="JOBBOARD_ZK", default=config.DEFAULT_ZK,
                     show_default=True,
                     help="ZooKeeper hosts (host:port[,host:port...][/chroot])."),
        click.option("--root", envvar="JOBBOARD_ROOT", default=config.DEFAULT_ROOT,
                     show_default=True, help="Root znode of the board."),
        click.option("--logbook", envvar="JOBBOARD_LOGBOOK",
                     default=config.DEFAULT_LOGBOOK, show_default=True,
                     help="SQLAlchemy URL of the logbook."),
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
        with_auth = option(with_auth)
    return with_auth


def _job_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from jobboard.board.job import check_job_id

    try:
        return check_job_id(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="JOB_ID") from None


# A job id argument, checked (a uuid) before the command runs.
job_id_argument = click.argument("job_id", callback=_job_id)


def emit_json(document: Any) -> None:
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


# click >= 8.2 raises this for a bare group (`jobboard`): it shows the help.
_SHOWS_HELP = tuple(kind for kind in (getattr(click.exceptions, "NoArgsIsHelpError", None),)
                    if kind is not None)


def _fail(exc: click.ClickException) -> NoReturn:
    """A click error as one line (click's own output is usage + hint + error)."""
    if isinstance(exc, _SHOWS_HELP):
        exc.show()
        sys.exit(exc.exit_code)
    message = f"error: {exc.format_message()}"
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    click.echo(message, err=True)
    sys.exit(exc.exit_code)


class _Group(click.Group):
    """The top-level group: turns every user error into one ``error:`` line."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException as exc:   # a bad option of the group itself
            _fail(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobBoardError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            _fail(exc)


def _setting_check(param: click.Option) -> config.Check:
    """How a config-file value for ``param`` is checked: the TOML type must be
    the option's (no "8" for an integer), then click's own conversion applies
    ranges and choices."""
    kind = param.type
    if param.is_flag or isinstance(kind, click.types.BoolParamType):
        expected: tuple[type, ...] = (bool,)
    elif isinstance(kind, (click.types.IntParamType, click.IntRange)):
        expected = (int,)
    elif isinstance(kind, (click.types.FloatParamType, click.FloatRange)):
        expected = (int, float)
    else:
        expected = (str,)
    names = "a number" if float in expected else \
        {bool: "true/false", int: "an integer", str: "a string"}[expected[0]]

    def one(value: Any) -> Any:
        if not isinstance(value, expected) or (bool not in expected and isinstance(value, bool)):
            raise TypeError(f"must be {names}, not {type(value).__name__} {value!r:.40}")
        if param.is_flag:
            return value
        try:
            return kind.convert(value, param, None)
        except click.BadParameter as exc:
            raise ValueError(f"has a bad value: {exc.message}") from None

    def check(value: Any) -> Any:
        if not param.multiple:
            return one(value)
        if not isinstance(value, list):
            raise TypeError(f"must be a list, not {type(value).__name__}")
        return [one(item) for item in value]

    return check


def _schema(command: click.Command) -> config.CommandSchema:
    """The config keys of a command (long option names, with underscores) or
    of a group's subcommands, derived from the click options."""
    if isinstance(command, click.Group):
        return config.CommandSchema(commands={name: _schema(sub)
                                              for name, sub in command.commands.items()})
    settings = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden or param.name is None:
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                settings[opt[2:].replace("-", "_")] = config.Setting(param.name,
                                                                     _setting_check(param))
    return config.CommandSchema(settings=settings)


@click.group(cls=_Group)
@click.option("--config", "config_file", envvar="JOBBOARD_CONFIG", default=None,
              help="TOML config file (default ./jobboard.toml when present).")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: int) -> None:
    """jobboard: a job-board coordinated worker fleet on ZooKeeper."""
    import warnings

    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kazoo warns (several lines) about a missing chroot; the board says it in one.
    warnings.filterwarnings("ignore", message="No chroot path exists")
    ctx.meta["jobboard.verbose"] = verbose
    path = config.config_path(config_file)
    settings = config.load_config_file(path)
    ctx.default_map = config.default_map(settings, _schema(main), source=path or "config")


def _listen_error(addr: str, port: int, exc: OSError, flag: str) -> str:
    """One line for a port that cannot be served."""
    import errno

    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {addr}:{port}: address in use; pick another {flag}"
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {addr}:{port}: permission denied (ports below 1024 "
                f"need privileges); pick another {flag}")
    return f"cannot listen on {addr}:{port}: {exc.strerror or exc}"


# ---- board commands ----------------------------------------------------------

class _ConnectionNotes(logging.Filter):
    """Keeps kazoo's per-attempt connection warnings off the terminal while the
    first connection is made, remembering the last reason for the error line."""

    def __init__(self) -> None:
        super().__init__()
        self.last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            return True
        message = record.getMessage()
        if message.startswith("Connection dropped: "):
            self.last = message[len("Connection dropped: "):]
        return False


@contextlib.contextmanager
def _quiet_connect() -> Iterator[None]:
    """During the first connect: no kazoo retry warnings (unless -v), and an
    unreachable ZooKeeper reported with the last reason kazoo saw."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().meta.get("jobboard.verbose"):
        yield
        return
    notes = _ConnectionNotes()
    logger = logging.getLogger("kazoo.client")
    logger.addFilter(notes)
    try:
        yield
    except BoardUnavailable as exc:
        message = str(exc)
        if notes.last and message.startswith("cannot reach") and ": check" in message:
            head, _, tail = message.partition(": check")
            raise BoardUnavailable(f"{head} ({notes.last}): check{tail}") from exc
        raise
    finally:
        logger.removeFilter(notes)


def _open_board(zk: str, root: str, auth: Auth, *, timeout: float = CONNECT_TIMEOUT,
                **options: Any) -> Any:
    from jobboard.board import Board

    with _quiet_connect():
        return Board.connect(zk, root=root, auth=auth, timeout=timeout, **options)


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, Any]:
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


def _age(epoch: float | None) -> str:
    if not epoch:
        return "-"
    seconds = max(0.0, time.time() - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _outcome_doc(outcome: Any) -> dict:
    return {"job_id": outcome.job_id, "state": outcome.state.value, "ok": outcome.ok,
            "results": outcome.results, "failure": outcome.failure, "reason": outcome.reason}


@main.command()
@click.argument("factory")
@click.option("--arg", "args", multiple=True, metavar="K=V", help="Factory argument.")
@click.option("--store", "store", multiple=True, metavar="K=V", help="Initial flow input.")
@click.option("--name", default=None, help="A name for people (default: the function).")
@click.option("--priority", default=0, show_default=True, type=click.IntRange(-9999, 9999),
              help="Higher runs first (-9999..9999).")
@click.option("--delay", default=None, type=click.FloatRange(min=0), metavar="SECONDS",
              help="Not claimable before this many seconds.")
@click.option("--key", default=None, metavar="IDEMPOTENCY_KEY",
              help="A second post with the same key returns the first job.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job to finish.")
@click.option("--timeout", default=None, type=click.FloatRange(min=0),
              help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def post(factory: str, args: tuple[str, ...], store: tuple[str, ...], name: str | None,
         priority: int, delay: float | None, key: str | None, wait_: bool,
         timeout: float | None, as_json: bool, zk: str, root: str, logbook: str,
         auth: Auth) -> None:
    """Post a job that runs flow FACTORY (package.module:function)."""
    with _open_board(zk, root, auth) as board:
        job = board.post(factory, args=_pairs(args, "--arg"), store=_pairs(store, "--store"),
                         name=name, priority=priority, delay=delay, key=key)
        if not wait_:
            emit_json(job.to_dict()) if as_json else click.echo(job.uuid)
            return
        if not as_json:
            click.echo(f"posted {job.uuid}; waiting", err=True)
        outcome = board.wait(job.uuid, timeout=timeout)
    if as_json:
        emit_json(_outcome_doc(outcome))
    else:
        click.echo(f"{job.uuid} {outcome.state.value}")
        if outcome.reason or outcome.failure:
            click.echo(f"  {outcome.reason or outcome.failure}", err=True)
    sys.exit(0 if outcome.ok else 1)


MALFORMED = "MALFORMED"


@main.command()
@click.option("--state", default=None, type=click.Choice(
    [s.value for s in JobState] + [MALFORMED], case_sensitive=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def jobs(state: str | None, as_json: bool, zk: str, root: str, logbook: str,
         auth: Auth) -> None:
    """List jobs (waiting ones in claim order). Malformed znodes and
    quarantined records are listed as MALFORMED with the reason."""
    state = state.upper() if state else None
    with _open_board(zk, root, auth) as board:
        found = [] if state == MALFORMED else list(board.jobs(state))
        bad = board.malformed() if state in (None, MALFORMED) else {}
    if as_json:
        emit_json({"jobs": [j.to_dict() for j in found],
                   "malformed": [{"path": p, "reason": r} for p, r in sorted(bad.items())]})
        return
    rows = [[j.uuid, j.name, j.state.value, j.priority, j.attempt, j.claims,
             j.owner or "-", _age(j.created_at)] for j in found]
    rows += [[path, "-", "MALFORMED", "-", "-", "-", "-", reason]
             for path, reason in sorted(bad.items())]
    print_table(["JOB", "NAME", "STATE", "PRIO", "ATTEMPT", "CLAIMS", "OWNER", "AGE"], rows)


@main.command()
@job_id_argument
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def show(job_id: str, as_json: bool, zk: str, root: str, logbook: str,
         auth: Auth) -> None:
    """Show one job: its record, claim and history."""
    with _open_board(zk, root, auth) as board:
        job = board.get(job_id)
        holder = board.claim_owner(job.uuid)
    doc = job.to_dict()
    doc["holder"] = holder
    attempts, note = _logbook_attempts(logbook, job.uuid)
    doc["attempts"] = attempts          # None when the logbook cannot be read
    if note is not None:
        doc["logbook_note"] = note
    if as_json:
        emit_json(doc)
        return
    for field_name in ("uuid", "name", "factory", "state", "priority", "attempt", "claims",
                       "deaths", "holder", "key", "args", "store", "details", "outcome"):
        click.echo(f"{field_name:>9}: {doc[field_name]}")
    click.echo(f"{'created':>9}: {_age(job.created_at)} ago")
    if job.not_before:
        click.echo(f"{'due':>9}: in {max(0.0, job.not_before - time.time()):.1f}s")
    click.echo("  history:")
    for entry in job.history:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"]))
        click.echo(f"    {stamp} {entry['event']} {entry.get('owner', '')}".rstrip())
    if attempts is None:
        click.echo(f"  attempts: ? ({note})")
        return
    click.echo(f"  attempts: {len(attempts)} in the logbook (current {job.attempt})")
    for entry in attempts:
        click.echo(f"    #{entry['attempt']} {entry['state']} created {entry['created_at']}"
                   f" updated {entry['updated_at']}")


#: Seconds ``jobboard claims`` waits for the logbook before it lists the
#: claims without their tasks.
LOGBOOK_READ_TIMEOUT = 3.0


def _running_tasks(logbook_url: str, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What each job is running now, from the logbook: ``{job_id: {"task",
    "progress", "note", "heartbeat_at", "tasks"}}`` (``task`` None when no task
    runs; ``tasks`` every running one, for flows running tasks side by side).

    Raises:
        LogbookError: the logbook cannot be read (within about
            :data:`LOGBOOK_READ_TIMEOUT` seconds).
    """
    from jobboard.logbook import Logbook
    from jobboard.states import AtomState

    if not job_ids:
        return {}
    path = preflight.sqlite_path(logbook_url)
    if path is not None and not path.exists():
        return {}    # no logbook yet: nothing has run (and reading must not create one)
    current: dict[str, dict[str, Any]] = {}
    with Logbook(logbook_url, auto_upgrade=False, retry_attempts=2,
                 retry_max_delay=LOGBOOK_READ_TIMEOUT) as store:
        for job_id in job_ids:
            flow = store.load_flow(job_id)
            running = [{"name": a.name, "state": a.state.value,
                        "progress": (a.meta or {}).get("progress"),
                        "note": (a.meta or {}).get("note"),
                        "heartbeat_at": (a.meta or {}).get("heartbeat_at")}
                       for a in (flow.atoms.values() if flow else ())
                       if a.state in (AtomState.RUNNING, AtomState.REVERTING)]
            # the freshest heartbeat speaks for the job
            latest = max(running, key=lambda t: t["heartbeat_at"] or 0, default=None)
            current[job_id] = {
                "task": ",".join(t["name"] for t in running) or None,
                "progress": latest["progress"] if latest else None,
                "note": latest["note"] if latest else None,
                "heartbeat_at": latest["heartbeat_at"] if latest else None,
                "tasks": running}
    return current


def _percent(progress: Any) -> str:
    if isinstance(progress, bool) or not isinstance(progress, (int, float)):
        return "-"
    return f"{progress * 100:.0f}%"


def _ago(epoch: Any) -> str:
    """``3s ago``, ``5m ago``; ``-`` for none."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or epoch <= 0:
        return "-"
    seconds = max(0.0, time.time() - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


@main.command()
@click.option("--repair", is_flag=True, help="Put every finding right.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def fsck(repair: bool, as_json: bool, zk: str, root: str, logbook: str, auth: Auth) -> None:
    """Check every invariant of the board's layout (a job waiting with no
    queue entry, an entry with no waiting job, a running marker with no claim,
    records that fail validation, ...); with --repair, put each right.
    Exits 1 when something was found and left unrepaired."""
    with _open_board(zk, root, auth) as board:
        findings = board.fsck(repair=repair)
    left = [f for f in findings if not f.repaired]
    if as_json:
        emit_json({"findings": [f.to_dict() for f in findings], "repair": repair,
                   "clean": not findings})
    elif not findings:
        click.echo("the board is consistent")
    else:
        print_table(["FINDING", "PATH", "DETAIL", "REPAIRED"],
                    [[f.kind, f.path, f.detail, "yes" if f.repaired else "no"]
                     for f in findings])
        click.echo(f"{len(findings)} finding(s), {len(findings) - len(left)} repaired",
                   err=True)
    sys.exit(1 if left else 0)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def claims(as_json: bool, zk: str, root: str, logbook: str, auth: Auth) -> None:
    """Show current claims: owner, since when, and from the logbook the
    running task, its last progress and note, and when it last sent a
    heartbeat. When the logbook cannot be read the claims are still listed
    (task columns "?", one warning on stderr)."""
    from jobboard.errors import LogbookError

    with _open_board(zk, root, auth) as board:
        held = board.claims()
    problem: str | None = None
    try:
        running = _running_tasks(logbook, [c["job_id"] for c in held])
    except LogbookError as exc:
        problem = " ".join(str(exc).split())
        _warn(f"cannot read the logbook, so tasks are shown as ?: {problem}")
        running = {}
    nothing = {"task": None, "progress": None, "note": None, "heartbeat_at": None,
               "tasks": []}
    for claim in held:
        claim.update(running.get(claim["job_id"], nothing))
    if as_json:
        emit_json({"claims": held, "logbook_error": problem})
        return

    def task_cells(claim: dict[str, Any]) -> list[str]:
        if problem is not None:
            return ["?"] * 4
        note = " ".join(str(claim["note"]).split()) if claim["note"] else "-"
        return [claim["task"] or "-", _percent(claim["progress"]),
                _ago(claim["heartbeat_at"]), note]

    print_table(["JOB", "OWNER", "SINCE", "TOKEN", "TASK", "PROGRESS", "HEARTBEAT", "NOTE"],
                [[c["job_id"], c["owner"], _age(c["since"]) + " ago", c["token"],
                  *task_cells(c)] for c in held])


def _admin_target(board: Any, action: Any, job_id: str) -> tuple[Any, str | None]:
    """The job an admin command acts on and who holds its claim, once the
    command's table (:mod:`jobboard.cli_admin`) allows the action.

    Raises:
        click.ClickException: refused; one line saying why and what to do.
        JobNotFound: no such job.
    """
    from jobboard.cli_admin import malformed_refusal, refusal
    from jobboard.errors import MalformedData

    try:
        job = board.get(job_id)
    except MalformedData as exc:
        raise click.ClickException(malformed_refusal(action, job_id, str(exc))) from None
    holder = board.claim_owner(job_id) if job.state is JobState.CLAIMED else None
    why = refusal(action, job, holder)
    if why is not None:
        raise click.ClickException(why)
    return job, holder


@main.command()
@job_id_argument
@common_options
def abandon(job_id: str, zk: str, root: str, logbook: str, auth: Auth) -> None:
    """Release a job's claim so that any conductor picks it up at once.
    Only a CLAIMED job can be abandoned."""
    from jobboard.cli_admin import Action

    with _open_board(zk, root, auth) as board:
        _job, holder = _admin_target(board, Action.ABANDON, job_id)
        if holder is None:
            # the holder's session ended: put it back now rather than at the
            # next conductor's orphan pass
            board.restore_orphan(job_id)
            click.echo(f"abandoned {job_id} (its holder was gone); any conductor may "
                       "claim it now")
            return
        board.abandon(job_id, holder)
    click.echo(f"abandoned {job_id} (was held by {holder}); any conductor may claim it now")


@main.command()
@job_id_argument
@click.option("--to", "to_owner", required=True, metavar="OWNER",
              help="Name of a live conductor (see `jobboard conductors`).")
@common_options
def transfer(job_id: str, to_owner: str, zk: str, root: str, logbook: str,
             auth: Auth) -> None:
    """Move a CLAIMED job's claim to another live conductor, which resumes it."""
    from jobboard.cli_admin import Action
    from jobboard.errors import OwnerNotFound

    with _open_board(zk, root, auth) as board:
        _job, holder = _admin_target(board, Action.TRANSFER, job_id)
        if holder == to_owner:
            raise click.ClickException(f"job {job_id} is already held by {to_owner}; "
                                       "nothing to transfer")
        try:
            board.transfer(job_id, holder, to_owner)
        except OwnerNotFound as exc:
            raise click.ClickException(f"{exc}; see `jobboard conductors` for the live "
                                       "ones") from None
    click.echo(f"transferred {job_id} from {holder or 'its departed holder'} to {to_owner}")


@main.command()
@job_id_argument
@common_options
def trash(job_id: str, zk: str, root: str, logbook: str, auth: Auth) -> None:
    """Delete a job that nobody holds (any state but CLAIMED)."""
    from jobboard.cli_admin import Action

    with _open_board(zk, root, auth) as board:
        job, _holder = _admin_target(board, Action.TRASH, job_id)
        board.trash(job_id)
    click.echo(f"trashed {job_id} (was {job.state.value})")


@main.command()
@job_id_argument
@common_options
def cancel(job_id: str, zk: str, root: str, logbook: str, auth: Auth) -> None:
    """Cancel a job: a waiting job is cancelled at once; a running one is
    stopped by its holder at the next task boundary and reverted."""
    from jobboard.cli_admin import Action

    with _open_board(zk, root, auth) as board:
        job, holder = _admin_target(board, Action.CANCEL, job_id)
        if job.state is JobState.CANCELLED:
            click.echo(f"job {job_id} is already CANCELLED; nothing to do")
            return
        state = board.cancel(job_id)
    if state is JobState.CLAIMED:
        click.echo(f"asked {holder or 'the holder'} to stop job {job_id}: it stops at the "
                   "next task boundary, reverts what ran and records CANCELLED")
    elif state is JobState.CANCELLED:
        click.echo(f"cancelled {job_id} (it was waiting)")
    else:   # it finished meanwhile
        raise click.ClickException(f"job {job_id} finished ({state.value}) before it "
                                   "could be cancelled")


@main.command()
@job_id_argument
@common_options
def retry(job_id: str, zk: str, root: str, logbook: str, auth: Auth) -> None:
    """Put a FAILED, CANCELLED or DEAD job back on the board as a new attempt
    (its logbook keeps what earlier attempts finished)."""
    from jobboard.cli_admin import Action

    with _open_board(zk, root, auth) as board:
        _admin_target(board, Action.RETRY, job_id)
        revived = board.retry(job_id)
    click.echo(f"job {job_id} queued again as attempt {revived.attempt}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def conductors(as_json: bool, zk: str, root: str, logbook: str, auth: Auth) -> None:
    """List live conductors: READY, or NOT READY with the reason (a conductor
    whose logbook is unavailable claims nothing until it is back)."""
    with _open_board(zk, root, auth) as board:
        live = [_readiness(c) for c in board.conductors()]
    if as_json:
        emit_json({"conductors": live})
        return
    print_table(["NAME", "STATE", "HOST", "PID", "UP", "VERSION", "IN FLIGHT", "REASON"],
                [[c["name"], "READY" if c["ready"] else "NOT READY", c.get("host"),
                  c.get("pid"), _age(c.get("started_at")), c.get("version"),
                  len(c.get("jobs") or []), _not_ready_reason(c)] for c in live])


def _readiness(record: dict[str, Any]) -> dict[str, Any]:
    """A registration record with ``ready``, ``reason`` and
    ``not_ready_since`` always present (records of older conductors lack
    them and mean ready)."""
    ready = record.get("ready", True) is not False
    return {**record, "ready": ready,
            "reason": None if ready else record.get("reason"),
            "not_ready_since": None if ready else record.get("not_ready_since")}


def _not_ready_reason(record: dict[str, Any]) -> str:
    if record["ready"]:
        return "-"
    reason = " ".join(str(record.get("reason") or "no reason given").split())
    since = record.get("not_ready_since")
    if isinstance(since, (int, float)) and since > 0:
        reason += f" (for {_age(since)})"
    return reason


@main.command()
@click.option("--port", default=9465, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the /metrics endpoint (0 picks a free one).")
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@common_options
def exporter(port: int, addr: str, zk: str, root: str, logbook: str,
             auth: Auth) -> None:
    """Serve the board's gauges (depth by priority, oldest waiting age, live
    conductors) to Prometheus, one exporter per fleet. Stops on SIGTERM or
    SIGINT."""
    import signal

    from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

    from jobboard.metrics import BoardCollector, serve

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    disable_created_metrics()
    with _open_board(zk, root, auth, timeout=DAEMON_CONNECT_TIMEOUT) as board:
        registry = CollectorRegistry()
        registry.register(BoardCollector(board))
        ProcessCollector(registry=registry)
        try:
            server = serve(port, registry, addr=addr)
        except OSError as exc:
            raise ConfigError(_listen_error(addr, port, exc, "--port")) from None
        click.echo(f"serving board metrics on http://{addr}:{server.server_port}/metrics",
                   err=True)
        try:
            while not stop.wait(1.0):
                pass
        finally:
            server.shutdown()
            server.server_close()
    click.echo("exporter stopped", err=True)

# ---- end board commands ------------------------------------------------------

# ---- logbook commands --------------------------------------------------------


def _open_logbook(url: str, *, auto_upgrade: bool | None = None, retry_attempts: int = 6,
                  retry_max_delay: float = 20.0) -> Any:
    from jobboard.logbook import Logbook

    return Logbook(url, auto_upgrade=auto_upgrade, retry_attempts=retry_attempts,
                   retry_max_delay=retry_max_delay)


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _failure_doc(failure: Any) -> dict | None:
    return None if failure is None else failure.to_dict()


def _logbook_info_doc(info: Any) -> dict:
    return {"job_id": info.job_id, "name": info.name, "owner": info.owner,
            "token": info.token, "attempt": info.attempt,
            "flow_state": None if info.flow_state is None else info.flow_state.value,
            "created_at": _iso(info.created_at), "updated_at": _iso(info.updated_at)}


def _atom_doc(a: Any) -> dict:
    return {"name": a.name, "kind": a.kind, "state": a.state.value,
            "attempts": a.attempts, "result": a.result, "meta": a.meta,
            "failure": _failure_doc(a.failure),
            "revert_failure": _failure_doc(a.revert_failure),
            "created_at": _iso(a.created_at), "updated_at": _iso(a.updated_at),
            "started_at": _iso(a.started_at), "finished_at": _iso(a.finished_at),
            "duration": a.duration}


def _attempt_summary(flow: Any) -> dict:
    return {"attempt": flow.attempt, "name": flow.name, "state": flow.state.value,
            "created_at": _iso(flow.created_at), "updated_at": _iso(flow.updated_at)}


def _logbook_attempts(url: str, job_id: str) -> tuple[list[dict] | None, str | None]:
    """For ``jobboard show``: the summary of every attempt in the logbook
    (oldest first), or None and a one-line note saying why it cannot be read
    (each read bounded by about :data:`LOGBOOK_READ_TIMEOUT` seconds)."""
    from jobboard.errors import LogbookError

    path = preflight.sqlite_path(url)
    if path is not None and not path.exists():
        return [], None          # no logbook yet (and reading must not create one)
    try:
        with _open_logbook(url, auto_upgrade=False, retry_attempts=2,
                           retry_max_delay=LOGBOOK_READ_TIMEOUT) as book:
            return [_attempt_summary(flow) for flow in book.attempts(job_id)], None
    except LogbookError as exc:
        return None, f"logbook not read: {exc}"


@main.group("logbook")
def logbook_group() -> None:
    """Inspect and maintain the SQL logbook."""


@logbook_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def logbook_show(job_id: str, as_json: bool, zk: str, root: str, logbook: str,
                 auth: Auth) -> None:
    """Show every attempt of a job's flow and each task: state, attempts,
    timing, failure. The current attempt comes last."""
    with _open_logbook(logbook) as book:
        info = book.get_logbook(job_id)
        flows = book.attempts(job_id)
    current = next((f for f in flows if f.attempt == info.attempt), None)
    if as_json:
        emit_json({
            "job_id": info.job_id,
            "logbook": _logbook_info_doc(info),
            "attempts": [{**_attempt_summary(f), "meta": f.meta,
                          "tasks": [_atom_doc(a) for a in f.atoms.values()]} for f in flows],
            # The current attempt, as before attempts were kept.
            "flow": None if current is None else {
                "name": current.name, "state": current.state.value, "meta": current.meta,
                "attempt": current.attempt, "created_at": _iso(current.created_at),
                "updated_at": _iso(current.updated_at)},
            "atoms": [] if current is None else [_atom_doc(a) for a in current.atoms.values()],
        })
        return
    click.echo(f"job:    {info.job_id}  {info.name}".rstrip())
    click.echo(f"owner:  {info.owner or '-'} (token {info.token})")
    click.echo(f"attempts: {len(flows)} (current {info.attempt})")
    if not flows:
        click.echo("flow:   (none yet)")
    for flow in flows:
        click.echo("")
        click.echo(f"attempt {flow.attempt}: {flow.name}  {flow.state.value}  "
                   f"(created {_iso(flow.created_at)}, updated {_iso(flow.updated_at)})")
        _print_tasks(list(flow.atoms.values()))
    if flows and current is None:
        click.echo(f"\nattempt {info.attempt}: (no flow yet)")


def _print_tasks(atoms: list[Any]) -> None:
    """One attempt's tasks as a table, then their tracebacks."""
    rows = []
    for a in atoms:
        duration = a.duration
        rows.append([a.name, a.kind, a.state.value, a.attempts,
                     _iso(a.started_at) or "-",
                     "-" if duration is None else f"{duration:.3f}s",
                     "" if a.failure is None else str(a.failure)])
    print_table(["TASK", "KIND", "STATE", "ATTEMPTS", "STARTED", "DURATION", "FAILURE"], rows)
    for a in atoms:
        for label, failure in (("failure", a.failure), ("revert failure", a.revert_failure)):
            if failure is not None and failure.traceback:
                click.echo(f"\n{a.name} {label}:\n{failure.traceback.rstrip()}")


@logbook_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1),
              help="How many logbooks, newest first.")
@common_options
def logbook_list(as_json: bool, limit: int, zk: str, root: str, logbook: str,
                 auth: Auth) -> None:
    """List logbooks, newest first."""
    with _open_logbook(logbook) as book:
        infos = book.list_logbooks(limit=limit)
    if as_json:
        emit_json([_logbook_info_doc(i) for i in infos])
        return
    print_table(["JOB", "NAME", "ATTEMPT", "FLOW STATE", "OWNER", "TOKEN", "UPDATED"],
                [[i.job_id, i.name, i.attempt, i.flow_state.value if i.flow_state else "-",
                  i.owner or "-", i.token, _iso(i.updated_at)] for i in infos])


@logbook_group.command("upgrade")
@common_options
def logbook_upgrade(zk: str, root: str, logbook: str, auth: Auth) -> None:
    """Migrate the logbook schema to the newest revision (SQLite, PostgreSQL,
    MySQL; processes upgrading together migrate once, under a database lock)."""
    with _open_logbook(logbook, auto_upgrade=False) as book:
        book.upgrade()
        book.check()
    click.echo("logbook schema is up to date")


@logbook_group.command("prune")
@click.option("--older-than", "days", required=True, type=click.FloatRange(min=0),
              help="Remove logbooks not updated for this many days.")
@common_options
def logbook_prune(days: float, zk: str, root: str, logbook: str, auth: Auth) -> None:
    """Remove old logbooks (retention)."""
    from datetime import timedelta

    with _open_logbook(logbook) as book:
        removed = book.delete_older_than(timedelta(days=days))
    click.echo(f"removed {removed} logbook(s) older than {days:g} day(s)")


# ---- end logbook commands ----------------------------------------------------

# ---- conductor commands ------------------------------------------------------

@main.command()
@click.option("--name", default=None, help="Unique conductor name (default host-pid).")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1),
              help="Jobs run at once.")
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics on this port.")
@click.option("--allow", "allow", multiple=True, metavar="PREFIX",
              help="Module prefix flow factories may come from (repeatable).")
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a graceful stop lets running jobs finish.")
@click.option("--session-timeout", default=10.0, show_default=True,
              type=click.FloatRange(min=0.2),
              help="ZooKeeper session timeout: a dead conductor's jobs are reclaimed after it.")
@click.option("--max-claims", default=5, show_default=True, type=click.IntRange(1),
              help="Dead-letter a job claimed this many times without finishing.")
@click.option("--fsck-interval", default=300.0, show_default=True,
              type=click.FloatRange(min=0),
              help="Seconds between repair sweeps of the board, run by one elected "
                   "conductor at a time (0: this one never stands).")
@click.option("--executor", default="thread", show_default=True, envvar="JOBBOARD_EXECUTOR",
              show_envvar=True, type=click.Choice(["thread", "process"]),
              help="Where tasks run: threads of the conductor, or worker processes "
                   "(a task that crashes or hangs costs only its process).")
@click.option("--task-timeout", default=None, envvar="JOBBOARD_TASK_TIMEOUT",
              show_envvar=True, type=preflight.Seconds(), metavar="SECONDS",
              help="Time limit of every task call (default: none; Task(timeout=) "
                   "sets one per task).")
@click.option("--stop-timeout", default=30.0, show_default=True,
              envvar="JOBBOARD_STOP_TIMEOUT", show_envvar=True, type=preflight.Seconds(),
              metavar="SECONDS",
              help="How long a task asked to stop (cancel, transfer, time limit) gets "
                   "before it is abandoned (thread) or killed (process).")
@common_options
def conductor(name: str | None, concurrency: int, metrics_port: int | None,
              allow: tuple[str, ...], grace: float, session_timeout: float, max_claims: int,
              fsck_interval: float, executor: str, task_timeout: float | None,
              stop_timeout: float, zk: str, root: str, logbook: str, auth: Auth) -> None:
    """Run a conductor: claim jobs and run their flows until SIGTERM.

    It refuses to start (one line, exit 1) when its logbook cannot be reached
    or its schema cannot be brought up to date.

    The first SIGTERM/SIGINT stops claiming and lets running jobs finish for
    --grace seconds, then abandons the rest; a second one exits at once.
    """
    import os
    import signal

    from jobboard.conductor import Conductor
    from jobboard.conductor.conductor import default_name
    from jobboard.errors import BoardError

    if not allow:
        raise click.UsageError("no --allow PREFIX given: the conductor would refuse every "
                               "flow factory (for example --allow myapp.flows)")
    preflight.check_logbook(logbook)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("jobboard").setLevel(logging.INFO)
    metrics = None
    if metrics_port is not None:
        from jobboard.metrics import Metrics, serve

        metrics = Metrics()
        try:
            serve(metrics_port, metrics.registry)
        except OSError as exc:
            raise ConfigError(_listen_error("0.0.0.0", metrics_port, exc,
                                            "--metrics-port")) from None
    board = _open_board(zk, root, auth, timeout=DAEMON_CONNECT_TIMEOUT,
                        session_timeout=session_timeout, max_claims=max_claims)
    try:
        name = name or default_name()
        # Registration refuses a duplicate too (below, from the run thread);
        # checking first makes the usual mistake one clean line.
        if any(live.get("name") == name for live in board.conductors()):
            raise BoardError(
                f"a conductor named {name!r} is already running (see `jobboard conductors`; "
                "one that just died is listed until its session expires); pick another --name")
        store = _open_logbook(logbook)
    except BaseException:
        board.close()
        raise
    worker = Conductor(board, store, name=name, concurrency=concurrency, allow=allow,
                       grace=grace, metrics=metrics, fsck_interval=fsck_interval,
                       executor=executor, task_timeout=task_timeout,
                       stop_timeout=stop_timeout)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        graceful = signals["count"] == 1
        click.echo(f"{signal.Signals(signum).name}: "
                   + ("stopping gracefully (again to exit now)" if graceful else "exiting now"),
                   err=True)
        worker.stop(graceful=graceful)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(f"conductor {worker.name} running (concurrency {concurrency}, "
               f"{executor} executor)", err=True)
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported below, exit status 1
            crashed.append(exc)

    runner = threading.Thread(target=run, name="conductor", daemon=True)
    runner.start()
    while runner.is_alive():
        runner.join(0.5)
    hard = signals["count"] > 1
    store.close()
    board.close()
    if crashed:
        if isinstance(crashed[0], JobBoardError):
            # e.g. the same --name registered meanwhile: a user error, one line
            click.echo(f"error: {crashed[0]}", err=True)
        else:
            logging.getLogger("jobboard.conductor").error(
                "conductor %s stopped on an error", worker.name, exc_info=crashed[0])
        os._exit(1)
    if hard:
        os._exit(1)   # task threads may still be running: do not wait for them

# ---- end conductor commands --------------------------------------------------


@main.command()
@click.option("--jobs", default=6, show_default=True, type=click.IntRange(1, 50),
              help="How many jobs the producer posts.")
def demo(jobs: int) -> None:
    """Run a local fleet: ZooKeeper, two conductors, a producer; kill one
    conductor mid-flight and watch its jobs resume elsewhere."""
    from jobboard.demo import run_demo

    sys.exit(run_demo(jobs))
