"""The admin commands that change a job: ``abandon``, ``transfer``,
``cancel``, ``retry``, ``trash``, ``suspend``, ``resume``. Each takes a job id or a unique prefix of
one, acts or refuses by the job's state (the table in
:mod:`jobboard.cli.admin_rules`), and prints one line (with ``--json``: one
object: ``job_id``, ``action``, ``state`` before and after, ``holder``,
``message``).

How it fails: a refusal, an unknown or ambiguous id, a lost race: one
``error:`` line on stderr, exit 1; stdout stays empty.
"""

from __future__ import annotations

from typing import Any

import click

from jobboard.cli.admin_rules import Action, Refused, check
from jobboard.cli.common import Connection, board_options, emit_json, job_id_argument, json_option
from jobboard.cli.zk import open_board
from jobboard.states import JobState

__all__ = ["abandon", "cancel", "resume", "retry", "suspend", "transfer", "trash"]


def _target(board: Any, action: Action, text: str) -> tuple[Any, str | None]:
    """The job an admin command acts on (``text`` resolved as an id prefix)
    and who holds its claim, once the table allows the action.

    Raises:
        click.ClickException: refused; one line saying why and what to do.
        JobNotFound, AmbiguousJobId: no such job, or several.
    """
    from jobboard.board.lookup import resolve_job_id

    try:
        return check(board, action, resolve_job_id(board, text))
    except Refused as exc:
        raise click.ClickException(str(exc)) from None


def _report(as_json: bool, action: Action, job: Any, state: JobState | str, message: str,
            holder: str | None = None, **extra: Any) -> None:
    if as_json:
        emit_json({"job_id": job.uuid, "action": action.value,
                   "previous_state": job.state.value,
                   "state": state.value if isinstance(state, JobState) else state,
                   "holder": holder, "message": message, **extra})
    else:
        click.echo(message)


@click.command()
@job_id_argument
@json_option
@board_options
def abandon(job_id: str, as_json: bool, conn: Connection) -> None:
    """Release a job's claim so that any conductor picks it up at once.
    Only a CLAIMED job can be abandoned."""
    with open_board(conn) as board:
        job, holder = _target(board, Action.ABANDON, job_id)
        if holder is None:
            # the holder's session ended: put it back now rather than at the
            # next conductor's orphan pass
            board.restore_orphan(job.uuid)
            message = (f"abandoned {job.uuid} (its holder was gone); any conductor may "
                       "claim it now")
        else:
            board.abandon(job.uuid, holder)
            message = (f"abandoned {job.uuid} (was held by {holder}); any conductor may "
                       "claim it now")
    _report(as_json, Action.ABANDON, job, JobState.UNCLAIMED, message, holder)


@click.command()
@job_id_argument
@click.option("--to", "to_owner", required=True, metavar="OWNER",
              help="Name of a live conductor (see `jobboard conductors`).")
@json_option
@board_options
def transfer(job_id: str, to_owner: str, as_json: bool, conn: Connection) -> None:
    """Move a CLAIMED job's claim to another live conductor, which resumes it."""
    from jobboard.errors import OwnerNotFound

    with open_board(conn) as board:
        job, holder = _target(board, Action.TRANSFER, job_id)
        if holder == to_owner:
            raise click.ClickException(f"job {job.uuid} is already held by {to_owner}; "
                                       "nothing to transfer")
        try:
            board.transfer(job.uuid, holder, to_owner)
        except OwnerNotFound as exc:
            raise click.ClickException(f"{exc}; see `jobboard conductors` for the live "
                                       "ones") from None
    _report(as_json, Action.TRANSFER, job, JobState.CLAIMED,
            f"transferred {job.uuid} from {holder or 'its departed holder'} to {to_owner}",
            holder, to=to_owner)


@click.command()
@job_id_argument
@json_option
@board_options
def trash(job_id: str, as_json: bool, conn: Connection) -> None:
    """Delete a job that nobody holds (any state but CLAIMED)."""
    with open_board(conn) as board:
        job, _holder = _target(board, Action.TRASH, job_id)
        board.trash(job.uuid)
    _report(as_json, Action.TRASH, job, "TRASHED", f"trashed {job.uuid} (was {job.state.value})")


@click.command()
@job_id_argument
@json_option
@board_options
def cancel(job_id: str, as_json: bool, conn: Connection) -> None:
    """Cancel a job: a waiting job is cancelled at once; a running one is
    stopped by its holder at the next task boundary and reverted."""
    with open_board(conn) as board:
        job, holder = _target(board, Action.CANCEL, job_id)
        if job.state is JobState.CANCELLED:
            _report(as_json, Action.CANCEL, job, job.state,
                    f"job {job.uuid} is already CANCELLED; nothing to do")
            return
        state = board.cancel(job.uuid)
    if state is JobState.CLAIMED:
        message = (f"asked {holder or 'the holder'} to stop job {job.uuid}: it stops at the "
                   "next task boundary, reverts what ran and records CANCELLED")
    elif state is JobState.CANCELLED:
        message = f"cancelled {job.uuid} (it was waiting)"
    else:   # it finished meanwhile
        raise click.ClickException(f"job {job.uuid} finished ({state.value}) before it "
                                   "could be cancelled")
    _report(as_json, Action.CANCEL, job, state, message, holder,
            stop_requested=state is JobState.CLAIMED)


@click.command()
@job_id_argument
@json_option
@board_options
def retry(job_id: str, as_json: bool, conn: Connection) -> None:
    """Put a FAILED, CANCELLED or DEAD job back on the board as a new attempt
    (its logbook keeps what earlier attempts finished)."""
    with open_board(conn) as board:
        job, _holder = _target(board, Action.RETRY, job_id)
        revived = board.retry(job.uuid)
    _report(as_json, Action.RETRY, job, revived.state,
            f"job {job.uuid} queued again as attempt {revived.attempt}",
            attempt=revived.attempt)


@click.command()
@job_id_argument
@json_option
@board_options
def suspend(job_id: str, as_json: bool, conn: Connection) -> None:
    """Pause a job until `jobboard resume`: a waiting job at once; a running
    one at its holder's next task boundary (finished tasks stay done in the
    logbook). A suspended job is not claimable."""
    with open_board(conn) as board:
        job, holder = _target(board, Action.SUSPEND, job_id)
        if job.state is JobState.SUSPENDED:
            _report(as_json, Action.SUSPEND, job, job.state,
                    f"job {job.uuid} is already SUSPENDED; nothing to do")
            return
        state = board.suspend(job.uuid)
    if state is JobState.CLAIMED:
        message = (f"asked {holder or 'the holder'} to suspend job {job.uuid}: it stops at "
                   "the next task boundary and records SUSPENDED; `jobboard resume "
                   f"{job.uuid}` continues it")
    else:
        message = (f"suspended {job.uuid} (it was waiting); `jobboard resume {job.uuid}` "
                   "puts it back on the board")
    _report(as_json, Action.SUSPEND, job, state, message, holder,
            stop_requested=state is JobState.CLAIMED)


@click.command()
@job_id_argument
@json_option
@board_options
def resume(job_id: str, as_json: bool, conn: Connection) -> None:
    """Put a SUSPENDED job back on the board, ahead of the jobs of its
    priority; it continues from its logbook (finished tasks are not run
    again)."""
    with open_board(conn) as board:
        job, _holder = _target(board, Action.RESUME, job_id)
        resumed = board.resume(job.uuid)
    _report(as_json, Action.RESUME, job, resumed.state,
            f"resumed {job.uuid}; any conductor may claim it now")
