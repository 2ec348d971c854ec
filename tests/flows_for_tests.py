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


# -- cross-process flows (kill -9 and conductor tests) ----------------------------
#
# Tasks append "execute:<task>:<value>" / "revert:<task>:<value>" lines to a
# journal file; with the environment variable KILL_AT naming such a line, the
# process kills itself (SIGKILL) right after writing it.

import os as _os
import signal as _signal
from collections.abc import Iterable as _Iterable

from jobboard.engine.controllers import ForEach
from jobboard.engine.flows import Flow, Link
from jobboard.testing.flows import append_line


def _line(journal: str, line: str) -> None:
    append_line(journal, line)
    if _os.environ.get("KILL_AT") == line:
        _os.kill(_os.getpid(), _signal.SIGKILL)


def read_lines(journal: str) -> list[str]:
    try:
        with open(journal, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        return []


class FileStep(Task):
    """Journals to a file; ``value`` is its result (default: its name)."""

    def __init__(self, name: str, journal: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.journal = journal

    def execute(self) -> str:
        _line(self.journal, f"execute:{self.name}:-")
        return self.name

    def revert(self, **_: Any) -> None:
        _line(self.journal, f"revert:{self.name}:-")


class HostStep(Task):
    """Works on ``host``; fails unless the host is ``good`` (when given)."""

    def __init__(self, name: str, journal: str, good: str | None = None,
                 **options: Any) -> None:
        super().__init__(name, **options)
        self.journal = journal
        self.good = good

    def execute(self, host: str) -> str:
        _line(self.journal, f"execute:{self.name}:{host}")
        if self.good is not None and host != self.good:
            raise ConnectionError(f"{self.name}: {host} is down")
        return f"{self.name}@{host}"

    def revert(self, host: str, **_: Any) -> None:
        _line(self.journal, f"revert:{self.name}:{host}")


class Reversed(Flow):
    """A third-party pattern: its items run last to first."""

    kind = "reversed"

    def links(self) -> _Iterable[Link]:
        items = list(reversed(self.items))
        return [Link(a.name, b.name) for a, b in zip(items, items[1:])]


def reversed_chain(journal: str) -> Flow:
    """``c``, then ``b``, then ``a`` (a Reversed pattern), then ``after``."""
    return flows.linear("outer", Reversed("rev", *[FileStep(n, journal) for n in "abc"]),
                        FileStep("after", journal, provides="done"))


def retry_hosts(journal: str) -> Flow:
    """``prep``, then a scope tried on h1, h2, h3 (``probe`` works on h3 only),
    then ``finish``."""
    return flows.linear(
        "deploy", FileStep("prep", journal),
        flows.linear("attempt", HostStep("setup", journal),
                     HostStep("probe", journal, good="h3", provides="probed"),
                     retry=ForEach(["h1", "h2", "h3"], provides="host")),
        FileStep("finish", journal))


def branches(journal: str) -> Flow:
    """``a``, then ``b1 -> b2`` (its decider says yes) and ``c1 -> c2`` (its
    decider says yes only when the environment has SECOND_RUN=1)."""
    g = flows.graph("branches", FileStep("a", journal, provides="x"),
                    FileStep("b1", journal), FileStep("b2", journal),
                    FileStep("c1", journal), FileStep("c2", journal),
                    edges=[("b1", "b2"), ("c1", "c2")])
    g.link("a", "b1", decider=lambda history: history["a"] == "a")
    g.link("a", "c1", decider=lambda history: _os.environ.get("SECOND_RUN") == "1")
    return g
