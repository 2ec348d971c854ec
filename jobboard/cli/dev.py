"""Local development: ``jobboard dev zookeeper`` (a ZooKeeper for one
machine) and ``jobboard demo`` (a fleet on one machine).

``dev zookeeper`` runs the installed ZooKeeper distribution (Debian's
``zookeeper`` package, or ``ZOOKEEPER_HOME``), found and configured as the
test fixtures do (:mod:`jobboard.testing.zookeeper`): standalone, on
127.0.0.1, data under ``$XDG_STATE_HOME/jobboard/zookeeper`` (kept between
runs), session timeouts allowed from 0.4 s to 60 s. It runs in the
foreground; Ctrl-C (or SIGTERM) stops it.

How it fails: one ``error:`` line, exit 1: no ZooKeeper installed (with how
to get one), the port taken, a server that does not come up (the line
points at its log).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from pathlib import Path

import click

from jobboard import config
from jobboard.cli.common import emit_json, json_option, listen_error
from jobboard.errors import ConfigError

__all__ = ["demo", "dev_group"]

#: ZooKeeper's tick for a development server: sessions from 2 ticks (0.4 s) up.
DEV_TICK_MS = 200


@click.group("dev")
def dev_group() -> None:
    """Tools for trying jobboard on one machine."""


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(listen_error("127.0.0.1", port, exc, "--port")
                              + " (is a ZooKeeper already running there?)") from None


@dev_group.command("zookeeper")
@click.option("--port", default=2181, show_default=True, type=click.IntRange(0, 65535),
              help="Client port on 127.0.0.1 (0 picks a free one).")
@click.option("--data", "data_dir", default=None, metavar="DIR",
              help="Data directory (default $XDG_STATE_HOME/jobboard/zookeeper, else "
                   "~/.local/state/jobboard/zookeeper); kept between runs.")
@json_option
def dev_zookeeper(port: int, data_dir: str | None, as_json: bool) -> None:
    """Run a development ZooKeeper on 127.0.0.1 in the foreground, from the
    ZooKeeper installed on this machine; Ctrl-C stops it. Not for
    production: one server, no fsync. With --json, prints its address as
    one object once it serves."""
    from jobboard.testing.zookeeper import (ZooKeeperNotInstalled, ZooKeeperServer,
                                            ZooKeeperStartError, find_classpath)

    try:
        find_classpath()
    except ZooKeeperNotInstalled as exc:
        raise ConfigError(str(exc)) from None
    if port:
        _check_port_free(port)
    directory = Path(data_dir).expanduser() if data_dir else config.state_dir() / "zookeeper"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the data directory {directory}: "
                          f"{exc.strerror or exc}") from None
    server = ZooKeeperServer(port=port or None, data_dir=str(directory.resolve()),
                             tick_time=DEV_TICK_MS)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server.start(timeout=60)
    except ZooKeeperStartError:
        raise ConfigError(f"ZooKeeper did not start on 127.0.0.1:{server.port}; see its log "
                          f"{directory / 'server.log'}") from None
    try:
        click.echo(f"ZooKeeper serving on {server.address} (data in {directory}); "
                   "Ctrl-C stops it", err=True)
        if as_json:
            emit_json({"address": server.address, "port": server.port,
                       "data_dir": str(directory), "pid": server.process.pid,
                       "log": str(directory / "server.log")})
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                raise ConfigError(f"ZooKeeper exited; see its log {directory / 'server.log'}")
    finally:
        server.stop()
    click.echo("ZooKeeper stopped", err=True)


@click.command()
@click.option("--jobs", default=6, show_default=True, type=click.IntRange(1, 50),
              help="How many jobs the producer posts.")
@json_option
def demo(jobs: int, as_json: bool) -> None:
    """Run a local fleet: ZooKeeper, two conductors, a producer; kill one
    conductor mid-flight and watch its jobs resume elsewhere. With --json
    the story goes to stderr and the verdict is one object on stdout."""
    from jobboard.demo import run_demo

    if not as_json:
        sys.exit(run_demo(jobs))
    with contextlib.redirect_stdout(sys.stderr):     # the story, as it happens
        code = run_demo(jobs)
    emit_json({"ok": code == 0, "jobs": jobs, "exit_code": code})
    sys.exit(code)
