"""The workflow engine a conductor runs for each job.

Tasks (:mod:`.task`) are composed into flows (:mod:`.flows`: the pattern
interface, ``Flow.links``, and linear, unordered and graph with conditional
links), compiled into a DAG and validated (:mod:`.compile`), and run by the
:class:`Engine` (:mod:`.runner`; its phases in :mod:`.forward` and
:mod:`.revert`) through an :class:`Executor` (:mod:`.executor` for threads,
:mod:`.processes` for worker processes), with per-task :class:`Retry`
policies (:mod:`.retry`), retry controllers running whole subflows again
(:mod:`.controllers`: :class:`Times`, :class:`ForEach`,
:class:`ParameterizedForEach`), declared locks of every kind
(:mod:`.lockspec`, :mod:`.locking`) and task versions checked on resume
(:mod:`.versions`); every transition goes to the logbook first. Flows are
rebuilt from factory references by :mod:`.factory`. The engine never talks to
ZooKeeper: the conductor passes in the fencing token, a locker and cancels
the engine when its claim is lost. A running task sees its per-call context
(:mod:`.control`: ``Task.heartbeat``, ``Task.cancelled``); the engine's book
of calls in flight (:mod:`.calls`) enforces time limits and rate-limits
heartbeat saves.

Names are imported on first use (PEP 562): a worker process of the process
executor imports only what running a task needs (tasks, executors, control),
not the engine's runner and the logbook behind it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CompiledFlow": "jobboard.engine.compile",
    "compile_flow": "jobboard.engine.compile",
    "Engine": "jobboard.engine.runner",
    "Outcome": "jobboard.engine.runner",
    "Executor": "jobboard.engine.executor",
    "SerialExecutor": "jobboard.engine.executor",
    "ThreadExecutor": "jobboard.engine.executor",
    "ProcessExecutor": "jobboard.engine.processes",
    "build_flow": "jobboard.engine.factory",
    "resolve_factory": "jobboard.engine.factory",
    "Flow": "jobboard.engine.flows",
    "Link": "jobboard.engine.flows",
    "flows": "jobboard.engine.flows",
    "Decision": "jobboard.engine.controllers",
    "ForEach": "jobboard.engine.controllers",
    "History": "jobboard.engine.controllers",
    "ParameterizedForEach": "jobboard.engine.controllers",
    "RetryController": "jobboard.engine.controllers",
    "Times": "jobboard.engine.controllers",
    "LockSpec": "jobboard.engine.lockspec",
    "mutex": "jobboard.engine.lockspec",
    "read": "jobboard.engine.lockspec",
    "semaphore": "jobboard.engine.lockspec",
    "write": "jobboard.engine.lockspec",
    "Retry": "jobboard.engine.retry",
    "FunctionTask": "jobboard.engine.tasks",
    "Task": "jobboard.engine.tasks",
    "task": "jobboard.engine.tasks",
}

__all__ = [
    "CompiledFlow", "Decision", "Engine", "Executor", "Flow", "ForEach", "FunctionTask",
    "History", "Link", "LockSpec", "Outcome", "ParameterizedForEach", "ProcessExecutor",
    "Retry", "RetryController", "SerialExecutor", "Task", "ThreadExecutor", "Times",
    "build_flow", "compile_flow", "flows", "mutex", "read", "resolve_factory", "semaphore",
    "task", "write",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jobboard.engine' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if name == "flows" else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from jobboard.engine import flows
    from jobboard.engine.compile import CompiledFlow, compile_flow
    from jobboard.engine.controllers import (Decision, ForEach, History, ParameterizedForEach,
                                             RetryController, Times)
    from jobboard.engine.lockspec import LockSpec, mutex, read, semaphore, write
    from jobboard.engine.executor import Executor, SerialExecutor, ThreadExecutor
    from jobboard.engine.factory import build_flow, resolve_factory
    from jobboard.engine.flows import Flow, Link
    from jobboard.engine.processes import ProcessExecutor
    from jobboard.engine.retry import Retry
    from jobboard.engine.runner import Engine, Outcome
    from jobboard.engine.tasks import FunctionTask, Task, task
