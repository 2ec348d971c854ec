"""Doing an admin action to a job: ``abandon``, ``transfer``, ``cancel``,
``retry``, ``trash``, ``suspend``, ``resume``. One home for the board call
and the line that says what was done, shared by the CLI commands
(:mod:`jobboard.cli.admin`) and the console (:mod:`jobboard.web.app`), which
only render the :class:`Outcome`.

:func:`perform` checks the action against the job's state by the table in
:mod:`jobboard.cli.admin_rules`, makes the board call and says what it did.
Where the two differ in what to do next -- the command line names a command
(``jobboard resume ID``, ``jobboard conductors``), the console has a button
or a list for it -- the line has a ``cli_message`` beside its ``message``.

How it fails: an action the job's state does not allow, a transfer with no
target, to the holder itself or to a conductor that is not alive, a cancel
that lost the race with the job's end raise :class:`Refused` (one line saying
why and what to do). No such job raises :class:`~jobboard.errors.JobNotFound`;
the board's other errors (another race lost between the check and the call,
an unreachable ZooKeeper) propagate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobboard.board.job import Job
from jobboard.cli.admin_rules import Action, Refused, check
from jobboard.errors import OwnerNotFound
from jobboard.states import JobState

if TYPE_CHECKING:
    from jobboard.board import Board

__all__ = ["Outcome", "Refused", "TRASHED", "perform"]

#: The state an outcome gives for a trashed job (its record is gone).
TRASHED = "TRASHED"

#: The state in which an action has nothing left to do ("(already)" in the table).
_ALREADY = {Action.CANCEL: JobState.CANCELLED, Action.SUSPEND: JobState.SUSPENDED}


@dataclass(frozen=True)
class Outcome:
    """What an admin action did to a job.

    Attributes:
        action: the action done.
        job: the job's record as it was before.
        holder: who held its claim then (None: nobody, or a holder that is
            gone).
        state: the job's state after (:data:`TRASHED` when it was trashed).
        message: one line saying what was done.
        cli_hint: the command to run next, which the command line adds to
            the message (the console has a button for it).
        to: transfer: the conductor the claim moved to.
        attempt: retry: the number of the attempt queued.
        stop_requested: cancel, suspend: whether the holder was asked to
            stop (None: nothing was done, the job already was so).
    """

    action: Action
    job: Job
    holder: str | None
    state: JobState | str
    message: str
    cli_hint: str | None = None
    to: str | None = None
    attempt: int | None = None
    stop_requested: bool | None = None

    @property
    def cli_message(self) -> str:
        """The line the command line prints: the message and the next
        command, where there is one."""
        return f"{self.message}; {self.cli_hint}" if self.cli_hint else self.message


def perform(board: "Board", action: Action, job_id: str, *, to: str | None = None) -> Outcome:
    """Do ``action`` to the job ``job_id`` (a full id).

    Args:
        board: a connected board.
        action: the admin action.
        job_id: the job's full id (resolve a prefix first).
        to: transfer: the live conductor that takes the claim.

    Returns:
        What was done, with one line saying so.

    Raises:
        Refused: see the module docstring.
        JobNotFound: no such job.
    """
    job, holder = check(board, action, job_id)

    def done(state: JobState | str, message: str, **extra: Any) -> Outcome:
        return Outcome(action, job, holder, state, message, **extra)

    if job.state is _ALREADY.get(action):
        return done(job.state, f"job {job_id} is already {job.state.value}; nothing to do")
    if action is Action.ABANDON:
        if holder is None:
            # the holder's session ended: put it back now rather than at the
            # next conductor's orphan pass
            board.restore_orphan(job_id)
            message = f"abandoned {job_id} (its holder was gone); any conductor may claim it now"
        else:
            board.abandon(job_id, holder)
            message = (f"abandoned {job_id} (was held by {holder}); any conductor may "
                       "claim it now")
        return done(JobState.UNCLAIMED, message)
    if action is Action.TRANSFER:
        _transfer(board, job_id, holder, to)
        return done(JobState.CLAIMED,
                    f"transferred {job_id} from {holder or 'its departed holder'} to {to}",
                    to=to)
    if action is Action.CANCEL:
        state = board.cancel(job_id)
        if state is JobState.CLAIMED:
            message = (f"asked {holder or 'the holder'} to stop job {job_id}: it stops at "
                       "the next task boundary, reverts what ran and records CANCELLED")
        elif state is JobState.CANCELLED:
            message = f"cancelled {job_id} (it was waiting)"
        else:   # it finished meanwhile
            raise Refused(f"job {job_id} finished ({state.value}) before it could be "
                          "cancelled")
        return done(state, message, stop_requested=state is JobState.CLAIMED)
    if action is Action.SUSPEND:
        state = board.suspend(job_id)
        if state is JobState.CLAIMED:
            message = (f"asked {holder or 'the holder'} to suspend job {job_id}: it stops at "
                       "the next task boundary and records SUSPENDED")
            hint = f"`jobboard resume {job_id}` continues it"
        else:
            message = f"suspended {job_id} (it was waiting)"
            hint = f"`jobboard resume {job_id}` puts it back on the board"
        return done(state, message, cli_hint=hint, stop_requested=state is JobState.CLAIMED)
    if action is Action.RESUME:
        resumed = board.resume(job_id)
        return done(resumed.state, f"resumed {job_id}; any conductor may claim it now")
    if action is Action.RETRY:
        revived = board.retry(job_id)
        return done(revived.state, f"job {job_id} queued again as attempt {revived.attempt}",
                    attempt=revived.attempt)
    board.trash(job_id)
    return done(TRASHED, f"trashed {job_id} (was {job.state.value})")


def _transfer(board: "Board", job_id: str, holder: str | None, to: str | None) -> None:
    """Move the claim on ``job_id`` from ``holder`` to the live conductor ``to``.

    Raises:
        Refused: no target, the holder itself, or not a live conductor.
    """
    if not to:
        raise Refused("say which live conductor to transfer the claim to")
    if holder == to:
        raise Refused(f"job {job_id} is already held by {to}; nothing to transfer")
    try:
        board.transfer(job_id, holder, to)
    except OwnerNotFound as exc:
        raise Refused(f"{exc}; pick a live conductor",
                      cli_message=f"{exc}; see `jobboard conductors` for the live ones") \
            from None
