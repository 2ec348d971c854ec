"""The notifier: the one channel for events at checkpoints.

Every part of jobboard that has something to tell emits an :class:`Event` on
a :class:`Notifier`; everything that wants to know listens: the metrics
(:meth:`jobboard.metrics.Metrics.listener`), the log publisher and the
webhook publisher (:mod:`jobboard.notify`), and user code. Nothing installs
a hook on another object.

Who emits what (:class:`EventKind`; ``details`` in brackets):

- the board: ``job.posted`` [name]; ``job.claimed`` / ``job.reclaimed``
  [posted_at, priority, claims]; ``job.completed``, ``job.failed``,
  ``job.cancelled`` after a consume [claimed_at, state, name]; ``job.dead``
  [reason]; ``job.abandoned``; ``job.suspended`` [name, was] and
  ``job.resumed`` [name];
- the engine: ``flow.*`` and ``task.*``;
- the logbook: ``logbook.write`` after each write [op, seconds, ok, fenced];
- the conductor: ``claim.lost`` once per run that lost its claim while
  running the job [reason]; ``claim.conflicts`` [count];
  ``conductor.started`` [version]; ``conductor.ready`` [ready, reason];
  ``conductor.in_flight`` [count]; ``zookeeper.state`` [state];
  ``zookeeper.session_lost``; ``lock.acquired`` [kind, waited];
- the webhook publisher (:mod:`jobboard.notify.webhook`):
  ``webhook.delivered``, ``webhook.failed`` (one failed attempt),
  ``webhook.dropped`` [reason].

Each finished job yields one of :data:`FINISHED_KINDS` on the notifier of the
process that finished it (a conductor's, or an admin's for a job cancelled
before it ran).

How it fails: :meth:`Notifier.emit` calls the listeners on the emitting
thread, one after the other, so a listener must be quick (the webhook
publisher only appends to a bounded queue). A listener that raises is
logged and skipped; it never breaks the flow of work, except that
:class:`~jobboard.errors.Cancelled` and ``BaseException`` subclasses pass
through (tests use that to inject a crash at a checkpoint).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from jobboard.errors import Cancelled

__all__ = ["Event", "EventKind", "FINISHED_KINDS", "Listener", "Notifier"]

log = logging.getLogger(__name__)


class EventKind(str, Enum):
    JOB_POSTED = "job.posted"
    JOB_CLAIMED = "job.claimed"
    JOB_RECLAIMED = "job.reclaimed"
    JOB_ABANDONED = "job.abandoned"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_DEAD = "job.dead"
    JOB_SUSPENDED = "job.suspended"
    JOB_RESUMED = "job.resumed"
    CLAIM_LOST = "claim.lost"
    CLAIM_CONFLICTS = "claim.conflicts"
    FLOW_STARTED = "flow.started"
    FLOW_SUCCEEDED = "flow.succeeded"
    FLOW_FAILED = "flow.failed"
    FLOW_REVERTED = "flow.reverted"
    FLOW_CANCELLED = "flow.cancelled"
    TASK_STARTED = "task.started"
    TASK_SUCCEEDED = "task.succeeded"
    TASK_FAILED = "task.failed"
    TASK_RETRYING = "task.retrying"
    TASK_SKIPPED = "task.skipped"
    TASK_REVERTING = "task.reverting"
    TASK_REVERTED = "task.reverted"
    TASK_HEARTBEAT = "task.heartbeat"
    LOGBOOK_WRITE = "logbook.write"
    LOCK_ACQUIRED = "lock.acquired"
    CONDUCTOR_STARTED = "conductor.started"
    CONDUCTOR_READY = "conductor.ready"
    JOBS_IN_FLIGHT = "conductor.in_flight"
    ZOOKEEPER_STATE = "zookeeper.state"
    SESSION_LOST = "zookeeper.session_lost"
    WEBHOOK_DELIVERED = "webhook.delivered"
    WEBHOOK_FAILED = "webhook.failed"
    WEBHOOK_DROPPED = "webhook.dropped"

    def __str__(self) -> str:
        return self.value


#: The events that end a job: one of them per finished job (COMPLETE,
#: FAILED, CANCELLED, DEAD); ``details["state"]`` says which, when present.
FINISHED_KINDS = frozenset({EventKind.JOB_COMPLETED, EventKind.JOB_FAILED,
                            EventKind.JOB_CANCELLED, EventKind.JOB_DEAD})


@dataclass(frozen=True)
class Event:
    """One event: what happened (``kind``), to what, and when (epoch seconds)."""

    kind: EventKind
    job_id: str | None = None
    flow: str | None = None
    task: str | None = None
    owner: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """The event as plain data (``kind`` as its string value)."""
        return {"kind": self.kind.value, "job_id": self.job_id, "flow": self.flow,
                "task": self.task, "owner": self.owner, "details": dict(self.details),
                "at": self.at}


Listener = Callable[[Event], None]


class Notifier:
    """Thread-safe fan-out of events to registered listeners."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> Listener:
        """Add ``listener`` (called with every event from now on); returns it."""
        with self._lock:
            self._listeners = [*self._listeners, listener]
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = [x for x in self._listeners if x != listener]

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return tuple(self._listeners)

    def emit(self, kind: EventKind, **fields: Any) -> Event:
        """Make an :class:`Event` and hand it to every listener, in order."""
        event = Event(kind, **fields)
        for listener in self._listeners:
            try:
                listener(event)
            except Cancelled:
                raise
            except Exception:
                log.exception("event listener %r failed on %s", listener, kind)
        return event
