"""Learning that jobs finished: a callback per job, or waiting for many.

:func:`on_finished` calls ``fn(outcome)`` once when a job reaches a final
state (COMPLETE, FAILED, CANCELLED, DEAD); :func:`wait_many` blocks until
a set of jobs finished. Both rest on :class:`FinishedWatch`: a data watch on
the job's record, read asynchronously; no polling, one read per change of
the record.

* The watch never blocks kazoo's threads: the reads are asynchronous, and
  their answers are judged (decoded, checked) and ``fn`` is called on a
  :class:`~jobboard.notify._dispatch.Dispatcher` thread.
* ``fn`` is called at most once, even when several reads see the job
  finished.
* Connection loss: kazoo sets the watch again on reconnection within the
  session; a new session (the old one expired) has no watches, so every
  ``CONNECTED`` reads the record again and sets a new watch. A job that
  finished while the client was cut off is seen at that read.
* A failed read while connected (a timeout, a refusal) is tried again after
  a short, growing delay (at most :data:`MAX_RETRY_DELAY`).
* The record is missing (never posted, trashed, pruned) or does not
  validate: ``on_error(exc)`` is called once with
  :class:`~jobboard.errors.JobNotFound` or
  :class:`~jobboard.errors.MalformedData` (logged when there is no
  ``on_error``), and the watch ends. The client closed: the watch ends
  with :class:`~jobboard.errors.BoardUnavailable`.
* :meth:`FinishedWatch.cancel` ends it: no call of ``fn`` starts after it
  returns.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

from kazoo.client import KazooState
from kazoo.exceptions import (ConnectionClosedError, ConnectionLoss, NoNodeError,
                              SessionExpiredError)

from jobboard.board.job import JobOutcome, check_job_id
from jobboard.errors import BoardUnavailable, JobBoardError, JobNotFound, MalformedData
from jobboard.notify._dispatch import Dispatcher, default_dispatcher

if TYPE_CHECKING:
    from jobboard.board import Board

__all__ = ["FinishedWatch", "MAX_RETRY_DELAY", "on_finished", "wait_many"]

log = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0

OutcomeCallback = Callable[[JobOutcome], Any]
ErrorCallback = Callable[[JobBoardError], Any]


class FinishedWatch:
    """Calls ``fn(outcome)`` once when the job finishes (see the module
    docstring for how it fails). Start it with :meth:`start`.

    Args:
        board: the board the job is on (its client is used; not owned).
        job_id: the job's id.
        fn: called with the job's :class:`~jobboard.board.JobOutcome`, on the
            dispatcher's thread.
        on_error: called once with the error that ends the watch without an
            outcome (:class:`JobNotFound`, :class:`MalformedData`,
            :class:`BoardUnavailable`).
        dispatcher: where the answers are judged and ``fn`` runs (default:
            the process's shared one).

    Raises:
        InvalidArgument: ``job_id`` is not a job id.
    """

    def __init__(self, board: "Board", job_id: str, fn: OutcomeCallback, *,
                 on_error: ErrorCallback | None = None,
                 dispatcher: Dispatcher | None = None) -> None:
        self.board = board
        self.client = board.client
        self.job_id = check_job_id(job_id)
        self.path = board.paths.job(self.job_id)
        self._fn = fn
        self._on_error = on_error
        self._dispatcher = dispatcher or default_dispatcher()
        self._lock = threading.Lock()
        self._started = False
        self._ended = False            # fired, failed or cancelled
        self._delay = FIRST_RETRY_DELAY
        self._timer: threading.Timer | None = None
        self._over = threading.Event()
        self.outcome: JobOutcome | None = None
        self.error: JobBoardError | None = None
        self.reads = 0                 # reads answered, for tests and diagnostics

    @property
    def active(self) -> bool:
        """True until the job finished, the watch failed or was cancelled."""
        return self._started and not self._ended

    def start(self) -> "FinishedWatch":
        """Listen to the connection and read the record now; returns at once
        (idempotent)."""
        with self._lock:
            if self._started or self._ended:
                return self
            self._started = True
        self.client.add_listener(self._on_state)
        self._read()
        return self

    def cancel(self) -> None:
        """Stop watching: ``fn`` is not called after this returns (unless its
        call already started). Idempotent."""
        self._end()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the watch ended (outcome, error or cancel); False when
        ``timeout`` seconds passed first."""
        return self._over.wait(timeout)

    # -- reading: any thread, never blocks, never raises ---------------------------

    def _read(self) -> None:
        if self._ended:
            return
        try:
            result = self.client.get_async(self.path, watch=self._on_event)
        except ConnectionClosedError as exc:
            self._dispatcher.submit(self._fail, BoardUnavailable(
                f"the ZooKeeper client was closed while watching job {self.job_id}"), exc)
            return
        except Exception as exc:  # noqa: BLE001 - not connected yet, and the like
            self._retry_later(exc)
            return
        result.rawlink(self._on_answer)

    def _on_answer(self, result: Any) -> None:
        # kazoo's completion thread: hand the answer over, nothing more.
        try:
            data, _stat = result.get(block=False)
        except NoNodeError:
            self._dispatcher.submit(self._fail, JobNotFound(self.job_id), None)
            return
        except ConnectionClosedError as exc:
            self._dispatcher.submit(self._fail, BoardUnavailable(
                f"the ZooKeeper client was closed while watching job {self.job_id}"), exc)
            return
        except (ConnectionLoss, SessionExpiredError) as exc:
            if self.client.connected:      # else the next CONNECTED reads again
                self._retry_later(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a timeout, a refusal: try again
            self._retry_later(exc)
            return
        self.reads += 1
        self._delay = FIRST_RETRY_DELAY
        self._dispatcher.submit(self._judge, data)

    def _on_event(self, event: Any) -> None:
        # kazoo's watch thread: the record changed (or went): read it again.
        self._read()

    def _on_state(self, state: str) -> None:
        # kazoo's connection thread: after any reconnection (and above all a
        # new session, which has none of our watches), read again.
        if state == KazooState.CONNECTED:
            self._read()

    def _retry_later(self, exc: BaseException) -> None:
        with self._lock:
            if self._ended or self._timer is not None:
                return
            delay, self._delay = self._delay, min(self._delay * 2, MAX_RETRY_DELAY)
            self._timer = threading.Timer(delay, self._timer_fired)
            self._timer.daemon = True
            self._timer.start()
        log.debug("job %s: reading the record failed (%r); again in %.1fs",
                  self.job_id, exc, delay)

    def _timer_fired(self) -> None:
        with self._lock:
            self._timer = None
        self._read()

    # -- judging: the dispatcher's thread ------------------------------------------

    def _judge(self, data: bytes) -> None:
        if self._ended:
            return
        try:
            job = self.board.records.decode(self.job_id, data)
        except MalformedData as exc:
            self._fail(exc, None)
            return
        if job.finished:
            self._fire(JobOutcome.of(job))

    def _fire(self, outcome: JobOutcome) -> None:
        if not self._end(outcome=outcome):
            return
        try:
            self._fn(outcome)
        except Exception:  # noqa: BLE001 - the user's callback; the dispatcher goes on
            log.exception("on_finished callback for job %s failed", self.job_id)

    def _fail(self, error: JobBoardError, cause: BaseException | None) -> None:
        if cause is not None and error.__cause__ is None:
            error.__cause__ = cause
        if not self._end(error=error):
            return
        if self._on_error is None:
            log.warning("stopped watching job %s: %s", self.job_id, error)
            return
        try:
            self._on_error(error)
        except Exception:  # noqa: BLE001
            log.exception("on_finished error callback for job %s failed", self.job_id)

    def _end(self, *, outcome: JobOutcome | None = None,
             error: JobBoardError | None = None) -> bool:
        """End the watch once; True for the call that ended it."""
        with self._lock:
            if self._ended:
                return False
            self._ended = True
            self.outcome, self.error = outcome, error
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.client.remove_listener(self._on_state)
        self._over.set()
        return True


def on_finished(board: "Board", job_id: str, fn: OutcomeCallback, *,
                on_error: ErrorCallback | None = None,
                dispatcher: Dispatcher | None = None) -> FinishedWatch:
    """Call ``fn(outcome)`` once when the job finishes (at once, on the
    dispatcher's thread, if it already has). Watch-based, no polling.

    Returns:
        The started :class:`FinishedWatch`; ``cancel()`` it to stop.

    Raises:
        InvalidArgument: ``job_id`` is not a job id.
    """
    return FinishedWatch(board, job_id, fn, on_error=on_error, dispatcher=dispatcher).start()


def wait_many(board: "Board", job_ids: Iterable[str],
              timeout: float | None = None) -> dict[str, JobOutcome]:
    """Block until every job finished, or ``timeout`` seconds passed.

    Returns:
        job id -> outcome for the jobs finished by then, in the order given;
        a job not finished in time is left out (compare the keys).

    Raises:
        InvalidArgument: an id is not a job id.
        JobNotFound: a job is not on the board (or went while waiting).
        MalformedData: a job's record does not validate.
        BoardUnavailable: the board's client was closed while waiting.
    """
    ids = list(dict.fromkeys(check_job_id(job_id) for job_id in job_ids))
    if not ids:
        return {}
    outcomes: dict[str, JobOutcome] = {}
    errors: list[JobBoardError] = []
    lock = threading.Lock()
    over = threading.Event()

    def finished(outcome: JobOutcome) -> None:
        with lock:
            outcomes[outcome.job_id] = outcome
            if len(outcomes) == len(ids):
                over.set()

    def failed(error: JobBoardError) -> None:
        with lock:
            errors.append(error)
        over.set()

    dispatcher = Dispatcher(name="jobboard-wait-many")
    watches = [FinishedWatch(board, job_id, finished, on_error=failed, dispatcher=dispatcher)
               for job_id in ids]
    try:
        for watch in watches:
            watch.start()
        over.wait(timeout)
    finally:
        for watch in watches:
            watch.cancel()
        dispatcher.stop(timeout=5.0)
    with lock:
        if errors:
            raise errors[0]
        return {job_id: outcomes[job_id] for job_id in ids if job_id in outcomes}
