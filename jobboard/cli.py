"""The ``jobboard`` command.

Every command reads ``--zk``/``JOBBOARD_ZK``, ``--root``/``JOBBOARD_ROOT`` and
``--logbook``/``JOBBOARD_LOGBOOK``. ``--json`` prints one JSON document on
stdout. User errors go to stderr as one line with exit code 1 (2 for usage
errors), never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from jobboard import config
from jobboard.errors import JobBoardError


def common_options(func: Callable) -> Callable:
    """The connection options every command shares."""
    options = [
        click.option("--zk", envvar="JOBBOARD_ZK", default=config.DEFAULT_ZK,
                     show_default=True, help="ZooKeeper hosts (host:port,...)."),
        click.option("--root", envvar="JOBBOARD_ROOT", default=config.DEFAULT_ROOT,
                     show_default=True, help="Root znode of the board."),
        click.option("--logbook", envvar="JOBBOARD_LOGBOOK",
                     default=config.DEFAULT_LOGBOOK, show_default=True,
                     help="SQLAlchemy URL of the logbook."),
        click.option("--auth", envvar="JOBBOARD_AUTH", default=None,
                     help="USER:PASSWORD for ZooKeeper digest ACLs."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def user_errors(func: Callable) -> Callable:
    """Turn jobboard errors into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except JobBoardError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table; empty tables say so."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobBoardError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("--config", "config_file", envvar="JOBBOARD_CONFIG", default=None,
              help="TOML config file (default ./jobboard.toml when present).")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: int) -> None:
    """jobboard: a job-board coordinated worker fleet on ZooKeeper."""
    import logging

    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = config.load_config_file(config.config_path(config_file))
    ctx.default_map = config.click_default_map(settings, list(main.commands))


# ---- board commands ----------------------------------------------------------

# ---- end board commands ------------------------------------------------------

# ---- logbook commands --------------------------------------------------------

# ---- end logbook commands ----------------------------------------------------

# ---- conductor commands ------------------------------------------------------

# ---- end conductor commands --------------------------------------------------
