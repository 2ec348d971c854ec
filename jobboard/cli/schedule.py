"""``jobboard schedule``: define, list, show, pause, resume and remove the
board's schedules (the scheduler that fires them runs in the conductors).

Every subcommand takes the shared connection options and ``--json`` (one
JSON document on stdout). How it fails: as every command (one ``error:``
line, exit 1): an unknown schedule, a name in use (``add`` without
``--replace``), a bad cron expression, time zone or duration.
"""

from __future__ import annotations

import time
from typing import Any

import click

from jobboard.cli.common import (Connection, board_options, emit_json, json_option, pairs,
                                 print_table)
from jobboard.cli.zk import open_board
from jobboard.errors import InvalidArgument
from jobboard.schedules import (MissedFires, ScheduleInfo, Schedules, format_duration,
                                parse_duration)

__all__ = ["schedule"]


def _duration(_ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value, argument=param.name or "duration")
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc)) from None


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def _trigger(info: ScheduleInfo) -> str:
    return info.schedule.trigger.describe() if info.schedule else "-"


@click.group("schedule")
def schedule() -> None:
    """Periodic and cron jobs, posted once per tick by the fleet's scheduler."""


@schedule.command("add")
@click.argument("name")
@click.argument("factory")
@click.option("--cron", default=None, metavar="EXPR",
              help='Cron expression, five fields ("*/5 * * * *") or @hourly, @daily...')
@click.option("--every", default=None, metavar="DURATION", callback=_duration,
              help="Fixed period (30s, 5m, 1h...), aligned on the epoch.")
@click.option("--tz", default=None, metavar="TZ",
              help="IANA time zone of --cron (default UTC).")
@click.option("--arg", "args", multiple=True, metavar="K=V", help="Factory argument.")
@click.option("--store", "store", multiple=True, metavar="K=V", help="Initial flow input.")
@click.option("--queue", default=None, help="Queue of the posted jobs.")
@click.option("--priority", default=0, show_default=True, type=click.IntRange(-9999, 9999),
              help="Priority of the posted jobs.")
@click.option("--missed", default=MissedFires.SKIP.value, show_default=True,
              type=click.Choice([m.value for m in MissedFires]),
              help="After an outage: post only the latest missed fire (skip) or the "
                   "latest --catch-up-limit ones (catch-up).")
@click.option("--catch-up-limit", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="With --missed catch-up: how many missed fires are posted.")
@click.option("--grace", default="60s", show_default=True, metavar="DURATION",
              callback=_duration,
              help="With --missed skip: how late a fire may still be posted.")
@click.option("--paused", is_flag=True, help="Define it paused.")
@click.option("--replace", is_flag=True, help="Overwrite a schedule of that name.")
@json_option
@board_options
def add(name: str, factory: str, cron: str | None, every: float | None, tz: str | None,
        args: tuple[str, ...], store: tuple[str, ...], queue: str | None, priority: int,
        missed: str, catch_up_limit: int, grace: float, paused: bool, replace: bool,
        as_json: bool, conn: Connection) -> None:
    """Define schedule NAME posting flow FACTORY (package.module:function)."""
    if (cron is None) == (every is None):
        raise click.UsageError("give exactly one of --cron and --every")
    with open_board(conn) as board:
        schedules = Schedules(board)
        schedules.add(name, factory, cron=cron, every=every, tz=tz,
                      args=pairs(args, "--arg"), store=pairs(store, "--store"),
                      queue=queue, priority=priority, missed=missed,
                      catch_up_limit=catch_up_limit, grace=grace, paused=paused,
                      replace=replace)
        info = schedules.info(name)
    if as_json:
        emit_json(info.to_dict())
        return
    click.echo(f"schedule {name}: {_trigger(info)}, next fire {_when(info.next_fire())}")


@schedule.command("list")
@json_option
@board_options
def list_(as_json: bool, conn: Connection) -> None:
    """List the schedules with their next and last fire."""
    with open_board(conn) as board:
        infos = Schedules(board).list()
    if as_json:
        emit_json({"schedules": [info.to_dict() for info in infos]})
        return
    rows = []
    for info in infos:
        status = info.status
        rows.append([info.name, info.state.upper(), _trigger(info),
                     info.schedule.factory if info.schedule else "-",
                     _when(info.next_fire()), _when(status.last_fire if status else None),
                     status.fires if status else 0, status.skipped if status else 0])
    print_table(["NAME", "STATE", "TRIGGER", "FACTORY", "NEXT", "LAST", "FIRES", "SKIPPED"],
                rows)
    for info in infos:
        if info.broken:
            click.echo(f"{info.name}: broken: {info.broken}", err=True)


@schedule.command("show")
@click.argument("name")
@json_option
@board_options
def show(name: str, as_json: bool, conn: Connection) -> None:
    """Show one schedule: definition, state, next fire and what was fired."""
    with open_board(conn) as board:
        info = Schedules(board).info(name)
    if as_json:
        emit_json(info.to_dict())
        return
    _print_info(info)


def _print_info(info: ScheduleInfo) -> None:
    lines: list[tuple[str, Any]] = [("name", info.name), ("state", info.state.upper())]
    if info.broken:
        lines.append(("broken", info.broken))
    definition = info.schedule
    if definition is not None:
        lines += [("trigger", _trigger(info)), ("factory", definition.factory),
                  ("args", definition.args), ("store", definition.store),
                  ("queue", definition.queue or "default"), ("priority", definition.priority),
                  ("missed", definition.missed.value
                   + (f" (limit {definition.catch_up_limit})"
                      if definition.missed is MissedFires.CATCH_UP
                      else f" (grace {format_duration(definition.grace)})")),
                  ("next fire", _when(info.next_fire()))]
    status = info.status
    if status is not None:
        lines += [("last fire", _when(status.last_fire)), ("last job", status.last_job or "-"),
                  ("fires", status.fires), ("skipped", status.skipped),
                  ("leader", status.leader or "-")]
        if status.error:
            lines.append(("error", status.error))
    for label, value in lines:
        click.echo(f"{label:>9}: {value}")


def _change(verb: str, name: str, as_json: bool, conn: Connection) -> None:
    with open_board(conn) as board:
        schedules = Schedules(board)
        getattr(schedules, verb)(name)
        info = schedules.info(name)
    if as_json:
        emit_json(info.to_dict())
    else:
        click.echo(f"schedule {name}: {info.state}")


@schedule.command("pause")
@click.argument("name")
@json_option
@board_options
def pause(name: str, as_json: bool, conn: Connection) -> None:
    """Stop firing NAME until it is resumed."""
    _change("pause", name, as_json, conn)


@schedule.command("resume")
@click.argument("name")
@json_option
@board_options
def resume(name: str, as_json: bool, conn: Connection) -> None:
    """Fire NAME again from now on (fires missed while paused are not posted)."""
    _change("resume", name, as_json, conn)


@schedule.command("remove")
@click.argument("name")
@json_option
@board_options
def remove(name: str, as_json: bool, conn: Connection) -> None:
    """Delete NAME (jobs it already posted stay)."""
    with open_board(conn) as board:
        Schedules(board).remove(name)
    if as_json:
        emit_json({"name": name, "removed": True})
    else:
        click.echo(f"schedule {name} removed")
