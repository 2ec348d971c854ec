"""jobboard: a job-board coordinated worker fleet on ZooKeeper."""

__version__ = "0.1.0"

from jobboard.board import Board, Claimer, Job, JobOutcome  # noqa: E402
from jobboard.conductor import Conductor  # noqa: E402
from jobboard.engine import (Engine, Executor, Outcome, Retry, Task,  # noqa: E402
                             ThreadExecutor, flows, task)
from jobboard.errors import JobBoardError  # noqa: E402
from jobboard.locks import Locks  # noqa: E402
from jobboard.logbook import Logbook  # noqa: E402
from jobboard.states import AtomState, FlowState, JobState  # noqa: E402

__all__ = [
    "AtomState",
    "Board",
    "Claimer",
    "Conductor",
    "Engine",
    "Executor",
    "FlowState",
    "Job",
    "JobBoardError",
    "JobOutcome",
    "JobState",
    "Locks",
    "Logbook",
    "Outcome",
    "Retry",
    "Task",
    "ThreadExecutor",
    "__version__",
    "flows",
    "task",
]
