"""What the conductor knows about its ZooKeeper session.

kazoo reports SUSPENDED (connection lost, session perhaps still alive), LOST
(session expired: every ephemeral claim and lock is gone) and CONNECTED. The
lessons of Curator's and kazoo's docs: on SUSPENDED stop starting work, on
LOST treat every claim as gone. The listener runs on kazoo's event thread,
so it only flips flags and calls non-blocking callbacks.

A process paused (SIGSTOP, a long GC, a starved VM) past its session timeout
learns that its session expired only once kazoo reads from its socket again;
until then the state still says CONNECTED. A ticker thread notices such
pauses (a tick that came :data:`PAUSE_THRESHOLD` late), so the engines' gate
asks ZooKeeper before the next task only then, not before every task.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from kazoo.client import KazooClient, KazooState

log = logging.getLogger(__name__)

TICK = 0.1               # seconds between two ticks of the pause detector
PAUSE_THRESHOLD = 1.0    # a tick this late means the process did not run meanwhile


class SessionWatch:
    """Tracks the connection of one client.

    Args:
        client: the conductor's client.
        on_lost: called (on kazoo's thread) when the session expired.
        on_state: called with "CONNECTED", "SUSPENDED" or "LOST" on every change.
    """

    def __init__(self, client: KazooClient, *, on_lost: Callable[[], None],
                 on_state: Callable[[str], None] = lambda state: None) -> None:
        self.client = client
        self._on_lost = on_lost
        self._on_state = on_state
        self._connected = threading.Event()
        self.generation = 0     # bumped on every LOST: a new session follows
        self.pauses = 0         # pauses of this process noticed so far
        self._last_tick = time.monotonic()
        self._closed = threading.Event()
        if client.connected:
            self._connected.set()
        client.add_listener(self._listener)
        threading.Thread(target=self._tick, name="pause-detector", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self.client.remove_listener(self._listener)

    def paused_since(self, seen: int) -> bool:
        """Whether this process stood still (beyond :data:`PAUSE_THRESHOLD`)
        since :attr:`pauses` was ``seen``, or is only now resuming."""
        return self.pauses != seen or time.monotonic() - self._last_tick > PAUSE_THRESHOLD

    def _tick(self) -> None:
        while not self._closed.wait(TICK):
            now = time.monotonic()
            if now - self._last_tick > PAUSE_THRESHOLD:
                self.pauses += 1
            self._last_tick = now

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _listener(self, state: KazooState) -> None:
        if state == KazooState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        if state == KazooState.LOST:
            self.generation += 1
            log.warning("ZooKeeper session lost: every claim and lock of this "
                        "conductor is gone")
            self._on_lost()
        elif state == KazooState.SUSPENDED:
            log.warning("ZooKeeper connection suspended: no new work until it is back")
        else:
            log.info("ZooKeeper connected")
        self._on_state(str(state))
