"""The ``jobboard`` command.

Every command reads ``--zk``/``JOBBOARD_ZK``, ``--root``/``JOBBOARD_ROOT`` and
``--logbook``/``JOBBOARD_LOGBOOK``. ``--json`` prints one JSON document on
stdout. User errors go to stderr as one line with exit code 1 (2 for usage
errors), never a traceback.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Callable

import click

from jobboard import config
from jobboard.errors import JobBoardError
from jobboard.states import JobState


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


def _job_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from jobboard.board.job import check_job_id

    try:
        return check_job_id(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="JOB_ID") from None


# A job id argument, checked (a uuid) before the command runs.
job_id_argument = click.argument("job_id", callback=_job_id)


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

def _open_board(zk: str, root: str, auth: str | None, **options: Any) -> Any:
    from jobboard.board import Board

    return Board.connect(zk, root=root, auth=config.parse_auth(auth), **options)


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, Any]:
    """K=V pairs; V is read as JSON when it parses (numbers, lists, true), else text."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint=flag)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _age(epoch: float | None) -> str:
    if not epoch:
        return "-"
    seconds = max(0.0, time.time() - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _outcome_doc(outcome: Any) -> dict:
    return {"job_id": outcome.job_id, "state": outcome.state.value, "ok": outcome.ok,
            "results": outcome.results, "failure": outcome.failure, "reason": outcome.reason}


@main.command()
@click.argument("factory")
@click.option("--arg", "args", multiple=True, metavar="K=V", help="Factory argument.")
@click.option("--store", "store", multiple=True, metavar="K=V", help="Initial flow input.")
@click.option("--name", default=None, help="A name for people (default: the function).")
@click.option("--priority", default=0, show_default=True, type=int, help="Higher runs first.")
@click.option("--delay", default=None, type=click.FloatRange(min=0), metavar="SECONDS",
              help="Not claimable before this many seconds.")
@click.option("--key", default=None, metavar="IDEMPOTENCY_KEY",
              help="A second post with the same key returns the first job.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job to finish.")
@click.option("--timeout", default=None, type=click.FloatRange(min=0),
              help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def post(factory: str, args: tuple[str, ...], store: tuple[str, ...], name: str | None,
         priority: int, delay: float | None, key: str | None, wait_: bool,
         timeout: float | None, as_json: bool, zk: str, root: str, logbook: str,
         auth: str | None) -> None:
    """Post a job that runs flow FACTORY (package.module:function)."""
    with _open_board(zk, root, auth) as board:
        job = board.post(factory, args=_pairs(args, "--arg"), store=_pairs(store, "--store"),
                         name=name, priority=priority, delay=delay, key=key)
        if not wait_:
            emit_json(job.to_dict()) if as_json else click.echo(job.uuid)
            return
        if not as_json:
            click.echo(f"posted {job.uuid}; waiting", err=True)
        outcome = board.wait(job.uuid, timeout=timeout)
    if as_json:
        emit_json(_outcome_doc(outcome))
    else:
        click.echo(f"{job.uuid} {outcome.state.value}")
        if outcome.reason or outcome.failure:
            click.echo(f"  {outcome.reason or outcome.failure}", err=True)
    sys.exit(0 if outcome.ok else 1)


@main.command()
@click.option("--state", default=None, type=click.Choice([s.value for s in JobState],
                                                         case_sensitive=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def jobs(state: str | None, as_json: bool, zk: str, root: str, logbook: str,
         auth: str | None) -> None:
    """List jobs (waiting ones in claim order). Malformed znodes are listed
    as MALFORMED with the reason."""
    with _open_board(zk, root, auth) as board:
        found = list(board.jobs(state.upper() if state else None))
        bad = board.malformed()
    if as_json:
        emit_json({"jobs": [j.to_dict() for j in found],
                   "malformed": [{"path": p, "reason": r} for p, r in sorted(bad.items())]})
        return
    rows = [[j.uuid, j.name, j.state.value, j.priority, j.claims, j.owner or "-",
             _age(j.created_at)] for j in found]
    rows += [[path, "-", "MALFORMED", "-", "-", "-", reason] for path, reason in sorted(bad.items())]
    print_table(["JOB", "NAME", "STATE", "PRIO", "CLAIMS", "OWNER", "AGE"], rows)


@main.command()
@job_id_argument
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def show(job_id: str, as_json: bool, zk: str, root: str, logbook: str,
         auth: str | None) -> None:
    """Show one job: its record, claim and history."""
    with _open_board(zk, root, auth) as board:
        job = board.get(job_id)
        holder = board.claim_owner(job.uuid)
    doc = job.to_dict()
    doc["holder"] = holder
    if as_json:
        emit_json(doc)
        return
    for field_name in ("uuid", "name", "factory", "state", "priority", "claims", "holder",
                       "key", "args", "store", "details", "outcome"):
        click.echo(f"{field_name:>9}: {doc[field_name]}")
    click.echo(f"{'created':>9}: {_age(job.created_at)} ago")
    if job.not_before:
        click.echo(f"{'due':>9}: in {max(0.0, job.not_before - time.time()):.1f}s")
    click.echo("  history:")
    for entry in job.history:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"]))
        click.echo(f"    {stamp} {entry['event']} {entry.get('owner', '')}".rstrip())


def _current_tasks(logbook_url: str, job_ids: list[str]) -> dict[str, str]:
    """The running task of each job, from the logbook ("?" when unreachable)."""
    if not job_ids:
        return {}
    from jobboard.errors import LogbookError
    from jobboard.states import AtomState

    try:
        with _open_logbook(logbook_url, auto_upgrade=False) as store:
            current = {}
            for job_id in job_ids:
                flow = store.load_flow(job_id)
                running = [a.name for a in (flow.atoms.values() if flow else ())
                           if a.state in (AtomState.RUNNING, AtomState.REVERTING)]
                current[job_id] = ",".join(running) or "-"
            return current
    except LogbookError:
        return {job_id: "?" for job_id in job_ids}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def claims(as_json: bool, zk: str, root: str, logbook: str, auth: str | None) -> None:
    """Show current claims: owner, since when, current task."""
    with _open_board(zk, root, auth) as board:
        held = board.claims()
    tasks = _current_tasks(logbook, [c["job_id"] for c in held])
    for claim in held:
        claim["task"] = tasks.get(claim["job_id"], "-")
    if as_json:
        emit_json({"claims": held})
        return
    print_table(["JOB", "OWNER", "SINCE", "TOKEN", "TASK"],
                [[c["job_id"], c["owner"], _age(c["since"]) + " ago", c["token"], c["task"]]
                 for c in held])


@main.command()
@job_id_argument
@common_options
def abandon(job_id: str, zk: str, root: str, logbook: str, auth: str | None) -> None:
    """Release a job's claim so that any conductor picks it up at once."""
    with _open_board(zk, root, auth) as board:
        owner = board.claim_owner(job_id)
        if owner is None:
            from jobboard.errors import NotClaimed
            raise NotClaimed(job_id)
        board.abandon(job_id, owner)
    click.echo(f"abandoned {job_id} (was held by {owner})")


@main.command()
@job_id_argument
@click.option("--to", "to_owner", required=True, metavar="OWNER",
              help="Name of a live conductor (see `jobboard conductors`).")
@common_options
def transfer(job_id: str, to_owner: str, zk: str, root: str, logbook: str,
             auth: str | None) -> None:
    """Move a job's claim to another live conductor, which resumes it."""
    with _open_board(zk, root, auth) as board:
        board.transfer(job_id, None, to_owner)
    click.echo(f"transferred {job_id} to {to_owner}")


@main.command()
@job_id_argument
@common_options
def trash(job_id: str, zk: str, root: str, logbook: str, auth: str | None) -> None:
    """Delete a job that nobody holds."""
    with _open_board(zk, root, auth) as board:
        board.trash(job_id)
    click.echo(f"trashed {job_id}")


@main.command()
@job_id_argument
@common_options
def cancel(job_id: str, zk: str, root: str, logbook: str, auth: str | None) -> None:
    """Cancel a job: a waiting job is removed; a running one is stopped at the
    next task boundary and reverted by its holder."""
    with _open_board(zk, root, auth) as board:
        state = board.cancel(job_id)
    if state is JobState.CLAIMED:
        click.echo(f"asked the holder of {job_id} to stop and revert it")
    else:
        click.echo(f"{job_id} is {state.value}")


@main.command()
@job_id_argument
@common_options
def retry(job_id: str, zk: str, root: str, logbook: str, auth: str | None) -> None:
    """Put a dead-lettered, failed or cancelled job back on the board."""
    with _open_board(zk, root, auth) as board:
        board.retry(job_id)
    click.echo(f"{job_id} is waiting again")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def conductors(as_json: bool, zk: str, root: str, logbook: str, auth: str | None) -> None:
    """List live conductors."""
    with _open_board(zk, root, auth) as board:
        live = board.conductors()
    if as_json:
        emit_json({"conductors": live})
        return
    print_table(["NAME", "HOST", "PID", "UP", "VERSION", "IN FLIGHT"],
                [[c["name"], c.get("host"), c.get("pid"), _age(c.get("started_at")),
                  c.get("version"), len(c.get("jobs") or [])] for c in live])


@main.command()
@click.option("--port", default=9465, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the /metrics endpoint (0 picks a free one).")
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@common_options
def exporter(port: int, addr: str, zk: str, root: str, logbook: str,
             auth: str | None) -> None:
    """Serve the board's gauges (depth by priority, oldest waiting age, live
    conductors) to Prometheus, one exporter per fleet. Stops on SIGTERM or
    SIGINT."""
    import signal

    from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

    from jobboard.metrics import BoardCollector, serve

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    disable_created_metrics()
    with _open_board(zk, root, auth) as board:
        registry = CollectorRegistry()
        registry.register(BoardCollector(board))
        ProcessCollector(registry=registry)
        try:
            server = serve(port, registry, addr=addr)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {addr}:{port}: {exc}") from None
        click.echo(f"serving board metrics on http://{addr}:{server.server_port}/metrics",
                   err=True)
        try:
            while not stop.wait(1.0):
                pass
        finally:
            server.shutdown()
            server.server_close()
    click.echo("exporter stopped", err=True)

# ---- end board commands ------------------------------------------------------

# ---- logbook commands --------------------------------------------------------


def _open_logbook(url: str, *, auto_upgrade: bool | None = None) -> Any:
    from jobboard.logbook import Logbook

    return Logbook(url, auto_upgrade=auto_upgrade)


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _failure_doc(failure: Any) -> dict | None:
    return None if failure is None else failure.to_dict()


def _logbook_info_doc(info: Any) -> dict:
    return {"job_id": info.job_id, "name": info.name, "owner": info.owner,
            "token": info.token,
            "flow_state": None if info.flow_state is None else info.flow_state.value,
            "created_at": _iso(info.created_at), "updated_at": _iso(info.updated_at)}


@main.group("logbook")
def logbook_group() -> None:
    """Inspect and maintain the SQL logbook."""


@logbook_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@common_options
def logbook_show(job_id: str, as_json: bool, zk: str, root: str, logbook: str,
                 auth: str | None) -> None:
    """Show a job's flow and every task: state, attempts, timing, failure."""
    with _open_logbook(logbook) as book:
        info = book.get_logbook(job_id)
        flow = book.load_flow(job_id)
    atoms = list(flow.atoms.values()) if flow else []
    if as_json:
        emit_json({
            "logbook": _logbook_info_doc(info),
            "flow": None if flow is None else {
                "name": flow.name, "state": flow.state.value, "meta": flow.meta,
                "created_at": _iso(flow.created_at), "updated_at": _iso(flow.updated_at)},
            "atoms": [{
                "name": a.name, "kind": a.kind, "state": a.state.value,
                "attempts": a.attempts, "result": a.result, "meta": a.meta,
                "failure": _failure_doc(a.failure),
                "revert_failure": _failure_doc(a.revert_failure),
                "created_at": _iso(a.created_at), "updated_at": _iso(a.updated_at),
                "started_at": _iso(a.started_at), "finished_at": _iso(a.finished_at),
                "duration": a.duration} for a in atoms],
        })
        return
    click.echo(f"job:    {info.job_id}  {info.name}".rstrip())
    click.echo(f"owner:  {info.owner or '-'} (token {info.token})")
    if flow is None:
        click.echo("flow:   (none yet)")
        return
    click.echo(f"flow:   {flow.name}  {flow.state.value}")
    click.echo(f"updated: {_iso(flow.updated_at)}")
    click.echo("")
    rows = []
    for a in atoms:
        duration = a.duration
        rows.append([a.name, a.kind, a.state.value, a.attempts,
                     _iso(a.started_at) or "-",
                     "-" if duration is None else f"{duration:.3f}s",
                     "" if a.failure is None else str(a.failure)])
    print_table(["TASK", "KIND", "STATE", "ATTEMPTS", "STARTED", "DURATION", "FAILURE"], rows)
    for a in atoms:
        for label, failure in (("failure", a.failure), ("revert failure", a.revert_failure)):
            if failure is not None and failure.traceback:
                click.echo(f"\n{a.name} {label}:\n{failure.traceback.rstrip()}")


@logbook_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1),
              help="How many logbooks, newest first.")
@common_options
def logbook_list(as_json: bool, limit: int, zk: str, root: str, logbook: str,
                 auth: str | None) -> None:
    """List logbooks, newest first."""
    with _open_logbook(logbook) as book:
        infos = book.list_logbooks(limit=limit)
    if as_json:
        emit_json([_logbook_info_doc(i) for i in infos])
        return
    print_table(["JOB", "NAME", "FLOW STATE", "OWNER", "TOKEN", "UPDATED"],
                [[i.job_id, i.name, i.flow_state.value if i.flow_state else "-",
                  i.owner or "-", i.token, _iso(i.updated_at)] for i in infos])


@logbook_group.command("upgrade")
@common_options
def logbook_upgrade(zk: str, root: str, logbook: str, auth: str | None) -> None:
    """Migrate the logbook schema to the newest revision."""
    with _open_logbook(logbook, auto_upgrade=False) as book:
        book.upgrade()
    click.echo("logbook schema is up to date")


@logbook_group.command("prune")
@click.option("--older-than", "days", required=True, type=click.FloatRange(min=0),
              help="Remove logbooks not updated for this many days.")
@common_options
def logbook_prune(days: float, zk: str, root: str, logbook: str, auth: str | None) -> None:
    """Remove old logbooks (retention)."""
    from datetime import timedelta

    with _open_logbook(logbook) as book:
        removed = book.delete_older_than(timedelta(days=days))
    click.echo(f"removed {removed} logbook(s) older than {days:g} day(s)")


# ---- end logbook commands ----------------------------------------------------

# ---- conductor commands ------------------------------------------------------

@main.command()
@click.option("--name", default=None, help="Unique conductor name (default host-pid).")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1),
              help="Jobs run at once.")
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics on this port.")
@click.option("--allow", "allow", multiple=True, metavar="PREFIX",
              help="Module prefix flow factories may come from (repeatable).")
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a graceful stop lets running jobs finish.")
@click.option("--session-timeout", default=10.0, show_default=True,
              type=click.FloatRange(min=0.2),
              help="ZooKeeper session timeout: a dead conductor's jobs are reclaimed after it.")
@click.option("--max-claims", default=5, show_default=True, type=click.IntRange(1),
              help="Dead-letter a job claimed this many times without finishing.")
@common_options
def conductor(name: str | None, concurrency: int, metrics_port: int | None,
              allow: tuple[str, ...], grace: float, session_timeout: float, max_claims: int,
              zk: str, root: str, logbook: str, auth: str | None) -> None:
    """Run a conductor: claim jobs and run their flows until SIGTERM.

    The first SIGTERM/SIGINT stops claiming and lets running jobs finish for
    --grace seconds, then abandons the rest; a second one exits at once.
    """
    import logging
    import os
    import signal

    from jobboard.conductor import Conductor

    if not allow:
        raise click.UsageError("no --allow PREFIX given: the conductor would refuse every "
                               "flow factory (for example --allow myapp.flows)")
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("jobboard").setLevel(logging.INFO)
    metrics = None
    if metrics_port is not None:
        from jobboard.metrics import Metrics, serve

        metrics = Metrics()
        serve(metrics_port, metrics.registry)
    board = _open_board(zk, root, auth, session_timeout=session_timeout,
                        max_claims=max_claims)
    store = _open_logbook(logbook)
    worker = Conductor(board, store, name=name, concurrency=concurrency, allow=allow,
                       grace=grace, metrics=metrics)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        graceful = signals["count"] == 1
        click.echo(f"{signal.Signals(signum).name}: "
                   + ("stopping gracefully (again to exit now)" if graceful else "exiting now"),
                   err=True)
        worker.stop(graceful=graceful)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(f"conductor {worker.name} running (concurrency {concurrency})", err=True)
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported below, exit status 1
            crashed.append(exc)

    runner = threading.Thread(target=run, name="conductor", daemon=True)
    runner.start()
    while runner.is_alive():
        runner.join(0.5)
    hard = signals["count"] > 1
    store.close()
    board.close()
    if crashed:
        logging.getLogger("jobboard.conductor").error(
            "conductor %s stopped on an error", worker.name, exc_info=crashed[0])
        os._exit(1)
    if hard:
        os._exit(1)   # task threads may still be running: do not wait for them

# ---- end conductor commands --------------------------------------------------


@main.command()
@click.option("--jobs", default=6, show_default=True, type=click.IntRange(1, 50),
              help="How many jobs the producer posts.")
def demo(jobs: int) -> None:
    """Run a local fleet: ZooKeeper, two conductors, a producer; kill one
    conductor mid-flight and watch its jobs resume elsewhere."""
    from jobboard.demo import run_demo

    sys.exit(run_demo(jobs))
