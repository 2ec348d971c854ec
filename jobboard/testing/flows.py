"""Flow factories for tests and benchmarks (``jobboard.testing.flows:...``).

Tasks append one line per execution to a journal file (``"<task> <pid>"``),
so a test can count how often each task ran across conductor processes that
crash and resume. A task named in ``hold_at`` blocks until a gate file
exists (bounded), giving a test a moment to kill its conductor mid-flow.
"""

from __future__ import annotations

import os
import time
from typing import Any

from jobboard.engine import Task, flows

HOLD_LIMIT = 120.0


def append_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def record_run(journal: str, name: str, gate: str | None = None) -> None:
    """Journal one execution of task ``name``; with a ``gate``, also journal
    that it holds, then block until the gate file exists (at most HOLD_LIMIT)."""
    append_line(journal, f"{name} {os.getpid()}")
    if gate:
        append_line(journal, f"{name}-holding {os.getpid()}")
        deadline = time.monotonic() + HOLD_LIMIT
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)


def read_journal(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.split()[0] for line in handle if line.strip()]
    except FileNotFoundError:
        return []


class Step(Task):
    """Records its execution; may hold at a gate, fail, or provide a value."""

    def __init__(self, name: str, journal: str, *, hold: str | None = None,
                 fail: bool = False, **options: Any) -> None:
        super().__init__(name, provides=f"{name}_done", **options)
        self.journal = journal
        self.hold = hold
        self.fail = fail

    def execute(self) -> str:
        record_run(self.journal, self.name, self.hold)
        if self.fail:
            raise RuntimeError(f"{self.name} failed on purpose")
        return f"{self.name} by {os.getpid()}"

    def revert(self, result: Any = None, failure: Any = None) -> None:
        append_line(self.journal, f"{self.name}-reverted {os.getpid()}")


def five_steps(journal: str, hold_at: str | None = None, gate: str | None = None,
               fail_at: str | None = None, lock: str | None = None) -> flows.Flow:
    """step1 .. step5 in a line."""
    return flows.linear(
        "five-steps",
        *[Step(f"step{n}", journal, hold=gate if hold_at == f"step{n}" else None,
               fail=fail_at == f"step{n}",
               locks=[lock] if lock and n == 1 else None)
          for n in range(1, 6)])


class Noop(Task):
    def execute(self) -> None:
        return None


def noop() -> Task:
    return flows.linear("noop", Noop("noop"))


def needs_args(region: str) -> flows.Flow:
    return flows.linear("needs-args", Noop(f"noop-{region}"))


def broken() -> flows.Flow:
    raise RuntimeError("this factory is broken")
