"""The ZooKeeper job board (see :mod:`jobboard.board.layout` for the znodes)."""

from jobboard.board.board import Board
from jobboard.board.claimer import Claimer
from jobboard.board.job import Claim, Job, JobOutcome

__all__ = ["Board", "Claim", "Claimer", "Job", "JobOutcome"]
