"""The workflow engine a conductor runs for each job.

Tasks (:mod:`.task`) are composed into flows (:mod:`.flows`), compiled into a
DAG and validated (:mod:`.compile`), and run by the :class:`Engine`
(:mod:`.runner`) through an :class:`Executor` (:mod:`.executor` for threads,
:mod:`.processes` for worker processes), with
per-task :class:`Retry` policies (:mod:`.retry`) and named locks
(:mod:`.locking`); every transition goes to the logbook first. Flows are
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
    "flows": "jobboard.engine.flows",
    "Retry": "jobboard.engine.retry",
    "FunctionTask": "jobboard.engine.tasks",
    "Task": "jobboard.engine.tasks",
    "task": "jobboard.engine.tasks",
}

__all__ = [
    "CompiledFlow", "Engine", "Executor", "Flow", "FunctionTask", "Outcome",
    "ProcessExecutor", "Retry", "SerialExecutor", "Task", "ThreadExecutor", "build_flow",
    "compile_flow", "flows", "resolve_factory", "task",
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
    from jobboard.engine.executor import Executor, SerialExecutor, ThreadExecutor
    from jobboard.engine.factory import build_flow, resolve_factory
    from jobboard.engine.flows import Flow
    from jobboard.engine.processes import ProcessExecutor
    from jobboard.engine.retry import Retry
    from jobboard.engine.runner import Engine, Outcome
    from jobboard.engine.tasks import FunctionTask, Task, task
