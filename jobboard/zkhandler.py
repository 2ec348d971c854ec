"""Bounded ZooKeeper calls: a kazoo handler whose results never wait forever.

kazoo's synchronous methods (``client.create(...)``, ``client.get(...)``, the
recipes built on them) are ``*_async(...).get()`` with no timeout: a request
that is queued while the connection is down, or sent to a server that stops
answering, can block its caller for as long as the outage lasts.
:class:`BoundedHandler` is kazoo's :class:`SequentialThreadingHandler` whose
async results bound a ``get()`` or ``wait()`` given no timeout by
``call_timeout`` seconds. An explicit timeout is honoured as given.

Every client of the library and of its tests is built with
:func:`bounded_client` (the board through ``jobboard.board._zk.make_client``).

How it fails: a blocking call that gets no answer within ``call_timeout``
raises :class:`CallTimeout`, a subclass of kazoo's ``KazooTimeoutError``,
which :func:`jobboard.zkerrors.translated` turns into
:class:`~jobboard.errors.BoardUnavailable`. kazoo's ``KazooRetry`` does not
retry it (it retries connection loss only), so one call is bounded by the
bound, not by the bound times the retries. The request itself may still be
in kazoo's queue and be sent once the connection is back: as with any
timeout, its outcome is unknown to the caller (the board's writes check what
happened; see :mod:`jobboard.board.ownership`). ``wait()`` without a timeout
returns False at the bound instead of blocking.

The handler's ``select`` is one ``poll()`` call: kazoo's own builds, fills
and closes an epoll object on every turn of its connection loop, five system
calls and a few Python objects per request or answer.

The bound must outlast everything legitimate: with a live connection a
request is answered, or the connection is declared dead after 2/3 of the
session timeout and the request fails with ``ConnectionLoss``; a client
reconnects within the session timeout or learns its session expired. So
:func:`bounded_client` bounds calls by ``max(30 s, 2 x session timeout)``.
"""

from __future__ import annotations

import select as _select
from typing import Any

from kazoo.client import KazooClient
from kazoo.handlers.threading import AsyncResult, KazooTimeoutError, SequentialThreadingHandler

__all__ = ["DEFAULT_CALL_TIMEOUT", "CallTimeout", "BoundedAsyncResult", "BoundedHandler",
           "bounded_client", "call_timeout_for"]

DEFAULT_CALL_TIMEOUT = 30.0


class CallTimeout(KazooTimeoutError):
    """A blocking ZooKeeper call got no answer within the handler's bound."""


class BoundedAsyncResult(AsyncResult):
    """kazoo's threading ``AsyncResult`` whose untimed waits are bounded."""

    def __init__(self, handler: "BoundedHandler") -> None:
        super().__init__(handler)
        self._bound = handler.call_timeout

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The value, or raise the stored exception.

        Raises:
            CallTimeout: no answer within ``timeout`` (the handler's bound
                when None).
        """
        bounded = timeout is None and block
        try:
            return super().get(block, self._bound if bounded else timeout)
        except KazooTimeoutError as exc:
            if self.ready() or isinstance(exc, CallTimeout):
                raise   # the stored answer is itself a timeout error
            waited = self._bound if bounded else timeout
            raise CallTimeout(f"no answer from ZooKeeper within {waited:g}s") from None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ready or ``timeout`` (the bound when None); True when ready."""
        return super().wait(self._bound if timeout is None else timeout)


class BoundedHandler(SequentialThreadingHandler):
    """A SequentialThreadingHandler whose async results bound untimed waits.

    Args:
        call_timeout: seconds a ``get()``/``wait()`` without a timeout waits
            at most (positive).

    Raises:
        ValueError: ``call_timeout`` is not positive.
    """

    name = "bounded_sequential_threading_handler"

    def __init__(self, call_timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        if not call_timeout > 0:
            raise ValueError(f"call_timeout must be positive, not {call_timeout!r}")
        super().__init__()
        self.call_timeout = float(call_timeout)

    def async_result(self) -> BoundedAsyncResult:
        return BoundedAsyncResult(self)

    def select(self, rlist: list[Any], wlist: list[Any], xlist: list[Any],
               timeout: float | None = None) -> tuple[list[Any], list[Any], list[Any]]:
        """kazoo's ``select`` (ready readers, ready writers, no exceptional
        list) with one ``poll()`` call.

        Raises:
            ValueError: a closed or invalid file descriptor, as kazoo's does.
        """
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be non-negative")
        masks: dict[int, int] = {}
        objects: dict[int, list[Any]] = {}
        for mask, group in ((_POLL_READ, rlist), (_select.POLLOUT, wlist)):
            for obj in group:
                fd = obj if isinstance(obj, int) else obj.fileno()
                masks[fd] = masks.get(fd, 0) | mask
                objects.setdefault(fd, []).append(obj)
        poller = _select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        readable: list[Any] = []
        writable: list[Any] = []
        for fd, events in poller.poll(None if timeout is None else timeout * 1000.0):
            if events & _select.POLLNVAL:
                raise ValueError("Invalid event mask or fd")
            if events & _READY_READ and masks[fd] & _POLL_READ:
                readable.extend(objects[fd])
            elif events & _READY_WRITE and masks[fd] & _select.POLLOUT:
                writable.extend(objects[fd])
        return readable, writable, []


_POLL_READ = _select.POLLIN | _select.POLLPRI
_READY_READ = _POLL_READ | _select.POLLHUP | _select.POLLERR
_READY_WRITE = _select.POLLOUT | _select.POLLHUP | _select.POLLERR


def call_timeout_for(session_timeout: float) -> float:
    """The default bound for a client asking for ``session_timeout``."""
    return max(DEFAULT_CALL_TIMEOUT, 2.0 * session_timeout)


def bounded_client(hosts: str, *, timeout: float = 10.0, call_timeout: float | None = None,
                   **options: Any) -> KazooClient:
    """A KazooClient (not started) whose blocking calls are bounded.

    Args:
        hosts: ``host:port[,host:port...][/chroot]``.
        timeout: the session timeout asked for, in seconds.
        call_timeout: the bound of one blocking call; default
            :func:`call_timeout_for` ``(timeout)``.
        options: passed to KazooClient (not ``handler``).

    Raises:
        ValueError: from kazoo, for a connection string it cannot parse.
    """
    if "handler" in options:
        raise TypeError("bounded_client makes its own handler")
    bound = call_timeout if call_timeout is not None else call_timeout_for(timeout)
    return KazooClient(hosts=hosts, timeout=timeout, handler=BoundedHandler(bound), **options)
