"""The webhook publisher: one JSON document per finished job, POSTed to a URL.

Subscribed to a :class:`~jobboard.events.Notifier`, it turns each event of
:data:`~jobboard.events.FINISHED_KINDS` (a job COMPLETE, FAILED, CANCELLED
or DEAD) into a document (:func:`document_of`) and POSTs it to ``url`` from
its own sender thread::

    {"delivery_id": "…", "event": "job.completed", "job_id": "…",
     "state": "COMPLETE", "name": "provision", "owner": "conductor-1",
     "at": 1767225600.25, "reason": null}

with headers ``Content-Type: application/json``, ``X-Jobboard-Event`` (the
event) and ``X-Jobboard-Delivery`` (the delivery id, the same on every
retry of a document, so a receiver can drop a duplicate). Given a
``secret``, every request is also signed: ``X-Jobboard-Timestamp`` and
``X-Jobboard-Signature`` (:mod:`jobboard.notify.signing`; each retry signed
again with a fresh timestamp), which a receiver checks with
:func:`~jobboard.notify.verify_signature`. The secret never appears in a
log line, an event or the publisher's ``repr``.

How it fails, and what it never does:

* it never blocks a job: the listener only appends to a bounded in-memory
  queue and returns; the POSTs happen on the sender thread;
* the queue is full (the receiver is down or slow): the oldest document is
  dropped (``webhook.dropped``, reason ``queue_full``);
* a POST fails (unreachable, timeout, 5xx, 408, 429): ``webhook.failed``
  and it is tried again after an exponential backoff (:class:`Backoff`);
  after the last attempt the document is dropped (``retries_exhausted``);
  another 4xx is the receiver refusing it: dropped at once (``rejected``);
* :meth:`WebhookPublisher.close` delivers what is queued for up to its
  timeout, then drops the rest (``shutdown``);
* delivery is at least once per document while the process lives (a
  receiver that answered too late gets it again), and nothing survives a
  restart of the process: the board and the logbook keep every outcome.

Each outcome of delivery is an event on the ``notifier`` given (the
metrics count them: ``jobboard_webhook_*``) and a counter on the publisher.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from jobboard.errors import InvalidArgument
from jobboard.events import FINISHED_KINDS, Event, EventKind, Notifier
from jobboard.notify.signing import signature_headers

__all__ = ["Backoff", "WebhookPublisher", "document_of"]

log = logging.getLogger(__name__)

_STATES = {EventKind.JOB_COMPLETED: "COMPLETE", EventKind.JOB_FAILED: "FAILED",
           EventKind.JOB_CANCELLED: "CANCELLED", EventKind.JOB_DEAD: "DEAD"}
# Answers worth another attempt: the receiver may take it later.
_RETRIED_STATUSES = {408, 425, 429}
# Seconds between two log lines about dropped documents.
DROP_WARNING_INTERVAL = 10.0


@dataclass(frozen=True)
class Backoff:
    """When to try a failed POST again: ``first`` seconds after the first
    failure, times ``factor`` after each next one, at most ``max_delay``,
    ``attempts`` POSTs in all."""

    attempts: int = 6
    first: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first < 0 or self.factor < 1 or self.max_delay < 0:
            raise InvalidArgument(f"unusable backoff {self!r}", argument="backoff")

    def delays(self) -> Iterator[float]:
        """The waits between attempts (``attempts - 1`` of them)."""
        delay = self.first
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_delay)
            delay *= self.factor


def document_of(event: Event, delivery_id: str | None = None) -> dict[str, Any]:
    """The JSON document of a finished job's event."""
    details = event.details
    state = str(details.get("state") or _STATES.get(event.kind, "")).upper()
    return {"delivery_id": delivery_id or uuid.uuid4().hex, "event": event.kind.value,
            "job_id": event.job_id, "state": state, "name": details.get("name"),
            "owner": event.owner, "at": event.at, "reason": details.get("reason")}


class _Failed(Exception):
    def __init__(self, reason: str, *, retry: bool, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.status = status


class WebhookPublisher:
    """POSTs finished jobs to ``url`` (see the module docstring).

    Args:
        url: an ``http://`` or ``https://`` URL.
        notifier: where it listens (from :meth:`start` to :meth:`close`) and
            reports its deliveries (``webhook.*``); None: call the publisher
            with events yourself.
        max_queue: documents kept waiting at most; the oldest is dropped
            beyond.
        timeout: seconds one POST may take.
        backoff: when to try a failed POST again.
        headers: extra HTTP headers (an ``Authorization``, say).
        secret: sign every request with it (HMAC-SHA256, see
            :mod:`jobboard.notify.signing`); None: unsigned.

    Raises:
        InvalidArgument: a bad URL or limit, an empty secret (the message
            never holds the secret).
    """

    def __init__(self, url: str, *, notifier: Notifier | None = None, max_queue: int = 1000,
                 timeout: float = 5.0, backoff: Backoff = Backoff(),
                 headers: dict[str, str] | None = None,
                 secret: bytes | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidArgument(f"the webhook URL must start with http:// or https://, "
                                  f"not {url!r}", argument="url")
        if max_queue < 1:
            raise InvalidArgument("max_queue must be at least 1", argument="max_queue")
        if not timeout > 0:
            raise InvalidArgument("timeout must be positive", argument="timeout")
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise InvalidArgument("the webhook secret must be non-empty bytes",
                                  argument="secret")
        self.url = url
        self.notifier = notifier
        self.max_queue = max_queue
        self.timeout = timeout
        self.backoff = backoff
        self.headers = dict(headers or {})
        self._secret = secret
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.failures = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self._last_warning = -DROP_WARNING_INTERVAL

    @property
    def signed(self) -> bool:
        """Whether requests are signed (the secret itself is not readable here)."""
        return self._secret is not None

    def __repr__(self) -> str:
        return f"<WebhookPublisher url={self.url!r} signed={self.signed}>"

    # -- life -------------------------------------------------------------------

    def start(self) -> "WebhookPublisher":
        """Start the sender thread and listen to the notifier (idempotent)."""
        with self._cond:
            if self._thread is not None:
                return self
            self._thread = threading.Thread(target=self._send_loop, name="jobboard-webhook",
                                            daemon=True)
            self._thread.start()
        if self.notifier is not None:
            self.notifier.subscribe(self)
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening, deliver what is queued for up to ``timeout``
        seconds, drop the rest."""
        if self.notifier is not None:
            self.notifier.unsubscribe(self)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            self._abort.set()                  # cut a backoff short, stop after this POST
            thread.join(self.timeout + 1.0)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for document in left:
            self._dropped(document, "shutdown")

    def __enter__(self) -> "WebhookPublisher":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Documents waiting to be sent (the one being sent not included)."""
        with self._cond:
            return len(self._queue)

    # -- the listener: never blocks ---------------------------------------------------

    def __call__(self, event: Event) -> None:
        if event.kind not in FINISHED_KINDS:
            return
        document = document_of(event)
        oldest = None
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self.max_queue:
                oldest = self._queue.popleft()
            self._queue.append(document)
            self._cond.notify()
        if oldest is not None:
            self._dropped(oldest, "queue_full")

    # -- the sender thread ------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._abort.is_set():
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return                     # closing, all delivered
                document = self._queue.popleft()
            self._deliver(document)

    def _deliver(self, document: dict[str, Any]) -> None:
        delays = self.backoff.delays()
        while True:
            try:
                status = self._post(document)
            except _Failed as failure:
                self._failed(document, failure)
                if not failure.retry:
                    self._dropped(document, "rejected")
                    return
                delay = next(delays, None)
                if delay is None:
                    self._dropped(document, "retries_exhausted")
                    return
                if self._abort.wait(delay):
                    self._dropped(document, "shutdown")
                    return
                continue
            self.delivered += 1
            self._report(EventKind.WEBHOOK_DELIVERED, document, status=status)
            return

    def _post(self, document: dict[str, Any]) -> int:
        body = json.dumps(document, separators=(",", ":"), default=str).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "jobboard-webhook",
            "X-Jobboard-Event": document["event"],
            "X-Jobboard-Delivery": document["delivery_id"], **self.headers,
            # signed last, so an extra header cannot replace the signature
            **(signature_headers(self._secret, body) if self._secret is not None else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            retry = exc.code >= 500 or exc.code in _RETRIED_STATUSES
            raise _Failed(f"HTTP {exc.code}", retry=retry, status=exc.code) from None
        except (OSError, ValueError) as exc:     # refused, unreachable, timeout, bad answer
            raise _Failed(str(exc) or type(exc).__name__, retry=True) from None

    # -- accounting ----------------------------------------------------------------------

    def _failed(self, document: dict[str, Any], failure: _Failed) -> None:
        self.failures += 1
        log.debug("webhook POST of job %s failed: %s", document["job_id"], failure.reason)
        self._report(EventKind.WEBHOOK_FAILED, document, reason=failure.reason,
                     status=failure.status)

    def _dropped(self, document: dict[str, Any], reason: str) -> None:
        now = time.monotonic()
        with self._cond:
            self.dropped[reason] += 1
            quiet = now - self._last_warning < DROP_WARNING_INTERVAL
            if not quiet:
                self._last_warning = now
        if not quiet:    # one line per interval, not one per document of an outage
            log.warning("webhook: job %s (%s) not delivered to %s: %s (%d dropped so far)",
                        document["job_id"], document["state"], self.url, reason,
                        sum(self.dropped.values()))
        self._report(EventKind.WEBHOOK_DROPPED, document, reason=reason)

    def _report(self, kind: EventKind, document: dict[str, Any], **details: Any) -> None:
        if self.notifier is not None:
            self.notifier.emit(kind, job_id=document["job_id"],
                               details={"state": document["state"], **details})
