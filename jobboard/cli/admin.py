"""The admin commands that change a job: ``abandon``, ``transfer``,
``cancel``, ``retry``, ``trash``, ``suspend``, ``resume``. Each takes a job id
or a unique prefix of one, acts or refuses by the job's state (the table in
:mod:`jobboard.cli.admin_rules`) through the action the console does too
(:func:`jobboard.cli.admin_actions.perform`), and prints one line (with
``--json``: one object: ``job_id``, ``action``, ``state`` before and after,
``holder``, ``message``).

How it fails: a refusal, an unknown or ambiguous id, a lost race: one
``error:`` line on stderr, exit 1; stdout stays empty.
"""

from __future__ import annotations

import click

from jobboard.cli.admin_actions import Outcome, perform
from jobboard.cli.admin_rules import Action, Refused
from jobboard.cli.common import Connection, board_options, emit_json, job_id_argument, json_option
from jobboard.cli.zk import open_board
from jobboard.states import JobState

__all__ = ["abandon", "cancel", "resume", "retry", "suspend", "transfer", "trash"]


def _act(conn: Connection, action: Action, text: str, as_json: bool, *,
         to: str | None = None) -> None:
    """Do ``action`` to the job ``text`` (an id or a unique prefix of one)
    and print what was done.

    Raises:
        click.ClickException: refused; one line saying why and what to do.
        JobNotFound, AmbiguousJobId: no such job, or several.
    """
    from jobboard.board.lookup import resolve_job_id

    with open_board(conn) as board:
        try:
            outcome = perform(board, action, resolve_job_id(board, text), to=to)
        except Refused as exc:
            raise click.ClickException(exc.cli_message) from None
    _report(outcome, as_json)


def _report(outcome: Outcome, as_json: bool) -> None:
    if not as_json:
        click.echo(outcome.cli_message)
        return
    state = outcome.state
    extra = {key: value for key, value in (("to", outcome.to), ("attempt", outcome.attempt),
                                           ("stop_requested", outcome.stop_requested))
             if value is not None}
    emit_json({"job_id": outcome.job.uuid, "action": outcome.action.value,
               "previous_state": outcome.job.state.value,
               "state": state.value if isinstance(state, JobState) else state,
               "holder": outcome.holder, "message": outcome.cli_message, **extra})


@click.command()
@job_id_argument
@json_option
@board_options
def abandon(job_id: str, as_json: bool, conn: Connection) -> None:
    """Release a job's claim so that any conductor picks it up at once.
    Only a CLAIMED job can be abandoned."""
    _act(conn, Action.ABANDON, job_id, as_json)


@click.command()
@job_id_argument
@click.option("--to", "to_owner", required=True, metavar="OWNER",
              help="Name of a live conductor (see `jobboard conductors`).")
@json_option
@board_options
def transfer(job_id: str, to_owner: str, as_json: bool, conn: Connection) -> None:
    """Move a CLAIMED job's claim to another live conductor, which resumes it."""
    _act(conn, Action.TRANSFER, job_id, as_json, to=to_owner)


@click.command()
@job_id_argument
@json_option
@board_options
def trash(job_id: str, as_json: bool, conn: Connection) -> None:
    """Delete a job that nobody holds (any state but CLAIMED)."""
    _act(conn, Action.TRASH, job_id, as_json)


@click.command()
@job_id_argument
@json_option
@board_options
def cancel(job_id: str, as_json: bool, conn: Connection) -> None:
    """Cancel a job: a waiting job is cancelled at once; a running one is
    stopped by its holder at the next task boundary and reverted."""
    _act(conn, Action.CANCEL, job_id, as_json)


@click.command()
@job_id_argument
@json_option
@board_options
def retry(job_id: str, as_json: bool, conn: Connection) -> None:
    """Put a FAILED, CANCELLED or DEAD job back on the board as a new attempt
    (its logbook keeps what earlier attempts finished)."""
    _act(conn, Action.RETRY, job_id, as_json)


@click.command()
@job_id_argument
@json_option
@board_options
def suspend(job_id: str, as_json: bool, conn: Connection) -> None:
    """Pause a job until `jobboard resume`: a waiting job at once; a running
    one at its holder's next task boundary (finished tasks stay done in the
    logbook). A suspended job is not claimable."""
    _act(conn, Action.SUSPEND, job_id, as_json)


@click.command()
@job_id_argument
@json_option
@board_options
def resume(job_id: str, as_json: bool, conn: Connection) -> None:
    """Put a SUSPENDED job back on the board, ahead of the jobs of its
    priority; it continues from its logbook (finished tasks are not run
    again)."""
    _act(conn, Action.RESUME, job_id, as_json)
