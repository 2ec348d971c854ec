"""The chaos suite's flow (``jobboard.testing.chaos_flows:recorded``).

Five tasks in a line; each records every execution in an ``executions``
table of the test's PostgreSQL schema: a row is inserted when ``execute``
starts and its ``finished_at`` set when it ends, so a task run twice shows as
two rows. Each row carries the pid and conductor name of the process that ran
it and the fencing token of the engine that handed it over, so the suite can
tell a re-run of a task the logbook had acknowledged (a bug) from the
at-least-once re-run of a task whose holder died or was paused before its
result was saved (expected). ``execute`` returns ``{"exec_id", "pid",
"conductor", "token"}``: the atom result in the logbook names the execution
it came from.

The token is read from the engine running the task, found from the call's
control, current in the task's thread (see :func:`engine_identity`). This
is test instrumentation only: the
engine deliberately does not hand tokens to tasks. When it cannot be found
(the engine's internals changed) the row's token is NULL and the suite says
so instead of guessing.

How it fails: a database error fails the task (and so the flow); the suite
treats any FAILED job other than its deliberately broken one as a failure.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time
from datetime import datetime, timezone
from typing import Any

from jobboard.engine import Task, flows

CONDUCTOR_ENV = "CHAOS_CONDUCTOR"

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS executions (
    id BIGSERIAL PRIMARY KEY,
    job_id VARCHAR(64),
    label VARCHAR(64) NOT NULL,
    task VARCHAR(64) NOT NULL,
    pid INTEGER NOT NULL,
    conductor VARCHAR(128),
    token BIGINT,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ
)
"""

_engines: dict[str, Any] = {}
_engines_lock = threading.Lock()


def executions_engine(url: str) -> Any:
    """One SQLAlchemy engine per process and URL."""
    from sqlalchemy import create_engine

    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_size=4, max_overflow=4, pool_pre_ping=True)
            _engines[url] = engine
        return engine


# Every write of an atom that lands in the logbook, with the logbook's token
# and owner at that instant (in the writer's transaction, after its fence):
# the suite checks each SUCCESS write against the token of the engine that ran
# the task. The logbook's own tables must exist first (``Logbook.upgrade``).
AUDIT_DDL = [
    """
    CREATE TABLE IF NOT EXISTS atom_writes (
        id BIGSERIAL PRIMARY KEY,
        job_id VARCHAR(64),
        name VARCHAR(255),
        state VARCHAR(32),
        result BYTEA,
        logbook_token BIGINT,
        logbook_owner VARCHAR(255),
        written_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
    )
    """,
    """
    CREATE OR REPLACE FUNCTION record_atom_write() RETURNS trigger AS $$
    BEGIN
        INSERT INTO atom_writes (job_id, name, state, result, logbook_token, logbook_owner)
        SELECT f.job_id, NEW.name, NEW.state, NEW.result, l.token, l.owner
        FROM flowdetails f JOIN logbooks l ON l.job_id = f.job_id
        WHERE f.id = NEW.flow_id;
        RETURN NEW;
    END
    $$ LANGUAGE plpgsql
    """,
    "DROP TRIGGER IF EXISTS atom_writes_audit ON atomdetails",
    """
    CREATE TRIGGER atom_writes_audit AFTER INSERT OR UPDATE ON atomdetails
    FOR EACH ROW EXECUTE FUNCTION record_atom_write()
    """,
]


def create_tables(url: str) -> None:
    """The executions table and the audit of atom writes (PostgreSQL)."""
    from sqlalchemy import text

    with executions_engine(url).begin() as conn:
        conn.execute(text(EXECUTIONS_DDL))
        for statement in AUDIT_DDL:
            conn.execute(text(statement))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _holders(book: Any) -> list[Any]:
    """Objects holding ``book`` as their ``_calls`` (an instance, or its
    ``__dict__`` when one was made: then the instance holding that dict)."""
    found = []
    for referrer in gc.get_referrers(book):
        if getattr(referrer, "_calls", None) is book:
            found.append(referrer)
        elif isinstance(referrer, dict) and referrer.get("_calls") is book:
            found += [owner for owner in gc.get_referrers(referrer)
                      if getattr(owner, "__dict__", None) is referrer]
    return found


def engine_identity() -> tuple[str, int] | None:
    """(job_id, token) of the engine that handed this thread its task call;
    None when it cannot be found (the engine's internals changed).

    The call's control is current in this thread; its observer is the
    engine's record of the call, kept in the engine's book of calls in
    flight (``_book``), which the engine holds as ``_calls``. Only this
    thread's own state and the collector's referrers are read: walking
    another running thread's frames is unsafe on CPython 3.11+ (their frames
    can be freed under the walker; the suite once read a tuple as a frame)."""
    from jobboard.engine import control

    call = control.current()
    book = getattr(getattr(call, "observer", None), "_book", None)
    if book is None:
        return None
    for engine in _holders(book):
        job_id, token = getattr(engine, "job_id", None), getattr(engine, "token", None)
        if job_id is not None and isinstance(token, int):
            return str(job_id), token
    return None


class Recorded(Task):
    """Sleeps a little; records its execution (see the module docstring)."""

    def __init__(self, name: str, db: str, min_ms: int, max_ms: int) -> None:
        super().__init__(name, provides=f"{name}_run")
        self.db = db
        self.min_ms = min_ms
        self.max_ms = max_ms

    def execute(self, label: str) -> dict[str, Any]:
        from sqlalchemy import text

        identity = engine_identity()
        job_id, token = identity if identity is not None else (None, None)
        pid = os.getpid()
        conductor = os.environ.get(CONDUCTOR_ENV)
        engine = executions_engine(self.db)
        with engine.begin() as conn:
            exec_id = conn.execute(text(
                "INSERT INTO executions (job_id, label, task, pid, conductor, token, started_at)"
                " VALUES (:job_id, :label, :task, :pid, :conductor, :token, :started_at)"
                " RETURNING id"),
                dict(job_id=job_id, label=label, task=self.name, pid=pid,
                     conductor=conductor, token=token, started_at=_now())).scalar_one()
        time.sleep(random.uniform(self.min_ms, self.max_ms) / 1000.0)
        with engine.begin() as conn:
            conn.execute(text("UPDATE executions SET finished_at = :now WHERE id = :id"),
                         dict(now=_now(), id=exec_id))
        return {"exec_id": exec_id, "pid": pid, "conductor": conductor, "token": token}


TASKS = tuple(f"t{n}" for n in range(1, 6))


def recorded(db: str, min_ms: int = 5, max_ms: int = 30) -> flows.Flow:
    """t1 .. t5 in a line, each recording its executions in ``db``."""
    return flows.linear("chaos", *[Recorded(name, db, min_ms, max_ms) for name in TASKS])
