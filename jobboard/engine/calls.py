"""The task calls one engine has in flight: time limits, heartbeats, stop requests.

:class:`Inflight` is the engine's book of the calls it handed to an
executor. Each :class:`Call` is also the call's
:class:`~jobboard.engine.control.CallObserver`: the executor reports the start
of the call and the task's heartbeats to it from a worker (or pipe reader)
thread. Nothing here writes to the logbook: the engine polls
:meth:`Inflight.beats_due` and :meth:`Inflight.expired` on its own thread and
saves, so one AtomDetail is never written from two threads.

The engine sleeps in ``concurrent.futures.wait`` on its running futures plus
:attr:`Inflight.nudge`, a future that other threads complete (:meth:`poke`)
when something needs the engine now: a cancel, a heartbeat due for saving,
a call that started (its time limit begins then, not when it was queued).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import CancelledError, Future, InvalidStateError
from typing import Any

from jobboard.errors import TaskInterrupted

__all__ = ["Call", "Inflight", "error_of"]

log = logging.getLogger(__name__)


class Call:
    """One execute or revert call handed to the executor."""

    def __init__(self, book: "Inflight", name: str, phase: str, timeout: float | None) -> None:
        self._book = book
        self.name = name
        self.phase = phase                 # "execute" | "revert"
        self.timeout = timeout
        self.future: Future[Any] | None = None
        self.started_at: float | None = None       # monotonic
        self.stop_asked = False                     # the engine asked it to stop
        self.killed = False                         # ... by force (or gave up on it)
        self.abandoned = False                      # the engine no longer waits for it
        self._beat: tuple[float | None, str | None, float] | None = None
        self._saved_at = float("-inf")              # monotonic, last heartbeat saved

    # -- CallObserver (worker threads) -----------------------------------------

    def started(self) -> None:
        with self._book.lock:
            if self.started_at is None:
                self.started_at = time.monotonic()
        if self.timeout is not None:
            self._book.poke()

    def heartbeat(self, progress: float | None, note: str | None) -> None:
        with self._book.lock:
            self._beat = (progress, note, time.time())
            due = time.monotonic() - self._saved_at >= self._book.heartbeat_interval
        if due:
            self._book.poke()

    # -- the engine's side -------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """Monotonic time the call's limit runs out (None: no limit or not started)."""
        if self.timeout is None or self.started_at is None:
            return None
        return self.started_at + self.timeout

    def _beat_due_at(self) -> float | None:
        if self._beat is None:
            return None
        return self._saved_at + self._book.heartbeat_interval


class Inflight:
    """The calls of one engine that an executor holds.

    Args:
        heartbeat_interval: Minimum seconds between two saved heartbeats of
            one call (the latest heartbeat wins).
    """

    def __init__(self, heartbeat_interval: float) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.lock = threading.Lock()
        self._calls: dict[Future[Any], Call] = {}
        self._nudge: Future[None] = Future()

    def new(self, name: str, phase: str, timeout: float | None) -> Call:
        return Call(self, name, phase, timeout)

    def add(self, call: Call, future: "Future[Any]") -> None:
        with self.lock:
            call.future = future
            self._calls[future] = call

    def get(self, future: "Future[Any]") -> Call | None:
        with self.lock:
            return self._calls.get(future)

    def abandon(self, future: "Future[Any]") -> None:
        """The engine stops waiting for this call; it stays listed until done."""
        with self.lock:
            call = self._calls.get(future)
            if call is not None:
                call.abandoned = True
                call._beat = None
        future.add_done_callback(self.pop)      # listed until it ends on its own

    def pop(self, future: "Future[Any]") -> Call | None:
        with self.lock:
            return self._calls.pop(future, None)

    # -- waking the engine -------------------------------------------------------

    @property
    def nudge(self) -> "Future[None]":
        with self.lock:
            return self._nudge

    def poke(self) -> None:
        """Wake the engine from its wait (any thread)."""
        with self.lock:
            nudge = self._nudge
        try:
            nudge.set_result(None)
        except InvalidStateError:
            pass

    def rearm(self) -> None:
        """After waking: a fresh nudge, so the next poke wakes the next wait."""
        with self.lock:
            if self._nudge.done():
                self._nudge = Future()

    # -- what is due -------------------------------------------------------------

    def next_due(self) -> float | None:
        """Seconds until the next time limit or heartbeat save, or None."""
        now = time.monotonic()
        times: list[float] = []
        with self.lock:
            for call in self._calls.values():
                if call.abandoned:
                    continue
                for at in (call.deadline, call._beat_due_at()):
                    if at is not None:
                        times.append(at)
        return max(0.0, min(times) - now) if times else None

    def expired(self) -> list[Call]:
        """Calls still waited for whose time limit has run out."""
        now = time.monotonic()
        with self.lock:
            return [c for c in self._calls.values()
                    if not c.abandoned and c.deadline is not None and c.deadline <= now
                    and c.future is not None and not c.future.done()]

    def beats_due(self) -> list[tuple[Call, float | None, str | None, float]]:
        """Heartbeats to save now (at most one per call per interval); each is
        taken, so the next one waits for the interval."""
        now = time.monotonic()
        due = []
        with self.lock:
            for call in self._calls.values():
                if call._beat is not None and not call.abandoned \
                        and now - call._saved_at >= self.heartbeat_interval:
                    due.append((call, *call._beat))
                    call._beat = None
                    call._saved_at = now
        return due

    def unfinished(self) -> list[Call]:
        """Every listed call whose future is not done, abandoned ones included."""
        with self.lock:
            calls = list(self._calls.values())
        return [c for c in calls if c.future is not None and not c.future.done()]

    def names(self) -> list[str]:
        """Names of the tasks whose calls are still running (sorted)."""
        return sorted({c.name for c in self.unfinished()})


def error_of(future: "Future[Any]") -> BaseException | None:
    """A done future's exception; a cancelled (never started) call counts as
    interrupted."""
    try:
        return future.exception(timeout=0)
    except CancelledError:
        return TaskInterrupted("the call was cancelled before it started")
