"""Executors: what actually runs a task's execute or revert.

The engine decides *what* runs and records it; an executor only runs it and
reports through a :class:`concurrent.futures.Future`. :class:`ThreadExecutor`
(the default) runs tasks on a pool of threads, :class:`SerialExecutor`
inline in the caller's thread, :class:`~jobboard.engine.processes.ProcessExecutor`
in worker processes. Other executors (remote workers) implement
:class:`Executor`.

Every call runs inside its own :class:`~jobboard.engine.control.CallControl`
(``Task.heartbeat`` and ``Task.cancelled`` read it); heartbeats and the start
of the call go to the ``observer`` given with it. ``interrupt(future)`` asks
the call to stop.

How it fails: a task's exception, ``BaseException`` included (``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit`` raised by the task), is set on its
future, never raised by ``execute``/``revert`` themselves. A thread cannot be
killed: ``interrupt(kill=True)`` on a thread only sets the flag, and the
executor stops counting that thread against its width (it is replaced, and
ends on its own: a *straggler*). ``SerialExecutor`` runs the call before
returning, so no time limit or cancel can cut it short.
"""

from __future__ import annotations

import abc
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from jobboard.engine.control import CallControl, CallObserver, running
from jobboard.engine.tasks import Task, call_execute, call_revert

__all__ = ["Executor", "ThreadExecutor", "SerialExecutor"]

log = logging.getLogger(__name__)


class Executor(abc.ABC):
    """Runs tasks handed over by the engine. Usable as a context manager.

    An executor may be shared by several engines at once (each interrupts
    only the futures it got); whoever built it shuts it down.
    """

    @abc.abstractmethod
    def execute(self, task: Task, arguments: Mapping[str, Any], *,
                observer: CallObserver | None = None) -> "Future[Any]":
        """Start ``task.execute(**arguments)``; the future holds its result.
        ``observer`` hears when the call starts and its heartbeats."""

    @abc.abstractmethod
    def revert(self, task: Task, arguments: Mapping[str, Any], result: Any,
               failures: Mapping[str, Any], *,
               observer: CallObserver | None = None) -> "Future[Any]":
        """Start ``task.revert`` with its arguments, ``result`` of its execute
        (None if it failed) and ``failures`` (task name -> Failure)."""

    def interrupt(self, future: "Future[Any]", *, kill: bool = False) -> bool:
        """Ask the call behind ``future`` to stop (``Task.cancelled`` turns
        True, ``Task.heartbeat`` raises ``TaskInterrupted``); with ``kill``,
        also end it by force where the executor can (a worker process).

        Returns:
            False when the future is not a running or queued call of this
            executor (already finished, or unknown).
        """
        return False

    def shutdown(self, wait: bool = True) -> None:
        """Release resources; with ``wait``, let running work finish first."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def notify_started(observer: CallObserver | None, task: str) -> None:
    """Tell ``observer`` a call started; its errors are logged, not raised."""
    if observer is not None:
        try:
            observer.started()
        except Exception:  # noqa: BLE001 - the engine's trouble is not the task's
            log.exception("task %s: start not delivered", task)


def settle(future: "Future[Any]", *, result: Any = None,
           error: BaseException | None = None) -> bool:
    """Set a future's outcome unless it already has one; True if set."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        return True
    except InvalidStateError:
        return False


@dataclass(eq=False)
class _ThreadCall:
    future: "Future[Any]"
    func: Callable[..., Any]
    args: tuple[Any, ...]
    control: CallControl
    observer: CallObserver | None
    detached: bool = False            # interrupted with kill: its thread is a straggler
    thread: threading.Thread | None = field(default=None, repr=False)


def drain(work: "queue.SimpleQueue[Any]") -> list[Any]:
    """Take every queued item now (the ``None`` stop marks left out)."""
    items = []
    while True:
        try:
            item = work.get_nowait()
        except queue.Empty:
            return items
        if item is not None:
            items.append(item)


class ThreadExecutor(Executor):
    """Runs tasks on up to ``width`` daemon threads, started on demand.

    A call interrupted with ``kill=True`` cannot be stopped; its thread is
    replaced so the width stays available, and is logged as a straggler.
    Threads are daemons: a hung task never keeps the process from exiting.

    Args:
        width: Number of worker threads (tasks running at the same time).
    """

    def __init__(self, width: int = 8) -> None:
        if width < 1:
            raise ValueError("width must be at least 1")
        self.width = width
        self._queue: queue.SimpleQueue[_ThreadCall | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._calls: dict[Future[Any], _ThreadCall] = {}
        self._threads: set[threading.Thread] = set()   # counted against the width
        # Every queued call is spoken for: by an idle thread (taken off _idle
        # when it was queued), by the thread started for it, or, when the
        # width was all busy, by the next thread to finish (_backlog).
        self._idle = 0
        self._backlog = 0
        self._closed = False
        self._names = itertools.count(1)

    def execute(self, task: Task, arguments: Mapping[str, Any], *,
                observer: CallObserver | None = None) -> "Future[Any]":
        return self._submit(task, observer, call_execute, task, arguments)

    def revert(self, task: Task, arguments: Mapping[str, Any], result: Any,
               failures: Mapping[str, Any], *,
               observer: CallObserver | None = None) -> "Future[Any]":
        return self._submit(task, observer, call_revert, task, arguments, result, failures)

    @property
    def idle(self) -> bool:
        """Open, and no call queued, running or left to finish as a straggler:
        ready to serve another job as if new."""
        with self._lock:
            return not self._closed and not self._calls

    @property
    def stragglers(self) -> int:
        """Threads still running a call that was interrupted with kill."""
        with self._lock:
            return sum(1 for c in self._calls.values() if c.detached)

    def _submit(self, task: Task, observer: CallObserver | None,
                func: Callable[..., Any], *args: Any) -> "Future[Any]":
        future: Future[Any] = Future()
        call = _ThreadCall(future, func, args, CallControl(task.name, observer), observer)
        with self._lock:
            if self._closed:
                raise RuntimeError("ThreadExecutor is shut down")
            self._calls[future] = call
            self._queue.put(call)
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.width:
                self._start_thread()
            else:
                self._backlog += 1
        return future

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, daemon=True,
                                  name=f"jobboard-task-{next(self._names)}")
        self._threads.add(thread)
        thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            call = self._queue.get()
            if call is None:
                with self._lock:
                    self._threads.discard(me)
                return
            with self._lock:
                call.thread = me
            outcome = self._run(call)
            with self._lock:
                # Before the outcome is told: whoever waits for it finds this
                # executor idle once it was the last call.
                self._calls.pop(call.future, None)
                if not call.detached:
                    if self._backlog:
                        self._backlog -= 1    # a queued call is ours next
                    else:
                        self._idle += 1
            if outcome is not None:
                settle(call.future, **outcome)
            if call.detached:
                log.warning("task %s: interrupted thread finished at last", call.control.task)
                return            # replaced already; not counted any more

    @staticmethod
    def _run(call: _ThreadCall) -> dict[str, Any] | None:
        """Run the call; its outcome for ``settle``, None when it was
        cancelled before it started."""
        if not call.future.set_running_or_notify_cancel():
            return None
        notify_started(call.observer, call.control.task)
        try:
            with running(call.control):
                return {"result": call.func(*call.args)}
        except BaseException as exc:  # noqa: BLE001 - SystemExit & co. fail the task only
            return {"error": exc}

    def interrupt(self, future: "Future[Any]", *, kill: bool = False) -> bool:
        with self._lock:
            call = self._calls.get(future)
            if call is None or future.done():
                return False
            call.control.request_stop("killed" if kill else "asked to stop")
            if future.cancel():               # still queued: it never starts
                self._calls.pop(future, None)
                return True
            if kill and not call.detached and call.thread is not None:
                call.detached = True
                self._threads.discard(call.thread)
                log.warning("task %s: its thread cannot be killed; left to finish on "
                            "its own (straggler), a new thread takes its place",
                            call.control.task)
                if self._backlog and not self._closed:
                    self._backlog -= 1      # the new thread takes a queued call
                    self._start_thread()
                # Otherwise the next call starts it (the width has room now).
            return True

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
            pending = drain(self._queue)
            for _ in threads:
                self._queue.put(None)
        for call in pending:
            call.future.cancel()
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


class SerialExecutor(Executor):
    """Runs each task inline, in the engine's thread; nothing overlaps, and
    no time limit or cancel can stop a call before it returns."""

    @staticmethod
    def _run(task: Task, observer: CallObserver | None, func: Callable[..., Any],
             *args: Any) -> "Future[Any]":
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        notify_started(observer, task.name)
        try:
            with running(CallControl(task.name, observer)):
                result = func(*args)
        except BaseException as exc:  # noqa: BLE001 - SystemExit & co. fail the task only
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    def execute(self, task: Task, arguments: Mapping[str, Any], *,
                observer: CallObserver | None = None) -> "Future[Any]":
        return self._run(task, observer, call_execute, task, arguments)

    def revert(self, task: Task, arguments: Mapping[str, Any], result: Any,
               failures: Mapping[str, Any], *,
               observer: CallObserver | None = None) -> "Future[Any]":
        return self._run(task, observer, call_revert, task, arguments, result, failures)
