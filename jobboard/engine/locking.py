"""Declared locks of tasks and flows, and holding them around a task's work.

Tasks and flows declare locks (``locks=[...]``): a plain string is a mutex
name template (``"volume/{volume_id}"``); :func:`read`, :func:`write`
(the two sides of a read/write lock) and :func:`semaphore` (``n`` holders at
once) declare the other kinds. Templates are rendered with
``str.format_map`` from the task's arguments, earlier results and the store.
A template naming something unknown fails the task (task locks) or the run
(flow locks) with :class:`~jobboard.errors.FlowInvalid`.

The engine takes a *locker*: ``locker(specs) -> context manager`` that holds
all ``specs`` (rendered :class:`LockSpec` objects) while entered;
``jobboard.locks.Locks.acquire_all`` takes them as they are. A
:class:`LockSpec` is a ``str`` (its name) carrying ``kind`` and ``leases``,
so a locker written for names only still works: it takes every lock as a
mutex, which is more exclusive, never less.
Task locks are held in the thread running the task, so an executor stays a
plain runner; they are released on every exit path. An executor that runs
the task elsewhere (a worker process) unwraps the :class:`LockedTask`: it
holds :meth:`LockedTask.holding` in the parent while the child runs
:attr:`LockedTask.inner`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from jobboard.engine.lockspec import (LOCK_KINDS, LockSpec, as_lock_specs, mutex, read,
                                      render_locks, semaphore, write)
from jobboard.engine.tasks import Task

__all__ = ["Locker", "LockSpec", "LOCK_KINDS", "mutex", "read", "write", "semaphore",
           "as_lock_specs", "render_locks", "LockedTask"]

Locker = Callable[[Sequence[LockSpec]], AbstractContextManager[Any]]


class LockedTask(Task):
    """A stand-in for a task that holds its locks around execute and revert.

    Everything else (name, provides, signatures) is the wrapped task's.
    """

    def __init__(self, task: Task, locker: Locker, names: Sequence[str]) -> None:
        # Task.__init__ is not called: every attribute comes from the wrapped task.
        self.__dict__["_inner"] = task
        self.__dict__["_locker"] = locker
        self.__dict__["_names"] = list(names)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.__dict__["_inner"], attr)

    @property
    def inner(self) -> Task:
        """The wrapped task (a process executor ships it, holding the locks here)."""
        return self.__dict__["_inner"]

    def holding(self) -> AbstractContextManager[Any]:
        """A context manager holding this task's locks (in the calling thread)."""
        return self._locker(self._names)

    def _execute_callable(self) -> Callable[..., Any]:
        return self._inner._execute_callable()

    def _revert_callable(self) -> Callable[..., Any]:
        return self._inner._revert_callable()

    def execute(self, **inputs: Any) -> Any:
        with self._locker(self._names):
            return self._inner.execute(**inputs)

    def revert(self, **kwargs: Any) -> Any:
        with self._locker(self._names):
            return self._inner.revert(**kwargs)

    def __repr__(self) -> str:
        return f"<LockedTask {self._inner!r} locks={self._names}>"
