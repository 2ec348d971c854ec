"""jobboard: a job-board coordinated worker fleet on ZooKeeper."""

from jobboard.engine import (Engine, Executor, Outcome, Retry, Task, ThreadExecutor, flows,
                             task)
from jobboard.errors import JobBoardError
from jobboard.states import AtomState, FlowState, JobState

__version__ = "0.1.0"

__all__ = [
    "AtomState",
    "Engine",
    "Executor",
    "FlowState",
    "JobBoardError",
    "JobState",
    "Outcome",
    "Retry",
    "Task",
    "ThreadExecutor",
    "__version__",
    "flows",
    "task",
]
