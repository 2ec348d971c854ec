"""The console's admin actions: transfer, abandon, cancel, retry, trash,
suspend, resume.

Each checks the action against the job's state with the CLI's own check
(:func:`jobboard.cli.admin_rules.check`), then makes the board call the CLI
command makes.

How it fails: an action the job's state does not allow, a transfer to the
holder itself or to a conductor that is not alive raise :class:`Refused`
(one line saying why and what to do); the board's own errors (a race lost
between the check and the call, an unreachable ZooKeeper) propagate.
"""

from __future__ import annotations

from jobboard.board import Board
from jobboard.cli.admin_rules import Action, Refused, check
from jobboard.errors import OwnerNotFound
from jobboard.states import JobState

__all__ = ["Refused", "perform"]


def perform(board: Board, action: Action, job_id: str, *, to: str | None = None) -> str:
    """Do ``action`` to the job ``job_id`` (a full id); returns one line
    saying what was done.

    Args:
        to: the live conductor a transfer moves the claim to.

    Raises:
        Refused: see the module docstring.
        JobNotFound: no such job.
    """
    job, holder = check(board, action, job_id)
    if action is Action.ABANDON:
        if holder is None:
            board.restore_orphan(job_id)
            return f"abandoned {job_id} (its holder was gone); any conductor may claim it now"
        board.abandon(job_id, holder)
        return f"abandoned {job_id} (was held by {holder}); any conductor may claim it now"
    if action is Action.TRANSFER:
        if not to:
            raise Refused("say which live conductor to transfer the claim to")
        if holder == to:
            raise Refused(f"job {job_id} is already held by {to}; nothing to transfer")
        try:
            board.transfer(job_id, holder, to)
        except OwnerNotFound as exc:
            raise Refused(f"{exc}; pick a live conductor") from None
        return f"transferred {job_id} from {holder or 'its departed holder'} to {to}"
    if action is Action.CANCEL:
        if job.state is JobState.CANCELLED:
            return f"job {job_id} is already CANCELLED; nothing to do"
        state = board.cancel(job_id)
        if state is JobState.CLAIMED:
            return (f"asked {holder or 'the holder'} to stop job {job_id}: it stops at the "
                    "next task boundary, reverts what ran and records CANCELLED")
        if state is JobState.CANCELLED:
            return f"cancelled {job_id} (it was waiting)"
        raise Refused(f"job {job_id} finished ({state.value}) before it could be cancelled")
    if action is Action.SUSPEND:
        if job.state is JobState.SUSPENDED:
            return f"job {job_id} is already SUSPENDED; nothing to do"
        if board.suspend(job_id) is JobState.CLAIMED:
            return (f"asked {holder or 'the holder'} to suspend job {job_id}: it stops at the "
                    "next task boundary and records SUSPENDED")
        return f"suspended {job_id} (it was waiting)"
    if action is Action.RESUME:
        board.resume(job_id)
        return f"resumed {job_id}; any conductor may claim it now"
    if action is Action.RETRY:
        revived = board.retry(job_id)
        return f"job {job_id} queued again as attempt {revived.attempt}"
    board.trash(job_id)
    return f"trashed {job_id} (was {job.state.value})"
