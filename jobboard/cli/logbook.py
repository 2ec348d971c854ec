"""``jobboard logbook ...``: inspect and maintain the SQL logbook. These
commands use the logbook alone (``--logbook``), no ZooKeeper.

``show`` and ``list`` only read: on a SQLite logbook that does not exist
they stop with "no logbook at PATH" instead of creating an empty one.
``prune`` refuses the same way. ``upgrade`` creates or migrates the schema
and says which it did. ``show`` takes a job id or a unique prefix of one
(among the logbook's job ids).

How it fails: one ``error:`` line, exit 1: no logbook, no logbook for that
job, an ambiguous prefix, a database that cannot be reached, a schema to
upgrade (the line says to run ``jobboard logbook upgrade``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from jobboard.cli import logbook_access
from jobboard.cli.common import emit_json, json_option, logbook_option, print_table
from jobboard.errors import ConfigError, InvalidArgument

__all__ = ["logbook_group"]

_MAX_CANDIDATES = 5


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _failure_doc(failure: Any) -> dict | None:
    return None if failure is None else failure.to_dict()


def _info_doc(info: Any) -> dict:
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


def _attempt_doc(flow: Any) -> dict:
    return {"attempt": flow.attempt, "name": flow.name, "state": flow.state.value,
            "created_at": _iso(flow.created_at), "updated_at": _iso(flow.updated_at)}


def _open_existing(url: str) -> Any:
    logbook_access.require_existing(url)
    return logbook_access.open_logbook(url)


def _resolve(url: str, text: str) -> str:
    """``text`` as a job id of the logbook: itself when a logbook has that
    id, else the one id starting with it.

    The logbook has no lookup by prefix yet, so this asks its table directly
    (one indexed ``LIKE 'prefix%'`` query); it moves into ``Logbook`` when
    that gains one.
    """
    from sqlalchemy import select
    from sqlalchemy.pool import NullPool

    from jobboard.logbook import _db
    from jobboard.logbook.models import LogBookRow

    clean = text.strip()
    engine = _db.make_engine(url, {"poolclass": NullPool}, timeouts=_db.PROBE_TIMEOUTS)
    try:
        query = (select(LogBookRow.job_id)
                 .where(LogBookRow.job_id.startswith(clean, autoescape=True))
                 .order_by(LogBookRow.job_id).limit(_MAX_CANDIDATES + 1))
        with engine.connect() as connection:
            found = [row[0] for row in connection.execute(query)]
    except Exception:  # noqa: BLE001 - the Logbook's own read reports the database
        return clean
    finally:
        engine.dispose()
    if clean in found or not found:
        return clean            # an exact id; or none, which get_logbook reports
    if len(found) == 1:
        return found[0]
    more = " and more" if len(found) > _MAX_CANDIDATES else ""
    raise InvalidArgument(f"job id prefix {clean!r} is ambiguous in the logbook: it matches "
                      f"{', '.join(found[:_MAX_CANDIDATES])}{more}; give more characters")


@click.group("logbook")
def logbook_group() -> None:
    """Inspect and maintain the SQL logbook."""


@logbook_group.command("show")
@click.argument("job_id")
@json_option
@logbook_option
def logbook_show(job_id: str, as_json: bool, logbook: str) -> None:
    """Show every attempt of a job's flow and each task: state, attempts,
    timing, failure with its traceback. The current attempt comes last.
    JOB_ID may be any unique prefix."""
    with _open_existing(logbook) as book:
        job_id = _resolve(logbook, job_id)
        info = book.get_logbook(job_id)
        flows = book.attempts(job_id)
    current = next((f for f in flows if f.attempt == info.attempt), None)
    if as_json:
        emit_json({
            "job_id": info.job_id,
            "logbook": _info_doc(info),
            "attempts": [{**_attempt_doc(f), "meta": f.meta,
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
@json_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1),
              help="How many logbooks, newest first.")
@logbook_option
def logbook_list(as_json: bool, limit: int, logbook: str) -> None:
    """List logbooks, newest first."""
    with _open_existing(logbook) as book:
        infos = book.list_logbooks(limit=limit)
    if as_json:
        emit_json({"logbooks": [_info_doc(i) for i in infos], "limit": limit})
        return
    print_table(["JOB", "NAME", "ATTEMPT", "FLOW STATE", "OWNER", "TOKEN", "UPDATED"],
                [[i.job_id, i.name, i.attempt, i.flow_state.value if i.flow_state else "-",
                  i.owner or "-", i.token, _iso(i.updated_at)] for i in infos])


@logbook_group.command("upgrade")
@json_option
@logbook_option
def logbook_upgrade(as_json: bool, logbook: str) -> None:
    """Create the logbook's schema, or migrate it to the newest revision
    (SQLite, PostgreSQL, MySQL; processes upgrading together migrate once,
    under a database lock). Says which it did."""
    from jobboard.errors import LogbookSchemaError
    from jobboard.logbook._db import head_revision, safe_url

    logbook_access.prepare_default(logbook)
    path = logbook_access.sqlite_path(logbook)
    if path is not None and not path.parent.is_dir():
        raise ConfigError(f"cannot create logbook {path}: directory {path.parent} does not "
                          "exist; create it or point --logbook elsewhere")
    new_file = path is not None and not path.exists()
    before: str | None = None
    with logbook_access.open_logbook(logbook, auto_upgrade=False) as book:
        if new_file:
            action = "created"
        else:
            try:
                book.check()
                action = "current"
            except LogbookSchemaError as exc:
                before = exc.revision
                action = "upgraded" if before else "created"
        book.upgrade()
        book.check()
    head = head_revision()
    where = str(path) if path is not None else safe_url(logbook)
    message = {"created": f"created the logbook schema in {where} (revision {head})",
               "upgraded": f"upgraded the logbook schema in {where} from revision {before} "
                           f"to {head}",
               "current": f"the logbook schema in {where} was already at revision {head}; "
                          "nothing to do"}[action]
    if as_json:
        emit_json({"logbook": where, "action": action, "from_revision": before,
                   "revision": head, "message": message})
    else:
        click.echo(message)


@logbook_group.command("prune")
@click.option("--older-than", "days", required=True, type=click.FloatRange(min=0),
              help="Remove logbooks not updated for this many days.")
@json_option
@logbook_option
def logbook_prune(days: float, as_json: bool, logbook: str) -> None:
    """Remove old logbooks (retention)."""
    with _open_existing(logbook) as book:
        removed = book.delete_older_than(timedelta(days=days))
    if as_json:
        emit_json({"removed": removed, "older_than_days": days})
    else:
        click.echo(f"removed {removed} logbook(s) older than {days:g} day(s)")
