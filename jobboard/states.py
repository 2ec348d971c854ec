"""The states of jobs, flows and atoms (tasks and retry controllers).

The job state machine. Rows are the states a job record can be in, columns
who pushes on it; a cell is the state after, or the one-line refusal
(a :class:`~jobboard.errors.BoardError`) the caller gets::

  state      | claim          | holder ends it       | holder dies / crashes | abandon     | transfer       | cancel            | retry           | trash
  -----------+----------------+----------------------+-----------------------+-------------+----------------+-------------------+-----------------+------------
  UNCLAIMED  | CLAIMED        | -                    | -                     | NotClaimed  | NotClaimed     | CANCELLED         | InvalidTrans.   | deleted
  CLAIMED    | AlreadyClaimed | COMPLETE, FAILED or  | UNCLAIMED, deaths+1;  | UNCLAIMED   | CLAIMED by the | the holder stops  | InvalidTrans.   | AlreadyClaimed
             |                | CANCELLED (consume)  | DEAD at the next      | (hand-off)  | target         | the running task, |                 |
             |                |                      | claim once deaths >=  |             | (hand-off)     | reverts: CANCELLED|                 |
             |                |                      | max_claims            |             |                |                   |                 |
  COMPLETE   | refused        | -                    | -                     | NotClaimed  | NotClaimed     | no-op             | InvalidTrans.   | deleted
  FAILED     | refused        | -                    | -                     | NotClaimed  | NotClaimed     | no-op             | UNCLAIMED,      | deleted
  CANCELLED  |                |                      |                       |             |                |                   | attempt+1       |
  DEAD       |                |                      |                       |             |                |                   |                 |
  SUSPENDED  | refused        | -                    | -                     | NotClaimed  | NotClaimed     | CANCELLED         | InvalidTrans.   | deleted
  MALFORMED  | quarantined (moved to ``{root}/malformed``): every action is JobNotFound; listed with its reason

Suspend and resume (an admin's pause at a task boundary; a suspended job
keeps its logbook and is not claimable until resumed)::

  state      | suspend                                     | resume
  -----------+---------------------------------------------+----------------------------------
  UNCLAIMED  | SUSPENDED at once (waiting or delayed: its  | InvalidTrans.
             | entry removed in the same transaction)      |
  CLAIMED    | a request (``{root}/suspend/{uuid}``): the  | InvalidTrans.
             | holder stops at the next task boundary and  |
             | gives the job up: SUSPENDED. A holder that  |
             | dies first: SUSPENDED (deaths+1) by the     |
             | orphan restore or the repair sweep          |
  SUSPENDED  | no-op                                       | UNCLAIMED, ahead of its priority;
             |                                             | continues from the logbook
  COMPLETE,  | InvalidTrans.                               | InvalidTrans.
  FAILED,    |                                             |
  CANCELLED, |                                             |
  DEAD       |                                             |

* A **hand-off** (abandon, transfer, or the holder's loss of its claim): the
  old holder asks its running task to stop (``Task.cancelled``; killed with
  the process executor) and the new holder starts only after the old one's
  tasks stopped or ``stop_timeout`` passed; a dead holder hands over at once.
* A **dependency outage** (logbook unreachable or its schema missing) is not
  the job's fault: the holder gives it back (CLAIMED -> UNCLAIMED, not
  counted) and turns NOT READY until the logbook answers.
* Only a holder's death (its session ended with the claim) or a crash of the
  conductor on the job counts against ``max_claims``.
* ``retry`` starts a new attempt: the flow runs afresh and the logbook keeps
  the earlier attempts.
* A **suspend** of a running job stops it as a hand-off does (running tasks
  asked to stop; finished ones stay in the logbook, an interrupted one runs
  again on resume), then the holder drops its claim, running and working
  markers and the request, and writes SUSPENDED, in one transaction. A
  cancel request wins over a suspend request (the flow is reverted and the
  job CANCELLED). ``cancel`` of a SUSPENDED job makes it CANCELLED at once
  without reverting anything (nobody runs it); ``trash`` deletes it;
  ``retry``, ``abandon`` and ``transfer`` are refused.
"""

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
    SUSPENDED = "SUSPENDED"   # paused by an admin at a task boundary; not claimable

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
    IGNORE = "IGNORE"         # skipped: a link's decider said no (conditional branch)

    def __str__(self) -> str:
        return self.value
