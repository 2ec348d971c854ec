"""Tasks, flow factories and helpers shared by the engine tests.

Tasks append to a :class:`Journal` so a test can assert what ran, in which
order and how often, across a crash and a resume.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any

from jobboard import Task, flows
from jobboard.engine import Engine, SerialExecutor
from jobboard.logbook import Logbook


class Journal:
    """A thread-safe record of what tasks did."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self._lock = threading.Lock()

    def add(self, entry: str) -> None:
        with self._lock:
            self.entries.append(entry)

    def count(self, entry: str) -> int:
        with self._lock:
            return self.entries.count(entry)

    def of(self, prefix: str) -> list[str]:
        with self._lock:
            return [e.split(":", 1)[1] for e in self.entries if e.startswith(prefix + ":")]


class Crash(BaseException):
    """Raised by a listener to simulate the conductor dying at a checkpoint."""


class Step(Task):
    """Records execute/revert in a journal; returns ``value`` (default: its name)."""

    def __init__(self, name: str, journal: Journal, *, value: Any = None,
                 fail: BaseException | None = None, revert_fail: BaseException | None = None,
                 **options: Any) -> None:
        super().__init__(name, **options)
        self.journal = journal
        self.value = name if value is None else value
        self.fail = fail
        self.revert_fail = revert_fail

    def execute(self, **inputs: Any) -> Any:
        self.journal.add(f"execute:{self.name}")
        if self.fail is not None:
            raise self.fail
        return self.value

    def revert(self, *, result: Any, failure: Any, **inputs: Any) -> None:
        self.journal.add(f"revert:{self.name}")
        if self.revert_fail is not None:
            raise self.revert_fail


class Add(Task):
    def execute(self, x: int, y: int) -> int:
        return x + y


class Flaky(Task):
    """Fails with ``error`` the first ``failures`` times."""

    def __init__(self, name: str, failures: int, error: type[Exception] = IOError,
                 **options: Any) -> None:
        super().__init__(name, **options)
        self.failures = failures
        self.error = error
        self.calls = 0

    def execute(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"attempt {self.calls} failed")
        return "ok"


# -- factories (resolved as "flows_for_tests:...") ------------------------------

JOURNALS: dict[str, Journal] = {}


def five_steps(journal: str) -> flows.Flow:
    """A 5-task linear flow; each step provides its name."""
    j = JOURNALS[journal]
    return flows.linear("five", *[Step(f"s{i}", j, provides=f"out{i}") for i in range(5)])


def revert_flow(journal: str) -> flows.Flow:
    """Three good steps and a failing fourth."""
    j = JOURNALS[journal]
    return flows.linear("rev", Step("a", j), Step("b", j), Step("c", j),
                        Step("d", j, fail=ValueError("d broke")))


def broken_factory() -> flows.Flow:
    raise RuntimeError("cannot build")


def not_a_flow() -> str:
    return "nope"


# -- helpers -----------------------------------------------------------------

def make_engine(flow: Any, logbook: Logbook, *, job_id: str = "job-1", token: int = 1,
                **options: Any) -> Engine:
    options.setdefault("executor", SerialExecutor())
    return Engine(flow, journal=logbook, job_id=job_id, token=token, owner="test", **options)


class RecordingLocker:
    """An in-process locker: records ``enter``/``exit`` and what is held."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.held: set[str] = set()
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, names: Any):
        names = tuple(names)
        with self._lock:
            self.calls.append(("enter", names))
            self.held.update(names)
        try:
            yield
        finally:
            with self._lock:
                self.held.difference_update(names)
                self.calls.append(("exit", names))
