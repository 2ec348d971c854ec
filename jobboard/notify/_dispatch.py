"""A small dispatcher thread: where calls handed off by kazoo's threads run.

kazoo runs watch callbacks and completion callbacks on its own threads; a
callback that blocks there (a ZooKeeper call, a slow user function) stalls
every other watch of the client. Those callbacks only hand work to a
:class:`Dispatcher`, whose one daemon thread runs it in order.

How it fails: a call that raises is logged with its traceback and the
thread goes on with the next one. A slow call delays the calls queued after
it (user callbacks should hand heavy work on). The thread is a daemon: calls
still queued when the process exits are not run.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

__all__ = ["Dispatcher", "default_dispatcher"]

log = logging.getLogger(__name__)

_STOP = object()


class Dispatcher:
    """Runs submitted calls one after the other on one daemon thread,
    started on the first :meth:`submit`."""

    def __init__(self, name: str = "jobboard-notify") -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; returns at once (safe from any thread)."""
        with self._lock:
            if self._stopped:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._queue.put((fn, args))

    def stop(self, timeout: float = 5.0) -> None:
        """Run what is queued, then end the thread (waits up to ``timeout``)."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one bad call must not stop the others
                log.exception("notification call %r failed", fn)


_default: Dispatcher | None = None
_default_lock = threading.Lock()


def default_dispatcher() -> Dispatcher:
    """The process's shared dispatcher (made on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Dispatcher()
        return _default
