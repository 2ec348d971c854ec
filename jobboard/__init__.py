"""jobboard: a job-board coordinated worker fleet on ZooKeeper.

The public names are imported on first use (PEP 562), so that a command like
``jobboard jobs`` does not load the engine and SQLAlchemy it never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module it lives in
_EXPORTS = {
    "AtomState": "jobboard.states",
    "Board": "jobboard.board",
    "Claimer": "jobboard.board",
    "Conductor": "jobboard.conductor",
    "Engine": "jobboard.engine",
    "Executor": "jobboard.engine",
    "FlowState": "jobboard.states",
    "Job": "jobboard.board",
    "JobBoardError": "jobboard.errors",
    "JobOutcome": "jobboard.board",
    "JobState": "jobboard.states",
    "Locks": "jobboard.locks",
    "Logbook": "jobboard.logbook",
    "Outcome": "jobboard.engine",
    "Retry": "jobboard.engine",
    "Task": "jobboard.engine",
    "ThreadExecutor": "jobboard.engine",
    "flows": "jobboard.engine",
    "task": "jobboard.engine",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jobboard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from jobboard.board import Board, Claimer, Job, JobOutcome
    from jobboard.conductor import Conductor
    from jobboard.engine import (Engine, Executor, Outcome, Retry, Task, ThreadExecutor,
                                 flows, task)
    from jobboard.errors import JobBoardError
    from jobboard.locks import Locks
    from jobboard.logbook import Logbook
    from jobboard.states import AtomState, FlowState, JobState
