"""What the admin commands may do to a job in each state, and the one line
that says why not.

The table the ``abandon``, ``transfer``, ``cancel``, ``retry``, ``trash``,
``suspend`` and ``resume`` commands follow (``-`` = refused with one line
saying why and what to do instead; MALFORMED = a record that fails
validation)::

    action     UNCLAIMED  CLAIMED  SUSPENDED  COMPLETE  FAILED  CANCELLED  DEAD  MALFORMED
    abandon    -          yes      -          -         -       -          -     -
    transfer   -          yes      -          -         -       -          -     -
    cancel     yes        asks     yes        -         -       (already)  -     -
    retry      -          -        -          -         yes     yes        yes   -
    trash      yes        -        yes        yes       yes     yes        yes   -
    suspend    yes        asks     (already)  -         -       -          -     -
    resume     -          -        yes        -         -       -          -     -

``cancel`` of a CLAIMED job asks its holder to stop (it reverts what ran and
records CANCELLED); ``cancel`` of a CANCELLED job does nothing and says so
(exit 0); ``cancel`` of a SUSPENDED job makes it CANCELLED at once, without
reverting what its finished tasks did. ``suspend`` of a CLAIMED job asks its
holder to stop at the next task boundary and give the job up (SUSPENDED);
``suspend`` of a SUSPENDED job does nothing and says so (exit 0). ``resume``
puts a SUSPENDED job back on the board, ahead of its priority. A delayed
UNCLAIMED job is UNCLAIMED here. A MALFORMED record is refused by every
command: ``jobboard fsck --repair`` moves it aside.

:mod:`jobboard.cli.admin_actions` does the action once this table allows it.

How it fails: :func:`refusal` is pure and returns the message or None;
:func:`check`, which reads the job and its holder for the CLI and the
console alike, raises :class:`Refused` with that message. The board calls
that follow can still lose a race (the job changed between the check and
the call); those raise the board's own one-line
:class:`~jobboard.errors.BoardError`.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING

from jobboard.board.job import Job
from jobboard.errors import JobBoardError, MalformedData
from jobboard.states import JobState

if TYPE_CHECKING:
    from jobboard.board import Board

__all__ = ["Action", "ALLOWED", "Refused", "check", "describe", "malformed_refusal",
           "refusal"]


class Refused(JobBoardError):
    """The action cannot be done to the job now; the message says why.

    Attributes:
        cli_message: the line the command line prints instead, where it
            names a command to run (default: the message).
    """

    def __init__(self, message: str, *, cli_message: str | None = None) -> None:
        super().__init__(message)
        self.cli_message = cli_message or message


class Action(str, Enum):
    """An admin command that changes a job."""

    ABANDON = "abandon"
    TRANSFER = "transfer"
    CANCEL = "cancel"
    RETRY = "retry"
    TRASH = "trash"
    SUSPEND = "suspend"
    RESUME = "resume"

    def __str__(self) -> str:
        return self.value


_RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.DEAD})

#: The states each action acts on (see the table in the module docstring).
ALLOWED: dict[Action, frozenset[JobState]] = {
    Action.ABANDON: frozenset({JobState.CLAIMED}),
    Action.TRANSFER: frozenset({JobState.CLAIMED}),
    Action.CANCEL: frozenset({JobState.UNCLAIMED, JobState.CLAIMED, JobState.SUSPENDED,
                              JobState.CANCELLED}),
    Action.RETRY: _RETRYABLE,
    Action.TRASH: frozenset(JobState) - {JobState.CLAIMED},
    Action.SUSPEND: frozenset({JobState.UNCLAIMED, JobState.CLAIMED, JobState.SUSPENDED}),
    Action.RESUME: frozenset({JobState.SUSPENDED}),
}


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def describe(job: Job, holder: str | None = None, *, now: float | None = None) -> str:
    """The job's state for a message: ``UNCLAIMED``, ``UNCLAIMED, due in
    5m``, ``CLAIMED by c1``, ``COMPLETE``."""
    now = time.time() if now is None else now
    if job.state is JobState.UNCLAIMED and job.not_before and job.not_before > now:
        return f"UNCLAIMED, due in {_duration(job.not_before - now)}"
    if job.state is JobState.CLAIMED:
        who = holder or job.owner
        return f"CLAIMED by {who}" if who else "CLAIMED"
    return job.state.value


def refusal(action: Action, job: Job, holder: str | None = None, *,
            now: float | None = None) -> str | None:
    """Why ``action`` cannot be done to ``job`` now, as one line saying what
    to do instead; None when it can.

    Args:
        action: the admin command.
        job: the job's current record.
        holder: who holds its claim now (None when nobody).
        now: the time, for a delayed job (default: now).
    """
    if job.state in ALLOWED[action]:
        return None
    uuid, state = job.uuid, describe(job, holder, now=now)
    retry_hint = f"; `jobboard retry {uuid}` runs it again" \
        if job.state in _RETRYABLE else ""
    if job.state is JobState.SUSPENDED:
        retry_hint = f"; `jobboard resume {uuid}` puts it back on the board"
    if action is Action.ABANDON:
        return f"job {uuid} is not claimed ({state}); nothing to abandon{retry_hint}"
    if action is Action.TRANSFER:
        if job.state is JobState.UNCLAIMED:
            return (f"job {uuid} is not claimed ({state}); nothing to transfer: "
                    "the first free conductor claims it when it is due")
        return f"job {uuid} is not claimed ({state}); nothing to transfer{retry_hint}"
    if action is Action.CANCEL:
        return f"job {uuid} has finished ({state}); nothing to cancel{retry_hint}"
    if action is Action.SUSPEND:
        return f"job {uuid} has finished ({state}); nothing to suspend{retry_hint}"
    if action is Action.RESUME:
        if job.state is JobState.CLAIMED:
            return (f"job {uuid} is {state}, not SUSPENDED; nothing to resume: "
                    f"`jobboard suspend {uuid}` pauses it at the next task boundary")
        if job.state is JobState.UNCLAIMED:
            return f"job {uuid} is {state}, not SUSPENDED; nothing to resume: it waits already"
        return f"job {uuid} is {state}, not SUSPENDED; nothing to resume{retry_hint}"
    if action is Action.RETRY:
        allowed = "only FAILED, CANCELLED or DEAD jobs can be retried"
        if job.state is JobState.CLAIMED:
            return (f"job {uuid} is {state}; {allowed}: `jobboard cancel {uuid}` "
                    "stops it first")
        if job.state is JobState.UNCLAIMED:
            return f"job {uuid} is {state}; {allowed}: it has not run yet"
        if job.state is JobState.SUSPENDED:
            return f"job {uuid} is {state}; {allowed}: `jobboard resume {uuid}` continues it"
        return f"job {uuid} is {state}; {allowed}"
    # trash: only a CLAIMED job is refused
    return (f"job {uuid} is {state}; cancel or abandon it first "
            f"(`jobboard cancel {uuid}` / `jobboard abandon {uuid}`)")


def check(board: "Board", action: Action, job_id: str) -> tuple[Job, str | None]:
    """The job ``job_id`` (a full id) and who holds its claim, once the table
    allows ``action`` on it.

    Raises:
        Refused: the action is not allowed now (one line saying why).
        JobNotFound: no such job.
    """
    try:
        job = board.get(job_id)
    except MalformedData as exc:
        raise Refused(malformed_refusal(action, job_id, str(exc))) from None
    holder = board.claim_owner(job_id) if job.state is JobState.CLAIMED else None
    why = refusal(action, job, holder)
    if why is not None:
        raise Refused(why)
    return job, holder


def malformed_refusal(action: Action, job_id: str, reason: str) -> str:
    """The one line for any action on a record that fails validation."""
    reason = " ".join(reason.split())
    return (f"job {job_id} is MALFORMED ({reason}); cannot {action} it: "
            "`jobboard fsck --repair` moves the record aside")
