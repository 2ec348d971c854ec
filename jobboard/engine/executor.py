"""Executors: what actually runs a task's execute or revert.

The engine decides *what* runs and records it; an executor only runs it and
reports through a :class:`concurrent.futures.Future`. :class:`ThreadExecutor`
(the default) runs tasks on a pool of threads, :class:`SerialExecutor`
inline in the caller's thread. Other executors (processes, remote workers)
implement :class:`Executor`. A task's exception is set on its future, never
raised by ``execute``/``revert`` themselves.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from jobboard.engine.tasks import Task, call_execute, call_revert

__all__ = ["Executor", "ThreadExecutor", "SerialExecutor"]


class Executor(abc.ABC):
    """Runs tasks handed over by the engine. Usable as a context manager."""

    @abc.abstractmethod
    def execute(self, task: Task, arguments: Mapping[str, Any]) -> "Future[Any]":
        """Start ``task.execute(**arguments)``; the future holds its result."""

    @abc.abstractmethod
    def revert(self, task: Task, arguments: Mapping[str, Any], result: Any,
               failures: Mapping[str, Any]) -> "Future[Any]":
        """Start ``task.revert`` with its arguments, ``result`` of its execute
        (None if it failed) and ``failures`` (task name -> Failure)."""

    def shutdown(self, wait: bool = True) -> None:
        """Release resources; with ``wait``, let running work finish first."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class ThreadExecutor(Executor):
    """Runs tasks on up to ``width`` threads.

    Args:
        width: Number of worker threads (tasks running at the same time).
    """

    def __init__(self, width: int = 8) -> None:
        if width < 1:
            raise ValueError("width must be at least 1")
        self.width = width
        self._pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="jobboard-task")

    def execute(self, task: Task, arguments: Mapping[str, Any]) -> "Future[Any]":
        return self._pool.submit(call_execute, task, arguments)

    def revert(self, task: Task, arguments: Mapping[str, Any], result: Any,
               failures: Mapping[str, Any]) -> "Future[Any]":
        return self._pool.submit(call_revert, task, arguments, result, failures)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


class SerialExecutor(Executor):
    """Runs each task inline, in the engine's thread; nothing overlaps."""

    @staticmethod
    def _run(func: Callable[..., Any], *args: Any) -> "Future[Any]":
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(func(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def execute(self, task: Task, arguments: Mapping[str, Any]) -> "Future[Any]":
        return self._run(call_execute, task, arguments)

    def revert(self, task: Task, arguments: Mapping[str, Any], result: Any,
               failures: Mapping[str, Any]) -> "Future[Any]":
        return self._run(call_revert, task, arguments, result, failures)
