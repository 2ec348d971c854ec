"""Fleet-wide duties run by one conductor at a time: the repair sweep and the
retention janitor (:mod:`jobboard.conductor.janitor`).

The conductors of a board elect a leader with kazoo's election recipe
(``{root}/leaders/{duty}``); the leader runs the duty every ``interval``
seconds while it leads. Leadership ends with the session: a leader whose
session was lost stops at once and stands again with the new session, so
two sweeps never overlap for long (and a sweep is safe to overlap anyway:
every repair is guarded by record versions).

How it fails: a sweep that raises (ZooKeeper unreachable, a bug) is logged
and tried again at the next interval; the duty never stops the conductor.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from kazoo.client import KazooClient

from jobboard.errors import BoardUnavailable

log = logging.getLogger(__name__)


class Duty:
    """Runs ``work`` every ``interval`` seconds on the elected conductor.

    Args:
        client: the conductor's client.
        path: the election znode of this duty.
        identifier: the conductor's name (shown as the election contender).
        interval: seconds between two runs.
        work: what the leader does; its exceptions are logged.
        generation: the session generation now (it changes on a session loss).
    """

    def __init__(self, client: KazooClient, path: str, identifier: str, *,
                 interval: float, work: Callable[[], object],
                 generation: Callable[[], int]) -> None:
        self.client = client
        self.path = path
        self.identifier = identifier
        self.interval = interval
        self.work = work
        self.generation = generation
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._election = None

    def start(self) -> "Duty":
        self._thread = threading.Thread(target=self._stand, name=f"duty-{self.path}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        election = self._election
        if election is not None:
            election.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def _stand(self) -> None:
        while not self._stop.is_set():
            try:
                self._election = self.client.Election(self.path, self.identifier)
                self._election.run(self._lead)
            except Exception as exc:  # noqa: BLE001 - stand again after a pause
                if self._stop.is_set():
                    return
                log.warning("leader election for %s failed (%s); standing again", self.path, exc)
                self._stop.wait(min(self.interval, 5.0))

    def _lead(self) -> None:
        generation = self.generation()
        log.info("%s leads %s", self.identifier, self.path)
        while not self._stop.is_set() and generation == self.generation():
            try:
                self.work()
                self.runs += 1
            except BoardUnavailable as exc:   # ZooKeeper's outage, not a bug: one line
                log.warning("%s: board unavailable (%s); trying again in %gs", self.path,
                            exc, self.interval)
            except Exception:  # noqa: BLE001 - logged; tried again next interval
                log.exception("%s failed; trying again in %gs", self.path, self.interval)
            self._stop.wait(self.interval)
