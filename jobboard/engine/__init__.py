"""The workflow engine a conductor runs for each job.

Tasks (:mod:`.task`) are composed into flows (:mod:`.flows`), compiled into a
DAG and validated (:mod:`.compile`), and run by the :class:`Engine`
(:mod:`.runner`) through an :class:`Executor` (:mod:`.executor`), with
per-task :class:`Retry` policies (:mod:`.retry`) and named locks
(:mod:`.locking`); every transition goes to the logbook first. Flows are
rebuilt from factory references by :mod:`.factory`. The engine never talks to
ZooKeeper: the conductor passes in the fencing token, a locker and cancels
the engine when its claim is lost.
"""

from jobboard.engine import flows
from jobboard.engine.compile import CompiledFlow, compile_flow
from jobboard.engine.executor import Executor, SerialExecutor, ThreadExecutor
from jobboard.engine.factory import build_flow, resolve_factory
from jobboard.engine.flows import Flow
from jobboard.engine.retry import Retry
from jobboard.engine.runner import Engine, Outcome
from jobboard.engine.tasks import FunctionTask, Task, task

__all__ = [
    "CompiledFlow", "Engine", "Executor", "Flow", "FunctionTask", "Outcome", "Retry",
    "SerialExecutor", "Task", "ThreadExecutor", "build_flow", "compile_flow", "flows",
    "resolve_factory", "task",
]
