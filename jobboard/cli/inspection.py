"""The board inspection and upkeep commands: ``jobs``, ``show``, ``claims``,
``conductors``, ``fsck``, ``prune`` and ``upgrade``.

Jobs pruned by retention are answered from the logbook: ``show JOB_ID``
(a full id: prefixes resolve among the jobs on the board only) and ``jobs
--state COMPLETE|FAILED|CANCELLED`` (archived jobs after those on the board).

``show`` and ``claims`` add what the logbook knows (attempts, the running
task and its heartbeat) when it can be read within about
:data:`LOGBOOK_READ_TIMEOUT` seconds; when it cannot, the board's part is
still printed, with one note. A SQLite logbook that does not exist is read
as empty and is not created.

How it fails: an unreachable board, an unknown or ambiguous job id: one
``error:`` line, exit 1. ``fsck`` exits 1 when it left a finding unrepaired.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

import click

from jobboard.cli import logbook_access
from jobboard.cli.common import (Connection, age, ago, board_options, due, emit_json,
                                 job_id_argument, json_option, print_table, warn)
from jobboard.cli.render import outcome_lines, value_text
from jobboard.cli.zk import open_board
from jobboard.states import JobState

__all__ = ["LOGBOOK_READ_TIMEOUT", "claims", "conductors", "fsck", "jobs", "logbook_archive",
           "prune", "show", "upgrade"]

#: Seconds ``show`` and ``claims`` wait for the logbook before they print
#: the board's part alone.
LOGBOOK_READ_TIMEOUT = 3.0

MALFORMED = "MALFORMED"
ARCHIVED_STATES = ("COMPLETE", "FAILED", "CANCELLED")
#: Archived jobs ``jobs`` lists at most without --limit.
ARCHIVED_LIMIT = 100


class _LogbookArchive:
    """The logbook as the board's outcome archive, opened only when asked
    (and never created: a SQLite logbook that does not exist has nothing)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from jobboard.conductor.janitor import LogbookArchive

        path = logbook_access.sqlite_path(self.url)
        if path is not None and not path.exists():
            return None
        with logbook_access.open_logbook(self.url, auto_upgrade=False, retry_attempts=2,
                                         retry_max_delay=LOGBOOK_READ_TIMEOUT) as book:
            result = getattr(LogbookArchive(book), method)(*args, **kwargs)
            return list(result) if method == "finished" else result

    def save(self, jobs: Any) -> set[str]:
        from jobboard.conductor.janitor import LogbookArchive

        logbook_access.prepare_default(self.url)
        with logbook_access.open_logbook(self.url) as book:
            return LogbookArchive(book).save(jobs)

    def outcome(self, job_id: str) -> Any:
        return self._call("outcome", job_id)

    def document(self, job_id: str) -> dict | None:
        return self._call("document", job_id)

    def finished(self, state: JobState, *, limit: int, skip: set[str]) -> list[dict]:
        return self._call("finished", state, limit=limit, skip=skip) or []


def logbook_archive(url: str) -> _LogbookArchive:
    """The board's outcome archive on the logbook at ``url`` (see
    :class:`jobboard.conductor.janitor.LogbookArchive`)."""
    return _LogbookArchive(url)
_SORTS = {"claim": None,
          "oldest": lambda job: (job.created_at, job.uuid),
          "newest": lambda job: (-job.created_at, job.uuid)}


@click.command()
@click.option("--state", default=None, type=click.Choice(
    [s.value for s in JobState] + [MALFORMED], case_sensitive=False))
@click.option("--sort", "order", default="claim", show_default=True,
              type=click.Choice(list(_SORTS)),
              help="claim: the board's order (waiting jobs in claim order); oldest or "
                   "newest: by age.")
@click.option("--limit", default=None, type=click.IntRange(1), metavar="N",
              help="List at most N jobs (with --sort claim, only N records are read).")
@click.option("--queue", default=None, metavar="NAME", help="Only the jobs of this queue.")
@json_option
@board_options
def jobs(state: str | None, order: str, limit: int | None, queue: str | None, as_json: bool,
         conn: Connection) -> None:
    """List jobs (waiting ones in claim order). DUE shows when a delayed job
    becomes claimable. Malformed znodes and quarantined records are listed
    as MALFORMED with the reason. With --state COMPLETE, FAILED or
    CANCELLED, jobs already pruned from the board follow, from the logbook
    (OWNER "(archived)")."""
    from jobboard.errors import ConfigError, LogbookError

    state = state.upper() if state else None
    with open_board(conn) as board:
        listing = iter(()) if state == MALFORMED else board.jobs(state, queue=queue)
        key = _SORTS[order]
        if key is None:
            found = list(itertools.islice(listing, limit + 1 if limit else None))
        else:
            found = sorted(listing, key=key)
        more = limit is not None and len(found) > limit
        found = found[:limit]
        bad = board.malformed() if state in (None, MALFORMED) else {}
    archived: list[dict] = []
    problem: str | None = None
    room = (limit - len(found)) if limit is not None else ARCHIVED_LIMIT
    if state in ARCHIVED_STATES and room > 0 and not more:
        try:
            archived = [doc for doc in logbook_archive(conn.logbook).finished(
                JobState(state), limit=room, skip={j.uuid for j in found})
                if queue in (None, doc.get("queue"))]
        except (LogbookError, ConfigError) as exc:
            problem = " ".join(str(exc).split())
            warn(f"cannot read the logbook, so pruned jobs are not listed: {problem}")
    if as_json:
        emit_json({"jobs": [j.to_dict() for j in found], "archived": archived,
                   "malformed": [{"path": p, "reason": r} for p, r in sorted(bad.items())],
                   "limit": limit, "more": more, "logbook_error": problem})
        return
    now = time.time()
    rows = [[j.uuid, j.name, j.state.value, j.priority, j.attempt, j.claims, j.queue,
             j.owner or "-", age(j.created_at), due(j.not_before, now=now)] for j in found]
    rows += [[d["job_id"], d.get("name"), d.get("state"), d.get("priority"), d.get("attempt"),
              "-", d.get("queue"), "(archived)", age(d.get("created_at")), "-"]
             for d in archived]
    rows += [[path, "-", "MALFORMED", "-", "-", "-", "-", "-", "-", reason]
             for path, reason in sorted(bad.items())]
    print_table(["JOB", "NAME", "STATE", "PRIO", "ATTEMPT", "CLAIMS", "QUEUE", "OWNER", "AGE",
                 "DUE"], rows)
    if more:
        click.echo(f"(first {limit} shown; more with a larger --limit)", err=True)


def _attempt_summary(flow: Any) -> dict:
    def iso(value: Any) -> str | None:
        return None if value is None else value.isoformat()

    return {"attempt": flow.attempt, "name": flow.name, "state": flow.state.value,
            "created_at": iso(flow.created_at), "updated_at": iso(flow.updated_at)}


def _logbook_attempts(url: str, job_id: str) -> tuple[list[dict] | None, str | None]:
    """The summary of every attempt in the logbook (oldest first), or None
    and a one-line note saying why it cannot be read."""
    from jobboard.errors import ConfigError, LogbookError

    path = logbook_access.sqlite_path(url)
    if path is not None and not path.exists():
        return [], None          # no logbook yet (and reading must not create one)
    try:
        with logbook_access.open_logbook(url, auto_upgrade=False, retry_attempts=2,
                                         retry_max_delay=LOGBOOK_READ_TIMEOUT) as book:
            return [_attempt_summary(flow) for flow in book.attempts(job_id)], None
    except (LogbookError, ConfigError) as exc:
        return None, f"logbook not read: {exc}"


@click.command()
@job_id_argument
@json_option
@board_options
def show(job_id: str, as_json: bool, conn: Connection) -> None:
    """Show one job: its record, claim, outcome (results, or the failure
    with its traceback), history and attempts."""
    from jobboard.board.job import check_job_id
    from jobboard.board.lookup import resolve_job_id
    from jobboard.errors import InvalidArgument, JobNotFound

    with open_board(conn) as board:
        try:
            job = board.get(resolve_job_id(board, job_id))
        except JobNotFound:
            try:
                full = check_job_id(job_id)
            except InvalidArgument:
                raise JobNotFound(job_id) from None
            archived = logbook_archive(conn.logbook).document(full)
            if archived is None:
                raise
            _show_archived(archived, conn.logbook, as_json)
            return
        holder = board.claim_owner(job.uuid)
    doc = job.to_dict()
    doc["holder"] = holder
    attempts, note = _logbook_attempts(conn.logbook, job.uuid)
    doc["attempts"] = attempts          # None when the logbook cannot be read
    if note is not None:
        doc["logbook_note"] = note
    if as_json:
        emit_json(doc)
        return
    for name in ("uuid", "name", "factory", "state", "queue", "priority", "attempt", "claims",
                 "deaths", "refusals", "holder", "key"):
        value = doc[name]
        click.echo(f"{name:>9}: {'-' if value is None else value}")
    for name in ("args", "store", "details"):
        click.echo(f"{name:>9}: {value_text(doc[name])}")
    click.echo(f"{'created':>9}: {age(job.created_at)} ago")
    if job.not_before and job.not_before > time.time():
        click.echo(f"{'due':>9}: {due(job.not_before)}")
    if job.outcome:
        click.echo("  outcome:")
        for line in outcome_lines(job.outcome, indent="    "):
            click.echo(line)
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


def _show_archived(document: dict, logbook_url: str, as_json: bool) -> None:
    """``show`` of a job pruned from the board: what the logbook kept."""
    attempts, note = _logbook_attempts(logbook_url, document["job_id"])
    doc = {**document, "uuid": document["job_id"], "archived": True, "attempts": attempts}
    if note is not None:
        doc["logbook_note"] = note
    if as_json:
        emit_json(doc)
        return
    for name in ("uuid", "name", "factory", "state", "queue", "priority", "attempt", "key"):
        value = doc.get(name)
        click.echo(f"{name:>9}: {'-' if value is None else value}")
    click.echo(f"{'created':>9}: {age(doc.get('created_at'))} ago")
    click.echo(f"{'pruned':>9}: {age(doc.get('pruned_at'))} ago (the board's record is "
               "gone; this is the logbook's copy)")
    click.echo("  outcome:")
    for line in outcome_lines({"results": doc.get("results"), "reason": doc.get("reason"),
                               "failure": doc.get("failure")}, indent="    "):
        click.echo(line)
    if attempts is not None:
        click.echo(f"  attempts: {len(attempts)} in the logbook")
        for entry in attempts:
            click.echo(f"    #{entry['attempt']} {entry['state']} created "
                       f"{entry['created_at']} updated {entry['updated_at']}")


def _running_tasks(logbook_url: str, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What each job is running now, from the logbook: ``{job_id: {"task",
    "progress", "note", "heartbeat_at", "tasks"}}`` (``task`` None when no task
    runs; ``tasks`` every running one, for flows running tasks side by side).

    Raises:
        LogbookError: the logbook cannot be read (within about
            :data:`LOGBOOK_READ_TIMEOUT` seconds).
        ConfigError: its driver is not installed.
    """
    from jobboard.states import AtomState

    if not job_ids:
        return {}
    path = logbook_access.sqlite_path(logbook_url)
    if path is not None and not path.exists():
        return {}    # no logbook yet: nothing has run (and reading must not create one)
    current: dict[str, dict[str, Any]] = {}
    with logbook_access.open_logbook(logbook_url, auto_upgrade=False, retry_attempts=2,
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


@click.command()
@json_option
@board_options
def claims(as_json: bool, conn: Connection) -> None:
    """Show current claims: owner, since when, and from the logbook the
    running task, its last progress and note, and when it last sent a
    heartbeat. When the logbook cannot be read the claims are still listed
    (task columns "?", one warning on stderr)."""
    from jobboard.errors import ConfigError, LogbookError

    with open_board(conn) as board:
        held = board.claims()
    problem: str | None = None
    try:
        running = _running_tasks(conn.logbook, [c["job_id"] for c in held])
    except (LogbookError, ConfigError) as exc:
        problem = " ".join(str(exc).split())
        warn(f"cannot read the logbook, so tasks are shown as ?: {problem}")
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
                ago(claim["heartbeat_at"]), note]

    print_table(["JOB", "OWNER", "SINCE", "TOKEN", "TASK", "PROGRESS", "HEARTBEAT", "NOTE"],
                [[c["job_id"], c["owner"], age(c["since"]) + " ago", c["token"],
                  *task_cells(c)] for c in held])


@click.command()
@click.option("--repair", is_flag=True, help="Put every finding right.")
@json_option
@board_options
def fsck(repair: bool, as_json: bool, conn: Connection) -> None:
    """Check every invariant of the board's layout (a job waiting with no
    queue entry, an entry with no waiting job, a running marker with no claim,
    records that fail validation, ...); with --repair, put each right.
    Exits 1 when something was found and left unrepaired."""
    with open_board(conn) as board:
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


@click.command()
@json_option
@board_options
def conductors(as_json: bool, conn: Connection) -> None:
    """List live conductors: READY, or NOT READY with the reason (a conductor
    whose logbook is unavailable claims nothing until it is back)."""
    with open_board(conn) as board:
        live = [_readiness(c) for c in board.conductors()]
    if as_json:
        emit_json({"conductors": live})
        return
    print_table(["NAME", "STATE", "HOST", "PID", "UP", "VERSION", "IN FLIGHT", "REASON"],
                [[c["name"], "READY" if c["ready"] else "NOT READY", c.get("host"),
                  c.get("pid"), age(c.get("started_at")), c.get("version"),
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
        reason += f" (for {age(since)})"
    return reason


@click.command()
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="Remove jobs that finished longer ago than this (7d, 12h, 30m, 45s, 0).")
@json_option
@board_options
def prune(older_than: str, as_json: bool, conn: Connection) -> None:
    """Remove COMPLETE, FAILED and CANCELLED jobs that finished longer ago
    than DURATION from the board, with their idempotency keys, after the
    logbook kept their outcome (show, jobs --state and post --wait still
    answer). DEAD jobs stay. Conductors do this on their own
    (--keep-finished); this is the same by hand."""
    from jobboard.board.retention import parse_duration
    from jobboard.errors import InvalidArgument

    try:
        seconds = parse_duration(older_than)
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    with open_board(conn) as board:
        report = board.prune(seconds, archive=logbook_archive(conn.logbook))
    if as_json:
        emit_json({"older_than": seconds, **report.to_dict()})
        return
    click.echo(f"{report.removed} finished job(s) removed, {report.kept} kept (not old "
               f"enough), {report.stale_entries} stale index entries dropped"
               + (f", {report.not_archived} left (the logbook did not take them)"
                  if report.not_archived else ""))


@click.command()
@json_option
@board_options
def upgrade(as_json: bool, conn: Connection) -> None:
    """Bring the board to this release's znode layout: waiting jobs move into
    their queue's buckets and finished jobs are indexed for retention.
    Idempotent, safe beside running conductors (which also do it as they
    start)."""
    with open_board(conn) as board:
        done = board.upgrade()
    if as_json:
        emit_json(done)
        return
    if done["from"] == done["to"]:
        click.echo(f"the board has layout {done['to']} already"
                   + (f"; {done['moved']} entry(ies) moved" if done["moved"] else ""))
    else:
        click.echo(f"board upgraded from layout {done['from']} to {done['to']}: "
                   f"{done['moved']} waiting job(s) moved, {done['indexed']} finished job(s) "
                   "indexed")
