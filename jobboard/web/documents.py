"""The JSON documents the console's API serves: a job with its history and
logbook timeline, the claims with what each job is running, the conductors.

Jobs keep the fields of ``jobboard jobs --json`` (:meth:`Job.to_dict`); the
console adds ``holder``, ``queue``, ``cancel_requested``, ``actions`` (each
admin action -> None when allowed, else the one line saying why not, from
:mod:`jobboard.cli.admin_rules`) and ``logbook``.

How it fails: board errors propagate (the app maps them to HTTP statuses);
the logbook is optional -- when it cannot be read the document says so in
``logbook.error`` and the rest is still served. Reading never creates a
logbook: a SQLite file that does not exist yet reads as empty.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from jobboard.board import Board
from jobboard.board.job import Job
from jobboard.board.lookup import resolve_job_id
from jobboard.cli.admin_rules import Action, refusal
from jobboard.errors import LogbookError
from jobboard.states import AtomState, JobState
from jobboard.web.listing import job_queue

__all__ = ["LogbookReader", "job_summary", "job_document", "claims_document",
           "conductors_document"]

#: Seconds the console waits for the logbook before it serves a page without it.
LOGBOOK_READ_TIMEOUT = 3.0


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class LogbookReader:
    """Read-only access to the logbook, opened on first use, shared by the
    console's request threads (SQLAlchemy's engine pools connections).

    Args:
        url: the logbook's SQLAlchemy URL.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._book: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any | None:
        with self._lock:
            if self._book is None:
                from jobboard.logbook import Logbook
                from jobboard.logbook._db import sqlite_file

                database = sqlite_file(self.url)
                if database is not None and not Path(database).expanduser().exists():
                    return None      # nothing ran yet; reading must not create it

                self._book = Logbook(self.url, auto_upgrade=False, retry_attempts=2,
                                     retry_max_delay=LOGBOOK_READ_TIMEOUT)
            return self._book

    def close(self) -> None:
        with self._lock:
            if self._book is not None:
                self._book.close()
                self._book = None

    def timeline(self, job_id: str) -> dict[str, Any]:
        """Every attempt of the job's flow (oldest first) with every task:
        ``{"attempts": [...], "error": None or one line}``."""
        try:
            book = self._open()
            flows = [] if book is None else book.attempts(job_id)
        except LogbookError as exc:
            return {"attempts": [], "error": " ".join(str(exc).split())}
        return {"attempts": [_attempt_doc(flow) for flow in flows], "error": None}

    def running(self, job_ids: list[str]) -> tuple[dict[str, dict[str, Any]], str | None]:
        """What each job runs now: ``{job_id: {"task", "progress", "note",
        "heartbeat_at"}}`` and None, or ``{}`` and the reason the logbook
        could not be read."""
        out: dict[str, dict[str, Any]] = {}
        try:
            book = self._open()
            for job_id in job_ids if book is not None else ():
                flow = book.load_flow(job_id)
                tasks = [_task_doc(a) for a in (flow.atoms.values() if flow else ())
                         if a.state in (AtomState.RUNNING, AtomState.REVERTING)]
                latest = max(tasks, key=lambda t: t["heartbeat_at"] or 0, default=None)
                out[job_id] = {"task": ",".join(t["name"] for t in tasks) or None,
                               "progress": latest and latest["progress"],
                               "note": latest and latest["note"],
                               "heartbeat_at": latest and latest["heartbeat_at"]}
        except LogbookError as exc:
            return {}, " ".join(str(exc).split())
        return out, None

    def fingerprint(self, job_id: str) -> Any:
        """Something that changes whenever the job's current attempt changes
        in the logbook (states, attempts, heartbeats); for live updates."""
        try:
            book = self._open()
            flow = None if book is None else book.load_flow(job_id)
        except LogbookError:
            return None
        if flow is None:
            return None
        return (flow.attempt, flow.state.value, _iso(flow.updated_at),
                tuple((a.name, a.state.value, a.attempts, _iso(a.updated_at),
                       (a.meta or {}).get("heartbeat_at")) for a in flow.atoms.values()))


def _failure_doc(failure: Any) -> dict[str, str] | None:
    return None if failure is None else failure.to_dict()


def _task_doc(atom: Any) -> dict[str, Any]:
    meta = atom.meta or {}
    return {"name": atom.name, "kind": atom.kind, "state": atom.state.value,
            "attempts": atom.attempts, "result": atom.result,
            "failure": _failure_doc(atom.failure),
            "revert_failure": _failure_doc(atom.revert_failure),
            "progress": meta.get("progress"), "note": meta.get("note"),
            "heartbeat_at": meta.get("heartbeat_at"),
            "started_at": _epoch(atom.started_at), "finished_at": _epoch(atom.finished_at),
            "updated_at": _epoch(atom.updated_at), "duration": atom.duration}


def _attempt_doc(flow: Any) -> dict[str, Any]:
    tasks = sorted(flow.atoms.values(),
                   key=lambda a: (a.started_at is None, a.started_at or datetime.min,
                                  a.created_at or datetime.min))
    return {"attempt": flow.attempt, "name": flow.name, "state": flow.state.value,
            "created_at": _epoch(flow.created_at), "updated_at": _epoch(flow.updated_at),
            "tasks": [_task_doc(a) for a in tasks]}


def job_summary(job: Job) -> dict[str, Any]:
    """A job as ``jobboard jobs --json`` lists it, plus its ``queue``."""
    return {**job.to_dict(), "queue": job_queue(job)}


def job_document(board: Board, logbook: LogbookReader, job_id: str) -> dict[str, Any]:
    """One job: its record, holder, the actions allowed now and its logbook
    timeline.

    Raises:
        JobNotFound / InvalidArgument: see
            :func:`jobboard.board.lookup.resolve_job_id` (ids may be prefixes).
        MalformedData: the record does not validate.
    """
    job = board.get(resolve_job_id(board, job_id))
    holder = board.claim_owner(job.uuid) if job.state is JobState.CLAIMED else None
    doc = job_summary(job)
    doc["holder"] = holder
    doc["cancel_requested"] = job.state is JobState.CLAIMED and \
        board.cancel_requested(job.uuid)
    doc["actions"] = {action.value: refusal(action, job, holder) for action in Action}
    doc["logbook"] = logbook.timeline(job.uuid)
    return doc


def claims_document(board: Board, logbook: LogbookReader) -> dict[str, Any]:
    """Current claims (job, owner, since, token) with the task each runs."""
    held = board.claims()
    running, error = logbook.running([c["job_id"] for c in held])
    names = {job.uuid: job.name for job, _ in board.records.read_many(
        [c["job_id"] for c in held])}
    nothing = {"task": None, "progress": None, "note": None, "heartbeat_at": None}
    claims = [{**claim, "name": names.get(claim["job_id"]),
               **running.get(claim["job_id"], nothing)} for claim in held]
    return {"claims": claims, "logbook_error": error}


def conductors_document(board: Board) -> dict[str, Any]:
    """Live conductors: name, host, pid, started_at, version, concurrency,
    jobs (in flight), queues, ready and the reason when not."""
    out = []
    for record in board.conductors():
        ready = record.get("ready", True) is not False
        jobs = record.get("jobs") or []
        out.append({**record, "ready": ready, "jobs": jobs, "slots_in_use": len(jobs),
                    "queues": record.get("queues"),
                    "reason": None if ready else record.get("reason"),
                    "not_ready_since": None if ready else record.get("not_ready_since")})
    return {"conductors": out}
