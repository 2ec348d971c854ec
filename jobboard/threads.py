"""Reusable daemon threads for short-lived work (job runs, flow factories).

Starting a thread costs more than the work it often does: ``Thread.start``
waits until the new thread runs, which under a busy GIL is a long wait.
:class:`ThreadCache` hands a call to an idle thread when there is one and
starts a thread only when there is none, as Java's cached thread pools do. A
call that never returns keeps its thread and blocks nothing else: the next
call gets another thread. Threads idle for ``idle_timeout`` seconds end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["ThreadCache"]


class _Worker:
    def __init__(self) -> None:
        self.work: tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None = None
        self.ready = threading.Event()


class ThreadCache:
    """Runs calls on idle threads, starting one only when none is idle.

    Args:
        name: The threads' name prefix.
        idle_timeout: Seconds an idle thread waits for work before it ends.
    """

    def __init__(self, name: str, *, idle_timeout: float = 60.0) -> None:
        self.name = name
        self.idle_timeout = idle_timeout
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._count = 0

    def submit(self, func: Callable[..., Any], *args: Any) -> "Future[Any]":
        """Run ``func(*args)`` on a thread of the cache; its future holds the
        result or the exception (``BaseException`` included)."""
        future: Future[Any] = Future()
        with self._lock:
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                self._count += 1
                number = self._count
        if worker is not None:
            worker.work = (future, func, args)
            worker.ready.set()
            return future
        worker = _Worker()
        worker.work = (future, func, args)
        threading.Thread(target=self._serve, args=(worker,), daemon=True,
                         name=f"{self.name}-{number}").start()
        return future

    def _serve(self, worker: _Worker) -> None:
        while True:
            future, func, args = worker.work  # type: ignore[misc]
            worker.work = None
            if future.set_running_or_notify_cancel():
                try:
                    result = func(*args)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, func, args
            worker.ready.clear()
            with self._lock:
                self._idle.append(worker)
            if not worker.ready.wait(self.idle_timeout):
                with self._lock:
                    if worker in self._idle:      # else: handed work just now
                        self._idle.remove(worker)
                        return
                worker.ready.wait()
