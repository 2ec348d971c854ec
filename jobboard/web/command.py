"""The ``jobboard web`` command: serve the console for one board and its
logbook (register it on the CLI group with ``main.add_command(web)``).

It takes the connection options of every board command
(:func:`jobboard.cli.common.board_options`: ``--zk``, ``--root``,
``--logbook``, ``--auth-file``/``--auth`` and their ``JOBBOARD_*``
variables) plus ``--host``, ``--port``, ``--read-only`` and
``--access-file``/``JOBBOARD_ACCESS_FILE`` for HTTP.

How it fails: one ``error:`` line and exit 1 for a non-loopback ``--host``
without ``--access-file``, a bad access or auth file, a port that cannot be
served, or an unreachable ZooKeeper (:class:`~jobboard.errors.JobBoardError`
messages, printed by the CLI group, or by :func:`run` when started as
``python -m jobboard.web``). SIGINT/SIGTERM stop it.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys

import click

from jobboard.cli.common import Connection, board_options, emit_json, json_option
from jobboard.errors import ConfigError, JobBoardError

__all__ = ["web", "run"]

#: Seconds to wait for ZooKeeper at start.
CONNECT_TIMEOUT = 10.0


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), or one line saying why not."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"cannot listen on {host}:{port}: address in use; "
                              "pick another --port") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"cannot listen on {host}:{port}: permission denied (ports "
                              "below 1024 need privileges); pick another --port") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@click.command("web")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="HTTP port (0 picks a free one and prints it).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --access-file.")
@click.option("--read-only", is_flag=True, help="Show everything, change nothing.")
@click.option("--access-file", envvar="JOBBOARD_ACCESS_FILE", default=None, metavar="PATH",
              show_envvar=True,
              help="Credentials for the console's HTTP clients, one a line: a token, "
                   "or USER:PASSWORD for basic auth (keep it mode 600).")
@json_option
@board_options
def web(port: int, host: str, read_only: bool, access_file: str | None, as_json: bool,
        conn: Connection) -> None:
    """Serve the admin console: jobs, a job's logbook timeline, claims and
    conductors, and the admin actions (unless --read-only), with a JSON API
    under /api/. Stops on SIGINT or SIGTERM."""
    try:
        import uvicorn

        from jobboard.web.app import create_app
    except ImportError as exc:
        raise ConfigError(f"the console needs the web extra ({exc.name} is missing): "
                          "pip install 'jobboard[web]'") from None
    from jobboard.cli.zk import open_board
    from jobboard.web.access import Access, check_bind

    access = Access.read(access_file, warn=_warn) if access_file else None
    check_bind(host, access)
    sock = _listen(host, port)
    try:
        board = open_board(conn, timeout=CONNECT_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    try:
        app = create_app(board, conn.logbook, read_only=read_only, access=access)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                               timeout_graceful_shutdown=2))
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        click.echo(f"serving the console on http://{shown}:{bound_port}/"
                   + (" (read-only)" if read_only else ""), err=True)
        if as_json:
            emit_json({"url": f"http://{shown}:{bound_port}/", "read_only": read_only})
        server.run(sockets=[sock])
    finally:
        sock.close()
        board.close()
    click.echo("console stopped", err=True)


def run(argv: list[str] | None = None) -> None:
    """``python -m jobboard.web``: the command on its own, user errors as
    one ``error:`` line (as the ``jobboard`` group prints them)."""
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        web.main(args=argv, prog_name="jobboard web", standalone_mode=False)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    except JobBoardError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
