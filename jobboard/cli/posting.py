"""``jobboard post``: post a job and, with ``--wait``, report how it ended.

With ``--wait`` the exit code says how the job ended (see
:class:`~jobboard.cli.common.ExitCode`): 0 COMPLETE, 3 FAILED,
4 CANCELLED, 5 DEAD, 6 not finished within ``--timeout`` (the job goes on).
The text output is the job id and state, then each result (as JSON), the
reason and the failure with its traceback.

How it fails: a bad factory reference or argument, an unreachable board, a
job trashed while waited for: one ``error:`` line, exit 1 (2 for usage).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from jobboard.cli.common import Connection, ExitCode, board_options, emit_json, json_option, pairs
from jobboard.cli.render import outcome_lines
from jobboard.cli.zk import open_board
from jobboard.states import JobState

__all__ = ["EXIT_CODES", "post"]

#: The exit code of ``post --wait`` for each way a job ends.
EXIT_CODES = {JobState.COMPLETE: ExitCode.OK, JobState.FAILED: ExitCode.FAILED,
              JobState.CANCELLED: ExitCode.CANCELLED, JobState.DEAD: ExitCode.DEAD}


def _outcome_doc(outcome: Any) -> dict[str, Any]:
    return {"job_id": outcome.job_id, "state": outcome.state.value, "ok": outcome.ok,
            "results": outcome.results, "failure": outcome.failure, "reason": outcome.reason,
            "timed_out": False, "exit_code": int(EXIT_CODES.get(outcome.state, ExitCode.ERROR))}


@click.command()
@click.argument("factory")
@click.option("--arg", "args", multiple=True, metavar="K=V", help="Factory argument.")
@click.option("--store", "store", multiple=True, metavar="K=V", help="Initial flow input.")
@click.option("--name", default=None, help="A name for people (default: the function).")
@click.option("--priority", default=0, show_default=True, type=click.IntRange(-9999, 9999),
              help="Higher runs first (-9999..9999).")
@click.option("--delay", default=None, type=click.FloatRange(min=0), metavar="SECONDS",
              help="Not claimable before this many seconds.")
@click.option("--key", default=None, metavar="IDEMPOTENCY_KEY",
              help="A second post with the same key returns the first job (while it is "
                   "on the board: keys expire with their jobs).")
@click.option("--queue", default="default", show_default=True, metavar="NAME",
              help="The queue the job waits in: only conductors serving it claim it.")
@click.option("--wait", "wait_", is_flag=True,
              help="Wait for the job to finish; the exit code says how it ended.")
@click.option("--timeout", default=None, type=click.FloatRange(min=0),
              help="With --wait: give up after this many seconds (exit 6).")
@json_option
@board_options
def post(factory: str, args: tuple[str, ...], store: tuple[str, ...], name: str | None,
         priority: int, delay: float | None, key: str | None, queue: str, wait_: bool,
         timeout: float | None, as_json: bool, conn: Connection) -> None:
    """Post a job that runs flow FACTORY (package.module:function).

    Prints the job id (with --json: the job). With --wait, prints how it
    ended, its results or its failure, and exits 0 COMPLETE, 3 FAILED,
    4 CANCELLED, 5 DEAD, 6 when --timeout ran out first (the job goes on).
    """
    from jobboard.cli.inspection import logbook_archive
    from jobboard.errors import WaitTimeout

    with open_board(conn) as board:
        job = board.post(factory, args=pairs(args, "--arg"), store=pairs(store, "--store"),
                         name=name, priority=priority, delay=delay, key=key, queue=queue)
        if not wait_:
            emit_json(job.to_dict()) if as_json else click.echo(job.uuid)
            return
        if not as_json:
            click.echo(f"posted {job.uuid}; waiting", err=True)
        board.archive = logbook_archive(conn.logbook)   # the record may be pruned first
        try:
            outcome = board.wait(job.uuid, timeout=timeout)
        except WaitTimeout as exc:
            state = exc.state.value if isinstance(exc.state, JobState) else str(exc.state)
            _timed_out(job.uuid, state, timeout or 0.0, as_json)
    code = EXIT_CODES.get(outcome.state, ExitCode.ERROR)
    if as_json:
        emit_json(_outcome_doc(outcome))
    else:
        click.echo(f"{job.uuid} {outcome.state.value}")
        for line in outcome_lines({"results": outcome.results, "reason": outcome.reason,
                                   "failure": outcome.failure}):
            click.echo(line)
    sys.exit(int(code))


def _timed_out(job_id: str, state: str, timeout: float, as_json: bool) -> None:
    message = (f"job {job_id} did not finish within {timeout:g}s (it is {state}, and goes "
               f"on: `jobboard show {job_id[:8]}`)")
    if as_json:
        emit_json({"job_id": job_id, "state": state, "ok": False, "results": {},
                   "failure": None, "reason": message, "timed_out": True,
                   "exit_code": int(ExitCode.TIMEOUT)})
    click.echo(f"error: {message}", err=True)
    sys.exit(int(ExitCode.TIMEOUT))
