"""Whether a conductor can run jobs now, and why not.

A conductor is READY when its dependencies work: the logbook answers and its
schema is current (ZooKeeper's side is the session's state). A job that fails
because a dependency does is not the job's fault: the conductor gives the job
back without counting it, turns NOT READY with the reason (logged once,
shown by ``jobboard conductors`` and the ``jobboard_conductor_ready`` gauge),
stops claiming, and probes the dependency with a growing delay until it
answers, then claims again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

FIRST_PROBE_DELAY = 1.0
MAX_PROBE_DELAY = 10.0


class Readiness:
    """The READY / NOT READY state of one conductor. Thread-safe.

    Args:
        probe: checks the dependencies; raises when one is still down.
        on_change: called with ``(ready, reason)`` when the state flips.
    """

    def __init__(self, probe: Callable[[], None],
                 on_change: Callable[[bool, str | None], None] | None = None) -> None:
        self._probe = probe
        self._on_change = on_change
        self._lock = threading.Lock()
        self.reason: str | None = None
        self.since: float | None = None
        self._delay = FIRST_PROBE_DELAY
        self._next_probe = 0.0

    @property
    def ready(self) -> bool:
        return self.reason is None

    def down(self, reason: str) -> None:
        """A dependency failed: stop claiming until a probe succeeds."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            self.since = time.time()
            self._delay = FIRST_PROBE_DELAY
            self._next_probe = time.monotonic() + self._delay
        log.error("NOT READY: %s; claiming nothing until it recovers", reason)
        self._changed()

    def recover(self) -> float:
        """Probe when due. Returns 0 when ready, else the seconds until the
        next probe."""
        with self._lock:
            if self.reason is None:
                return 0.0
            wait = self._next_probe - time.monotonic()
            if wait > 0:
                return wait
        try:
            self._probe()
        except Exception as exc:  # noqa: BLE001 - any failure keeps us not ready
            with self._lock:
                self._delay = min(MAX_PROBE_DELAY, self._delay * 2)
                self._next_probe = time.monotonic() + self._delay
                self.reason = _still(self.reason, exc)
                return self._delay
        with self._lock:
            down_for = time.time() - (self.since or time.time())
            self.reason = None
            self.since = None
        log.warning("READY again after %.0fs: claiming", down_for)
        self._changed()
        return 0.0

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.ready, self.reason)


def _still(reason: str | None, exc: BaseException) -> str:
    """Keep the first reason's subject, with the latest error's words."""
    subject = (reason or "").split(":", 1)[0] or "a dependency failed"
    return f"{subject}: {exc}"
