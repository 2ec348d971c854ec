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

The token is read from the engine running the task, found through the
running threads' frames (the engine is waiting in ``_forward`` with the
task's future in its ``running`` map). This is test instrumentation only: the
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
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from jobboard.engine import Task, flows

CONDUCTOR_ENV = "CHAOS_CONDUCTOR"
TOKEN_LOOKUP_SECONDS = 2.0

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


def _own_future() -> Any:
    """The future of the executor work item running this thread's task."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if type(owner).__name__ == "_WorkItem":
            return getattr(owner, "future", None)
        frame = frame.f_back
    return None


def _other_threads_frames() -> list[Any]:
    """``sys._current_frames()`` with the collector off while it runs: on
    CPython 3.11 a collection that starts inside it (it allocates frame
    objects while holding the runtime's thread-list lock) can free a
    ``threading.local``, which takes that lock again, and the whole process
    hangs (python/cpython#106883; the chaos suite hit it about once in five
    runs under load)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return list(sys._current_frames().values())
    finally:
        if enabled:
            gc.enable()


def _engine_running(future: Any) -> tuple[str, int] | None:
    """(job_id, token) of the engine waiting on ``future``; None when not seen."""
    for top in _other_threads_frames():
        frame = top
        while frame is not None:
            if frame.f_code.co_name == "_forward":
                local = frame.f_locals
                engine, running = local.get("self"), local.get("running")
                if isinstance(running, dict) and future in running:
                    return str(engine.job_id), int(engine.token)
            frame = frame.f_back
    return None


def engine_identity() -> tuple[str, int] | None:
    future = _own_future()
    if future is None:
        return None
    # The engine puts the future into ``running`` right after submitting it:
    # wait (bounded) for that instant.
    deadline = time.monotonic() + TOKEN_LOOKUP_SECONDS
    while True:
        found = _engine_running(future)
        if found is not None or time.monotonic() > deadline:
            return found
        time.sleep(0.001)


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
