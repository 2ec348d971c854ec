"""The states of jobs, flows and atoms (tasks and retry controllers)."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    """Where a job is on the board."""

    UNCLAIMED = "UNCLAIMED"   # waiting (possibly delayed) for a conductor
    CLAIMED = "CLAIMED"       # a conductor holds its claim
    COMPLETE = "COMPLETE"     # consumed with a successful outcome
    FAILED = "FAILED"         # consumed with a failed outcome (reverted or broken)
    DEAD = "DEAD"             # dead-lettered: claimed too often without finishing
    CANCELLED = "CANCELLED"   # removed on an admin's request

    @property
    def finished(self) -> bool:
        return self in FINISHED_JOB_STATES

    def __str__(self) -> str:
        return self.value


FINISHED_JOB_STATES = frozenset({JobState.COMPLETE, JobState.FAILED,
                                 JobState.DEAD, JobState.CANCELLED})


class FlowState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"       # failed and could not be fully reverted
    REVERTING = "REVERTING"
    REVERTED = "REVERTED"     # failed, and everything that ran was reverted
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


class AtomState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRYING = "RETRYING"
    REVERTING = "REVERTING"
    REVERTED = "REVERTED"
    REVERT_FAILURE = "REVERT_FAILURE"

    def __str__(self) -> str:
        return self.value
