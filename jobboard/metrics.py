"""The Prometheus metrics of jobboard, all in one place.

Two sources:

- :class:`Metrics`: the counters, histograms and gauges of one process (a
  conductor, a producer). It is a listener like any other: subscribe
  :meth:`Metrics.listener` to the :class:`~jobboard.events.Notifier` and
  every event becomes counts, durations and gauges: job and task events from
  the board and the engine, ``logbook.write`` from the logbook, the
  conductor's ``conductor.*``, ``zookeeper.*``, ``lock.acquired`` and
  ``claim.conflicts``, the webhook publisher's ``webhook.*``. Nothing calls
  into it from outside the notifier (its ``observe_*``/``set_*`` methods
  remain for processes without a notifier, and the handlers use them).
- :class:`BoardCollector`: board gauges computed at scrape time from
  :meth:`Board.depth() <jobboard.board.Board.depth>` (znode stats, never a
  listing of every job), and the board's count of posted jobs (from the job
  shards' stats, so every post is counted, whoever posted it: producers are
  seldom scraped). Run one per fleet (``jobboard exporter``), not one per
  conductor, or every conductor reports the same board.

Names follow Prometheus conventions: ``jobboard_<noun>_<unit>``, base units
(seconds), counters end in ``_total``, label values come from small fixed
sets (flow names from code, task outcomes, lock kinds, logbook operations,
conductor names) and never carry a job id.

How it fails: a listener never raises into the work it observes (the
notifier logs listener errors anyway); a scrape of :class:`BoardCollector`
with ZooKeeper unreachable does not raise either: it reports
``jobboard_board_up 0`` and counts ``jobboard_board_scrape_errors_total``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobboard.events import Event, EventKind

if TYPE_CHECKING:  # the metrics never need kazoo at import time
    from jobboard.board import Board
    from jobboard.schedules import Schedules

__all__ = [
    "BoardCollector",
    "posted_jobs",
    "ScheduleCollector",
    "Metrics",
    "ZK_STATES",
    "serve",
]

log = logging.getLogger(__name__)

#: Connection states reported by :meth:`Metrics.zookeeper_state` (kazoo's).
ZK_STATES = ("CONNECTED", "SUSPENDED", "LOST")

# Buckets, in seconds. Jobs run from a fraction of a second to an hour; a
# job may wait on the board for a long time under backlog; ZooKeeper and
# database round trips are milliseconds.
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                 30, 60, 300, 900, 3600)
LOCK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                5, 10, 30, 60)
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                 5, 10)

#: Task outcomes (the ``outcome`` label of ``jobboard_task_duration_seconds``).
TASK_OUTCOMES = ("succeeded", "failed", "retrying", "reverted", "revert_failed")

# Started tasks and running jobs remembered by the listener, at most this many
# (the oldest are forgotten first: a lost end event must not leak memory).
MAX_TRACKED = 10_000
UNKNOWN_FLOW = "unknown"


class _Bounded(collections.OrderedDict):
    """An insertion-ordered dict that forgets its oldest keys past ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class Metrics:
    """The metrics of one process, registered in ``registry``.

    Args:
        registry: where to register (default: prometheus_client's global
            ``REGISTRY``; tests pass a fresh ``CollectorRegistry()``). Only
            one :class:`Metrics` can be registered per registry.
        max_tracked: how many started tasks and running jobs the listener
            remembers to time them.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 max_tracked: int = MAX_TRACKED) -> None:
        if registry is None:
            from prometheus_client import REGISTRY as registry  # noqa: N811
        self.registry = registry
        r = {"registry": registry}

        # -- counters -----------------------------------------------------------
        self.jobs_posted = Counter(
            "jobboard_jobs_posted",
            "Jobs posted by this process (every post to the board, by anyone: "
            "jobboard_board_jobs_posted_total from the exporter).", **r)
        self.jobs_claimed = Counter(
            "jobboard_jobs_claimed", "Successful claims, reclaims included.", **r)
        self.jobs_completed = Counter(
            "jobboard_jobs_completed", "Jobs whose flow succeeded (consumed COMPLETE).", **r)
        self.jobs_failed = Counter(
            "jobboard_jobs_failed", "Jobs whose flow failed for good (consumed FAILED).", **r)
        self.jobs_cancelled = Counter(
            "jobboard_jobs_cancelled",
            "Jobs cancelled: claimed ones stopped by a cancel request, waiting ones "
            "removed.", **r)
        self.jobs_reclaimed = Counter(
            "jobboard_jobs_reclaimed",
            "Claims of a job claimed before (its holder died, abandoned or transferred it).", **r)
        self.jobs_abandoned = Counter(
            "jobboard_jobs_abandoned", "Claims released without finishing the job.", **r)
        self.jobs_dead_lettered = Counter(
            "jobboard_jobs_dead_lettered",
            "Jobs taken out of circulation after too many claims.", **r)
        self.claims_lost = Counter(
            "jobboard_claims_lost", "Claims a holder lost while running the job.", **r)
        self.claim_conflicts_total = Counter(
            "jobboard_claim_conflicts", "Claim attempts lost to another claimer.", **r)
        self.session_losses = Counter(
            "jobboard_zookeeper_session_losses",
            "ZooKeeper sessions that expired (every claim and lock of it was lost).", **r)
        self.fenced_writes = Counter(
            "jobboard_logbook_fenced_writes",
            "Logbook writes refused because a newer claim holder took over.", **r)
        self.logbook_write_failures = Counter(
            "jobboard_logbook_write_failures", "Logbook writes that failed, by operation.",
            ["op"], **r)
        self.webhook_deliveries = Counter(
            "jobboard_webhook_deliveries",
            "Finished-job documents the webhook receiver accepted (2xx).", **r)
        self.webhook_failures = Counter(
            "jobboard_webhook_failures",
            "Webhook POST attempts that failed (unreachable, timeout, non-2xx); each "
            "retry counts.", **r)
        self.webhook_dropped = Counter(
            "jobboard_webhook_dropped",
            "Finished-job documents never delivered, by reason: queue_full (the oldest "
            "is dropped), retries_exhausted, shutdown.", ["reason"], **r)

        # -- histograms -----------------------------------------------------------
        self.job_duration = Histogram(
            "jobboard_job_duration_seconds", "Time from claim to finish of a job, by flow.",
            ["flow"], buckets=JOB_BUCKETS, **r)
        self.task_duration = Histogram(
            "jobboard_task_duration_seconds",
            "Time of one task attempt (or revert), by flow and outcome.",
            ["flow", "outcome"], buckets=TASK_BUCKETS, **r)
        self.claim_latency = Histogram(
            "jobboard_claim_latency_seconds",
            "Time from post to first claim of a job (delayed jobs include their delay).",
            buckets=CLAIM_BUCKETS, **r)
        self.lock_wait = Histogram(
            "jobboard_lock_wait_seconds", "Time spent acquiring a distributed lock, by kind.",
            ["kind"], buckets=LOCK_BUCKETS, **r)
        self.logbook_write_seconds = Histogram(
            "jobboard_logbook_write_seconds",
            "Duration of a logbook write (retries included), by operation.",
            ["op"], buckets=WRITE_BUCKETS, **r)

        # -- gauges ---------------------------------------------------------------
        self.in_flight = Gauge(
            "jobboard_jobs_in_flight", "Jobs a conductor is running now.", ["conductor"], **r)
        self.zk_connected = Gauge(
            "jobboard_zookeeper_connected",
            "1 while the conductor's ZooKeeper connection is CONNECTED, else 0.",
            ["conductor"], **r)
        self.zk_state = Gauge(
            "jobboard_zookeeper_state",
            "1 for the current ZooKeeper connection state (CONNECTED, SUSPENDED, LOST).",
            ["conductor", "state"], **r)
        self.info = Gauge(
            "jobboard_conductor_info", "Always 1; labels name a running conductor.",
            ["conductor", "version"], **r)
        self.ready = Gauge(
            "jobboard_conductor_ready",
            "1 while the conductor claims work: ZooKeeper connected and the logbook "
            "answering; 0 while it waits for a dependency (`jobboard conductors` says why).",
            ["conductor"], **r)
        self.heartbeats = Counter(
            "jobboard_task_heartbeats",
            "Heartbeats saved for running tasks, by flow (`jobboard claims` shows each "
            "task's progress and note).", ["flow"], **r)

        self._lock = threading.Lock()
        self._task_started: _Bounded = _Bounded(max_tracked)
        self._job_flow: _Bounded = _Bounded(max_tracked)

    # -- what the conductor calls ----------------------------------------------------

    def register_conductor(self, conductor: str, version: str | None = None) -> None:
        """Publish ``jobboard_conductor_info`` and zeroed per-conductor gauges."""
        if version is None:
            from jobboard import __version__ as version
        self.info.labels(conductor=conductor, version=version).set(1)
        self.in_flight.labels(conductor=conductor).set(0)
        self.zookeeper_state(conductor, "CONNECTED")
        self.conductor_ready(conductor, True)

    def conductor_ready(self, conductor: str, ready: bool) -> None:
        self.ready.labels(conductor=conductor).set(1 if ready else 0)

    def observe_lock_wait(self, kind: str, seconds: float) -> None:
        """A lock of ``kind`` (mutex, read, write, semaphore) was acquired
        after ``seconds`` (``Held.waited``)."""
        self.lock_wait.labels(kind=kind).observe(max(0.0, seconds))

    def set_in_flight(self, conductor: str, n: int) -> None:
        self.in_flight.labels(conductor=conductor).set(n)

    def zookeeper_state(self, conductor: str, state: str) -> None:
        """Record a connection state change (kazoo's ``KazooState`` values).

        Raises:
            ValueError: ``state`` is not one of :data:`ZK_STATES`.
        """
        state = str(state).upper()
        if state not in ZK_STATES:
            raise ValueError(f"unknown ZooKeeper state {state!r}; expected one of {ZK_STATES}")
        for known in ZK_STATES:
            self.zk_state.labels(conductor=conductor, state=known).set(
                1 if known == state else 0)
        self.zk_connected.labels(conductor=conductor).set(1 if state == "CONNECTED" else 0)

    def session_lost(self) -> None:
        self.session_losses.inc()

    def logbook_write(self, op: str, seconds: float, ok: bool) -> None:
        """Time one logbook write of ``op`` (and count it when it failed)."""
        self.logbook_write_seconds.labels(op=op).observe(max(0.0, seconds))
        if not ok:
            self.logbook_write_failures.labels(op=op).inc()

    def fenced_write(self, n: int = 1) -> None:
        """Count ``n`` logbook writes refused by fencing (``StaleOwner``)."""
        if n > 0:
            self.fenced_writes.inc(n)

    def claim_conflicts(self, n: int = 1) -> None:
        """Add ``n`` lost claim races (a delta, not the claimer's running total)."""
        if n > 0:
            self.claim_conflicts_total.inc(n)

    # -- events ------------------------------------------------------------------------

    def listener(self, event: Event) -> None:
        """Map one event to counters and histograms (subscribe it to a Notifier)."""
        handler = _HANDLERS.get(event.kind)
        if handler is not None:
            handler(self, event)

    def _flow_of(self, event: Event, *, forget: bool = False) -> str:
        with self._lock:
            known = (self._job_flow.pop(event.job_id, None) if forget
                     else self._job_flow.get(event.job_id))
        return event.flow or known or UNKNOWN_FLOW

    def _remember_flow(self, event: Event) -> None:
        if event.job_id and event.flow:
            with self._lock:
                self._job_flow.put(event.job_id, event.flow)

    def _on_posted(self, event: Event) -> None:
        self.jobs_posted.inc()

    def _on_claimed(self, event: Event) -> None:
        self.jobs_claimed.inc()
        if event.kind is EventKind.JOB_RECLAIMED:
            self.jobs_reclaimed.inc()
            return
        posted_at = event.details.get("posted_at")
        if posted_at:
            self.claim_latency.observe(max(0.0, event.at - posted_at))

    def _on_finished(self, event: Event) -> None:
        state = str(event.details.get("state", "")).upper()
        if event.kind is EventKind.JOB_COMPLETED:
            self.jobs_completed.inc()
        elif event.kind is EventKind.JOB_CANCELLED or state == "CANCELLED":
            self.jobs_cancelled.inc()
        else:
            self.jobs_failed.inc()
        flow = self._flow_of(event, forget=True)
        claimed_at = event.details.get("claimed_at")
        if claimed_at:
            self.job_duration.labels(flow=flow).observe(max(0.0, event.at - claimed_at))

    def _on_abandoned(self, event: Event) -> None:
        self.jobs_abandoned.inc()
        self._flow_of(event, forget=True)

    def _on_dead(self, event: Event) -> None:
        self.jobs_dead_lettered.inc()
        self._flow_of(event, forget=True)

    def _on_claim_lost(self, event: Event) -> None:
        self.claims_lost.inc()
        self._flow_of(event, forget=True)

    def _on_flow_started(self, event: Event) -> None:
        self._remember_flow(event)

    def _on_task_started(self, event: Event) -> None:
        self._remember_flow(event)
        with self._lock:
            self._task_started.put((event.job_id, event.task), event.at)

    def _on_heartbeat(self, event: Event) -> None:
        self.heartbeats.labels(flow=self._flow_of(event)).inc()

    def _on_task_ended(self, event: Event) -> None:
        if event.kind is EventKind.TASK_SUCCEEDED:
            outcome = "succeeded"
        elif event.kind is EventKind.TASK_RETRYING:
            outcome = "retrying"
        elif event.kind is EventKind.TASK_REVERTED:
            outcome = "reverted"
        elif event.details.get("phase") == "revert":
            outcome = "revert_failed"
        else:
            outcome = "failed"
        with self._lock:
            started = self._task_started.pop((event.job_id, event.task), None)
        if started is not None:
            self.task_duration.labels(flow=event.flow or UNKNOWN_FLOW, outcome=outcome) \
                .observe(max(0.0, event.at - started))


    # -- what the conductor, the logbook and the publishers tell -----------------------

    def _on_logbook_write(self, event: Event) -> None:
        d = event.details
        op = str(d.get("op") or "unknown")
        self.logbook_write(op, float(d.get("seconds") or 0.0), bool(d.get("ok")))
        if d.get("fenced"):
            self.fenced_write()

    def _on_lock_acquired(self, event: Event) -> None:
        self.observe_lock_wait(str(event.details.get("kind") or "mutex"),
                               float(event.details.get("waited") or 0.0))

    def _on_conductor_started(self, event: Event) -> None:
        if event.owner:
            self.register_conductor(event.owner, event.details.get("version"))

    def _on_conductor_ready(self, event: Event) -> None:
        if event.owner:
            self.conductor_ready(event.owner, bool(event.details.get("ready")))

    def _on_in_flight(self, event: Event) -> None:
        if event.owner:
            self.set_in_flight(event.owner, int(event.details.get("count") or 0))

    def _on_zookeeper_state(self, event: Event) -> None:
        if event.owner:
            self.zookeeper_state(event.owner, str(event.details.get("state")))

    def _on_session_lost(self, event: Event) -> None:
        self.session_lost()

    def _on_claim_conflicts(self, event: Event) -> None:
        self.claim_conflicts(int(event.details.get("count") or 0))

    def _on_webhook(self, event: Event) -> None:
        if event.kind is EventKind.WEBHOOK_DELIVERED:
            self.webhook_deliveries.inc()
        elif event.kind is EventKind.WEBHOOK_FAILED:
            self.webhook_failures.inc()
        else:
            self.webhook_dropped.labels(reason=str(event.details.get("reason") or "unknown")) \
                .inc()


_HANDLERS = {
    EventKind.JOB_POSTED: Metrics._on_posted,
    EventKind.JOB_CLAIMED: Metrics._on_claimed,
    EventKind.JOB_RECLAIMED: Metrics._on_claimed,
    EventKind.JOB_COMPLETED: Metrics._on_finished,
    EventKind.JOB_FAILED: Metrics._on_finished,
    EventKind.JOB_CANCELLED: Metrics._on_finished,
    EventKind.JOB_ABANDONED: Metrics._on_abandoned,
    EventKind.JOB_DEAD: Metrics._on_dead,
    EventKind.CLAIM_LOST: Metrics._on_claim_lost,
    EventKind.FLOW_STARTED: Metrics._on_flow_started,
    EventKind.TASK_STARTED: Metrics._on_task_started,
    EventKind.TASK_REVERTING: Metrics._on_task_started,
    EventKind.TASK_SUCCEEDED: Metrics._on_task_ended,
    EventKind.TASK_FAILED: Metrics._on_task_ended,
    EventKind.TASK_RETRYING: Metrics._on_task_ended,
    EventKind.TASK_REVERTED: Metrics._on_task_ended,
    EventKind.TASK_HEARTBEAT: Metrics._on_heartbeat,
    EventKind.LOGBOOK_WRITE: Metrics._on_logbook_write,
    EventKind.LOCK_ACQUIRED: Metrics._on_lock_acquired,
    EventKind.CONDUCTOR_STARTED: Metrics._on_conductor_started,
    EventKind.CONDUCTOR_READY: Metrics._on_conductor_ready,
    EventKind.JOBS_IN_FLIGHT: Metrics._on_in_flight,
    EventKind.ZOOKEEPER_STATE: Metrics._on_zookeeper_state,
    EventKind.SESSION_LOST: Metrics._on_session_lost,
    EventKind.CLAIM_CONFLICTS: Metrics._on_claim_conflicts,
    EventKind.WEBHOOK_DELIVERED: Metrics._on_webhook,
    EventKind.WEBHOOK_FAILED: Metrics._on_webhook,
    EventKind.WEBHOOK_DROPPED: Metrics._on_webhook,
}


class BoardCollector(Collector):
    """Board gauges computed at scrape time: one :meth:`Board.depth`, one
    :meth:`Board.conductors` and one pipelined stat of the job shards per
    scrape.

    ``jobboard_board_jobs_posted_total`` counts every job record ever created
    on the board, whoever posted it, from the shards' stats: a znode's
    ``cversion`` counts its children's creations plus deletions and
    ``numChildren`` their difference, so creations are their half-sum. It
    survives trashing and pruning; it restarts (``rate()`` copes) only if a
    shard is deleted and made again.

    A scrape never raises: with ZooKeeper unreachable it yields only
    ``jobboard_board_up 0`` and the error counter.
    """

    def __init__(self, board: "Board") -> None:
        self.board = board
        self.errors = 0
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering does not talk to ZooKeeper.
        return list(self._families({}, 0, 0, 0.0, up=True, describe=True))

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            depth = self.board.depth()
            conductors = len(self.board.conductors())
            posted = posted_jobs(self.board)
            up = True
        except Exception as exc:  # a scrape must not fail: report it instead
            log.warning("board scrape failed: %s", exc)
            with self._lock:
                self.errors += 1
            depth, conductors, posted, up = {}, 0, 0, False
        yield from self._families(depth, conductors, posted, time.perf_counter() - started,
                                  up=up)

    def _families(self, depth: dict[str, Any], conductors: int, posted: int, took: float, *,
                  up: bool, describe: bool = False) -> Iterator[Metric]:
        yield GaugeMetricFamily("jobboard_board_up",
                                "1 when the last scrape could read the board, else 0.",
                                value=1 if up else 0)
        yield CounterMetricFamily("jobboard_board_scrape_errors",
                                  "Scrapes that could not read the board.", value=self.errors)
        yield GaugeMetricFamily("jobboard_board_scrape_duration_seconds",
                                "Time the last board scrape took.", value=took)
        if not up:
            return
        yield CounterMetricFamily("jobboard_board_jobs_posted",
                                  "Jobs ever posted to the board, by anyone (from the job "
                                  "shards' znode stats).", value=posted)
        waiting = GaugeMetricFamily("jobboard_board_waiting_jobs",
                                    "Jobs waiting to be claimed, by priority.",
                                    labels=["priority"])
        by_priority = dict(depth.get("waiting") or {})
        by_priority.setdefault(0, 0)  # a series even on an empty board
        if not describe:
            for priority, count in sorted(by_priority.items()):
                waiting.add_metric([str(priority)], count)
        yield waiting
        by_queue = GaugeMetricFamily("jobboard_queue_waiting_jobs",
                                     "Jobs waiting to be claimed, by queue.", labels=["queue"])
        if not describe:
            for queue, count in sorted((depth.get("queues") or {"default": 0}).items()):
                by_queue.add_metric([queue], count)
        yield by_queue
        yield GaugeMetricFamily("jobboard_board_delayed_jobs",
                                "Jobs posted with a delay that is not over yet.",
                                value=depth.get("delayed", 0))
        yield GaugeMetricFamily("jobboard_board_claimed_jobs", "Jobs claimed right now.",
                                value=depth.get("claimed", 0))
        yield GaugeMetricFamily("jobboard_board_dead_jobs", "Dead-lettered jobs.",
                                value=depth.get("dead", 0))
        yield GaugeMetricFamily("jobboard_board_oldest_waiting_age_seconds",
                                "Age of the oldest waiting job (0 when none waits).",
                                value=depth.get("oldest_waiting_age") or 0.0)
        yield GaugeMetricFamily("jobboard_board_conductors", "Live registered conductors.",
                                value=conductors)


def posted_jobs(board: "Board", timeout: float = 10.0) -> int:
    """How many job records were ever created on ``board``: the half-sum of
    ``cversion`` and ``numChildren`` over its job shards (stats pipelined)."""
    client = board.client
    pending = [client.exists_async(path) for path in board.paths.shards()]
    total = 0
    for result in pending:
        stat = result.get(timeout=timeout)
        if stat is not None:
            total += (stat.cversion + stat.numChildren) // 2
    return total


class ScheduleCollector(Collector):
    """Schedule gauges computed at scrape time from one listing of the
    board's schedules (definitions and status znodes, reads pipelined).

    ``jobboard_schedule_overdue_seconds`` is what an alert on schedules that
    stopped firing watches: how late the first fire not yet posted is (near
    0 while a scheduler leads; paused and broken schedules report 0 and are
    counted in ``jobboard_schedules``). The ``schedule`` label takes the
    schedule names, a set the admins keep small. A scrape never raises.
    """

    def __init__(self, schedules: "Schedules") -> None:
        self.schedules = schedules

    def describe(self) -> Iterable[Metric]:
        return list(self._families([], 0.0))

    def collect(self) -> Iterator[Metric]:
        try:
            infos = self.schedules.list()
        except Exception as exc:  # a scrape must not fail: the board gauges say it is down
            log.warning("schedule scrape failed: %s", exc)
            return
        yield from self._families(infos, time.time())

    @staticmethod
    def _families(infos: list[Any], now: float) -> Iterator[Metric]:
        states = GaugeMetricFamily("jobboard_schedules", "Schedules on the board, by state.",
                                   labels=["state"])
        overdue = GaugeMetricFamily("jobboard_schedule_overdue_seconds",
                                    "How late the first fire not yet posted is (0 when not "
                                    "due, paused or broken).", labels=["schedule"])
        last = GaugeMetricFamily("jobboard_schedule_last_fire_timestamp_seconds",
                                 "Fire time of the latest posted fire.", labels=["schedule"])
        fires = CounterMetricFamily("jobboard_schedule_fires", "Fires posted.",
                                    labels=["schedule"])
        skipped = CounterMetricFamily("jobboard_schedule_skipped_fires",
                                      "Fires skipped by the missed-fire policy.",
                                      labels=["schedule"])
        counts = {"active": 0, "paused": 0, "broken": 0}
        for info in infos:
            counts[info.state] += 1
            overdue.add_metric([info.name], info.overdue(now))
            status = info.status
            if status is not None:
                if status.last_fire is not None:
                    last.add_metric([info.name], status.last_fire)
                fires.add_metric([info.name], status.fires)
                skipped.add_metric([info.name], status.skipped)
        for state, count in counts.items():
            states.add_metric([state], count)
        yield from (states, overdue, last, fires, skipped)


def serve(port: int, registry: CollectorRegistry | None = None, addr: str = "0.0.0.0"):
    """Serve ``registry`` on ``http://addr:port/metrics`` from a daemon thread.

    Args:
        port: TCP port; 0 picks a free one (read ``server.server_port``).

    Returns:
        The HTTP server: ``server.shutdown(); server.server_close()`` stops it.
    """
    from prometheus_client import REGISTRY, start_http_server

    server, _thread = start_http_server(port, addr=addr,
                                        registry=REGISTRY if registry is None else registry)
    return server
