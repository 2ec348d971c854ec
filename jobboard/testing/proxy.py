"""A TCP proxy that a test can cut: a real network element between clients
(conductors) and a server (PostgreSQL, ZooKeeper).

:class:`TcpProxy` listens on ``127.0.0.1`` (a free port unless told) and
forwards bytes both ways between each accepted connection and a new
connection to the target. :meth:`TcpProxy.cut` resets every open connection
(RST, as when a firewall or a crashed router drops state) and from then on
resets every new one as soon as it is accepted, so clients see "connection
reset" / "server closed the connection unexpectedly" at once instead of
hanging; :meth:`TcpProxy.restore` lets connections through again.

One thread accepts; one thread per connection pumps both directions with
``selectors`` and bounded waits, so :meth:`TcpProxy.close` returns within a
second or so whatever the peers do.

How it fails: a target that cannot be reached when a client connects closes
that client's connection (counted in ``failed_connects``); the proxy goes
on. :meth:`TcpProxy.start` raises ``OSError`` when it cannot listen.
"""

from __future__ import annotations

import select
import selectors
import socket
import struct
import threading
from typing import Any

__all__ = ["TcpProxy"]

POLL_SECONDS = 0.2
CONNECT_TIMEOUT = 3.0
BUFFER = 65536


def _reset(sock: socket.socket) -> None:
    """Close with an RST (linger 0), not a polite FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Pipe:
    """One client connection and its upstream twin."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()

    def pump(self) -> None:
        selector = selectors.DefaultSelector()
        peers = {self.client: self.upstream, self.upstream: self.client}
        try:
            for sock in peers:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            while not self.closed.is_set():
                for key, _ in selector.select(POLL_SECONDS):
                    source = key.fileobj
                    try:
                        data = source.recv(BUFFER)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not data:
                        return
                    self._send_all(peers[source], data)
        except (OSError, ValueError):   # a socket closed under us by cut()/close()
            return
        finally:
            selector.close()
            self.reset()

    def _send_all(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.closed.is_set():
            try:
                sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                select.select([], [sock], [], POLL_SECONDS)   # bounded: re-checks closed
                continue
            view = view[sent:]

    def reset(self) -> None:
        self.closed.set()
        _reset(self.client)
        _reset(self.upstream)


class TcpProxy:
    """Forwards ``listen address -> (target_host, target_port)``.

    Args:
        target_host: where connections go.
        target_port: the target's port.
        listen_host: the address to listen on.
        listen_port: the port to listen on (0: a free one).

    Use as a context manager, or :meth:`start` / :meth:`close`.
    """

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        self.target = (target_host, int(target_port))
        self._listen = (listen_host, listen_port)
        self._server: socket.socket | None = None
        self._pipes: set[_Pipe] = set()
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self._closing = threading.Event()
        self._acceptor: threading.Thread | None = None
        self.accepted = 0
        self.refused = 0
        self.failed_connects = 0

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> "TcpProxy":
        """Listen and start forwarding. Raises OSError when it cannot listen."""
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self._listen)
        server.listen(128)
        server.settimeout(POLL_SECONDS)
        self._server = server
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"proxy-{self.address}")
        self._acceptor.start()
        return self

    def close(self) -> None:
        """Stop listening and reset every connection."""
        self._closing.set()
        if self._acceptor is not None:
            self._acceptor.join(5.0)
        if self._server is not None:
            self._server.close()
        self._reset_all()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) clients connect to."""
        if self._server is None:
            return self._listen
        host, port = self._server.getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for pipe in self._pipes if not pipe.closed.is_set())

    # -- faults -------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every open connection and every new one until :meth:`restore`."""
        self._cut.set()
        self._reset_all()

    def restore(self) -> None:
        """Let connections through again (clients must reconnect)."""
        self._cut.clear()

    # -- internals ----------------------------------------------------------------

    def _reset_all(self) -> None:
        with self._lock:
            pipes = list(self._pipes)
            self._pipes.clear()
        for pipe in pipes:
            pipe.reset()

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._closing.is_set():
                    return
                continue
            if self._cut.is_set():
                self.refused += 1
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name="proxy-pipe").start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
        except OSError:
            self.failed_connects += 1
            _reset(client)
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe = _Pipe(client, upstream)
        with self._lock:
            if self._cut.is_set() or self._closing.is_set():
                pipe.reset()
                self.refused += 1
                return
            self._pipes.add(pipe)
            self.accepted += 1
        try:
            pipe.pump()
        finally:
            with self._lock:
                self._pipes.discard(pipe)
