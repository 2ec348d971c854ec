"""The long-running commands: ``conductor`` and ``exporter``.

With ``--json`` each prints one JSON object on stdout once it runs (its
name, address, settings), and its log lines go to stderr as always.

How it fails: before it runs, one ``error:`` line and exit 1 (or 2 for a
usage error): a logbook it cannot use, ``--allow`` prefixes none of which
import, a busy port, an unreachable ZooKeeper, the same ``--name`` running,
a webhook secret file that is missing, empty or open to others (a secret
without ``--notify-url`` is a usage error). The secret itself is never
printed: ``--json`` says only whether the webhook is signed.
A conductor that crashes later logs the traceback and exits 1.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import click
from click.core import ParameterSource

from jobboard.cli import preflight
from jobboard.cli.common import (DAEMON_CONNECT_TIMEOUT, Connection, board_options, emit_json,
                                 json_option, listen_error, warn)
from jobboard.cli.zk import ConnectWatch, open_board
from jobboard.errors import ConfigError, JobBoardError

__all__ = ["conductor", "exporter"]


def _queue_list(_ctx: Any, _param: Any, value: str) -> tuple[str, ...]:
    from jobboard.board.layout import check_queue
    from jobboard.errors import InvalidArgument

    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise click.BadParameter("name at least one queue")
    try:
        return tuple(dict.fromkeys(check_queue(name) for name in names))
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc)) from None


def _duration(_ctx: Any, _param: Any, value: str) -> float:
    from jobboard.board.retention import parse_duration
    from jobboard.errors import InvalidArgument

    try:
        return parse_duration(value)
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc)) from None


#: The variable that may hold the webhook's signing secret itself (a flag
#: would show it in ``ps``; ``--notify-secret-file`` names a file instead).
NOTIFY_SECRET_ENV = "JOBBOARD_NOTIFY_SECRET"


def _notify_secret(secret_file: str | None, notify_url: str | None) -> bytes | None:
    """The webhook's signing secret: from ``--notify-secret-file`` (or
    ``JOBBOARD_NOTIFY_SECRET_FILE``, or the config file) or from
    ``JOBBOARD_NOTIFY_SECRET``, the most explicit first (flag > environment
    > config file); both variables at once are refused. The variable is
    removed from ``os.environ`` once read, so processes started later (the
    process executor's workers) do not inherit it; the conductor's own
    ``/proc/PID/environ`` keeps it: prefer the file.

    Raises:
        click.UsageError: a secret without ``--notify-url``.
        ConfigError: an unusable secret file, or both variables set.
    """
    from_env = os.environ.pop(NOTIFY_SECRET_ENV, "") or None
    if secret_file is None and from_env is None:
        return None
    if notify_url is None:
        given = "--notify-secret-file" if secret_file is not None else NOTIFY_SECRET_ENV
        raise click.UsageError(f"{given} without --notify-url: there is nothing to sign")
    if secret_file is not None:
        source = click.get_current_context().get_parameter_source("notify_secret_file")
        if from_env is not None and source is ParameterSource.ENVIRONMENT:
            raise ConfigError(f"both {NOTIFY_SECRET_ENV} and JOBBOARD_NOTIFY_SECRET_FILE are "
                              "set; unset one")
        # a file from the config file ranks below the variable
        if from_env is None or source is not ParameterSource.DEFAULT_MAP:
            return preflight.read_secret_file(secret_file, "--notify-secret-file")
    assert from_env is not None      # one of the two was given (checked above)
    return os.fsencode(from_env)     # the bytes as given, whatever their encoding


def _live_conductors(board: Any) -> list[dict[str, Any]]:
    """The registered conductors, or none when ZooKeeper is unavailable for
    the moment: the conductor waits for it rather than exit."""
    from jobboard.errors import BoardUnavailable

    try:
        return board.conductors()
    except BoardUnavailable:
        return []


@click.command()
@click.option("--name", default=None, help="Unique conductor name (default host-pid).")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1),
              help="Flows run at once (a job is consumed outside its slot).")
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics on this port.")
@click.option("--allow", "allow", multiple=True, metavar="PREFIX",
              help="Module prefix flow factories may come from (repeatable).")
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a graceful stop lets running jobs finish.")
@click.option("--session-timeout", default=10.0, show_default=True,
              type=click.FloatRange(min=0.2),
              help="ZooKeeper session timeout: a dead conductor's jobs are reclaimed after "
                   "it. The server keeps it within its minSessionTimeout..maxSessionTimeout "
                   "(a warning says so).")
@click.option("--max-claims", default=5, show_default=True, type=click.IntRange(1),
              help="Dead-letter a job claimed this many times without finishing.")
@click.option("--fsck-interval", default=300.0, show_default=True,
              type=click.FloatRange(min=0),
              help="Seconds between repair sweeps of the board, run by one elected "
                   "conductor at a time (0: this one never stands).")
@click.option("--no-scheduler", "no_scheduler", is_flag=True,
              help="Never run the fleet's scheduler here (the conductors that do elect "
                   "one among them to post the fires of the board's schedules).")
@click.option("--executor", default="thread", show_default=True, envvar="JOBBOARD_EXECUTOR",
              show_envvar=True, type=click.Choice(["thread", "process"]),
              help="Where tasks run: threads of the conductor, or worker processes "
                   "(a task that crashes or hangs costs only its process).")
@click.option("--task-timeout", default=None, envvar="JOBBOARD_TASK_TIMEOUT",
              show_envvar=True, type=preflight.Seconds(), metavar="SECONDS",
              help="Time limit of every task call (default: none; Task(timeout=) "
                   "sets one per task).")
@click.option("--stop-timeout", default=30.0, show_default=True,
              envvar="JOBBOARD_STOP_TIMEOUT", show_envvar=True, type=preflight.Seconds(),
              metavar="SECONDS",
              help="How long a task asked to stop (cancel, transfer, time limit) gets "
                   "before it is abandoned (thread) or killed (process).")
@click.option("--queue", "queues", default="default", show_default=True, metavar="A,B",
              envvar="JOBBOARD_QUEUE", show_envvar=True, callback=_queue_list,
              help="The queues to claim from, the first served first.")
@click.option("--keep-finished", default="7d", show_default=True, metavar="DURATION",
              envvar="JOBBOARD_KEEP_FINISHED", show_envvar=True, callback=_duration,
              help="How long COMPLETE, FAILED and CANCELLED jobs stay on the board (7d, "
                   "12h, 30m, 0: none); one elected conductor removes older ones, their "
                   "outcome kept in the logbook.")
@click.option("--max-refusals", default=5, show_default=True, type=click.IntRange(1),
              help="Park a job (DEAD, with the reason) given back this many times by "
                   "conductors that cannot import its factory.")
@click.option("--refusal-backoff", default=5.0, show_default=True,
              type=click.FloatRange(min=0), metavar="SECONDS",
              help="How long a job this conductor gave back is left for others.")
@click.option("--notify-url", default=None, envvar="JOBBOARD_NOTIFY_URL", show_envvar=True,
              metavar="URL",
              help="POST one JSON document per job finished here (COMPLETE, FAILED, "
                   "CANCELLED, DEAD) to this http(s) URL; retried with backoff, never "
                   "slowing a job.")
@click.option("--notify-secret-file", default=None, envvar="JOBBOARD_NOTIFY_SECRET_FILE",
              show_envvar=True, metavar="PATH",
              help="Sign every --notify-url request (X-Jobboard-Timestamp, "
                   "X-Jobboard-Signature: HMAC-SHA256) with the secret in this file, read "
                   "once at start; it must be private (chmod 600). JOBBOARD_NOTIFY_SECRET "
                   "may hold the secret instead.")
@click.option("--log-events", is_flag=True,
              help="Log one structured line (key=value) per job event, lost claim and "
                   "connection change, on the jobboard.events logger.")
@json_option
@board_options
def conductor(name: str | None, concurrency: int, metrics_port: int | None,
              allow: tuple[str, ...], grace: float, session_timeout: float, max_claims: int,
              fsck_interval: float, no_scheduler: bool, executor: str,
              task_timeout: float | None, stop_timeout: float, queues: tuple[str, ...],
              keep_finished: float, max_refusals: int, refusal_backoff: float,
              notify_url: str | None, notify_secret_file: str | None, log_events: bool,
              as_json: bool,
              conn: Connection) -> None:
    """Run a conductor: claim jobs and run their flows until SIGTERM.

    It refuses to start (one line, exit 1) when its logbook cannot be reached
    or its schema cannot be brought up to date, or when no --allow prefix
    can be imported; it warns about a prefix that cannot, and about a
    --session-timeout the server does not grant.

    The first SIGTERM/SIGINT stops claiming and lets running jobs finish for
    --grace seconds, then abandons the rest; a second one exits at once.
    """
    import signal

    from jobboard.conductor import Conductor
    from jobboard.conductor.conductor import default_name
    from jobboard.errors import BoardError

    if not allow:
        raise click.UsageError("no --allow PREFIX given: the conductor would refuse every "
                               "flow factory (for example --allow myapp.flows)")
    if notify_url is not None and not notify_url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{notify_url!r} is not an http:// or https:// URL",
                                 param_hint="--notify-url")
    notify_secret = _notify_secret(notify_secret_file, notify_url)
    preflight.check_allow(allow, warn)
    preflight.check_logbook(conn.logbook)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("jobboard").setLevel(logging.INFO)
    metrics = None
    if metrics_port is not None:
        from jobboard.metrics import Metrics, serve

        metrics = Metrics()
        try:
            serve(metrics_port, metrics.registry)
        except OSError as exc:
            raise ConfigError(listen_error("0.0.0.0", metrics_port, exc,
                                           "--metrics-port")) from None
    watched: list[ConnectWatch] = []
    board = open_board(conn, timeout=DAEMON_CONNECT_TIMEOUT, watch=watched,
                       session_timeout=session_timeout, max_claims=max_claims,
                       max_refusals=max_refusals)
    try:
        note = preflight.session_timeout_note(
            session_timeout, watched[0].negotiated_ms if watched else None, conn.zk)
        if note is not None:
            warn(note)
        name = name or default_name()
        # Registration refuses a duplicate too (below, from the run thread);
        # checking first makes the usual mistake one clean line.
        if any(live.get("name") == name for live in _live_conductors(board)):
            raise BoardError(
                f"a conductor named {name!r} is already running (see `jobboard conductors`; "
                "one that just died is listed until its session expires); pick another --name")
        from jobboard.cli.logbook_access import open_logbook

        # A connection per slot, and two for the duties (retention, repair).
        store = open_logbook(conn.logbook, notifier=board.notifier, pool_size=concurrency + 2)
        if log_events:
            from jobboard.notify import LogPublisher

            board.notifier.subscribe(LogPublisher())
    except BaseException:
        board.close()
        raise
    worker = Conductor(board, store, name=name, concurrency=concurrency, allow=allow,
                       grace=grace, metrics=metrics, fsck_interval=fsck_interval,
                       executor=executor, task_timeout=task_timeout,
                       stop_timeout=stop_timeout, scheduler=not no_scheduler, queues=queues,
                       keep_finished=keep_finished, refusal_backoff=refusal_backoff,
                       notify_url=notify_url, notify_secret=notify_secret)
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
    click.echo(f"conductor {worker.name} running (concurrency {concurrency}, "
               f"{executor} executor, queues {','.join(queues)})", err=True)
    if as_json:
        emit_json({"conductor": worker.name, "pid": os.getpid(), "zk": conn.zk,
                   "notify_url": notify_url, "notify_signed": notify_secret is not None,
                   "root": conn.root, "concurrency": concurrency, "executor": executor,
                   "allow": list(allow), "metrics_port": metrics_port,
                   "queues": list(queues), "keep_finished": keep_finished,
                   "session_timeout": (watched[0].negotiated_ms / 1000
                                       if watched and watched[0].negotiated_ms
                                       else session_timeout)})
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
        if isinstance(crashed[0], JobBoardError):
            # e.g. the same --name registered meanwhile: a user error, one line
            click.echo(f"error: {crashed[0]}", err=True)
        else:
            logging.getLogger("jobboard.conductor").error(
                "conductor %s stopped on an error", worker.name, exc_info=crashed[0])
        os._exit(1)
    if hard:
        os._exit(1)   # task threads may still be running: do not wait for them


@click.command()
@click.option("--port", default=9465, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the /metrics endpoint (0 picks a free one).")
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@json_option
@board_options
def exporter(port: int, addr: str, as_json: bool, conn: Connection) -> None:
    """Serve the board's gauges (depth by priority, oldest waiting age, live
    conductors) to Prometheus, one exporter per fleet. Stops on SIGTERM or
    SIGINT. With --json, prints where it serves as one object."""
    import signal

    from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

    from jobboard.metrics import BoardCollector, ScheduleCollector, serve
    from jobboard.schedules import Schedules

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    disable_created_metrics()
    with open_board(conn, timeout=DAEMON_CONNECT_TIMEOUT) as board:
        registry = CollectorRegistry()
        registry.register(BoardCollector(board))
        registry.register(ScheduleCollector(Schedules(board)))
        ProcessCollector(registry=registry)
        try:
            server = serve(port, registry, addr=addr)
        except OSError as exc:
            raise ConfigError(listen_error(addr, port, exc, "--port")) from None
        url = f"http://{addr}:{server.server_port}/metrics"
        click.echo(f"serving board metrics on {url}", err=True)
        if as_json:
            emit_json({"exporter": url, "addr": addr, "port": server.server_port,
                       "zk": conn.zk, "root": conn.root})
        try:
            while not stop.wait(1.0):
                pass
        finally:
            server.shutdown()
            server.server_close()
    click.echo("exporter stopped", err=True)
