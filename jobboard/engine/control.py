"""The per-call context of a running task: its stop flag and its heartbeats.

An executor runs every ``execute``/``revert`` call inside :func:`running`,
which makes a :class:`CallControl` current for that call (a
:mod:`contextvars` variable, so it is per thread and per process; the Task
object itself, shared by every call of a job, holds no per-call state).
``Task.heartbeat`` and ``Task.cancelled`` read it: outside a call there is
none, a heartbeat is a no-op and ``cancelled`` is False.

The control forwards heartbeats to a :class:`CallObserver` (the engine's, in
the parent process; a pipe writer in a worker process) and raises
:class:`~jobboard.errors.TaskInterrupted` from ``heartbeat`` once the call was
asked to stop. How it fails: a progress outside 0..1 or a note that is not a
string raises :class:`~jobboard.errors.InvalidArgument` from ``heartbeat``;
an observer's own error is logged and swallowed (a heartbeat never fails a
task because the engine could not take it).
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from jobboard.errors import InvalidArgument, TaskInterrupted

__all__ = ["CallObserver", "CallControl", "current", "running", "check_heartbeat",
           "NOTE_LIMIT"]

log = logging.getLogger(__name__)

NOTE_LIMIT = 200   # characters of a heartbeat note that are kept


class CallObserver(Protocol):
    """Who hears about a call: the engine (directly, or through a worker's pipe)."""

    def started(self) -> None:
        """The call began to run (it may have waited in a queue)."""

    def heartbeat(self, progress: float | None, note: str | None) -> None:
        """The task reported progress; called on the task's (or a reader's) thread."""


def check_heartbeat(progress: float | None, note: str | None) -> tuple[float | None, str | None]:
    """Validate and normalise a heartbeat: progress a number in 0..1 (or
    None), note a string (or None) cut to :data:`NOTE_LIMIT` characters.

    Raises:
        InvalidArgument: progress is not a finite number in 0..1, or note is
            not a string.
    """
    if progress is not None:
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) \
                or not math.isfinite(progress) or not 0.0 <= progress <= 1.0:
            raise InvalidArgument(f"heartbeat progress must be None or a number in 0..1, "
                                  f"got {progress!r}", argument="progress")
        progress = float(progress)
    if note is not None:
        if not isinstance(note, str):
            raise InvalidArgument(f"heartbeat note must be None or a str, got "
                                  f"{type(note).__name__}", argument="note")
        note = note[:NOTE_LIMIT]
    return progress, note


class CallControl:
    """One call of a task's execute or revert, as the task sees it.

    Thread-safe: the stop flag is set from the engine's (or a pipe reader's)
    thread while the task's thread reads it.

    Args:
        task: The task's name, for messages.
        observer: Receives heartbeats; None drops them.
    """

    def __init__(self, task: str, observer: CallObserver | None = None) -> None:
        self.task = task
        self.observer = observer
        self._stop = threading.Event()
        self.reason: str | None = None

    def request_stop(self, reason: str = "asked to stop") -> None:
        """Ask the task to stop: ``cancelled`` turns True, ``heartbeat`` raises."""
        if not self._stop.is_set():
            self.reason = reason
            self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_stop(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a stop request; True if asked."""
        return self._stop.wait(timeout)

    def heartbeat(self, progress: float | None = None, note: str | None = None) -> None:
        """Report progress (see :meth:`jobboard.engine.Task.heartbeat`).

        Raises:
            TaskInterrupted: The call was asked to stop.
            InvalidArgument: A bad progress or note.
        """
        if self._stop.is_set():
            raise TaskInterrupted(f"task {self.task!r} was asked to stop: {self.reason}",
                                  task=self.task)
        progress, note = check_heartbeat(progress, note)
        if self.observer is not None:
            try:
                self.observer.heartbeat(progress, note)
            except Exception:  # noqa: BLE001 - the engine's trouble is not the task's
                log.exception("task %s: heartbeat not delivered", self.task)


_current: contextvars.ContextVar[CallControl | None] = contextvars.ContextVar(
    "jobboard_task_call", default=None)


def current() -> CallControl | None:
    """The control of the task call running in this thread, or None."""
    return _current.get()


@contextmanager
def running(control: CallControl) -> Iterator[CallControl]:
    """Make ``control`` current for the duration of one call (executors use it)."""
    token = _current.set(control)
    try:
        yield control
    finally:
        _current.reset(token)
