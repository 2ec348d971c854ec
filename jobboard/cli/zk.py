"""Opening the board from the command line: one useful line when ZooKeeper
cannot be reached, and the session timeout the server really granted.

* Before kazoo tries (and retries, with a WARNING line per attempt until the
  connect timeout), every host is probed with one TCP connect (in parallel,
  :data:`PROBE_TIMEOUT` at most): when each one refuses the connection or
  does not resolve, the command fails at once with that reason.
* While the first connection is made, kazoo's per-attempt warnings stay off
  the terminal (unless ``-v``); the last reason it saw goes into the error.
* kazoo only logs the session timeout the server negotiated (ZooKeeper
  clamps it to its ``minSessionTimeout..maxSessionTimeout``); it is picked
  from that log record, so the conductor can say when it differs.

How it fails: :class:`~jobboard.errors.BoardUnavailable` (unreachable) and
:class:`~jobboard.errors.ConfigError` (a bad address, a missing chroot),
each with one line, as ``Board.connect`` raises them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import click

from jobboard.cli.common import CONNECT_TIMEOUT, Connection
from jobboard.errors import BoardUnavailable

__all__ = ["PROBE_TIMEOUT", "ConnectWatch", "open_board", "refused_everywhere"]

#: Seconds the up-front TCP probe of the ZooKeeper hosts may take.
PROBE_TIMEOUT = 1.0
_BLATHER = 5                                  # kazoo's most verbose log level
_NEGOTIATED = re.compile(r"negotiated session timeout: (\d+)")
_HOST_PORT = re.compile(r"\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\](?::(\d+))?"
                        r"|([A-Za-z0-9_][A-Za-z0-9._-]*)(?::(\d+))?")
_HINT = ("check --zk / JOBBOARD_ZK and that the servers are up (a local development "
         "server: `jobboard dev zookeeper`)")


def _host_ports(hosts: str) -> list[tuple[str, int]] | None:
    """``host:port`` pairs of a connection string (port 2181 by default);
    None when it does not parse (``Board.connect`` then says why)."""
    host_list, slash, chroot = hosts.partition("/")
    if slash and chroot and any(part in ("", ".", "..") for part in chroot.rstrip("/").split("/")):
        return None
    pairs = []
    for item in host_list.split(","):
        item = item.strip()
        match = _HOST_PORT.fullmatch(item)
        if not item or match is None:
            return None
        host = match.group(1) or match.group(3)
        port = match.group(2) or match.group(4) or "2181"
        pairs.append((host, int(port)))
    return pairs or None


def _probe(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` cannot be connected to for sure (refused, unknown
    host); None when it answers or might (a timeout proves nothing)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError as exc:
        return f"{host}:{port}: {exc.strerror or 'Connection refused'}"
    except socket.gaierror as exc:
        return f"{host}:{port}: cannot resolve {host} ({exc.strerror or exc})"
    except OSError:
        return None


def refused_everywhere(hosts: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """The reasons, when no host of ``hosts`` can be connected to at all
    (each refuses or does not resolve); None otherwise."""
    pairs = _host_ports(hosts)
    if not pairs or not all(0 < port < 65536 for _, port in pairs):
        return None
    with ThreadPoolExecutor(max_workers=min(8, len(pairs))) as pool:
        reasons = list(pool.map(lambda hp: _probe(hp[0], hp[1], timeout), pairs))
    if any(reason is None for reason in reasons):
        return None
    return "; ".join(reasons)  # type: ignore[arg-type]


class ConnectWatch(logging.Filter):
    """On kazoo's client logger during the first connect: remembers the last
    reason a connection attempt failed and the negotiated session timeout,
    and keeps kazoo's chatter (retries, session details) off the terminal
    unless ``verbose``."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose
        self.last: str | None = None
        self.negotiated_ms: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno <= _BLATHER:
            found = _NEGOTIATED.search(message)
            if found:
                self.negotiated_ms = int(found.group(1))
            return False                     # only asked for to read that line
        if message.startswith("Connection dropped: "):
            self.last = message[len("Connection dropped: "):]
        return self.verbose or record.levelno > logging.WARNING


@contextlib.contextmanager
def watched_connect() -> Iterator[ConnectWatch]:
    """Install a :class:`ConnectWatch` on kazoo's logger for the block; an
    unreachable ZooKeeper's error gets the last reason kazoo saw."""
    ctx = click.get_current_context(silent=True)
    verbose = bool(ctx is not None and ctx.find_root().meta.get("jobboard.verbose"))
    watch = ConnectWatch(verbose)
    logger = logging.getLogger("kazoo.client")
    level = logger.level
    logger.addFilter(watch)
    if not logger.isEnabledFor(_BLATHER):
        logger.setLevel(_BLATHER)
    try:
        yield watch
    except BoardUnavailable as exc:
        message = str(exc)
        if watch.last and message.startswith("cannot reach") and ": check" in message:
            head, _, _tail = message.partition(": check")
            raise BoardUnavailable(f"{head} ({watch.last}): {_HINT}") from exc
        raise
    finally:
        logger.setLevel(level)
        logger.removeFilter(watch)


def open_board(conn: Connection, *, timeout: float = CONNECT_TIMEOUT,
               watch: list[ConnectWatch] | None = None, **options: Any) -> Any:
    """``Board.connect`` with the connection's settings; ``options`` go to it
    (``session_timeout=``, ``max_claims=``). When ``watch`` is a list, the
    connect's :class:`ConnectWatch` is appended to it.

    Raises:
        BoardUnavailable: no host can be reached (at once when every host
            refuses, else after ``timeout``).
        ConfigError: a bad connection string or a missing chroot.
    """
    from jobboard.board import Board

    refused = refused_everywhere(conn.zk)
    if refused is not None:
        raise BoardUnavailable(f"cannot reach ZooKeeper at {conn.zk} ({refused}): {_HINT}")
    with watched_connect() as seen:
        if watch is not None:
            watch.append(seen)
        return Board.connect(conn.zk, root=conn.root, auth=conn.auth, timeout=timeout,
                             **options)
