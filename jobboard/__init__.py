"""jobboard: a job-board coordinated worker fleet on ZooKeeper."""

from jobboard.errors import JobBoardError
from jobboard.states import AtomState, FlowState, JobState

__version__ = "0.1.0"

__all__ = [
    "AtomState",
    "FlowState",
    "JobBoardError",
    "JobState",
    "__version__",
]
