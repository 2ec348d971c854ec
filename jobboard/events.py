"""The notifier: events at checkpoints, fanned out to listeners.

A listener is any callable taking an :class:`Event`. A listener that raises
is logged and skipped; it never breaks the flow of work, except that
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

log = logging.getLogger(__name__)


class EventKind(str, Enum):
    JOB_POSTED = "job.posted"
    JOB_CLAIMED = "job.claimed"
    JOB_RECLAIMED = "job.reclaimed"
    JOB_ABANDONED = "job.abandoned"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_DEAD = "job.dead"
    CLAIM_LOST = "claim.lost"
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

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Event:
    kind: EventKind
    job_id: str | None = None
    flow: str | None = None
    task: str | None = None
    owner: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


Listener = Callable[[Event], None]


class Notifier:
    """Thread-safe fan-out of events to registered listeners."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> Listener:
        with self._lock:
            self._listeners = [*self._listeners, listener]
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = [x for x in self._listeners if x is not listener]

    def emit(self, kind: EventKind, **fields: Any) -> Event:
        event = Event(kind, **fields)
        for listener in self._listeners:
            try:
                listener(event)
            except Cancelled:
                raise
            except Exception:
                log.exception("event listener %r failed on %s", listener, kind)
        return event


def log_listener(event: Event) -> None:
    """A listener that writes each event to the ``jobboard.events`` logger."""
    logging.getLogger("jobboard.events").info(
        "%s job=%s flow=%s task=%s %s", event.kind, event.job_id, event.flow,
        event.task, event.details or "")
