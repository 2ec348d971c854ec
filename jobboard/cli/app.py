"""The top-level ``jobboard`` group: logging, the config file, and every
user error as one ``error:`` line.

How it fails: a :class:`~jobboard.errors.JobBoardError` from any command is
printed as ``error: <message>`` on stderr with exit code 1; a click usage
error as one ``error:`` line with exit code 2 and a pointer to ``--help``.
No traceback for either.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, NoReturn

import click

from jobboard import config
from jobboard.cli.common import ExitCode
from jobboard.cli.settings import schema
from jobboard.errors import JobBoardError

__all__ = ["main"]

# click >= 8.2 raises this for a bare group (`jobboard`): it shows the help.
_SHOWS_HELP = tuple(kind for kind in (getattr(click.exceptions, "NoArgsIsHelpError", None),)
                    if kind is not None)

EPILOG = """\b
Exit codes: 0 done (post --wait: the job is COMPLETE), 1 error, 2 usage error;
post --wait: 3 FAILED, 4 CANCELLED, 5 DEAD, 6 not finished within --timeout.
The default logbook is sqlite:///$XDG_STATE_HOME/jobboard/logbook.db
(~/.local/state/jobboard/logbook.db when XDG_STATE_HOME is unset)."""


def _fail(exc: click.ClickException) -> NoReturn:
    """A click error as one line (click's own output is usage + hint + error)."""
    if isinstance(exc, _SHOWS_HELP):
        exc.show()
        sys.exit(exc.exit_code)
    message = f"error: {exc.format_message()}"
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    click.echo(message, err=True)
    sys.exit(exc.exit_code)


class _Group(click.Group):
    """The top-level group: turns every user error into one ``error:`` line."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException as exc:   # a bad option of the group itself
            _fail(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobBoardError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(int(ExitCode.ERROR))
        except click.ClickException as exc:
            _fail(exc)


@click.group(cls=_Group, epilog=EPILOG)
@click.option("--config", "config_file", envvar="JOBBOARD_CONFIG", default=None,
              help="TOML config file (default ./jobboard.toml when present).")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: int) -> None:
    """jobboard: a job-board coordinated worker fleet on ZooKeeper.

    Every command takes --json (one JSON object on stdout). A JOB_ID may be
    any unique prefix of a job's uuid.
    """
    import warnings

    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kazoo warns (several lines) about a missing chroot; the board says it in one.
    warnings.filterwarnings("ignore", message="No chroot path exists")
    ctx.meta["jobboard.verbose"] = verbose
    path = config.config_path(config_file)
    settings = config.load_config_file(path)
    ctx.default_map = config.default_map(settings, schema(main), source=path or "config")
