"""Tasks: the units of work a flow is made of.

A :class:`Task` has an ``execute(**inputs)`` and an optional
``revert(*, result, failure, **inputs)``. What it requires is read from the
signature of ``execute`` (parameters without a default are required, those
with a default optional); ``rebind``/``requires`` map parameters to other
names in the store, ``inject`` fixes values. What it provides is named by
``provides``: one name receives the whole result, a sequence of names
unpacks the result by position (or by key when it is a dict).

``@task`` turns a plain function into a task. Mistakes in a declaration
(a rebind of an unknown parameter, a non-string name) raise
:class:`~jobboard.errors.FlowInvalid` when the task is built; a result that
does not match ``provides`` fails the task when it runs.

While it runs, a task may report progress with :meth:`Task.heartbeat` and
look at :attr:`Task.cancelled`; both read the per-call context its executor
set up (:mod:`.control`), so one Task object serves calls on threads and in
worker processes alike.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from jobboard.engine.control import current as _current_call
from jobboard.engine.lockspec import LockSpec, as_lock_specs
from jobboard.errors import FlowInvalid

__all__ = ["Task", "FunctionTask", "task", "call_execute", "call_revert",
           "VERSION_POLICIES"]

#: What a resumed engine does with a task whose saved result came from another
#: ``version`` of it: run it again, keep the result, or fail the job.
VERSION_POLICIES = ("rerun", "keep", "fail")


def call_parameters(func: Callable[..., Any]) -> tuple[inspect.Parameter, ...]:
    """The parameters ``func`` is called with (a bound method's without its
    ``self``); a method's are read once per function, for a flow factory
    builds the same tasks, and a conductor uses the same executors, for every
    job.

    Raises:
        TypeError, ValueError: as ``inspect.signature``.
    """
    function = getattr(func, "__func__", None)
    if function is not None:
        try:
            return _method_parameters(function)
        except TypeError:           # not hashable (or no signature: raised again below)
            pass
    return tuple(inspect.signature(func).parameters.values())


@lru_cache(maxsize=1024)
def _method_parameters(function: Callable[..., Any]) -> tuple[inspect.Parameter, ...]:
    parameters = tuple(inspect.signature(function).parameters.values())
    if parameters and parameters[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                             inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return parameters[1:]       # self, bound
    return parameters


def _signature(func: Callable[..., Any]) -> tuple[dict[str, bool], bool]:
    """(param -> has_default, accepts **kwargs) for ``func``'s keyword-passable params."""
    params: dict[str, bool] = {}
    var_kw = False
    for p in call_parameters(func):
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params[p.name] = p.default is not p.empty
    return params, var_kw


def _as_names(value: str | Sequence[str] | None, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    names = tuple(value)
    for n in names:
        if not isinstance(n, str) or not n:
            raise FlowInvalid(f"{what} must be non-empty strings, got {n!r}")
    return names


class Task:
    """A unit of work with an ``execute`` and an optional ``revert``.

    Subclass and implement :meth:`execute`; implement :meth:`revert` to undo
    it when a later task fails.

    Args:
        name: Unique name within the flow (the logbook matches tasks by
            name). Defaults to the class name.
        provides: A name for the whole result, or a sequence of names the
            result is unpacked into (by position, or by key for a dict).
        requires: Extra required inputs: a sequence of names (passed as
            keyword arguments, useful with ``**kwargs``), or a mapping
            ``{param: store_name}`` like ``rebind``.
        retry: A :class:`~jobboard.engine.retry.Retry` policy for this task;
            overrides the enclosing flow's.
        rebind: ``{param: store_name}`` (or a sequence, matched to the
            parameters in order) to read a parameter from another name.
        locks: Lock name templates such as ``"volume/{volume_id}"`` (mutexes)
            or :func:`~jobboard.engine.lockspec.read`, ``write``,
            ``semaphore`` specs, filled
            from the task's arguments and the store, held around its
            execute and revert.
        inject: ``{param: value}`` constants, overriding the store.
        timeout: Seconds one call of execute (or revert) may take; past it
            the task is asked to stop and the attempt fails with
            :class:`~jobboard.errors.TaskTimeout` (its retry policy
            applies). None: the engine's ``task_timeout``.
        version: The version of the task's code (default: the class
            attribute ``version``, ``"1"``), recorded with each result.
        on_version_change: What a resumed engine does with a result saved by
            another version: ``"rerun"`` (the default: run the task again),
            ``"keep"`` (keep the saved result) or ``"fail"`` (fail the job
            with the reason, running nothing). Default: the class attribute.

    Raises:
        FlowInvalid: The declaration does not match ``execute``'s signature,
            ``timeout`` is not a positive number, or ``on_version_change``
            is not one of :data:`VERSION_POLICIES`.
    """

    #: The version of this task's code; bump it when a saved result of the
    #: previous code should not be trusted as is (see ``on_version_change``).
    version: str = "1"
    #: "rerun" | "keep" | "fail": see the class docstring.
    on_version_change: str = "rerun"
    # Parameters of execute that the engine supplies, not the store.
    _reserved_params: tuple[str, ...] = ()

    def __init__(self, name: str | None = None, provides: str | Sequence[str] | None = None,
                 requires: Sequence[str] | Mapping[str, str] | None = None,
                 retry: Any = None, rebind: Sequence[str] | Mapping[str, str] | None = None,
                 locks: Sequence[str | LockSpec] | None = None,
                 inject: Mapping[str, Any] | None = None,
                 timeout: float | None = None, version: str | int | None = None,
                 on_version_change: str | None = None) -> None:
        self.name: str = name if name is not None else type(self).__name__
        if not isinstance(self.name, str) or not self.name:
            raise FlowInvalid(f"task name must be a non-empty string, got {self.name!r}")
        if provides is None:
            provides = getattr(type(self), "default_provides", None)
        self.provides: tuple[str, ...] = _as_names(provides, f"{self.name}: provides")
        # One name: the whole result; a sequence: unpacked.
        self._unpack = provides is not None and not isinstance(provides, str)
        self.retry = retry
        self.locks: tuple[LockSpec, ...] = as_lock_specs(locks, f"{self.name}: locks")
        self.inject: dict[str, Any] = dict(inject or {})
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise FlowInvalid(f"task {self.name}: timeout must be a positive number of "
                              f"seconds, got {timeout!r}")
        self.timeout: float | None = None if timeout is None else float(timeout)
        if version is not None:
            self.version = str(version)
        elif not isinstance(self.version, str):
            self.version = str(self.version)
        if on_version_change is not None:
            self.on_version_change = on_version_change
        if self.on_version_change not in VERSION_POLICIES:
            raise FlowInvalid(f"task {self.name}: on_version_change must be one of "
                              f"{list(VERSION_POLICIES)}, got {self.on_version_change!r}")
        self._build_requirements(requires, rebind)

    # -- to implement --------------------------------------------------------

    def execute(self, **inputs: Any) -> Any:
        """Do the work; the return value is saved under ``provides``."""
        raise NotImplementedError(f"task {self.name} does not implement execute()")

    def revert(self, *, result: Any = None, failure: Any = None, **inputs: Any) -> None:
        """Undo the work. ``result`` is what execute returned (None if it
        failed), ``failure`` this task's own failure (a ``Failure``) or None."""

    # -- while running -------------------------------------------------------

    def heartbeat(self, progress: float | None = None, note: str | None = None) -> None:
        """Report progress from inside ``execute``/``revert``.

        The engine keeps the latest heartbeat in the task's logbook entry
        (``meta``: ``progress``, ``note``, ``heartbeat_at``), saving at most
        one per ``heartbeat_interval``, and emits ``TASK_HEARTBEAT``.
        Outside a running call it does nothing.

        Args:
            progress: None, or the fraction done, 0..1.
            note: None, or a short text (cut to 200 characters).

        Raises:
            TaskInterrupted: The engine asked this call to stop (cancel,
                claim lost, time limit): let it propagate after cleaning up.
            InvalidArgument: ``progress`` outside 0..1, ``note`` not a str.
        """
        call = _current_call()
        if call is not None:
            call.heartbeat(progress, note)

    @property
    def cancelled(self) -> bool:
        """True once the engine asked the running call to stop; False
        outside a running call."""
        call = _current_call()
        return call is not None and call.stop_requested

    # -- declaration ---------------------------------------------------------

    def _execute_callable(self) -> Callable[..., Any]:
        return self.execute

    def _revert_callable(self) -> Callable[..., Any]:
        return self.revert

    def _build_requirements(self, requires: Any, rebind: Any) -> None:
        params, var_kw = _signature(self._execute_callable())
        for reserved in self._reserved_params:
            params.pop(reserved, None)
        mapping: dict[str, str] = {}
        extra: tuple[str, ...] = ()
        for source, what in ((requires, "requires"), (rebind, "rebind")):
            if source is None:
                continue
            if isinstance(source, Mapping):
                mapping.update({str(k): str(v) for k, v in source.items()})
            elif what == "rebind":
                names = _as_names(source, f"{self.name}: rebind")
                ordered = list(params)
                if len(names) > len(ordered) and not var_kw:
                    raise FlowInvalid(f"task {self.name}: rebind {list(names)} has more "
                                      f"names than execute() has parameters {ordered}")
                mapping.update(zip(ordered, names))
            else:
                extra = _as_names(source, f"{self.name}: requires")
        for param in [*mapping, *extra]:
            if param not in params and not var_kw:
                raise FlowInvalid(f"task {self.name}: {param!r} is not a parameter of "
                                  f"execute() (parameters: {sorted(params)})")
        self.requirements: dict[str, str] = {}   # param -> store name, required
        self.optional: dict[str, str] = {}       # param -> store name, if available
        for param, has_default in params.items():
            if param in self.inject:
                continue
            target = self.optional if has_default and param not in extra else self.requirements
            target[param] = mapping.get(param, param)
        for param in extra:
            if param not in self.inject:
                self.optional.pop(param, None)
                self.requirements[param] = mapping.get(param, param)
        for param, name in mapping.items():
            if param not in params and param not in self.requirements and param not in self.inject:
                self.requirements[param] = name

    @property
    def requires(self) -> frozenset[str]:
        """Store names this task needs (required ones only)."""
        return frozenset(self.requirements.values())

    def provided_values(self, result: Any) -> dict[str, Any]:
        """Map the names in ``provides`` to their values from ``result``.

        Raises:
            FlowInvalid: The result cannot be unpacked into ``provides``.
        """
        if not self.provides:
            return {}
        if not self._unpack:
            return {self.provides[0]: result}
        if isinstance(result, Mapping):
            missing = [n for n in self.provides if n not in result]
            if missing:
                raise FlowInvalid(f"task {self.name} returned a dict without {missing}, "
                                  f"which it declares it provides")
            return {n: result[n] for n in self.provides}
        try:
            values = list(result)
        except TypeError:
            raise FlowInvalid(f"task {self.name} provides {list(self.provides)} but "
                              f"returned a {type(result).__name__}, not a sequence") from None
        if len(values) < len(self.provides):
            raise FlowInvalid(f"task {self.name} provides {list(self.provides)} but "
                              f"returned only {len(values)} values")
        return dict(zip(self.provides, values))

    def copy(self, name: str | None = None) -> "Task":
        """A shallow copy, optionally renamed (to use the same task twice)."""
        clone = copy.copy(self)
        if name is not None:
            clone.name = name
        return clone

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class FunctionTask(Task):
    """A task wrapping a plain function (see :func:`task`)."""

    def __init__(self, func: Callable[..., Any], *, revert: Callable[..., Any] | None = None,
                 name: str | None = None, **options: Any) -> None:
        self._func = func
        self._revert_func = revert
        super().__init__(name=name or func.__name__, **options)
        self.__doc__ = func.__doc__

    def _execute_callable(self) -> Callable[..., Any]:
        return self._func

    def _revert_callable(self) -> Callable[..., Any]:
        return self._revert_func or super()._revert_callable()

    def execute(self, **inputs: Any) -> Any:
        return self._func(**inputs)

    def revert(self, **kwargs: Any) -> None:
        if self._revert_func is not None:
            self._revert_func(**kwargs)


def task(func: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Make a :class:`Task` from a plain function.

    Usable bare (``@task``) or with the :class:`Task` options
    (``@task(provides="x", retry=Retry(3), revert=undo_fn)``). The result is a
    task named after the function; ``.copy(name=...)`` makes more of them.

    Returns:
        A :class:`FunctionTask` (or a decorator making one).
    """
    if func is not None:
        return FunctionTask(func, **options)

    def decorate(f: Callable[..., Any]) -> FunctionTask:
        return FunctionTask(f, **options)
    return decorate


def call_execute(task_: Task, arguments: Mapping[str, Any]) -> Any:
    """Run ``task_.execute`` with prepared arguments (for executors)."""
    return task_.execute(**arguments)


def call_revert(task_: Task, arguments: Mapping[str, Any], result: Any,
                failures: Mapping[str, Any]) -> None:
    """Run ``task_.revert`` with its inputs plus ``result``, ``failure`` (its
    own) and ``flow_failures`` (all), passing only what the signature takes."""
    extras = {"result": result, "failure": failures.get(task_.name),
              "flow_failures": dict(failures)}
    params, var_kw = _signature(task_._revert_callable())
    kwargs = dict(arguments) if var_kw else {k: v for k, v in arguments.items() if k in params}
    for key, value in extras.items():
        if var_kw or key in params:
            kwargs[key] = value
    return task_.revert(**kwargs)
