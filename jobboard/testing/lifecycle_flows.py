"""Flows for lifecycle tests (``jobboard.testing.lifecycle_flows:...``): tasks
that run until a gate file appears, cooperatively or not, or never return.

Each task journals ``"<event> <task> <pid> <monotonic-free epoch>"`` lines
(``start``, ``stop``, ``interrupted``) so a test can tell which holder ran
what and when, and that two holders never ran one task at once.
"""

from __future__ import annotations

import os
import time
from typing import Any

from jobboard.engine import Task, flows
from jobboard.errors import TaskInterrupted
from jobboard.testing.flows import append_line

LIMIT = 120.0


def journal_event(journal: str, event: str, task: str) -> None:
    append_line(journal, f"{event} {task} {os.getpid()} {time.time():.6f}")


def read_events(journal: str) -> list[tuple[str, str, int, float]]:
    """``(event, task, pid, at)`` per line of the journal."""
    try:
        with open(journal, encoding="utf-8") as handle:
            rows = [line.split() for line in handle if line.strip()]
    except FileNotFoundError:
        return []
    return [(event, task, int(pid), float(at)) for event, task, pid, at in rows]


class Gated(Task):
    """Runs until ``gate`` exists. ``cooperative``: heartbeats while waiting,
    so a stop request ends it (``heartbeat`` raises); otherwise it ignores
    every request (only a killed process stops it)."""

    def __init__(self, name: str, journal: str, gate: str, *, cooperative: bool,
                 **options: Any) -> None:
        super().__init__(name, **options)
        self.journal = journal
        self.gate = gate
        self.cooperative = cooperative

    def execute(self) -> str:
        journal_event(self.journal, "start", self.name)
        deadline = time.monotonic() + LIMIT
        try:
            while not os.path.exists(self.gate) and time.monotonic() < deadline:
                if self.cooperative:   # raises TaskInterrupted once asked to stop
                    self.heartbeat(progress=0.5, note="waiting for the gate")
                time.sleep(0.02)
        except TaskInterrupted:
            journal_event(self.journal, "interrupted", self.name)
            raise
        journal_event(self.journal, "stop", self.name)
        return "done"


class Exit(Task):
    """Raises a BaseException that is not an Exception."""

    def __init__(self, name: str, kind: str) -> None:
        super().__init__(name)
        self.kind = kind

    def execute(self) -> None:
        raise SystemExit(3) if self.kind == "SystemExit" else KeyboardInterrupt()


class Quick(Task):
    def __init__(self, name: str, journal: str) -> None:
        super().__init__(name)
        self.journal = journal

    def execute(self) -> None:
        journal_event(self.journal, "start", self.name)
        journal_event(self.journal, "stop", self.name)


def gated(journal: str, gate: str, cooperative: bool = True,
          timeout: float | None = None) -> flows.Flow:
    """One gated task between two quick ones."""
    return flows.linear(
        "gated",
        Quick("before", journal),
        Gated("wait", journal, gate, cooperative=cooperative, timeout=timeout),
        Quick("after", journal))


def exits(kind: str = "SystemExit") -> flows.Flow:
    return flows.linear("exits", Exit("exit", kind))


def hangs() -> flows.Flow:
    """A factory that does not return (for LIMIT seconds)."""
    time.sleep(LIMIT)
    return flows.linear("never")


def locked(journal: str, lock: str) -> flows.Flow:
    """One quick task under a flow lock named ``lock``."""
    return flows.linear("locked", Quick("inside", journal), locks=[lock])
