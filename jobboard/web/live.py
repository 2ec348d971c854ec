"""Live updates: ZooKeeper watches turned into topics the console's pages
follow over server-sent events (``GET /api/events``).

Topics:

* ``claims``: a claim or running marker appeared or vanished (claimed,
  finished, abandoned, transferred, reclaimed);
* ``conductors``: a conductor registered, changed its record (readiness,
  jobs in flight) or left;
* ``queue``: a queue bucket, a delayed bucket or the dead-letter index
  changed (posted, claimed, promoted, dead-lettered);
* ``job:<id>``: that job's record changed or was deleted, for the jobs a
  page shows (one watch per job, while some page follows it).

A page gets the topics it follows and re-reads only what it shows through
the JSON API: the jobs page its one page, a job page its one job.

How it fails: the board-wide watches are :class:`~jobboard.board._watch.ChildWatch`
(they survive connection losses and new sessions); a job watch lost with an
expired session is set again on the next ``CONNECTED``. Pages that miss an
event still refresh on the next one, and after a reconnect of the event
stream itself.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from kazoo.client import KazooState
from kazoo.protocol.states import WatchedEvent

from jobboard.board import Board
from jobboard.board._watch import ChildWatch

__all__ = ["LiveFeed", "Subscriber"]


class Subscriber:
    """The topics one event stream has been told about, collected until it
    takes them (so a burst of changes becomes one update)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: set[str] = set()
        self._ready = asyncio.Event()

    def notify(self, topic: str) -> None:
        """Add a topic (any thread)."""
        try:
            self._loop.call_soon_threadsafe(self._add, topic)
        except RuntimeError:      # the loop is closed: the stream is gone
            pass

    def _add(self, topic: str) -> None:
        self._pending.add(topic)
        self._ready.set()

    async def take(self, timeout: float, settle: float = 0.2) -> set[str]:
        """The topics since the last call (waiting up to ``timeout`` for the
        first, then ``settle`` seconds for more); empty on timeout."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return set()
        await asyncio.sleep(settle)
        topics, self._pending = self._pending, set()
        self._ready.clear()
        return topics


class LiveFeed:
    """The console's watches on one board.

    Args:
        board: the connected board (its client carries the watches).
    """

    def __init__(self, board: Board) -> None:
        self.board = board
        self.client = board.client
        self._lock = threading.Lock()
        self._subscribers: set[Subscriber] = set()
        self._followers: dict[str, set[Subscriber]] = {}
        self._watches: list[ChildWatch] = []
        # By queue name, and by "queue/bucket" for each queue's buckets.
        self._buckets: dict[str, ChildWatch] = {}
        self._started = False
        self._closed = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        paths = self.board.paths
        specs: list[tuple[str, Callable[[list[str]], Any]]] = [
            (paths.claims, lambda _c: self.publish("claims")),
            (paths.running, lambda _c: self.publish("claims")),
            (paths.conductors, self._on_conductors),
            (paths.queues, self._on_queues),
            (paths.delayed, lambda _c: self.publish("queue")),
            (paths.dead, lambda _c: self.publish("queue")),
        ]
        self._watches = [ChildWatch(self.client, path, func).start() for path, func in specs]
        self.client.add_listener(self._on_state)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watches = self._watches + list(self._buckets.values())
            self._watches, self._buckets = [], {}
            self._subscribers.clear()
            self._followers.clear()
        for watch in watches:
            watch.stop()
        self.client.remove_listener(self._on_state)

    # -- subscribers ------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber, job_ids: list[str] = ()) -> None:
        """Send every topic to ``subscriber``, and ``job:<id>`` for ``job_ids``."""
        arm = []
        with self._lock:
            if self._closed:
                return
            self._subscribers.add(subscriber)
            for job_id in job_ids:
                followers = self._followers.setdefault(job_id, set())
                if not followers:
                    arm.append(job_id)
                followers.add(subscriber)
        for job_id in arm:
            self._arm_job(job_id)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)
            for job_id in list(self._followers):
                self._followers[job_id].discard(subscriber)
                if not self._followers[job_id]:
                    del self._followers[job_id]   # its watch fires once more, then ends

    def publish(self, topic: str) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.notify(topic)

    # -- watches (kazoo threads: quick, no synchronous ZooKeeper calls) ----------

    def _arm_job(self, job_id: str) -> None:
        try:
            self.client.exists_async(self.board.paths.job(job_id), watch=self._on_job)
        except Exception:  # noqa: BLE001 - a closing client; the stream ends too
            pass

    def _on_job(self, event: WatchedEvent) -> None:
        job_id = event.path.rsplit("/", 1)[-1]
        with self._lock:
            followers = list(self._followers.get(job_id, ()))
        for subscriber in followers:
            subscriber.notify(f"job:{job_id}")
        if followers:
            self._arm_job(job_id)

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            # a new session has none of the old job watches: set them again
            with self._lock:
                job_ids = list(self._followers)
            for job_id in job_ids:
                self._arm_job(job_id)
            self.publish("claims")

    def _on_conductors(self, names: list[str]) -> None:
        # a conductor rewrites its record (readiness, jobs in flight): watch the data
        for name in names:
            self.client.exists_async(self.board.paths.conductor(name),
                                     watch=self._on_conductor)
        self.publish("conductors")

    def _on_conductor(self, event: WatchedEvent) -> None:
        self.publish("conductors")
        name = event.path.rsplit("/", 1)[-1]
        with self._lock:
            if self._closed:
                return
        try:
            self.client.exists_async(self.board.paths.conductor(name), watch=self._on_conductor)
        except Exception:  # noqa: BLE001 - a closing client
            pass

    def _on_queues(self, names: list[str]) -> None:
        """Each queue's directory: a watch on its buckets."""
        self._follow(names, lambda queue: ChildWatch(
            self.client, self.board.paths.queue_dir(queue),
            lambda buckets, queue=queue: self._on_buckets(queue, buckets)), scope="")

    def _on_buckets(self, queue: str, names: list[str]) -> None:
        """Each bucket of ``queue``: a watch on its entries."""
        self._follow([f"{queue}/{name}" for name in names], lambda key: ChildWatch(
            self.client, f"{self.board.paths.queues}/{key}",
            lambda _c: self.publish("queue")), scope=f"{queue}/")

    def _follow(self, keys: list[str], make: Callable[[str], ChildWatch], *,
                scope: str) -> None:
        """Watch every key of ``keys``; stop the watches of the keys in
        ``scope`` (a queue's buckets, or the queues: no ``/``) not listed."""
        start, stop = [], []
        with self._lock:
            if self._closed:
                return
            for key in keys:
                if key not in self._buckets:
                    self._buckets[key] = watch = make(key)
                    start.append(watch)
            for key in [k for k in self._buckets if k not in keys
                        and (k.startswith(scope) if scope else "/" not in k)]:
                stop.append(self._buckets.pop(key))
        for watch in stop:
            watch.stop()
        for watch in start:
            watch.start()
        self.publish("queue")
