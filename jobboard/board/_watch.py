"""A child watch that outlives connection losses and sessions, and never
raises into kazoo's threads.

kazoo's ``ChildrenWatch`` reads the children again with a *synchronous*,
retried ``get_children`` inside kazoo's watch-callback thread (or a thread it
spawns on reconnection). When that read fails (the session expired under it,
the retries ran out during an outage, the bounded call timed out) the
exception escapes into the thread: kazoo logs a traceback and the watch is
not set again until the next change of connection state, maybe never. A
conductor whose claim-set or delayed-index watch died that way is deaf to
that part of the board.

:class:`ChildWatch` never blocks and never raises in a kazoo thread: it reads
with ``get_children_async`` and handles the answer in a completion callback.

* Every answer calls ``func(children)``: the first read, each change, and
  each read after the watch was set again (children may have changed while
  it was down, so ``func`` must be idempotent: it may see the same list
  twice).
* A connection loss or a new session drops kazoo's watches: the watch is set
  again on the next ``CONNECTED``, new session included.
* A failed read (connection loss, expired session, a call timeout, a refusal)
  is logged once per outage as one warning line, no traceback, and the read
  is tried again: at once on the next ``CONNECTED``, or after a short,
  growing delay (at most :data:`MAX_RETRY_DELAY`) while still connected.
* A path that does not exist: ``func`` is not called; an exists watch sets
  the child watch when the path is created.
* ``func`` raising is a bug in ``func``: logged with its traceback, and the
  watch stays set. ``func`` returning ``False`` stops the watch.
* The client closed (``ConnectionClosedError``): the watch stops quietly.

``func`` runs in kazoo's completion thread: it must be quick and must not
make synchronous ZooKeeper calls (set a flag, wake a thread).

``settle``: after a change, wait that long before reading again. A watch
fires once per read, so every change in that window costs one read in all:
a directory that changes hundreds of times a second (the claim set of a busy
fleet) is read a few times a second instead of once per change.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import ConnectionClosedError, NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

log = logging.getLogger(__name__)

__all__ = ["ChildWatch", "MAX_RETRY_DELAY"]

FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0


class ChildWatch:
    """Calls ``func(children)`` with the children of ``path`` now and after
    every change, for as long as it is not stopped (see the module docstring
    for how it fails).

    Args:
        client: a KazooClient (started or not: the first read waits for
            ``CONNECTED``).
        path: the znode whose children are watched.
        func: called with the list of children; returning ``False`` stops
            the watch.
        settle: seconds to wait after a change before reading again.
    """

    def __init__(self, client: KazooClient, path: str,
                 func: Callable[[list[str]], bool | None], *, settle: float = 0.0) -> None:
        self.client = client
        self.path = path
        self._func = func
        self._settle = settle
        self._lock = threading.Lock()
        self._stopped = False
        self._started = False
        self._armed = False          # a read is in flight or a watch is set
        self._failing = False        # a failure was logged since the last good read
        self._delay = FIRST_RETRY_DELAY
        self._timer: threading.Timer | None = None
        self._answered = threading.Event()   # func was called at least once
        self.failures = 0            # failed reads, for tests and diagnostics

    @property
    def stopped(self) -> bool:
        return self._stopped

    def start(self) -> "ChildWatch":
        """Listen to the connection and read now (idempotent). Never raises
        a ZooKeeper error: a failed first read is retried like any other."""
        with self._lock:
            if self._started or self._stopped:
                return self
            self._started = True
        self.client.add_listener(self._on_state)
        if self.client.connected:
            self._arm()
        return self

    def wait_first(self, timeout: float) -> bool:
        """Block until ``func`` was first called (kazoo's ChildrenWatch calls
        it before its constructor returns; this watch reads asynchronously).
        False when ``timeout`` seconds passed first."""
        return self._answered.wait(timeout)

    def stop(self) -> None:
        """No more calls of ``func`` after this returns (one already running
        may finish). Idempotent."""
        with self._lock:
            self._stopped = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.client.remove_listener(self._on_state)

    # -- reading (any thread; never blocks, never raises) ------------------------

    def _arm(self) -> None:
        with self._lock:
            if self._stopped or self._armed:
                return
            self._armed = True
        try:
            result = self.client.get_children_async(self.path, watch=self._on_event)
        except Exception as exc:  # noqa: BLE001 - e.g. a client being closed
            self._failed(exc)
            return
        result.rawlink(self._on_children)

    def _on_children(self, result: Any) -> None:
        # kazoo's completion thread
        try:
            children = result.get(block=False)
        except NoNodeError:
            self._watch_for_creation()
            return
        except Exception as exc:  # noqa: BLE001 - every failure: log once, retry
            self._failed(exc)
            return
        with self._lock:
            if self._stopped:
                return
            recovered, self._failing = self._failing, False
            self._delay = FIRST_RETRY_DELAY
        if recovered:
            log.info("watch on %s set again", self.path)
        self._call(children)

    def _call(self, children: list[str]) -> None:
        try:
            keep = self._func(children)
        except Exception:  # noqa: BLE001 - a bug in func must not kill the watch
            log.exception("the watch callback for %s failed", self.path)
            return
        finally:
            self._answered.set()
        if keep is False:
            self.stop()

    def _watch_for_creation(self) -> None:
        try:
            result = self.client.exists_async(self.path, watch=self._on_event)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return
        result.rawlink(self._on_exists)

    def _on_exists(self, result: Any) -> None:
        try:
            stat = result.get(block=False)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return
        if stat is not None:        # created meanwhile: read its children now
            self._rearm()
        # else: the exists watch calls _on_event when it is created

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._armed = False
            self.failures += 1
            first, self._failing = not self._failing, True
            delay = self._delay
            self._delay = min(MAX_RETRY_DELAY, self._delay * 2)
            stopped = self._stopped
        if stopped:
            return
        if isinstance(exc, ConnectionClosedError):
            log.debug("watch on %s stops: the client is closed", self.path)
            self.stop()
            return
        if first:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("watch on %s interrupted (%s); set again when ZooKeeper answers",
                        self.path, detail)
        else:
            log.debug("watch on %s: read failed again (%s)", self.path, type(exc).__name__)
        if self.client.connected:
            # Connected yet failed (a timeout, a refusal, or an answer from
            # before a reconnection): try again after a while, not hot.
            self._schedule(delay)
        # else: _on_state sets it again on CONNECTED

    def _schedule(self, delay: float) -> None:
        timer = threading.Timer(delay, self._arm)
        timer.daemon = True
        with self._lock:
            if self._stopped:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = timer
        timer.start()

    def _rearm(self) -> None:
        with self._lock:
            self._armed = False
        self._arm()

    # -- kazoo callbacks ---------------------------------------------------------

    def _on_event(self, event: WatchedEvent) -> None:
        # kazoo's watch thread: a change, or (type NONE) the connection dropped
        # and kazoo discarded its watches.
        with self._lock:
            self._armed = False
        if event.type != EventType.NONE and self._settle > 0:
            self._schedule(self._settle)
        elif event.type != EventType.NONE or self.client.connected:
            self._arm()

    def _on_state(self, state: str) -> None:
        # kazoo's connection thread: only non-blocking work here.
        if state == KazooState.CONNECTED:
            self._arm()
        else:
            # SUSPENDED or LOST: kazoo drops every watch with the connection.
            with self._lock:
                self._armed = False
