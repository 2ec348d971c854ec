"""The log publisher: one structured line per event of interest.

Subscribed to a :class:`~jobboard.events.Notifier`, it writes each event of
its ``kinds`` to a logger as one ``logfmt`` line (``key=value`` pairs, values
with spaces quoted), and passes the event as a dict in the record's
``event`` attribute for JSON log formatters::

    event=job.completed job_id=0041182b-… owner=c1 state=COMPLETE name=provision

By default: the job events (posted, claimed, reclaimed, abandoned, completed,
failed, cancelled, dead), lost claims, the conductor's start and readiness,
ZooKeeper connection states and session losses. Not the task events nor
the timings (``logbook.write``, ``lock.acquired``), which the metrics carry.
Failures, dead letters, lost claims and session losses are WARNING, the
rest INFO.

How it fails: it never raises into the emitter; a value that cannot be
turned into text is written with ``repr``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from jobboard.events import Event, EventKind

__all__ = ["DEFAULT_KINDS", "LogPublisher", "logfmt"]

DEFAULT_KINDS = frozenset({
    EventKind.JOB_POSTED, EventKind.JOB_CLAIMED, EventKind.JOB_RECLAIMED,
    EventKind.JOB_ABANDONED, EventKind.JOB_COMPLETED, EventKind.JOB_FAILED,
    EventKind.JOB_CANCELLED, EventKind.JOB_DEAD, EventKind.JOB_SUSPENDED,
    EventKind.JOB_RESUMED, EventKind.CLAIM_LOST, EventKind.CONDUCTOR_STARTED, EventKind.CONDUCTOR_READY, EventKind.ZOOKEEPER_STATE,
    EventKind.SESSION_LOST,
})

WARNING_KINDS = frozenset({EventKind.JOB_FAILED, EventKind.JOB_DEAD, EventKind.CLAIM_LOST,
                           EventKind.SESSION_LOST, EventKind.WEBHOOK_DROPPED})


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else (
        f"{value:.6f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value))
    if text == "" or any(c in text for c in ' ="\\') or any(ord(c) < 32 for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def logfmt(event: Event) -> str:
    """``event=KIND job_id=… flow=… task=… owner=… DETAIL=…`` (None left out)."""
    pairs: list[tuple[str, Any]] = [("event", event.kind.value)]
    pairs += [(key, value) for key, value in (("job_id", event.job_id), ("flow", event.flow),
                                               ("task", event.task), ("owner", event.owner))
              if value is not None]
    pairs += [(str(key), value) for key, value in event.details.items() if value is not None]
    out = []
    for key, value in pairs:
        try:
            out.append(f"{key}={_text(value)}")
        except Exception:  # noqa: BLE001 - a value whose str() fails
            out.append(f"{key}={_text(repr(value))}")
    return " ".join(out)


class LogPublisher:
    """Writes events to ``logger`` (see the module docstring).

    Args:
        logger: a logger or a logger name.
        kinds: the events to write (default :data:`DEFAULT_KINDS`).
    """

    def __init__(self, logger: logging.Logger | str = "jobboard.events", *,
                 kinds: Iterable[EventKind] = DEFAULT_KINDS) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.kinds = frozenset(kinds)

    def __call__(self, event: Event) -> None:
        if event.kind not in self.kinds:
            return
        level = logging.WARNING if event.kind in WARNING_KINDS else logging.INFO
        if event.kind is EventKind.JOB_FAILED and \
                str(event.details.get("state", "")).upper() == "CANCELLED":
            level = logging.INFO
        if self.logger.isEnabledFor(level):
            self.logger.log(level, "%s", logfmt(event), extra={"event": event.to_dict()})
