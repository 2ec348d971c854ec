"""Flows whose tasks journal every run, for the system tests
(``jobboard.testing.journal_flows:journaled``).

Each task appends one JSON line to a journal file when it starts and one
when it ends (``end``), fails on purpose (``failed``), is stopped while
hanging (``stopped``) or is reverted (``reverted``)::

    {"label": "...", "task": "t2", "run": "9f0c...", "pid": 4242,
     "event": "start", "at": 1767225600.123}

``label`` is chosen by the test when it posts the job (so it knows which job
a line belongs to), ``run`` names one execution (the task returns
``{"run": ..., "pid": ...}``, so the logbook's result names the execution it
came from) and ``pid`` the conductor process that ran it. Lines are written
with ``O_APPEND`` in one ``write`` each, so processes (also in other network
namespaces: the journal is on the shared filesystem) never interleave them.

:func:`read_runs` turns a journal into :class:`Run` intervals and
:func:`overlapping_runs` finds a task that ran on two holders at once.

How it fails: an unwritable journal fails the task (and so the flow); a
journal line that does not parse (a process killed mid-write) is skipped.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

from jobboard.engine import Task, flows
from jobboard import errors

# What a task raises when asked to stop: the engine's TaskInterrupted where the
# engine offers cooperative cancellation, else Cancelled.
_STOPPED = getattr(errors, "TaskInterrupted", errors.Cancelled)

__all__ = ["Journaled", "journaled", "Run", "read_runs", "overlapping_runs", "write_line"]

POLL_SECONDS = 0.02
HANG_SECONDS = 8.0


def write_line(path: str, record: dict[str, Any]) -> None:
    """Append one JSON line (one ``write`` with ``O_APPEND``)."""
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class Journaled(Task):
    """Journals its start, sleeps ``ms`` (or hangs), journals its end.

    Args:
        name: the task's name.
        journal: the journal file.
        label: the job's label (chosen by the poster).
        ms: milliseconds of work.
        fail: raise after the work (the flow reverts).
        hang: seconds to hang instead of ``ms``; ends early (``stopped``,
            raising ``TaskInterrupted``) when the engine
            asks the task to stop (``self.cancelled``, where the engine
            offers cooperative cancellation).
    """

    def __init__(self, name: str, journal: str, label: str, *, ms: int = 20,
                 fail: bool = False, hang: float = 0.0) -> None:
        super().__init__(name, provides=f"{name}_run")
        self.journal = journal
        self.label = label
        self.ms = ms
        self.fail = fail
        self.hang = hang

    def _line(self, run: str, event: str) -> None:
        write_line(self.journal, {"label": self.label, "task": self.name, "run": run,
                                  "pid": os.getpid(), "event": event, "at": time.time()})

    def execute(self) -> dict[str, Any]:
        run = uuid.uuid4().hex[:16]
        self._line(run, "start")
        if self.hang:
            deadline = time.monotonic() + self.hang
            while time.monotonic() < deadline:
                if getattr(self, "cancelled", False) is True:
                    self._line(run, "stopped")
                    raise _STOPPED(f"{self.name} asked to stop while hanging")
                time.sleep(POLL_SECONDS)
        else:
            time.sleep(self.ms / 1000.0)
        if self.fail:
            self._line(run, "failed")
            raise RuntimeError(f"{self.name} failed on purpose")
        self._line(run, "end")
        return {"run": run, "pid": os.getpid()}

    def revert(self, result: Any = None, failure: Any = None) -> None:
        self._line(result.get("run", "") if isinstance(result, dict) else "", "reverted")


def journaled(journal: str, label: str, tasks: int = 3, ms: int = 20,
              fail_at: str | None = None, hang_at: str | None = None,
              hang_seconds: float = HANG_SECONDS) -> flows.Flow:
    """``t1 .. t{tasks}`` in a line, each a :class:`Journaled`."""
    return flows.linear(
        "journaled",
        *[Journaled(f"t{n}", journal, label, ms=ms, fail=fail_at == f"t{n}",
                    hang=hang_seconds if hang_at == f"t{n}" else 0.0)
          for n in range(1, tasks + 1)])


@dataclass
class Run:
    """One execution of one task, from its journal lines."""

    label: str
    task: str
    run: str
    pid: int
    started: float
    ended: float | None = None
    how: str | None = None        # "end", "failed", "stopped"; None: never ended

    @property
    def finished(self) -> bool:
        return self.how == "end"


def read_runs(path: str) -> list[Run]:
    """The runs in a journal, in start order (a missing journal: none)."""
    runs: dict[str, Run] = {}
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        return []
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
                event, run_id = record["event"], record["run"]
            except (ValueError, KeyError, TypeError):
                continue
            if event == "start":
                runs[run_id] = Run(record["label"], record["task"], run_id,
                                   int(record["pid"]), float(record["at"]))
            elif event in ("end", "failed", "stopped") and run_id in runs:
                runs[run_id].ended = float(record["at"])
                runs[run_id].how = event
    return sorted(runs.values(), key=lambda r: r.started)


def overlapping_runs(runs: Iterable[Run], *, allowance: float = 0.0,
                     ends: dict[int, float] | None = None,
                     now: float | None = None) -> list[tuple[Run, Run, float]]:
    """Pairs of runs of the same (label, task) on two holders (pids) that
    overlapped by more than ``allowance`` seconds, with the overlap.

    A run that never ended lasted until its process ended (``ends``: pid ->
    time of death, e.g. a kill -9) or, for a live process, until ``now``.
    """
    now = time.time() if now is None else now
    ends = ends or {}
    by_task: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_task[(run.label, run.task)].append(run)
    found = []
    for group in by_task.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a.pid == b.pid:
                    continue
                a_end = a.ended if a.ended is not None else ends.get(a.pid, now)
                b_end = b.ended if b.ended is not None else ends.get(b.pid, now)
                overlap = min(a_end, b_end) - max(a.started, b.started)
                if overlap > allowance:
                    found.append((a, b, overlap))
    return found
