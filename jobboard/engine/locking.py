"""Lock names for tasks and flows, and holding them around a task's work.

Tasks and flows declare lock name templates (``"volume/{volume_id}"``),
rendered with ``str.format_map`` from the task's arguments, earlier results
and the store. A template naming something unknown fails the task (task
locks) or the run (flow locks) with :class:`~jobboard.errors.FlowInvalid`.

The engine takes a *locker*: ``locker(names) -> context manager`` that holds
all ``names`` while entered (the ZooKeeper locks in ``jobboard.locks`` fit).
Task locks are held in the thread running the task, so an executor stays a
plain runner; they are released on every exit path. An executor that runs
the task elsewhere (a worker process) unwraps the :class:`LockedTask`: it
holds :meth:`LockedTask.holding` in the parent while the child runs
:attr:`LockedTask.inner`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from jobboard.engine.tasks import Task
from jobboard.errors import FlowInvalid

__all__ = ["Locker", "render_locks", "LockedTask"]

Locker = Callable[[Sequence[str]], AbstractContextManager[Any]]


def render_locks(templates: Sequence[str], values: Mapping[str, Any], owner: str) -> list[str]:
    """Fill lock name templates from ``values``.

    Raises:
        FlowInvalid: A template names a value that is not available.
    """
    names = []
    for template in templates:
        try:
            names.append(template.format_map(values))
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            raise FlowInvalid(f"{owner}: lock {template!r} cannot be filled in "
                              f"({type(exc).__name__}: {exc})") from exc
    return names


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
