"""Claims and their ends: claim, consume, abandon, suspend, transfer, reclaim.

One of the collaborators :class:`~jobboard.board.Board` is made of. Each is
one multi-op transaction
that also rewrites the job record with a version check: every change of owner
bumps the record's version, so a holder acting on a claim it no longer has
fails (:class:`ClaimLost`, :class:`NotOwner`) instead of clobbering the new
owner. A claim's fencing token is the zxid of its transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, ConnectionLoss, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from jobboard.board import _zk
from jobboard.board.job import Claim, Job, check_job_id
from jobboard.board.layout import Paths
from jobboard.board.queue import QueueIndex
from jobboard.board.records import READ_TIMEOUT, Records
from jobboard.errors import (AlreadyClaimed, BoardError, BoardUnavailable, ClaimLost,
                             JobNotFound,
                             MalformedData, NotClaimed, NotOwner, NotReady,
                             OwnerNotFound)
from jobboard.events import EventKind, Notifier
from jobboard.serialization import dumps
from jobboard.states import JobState

log = logging.getLogger(__name__)

#: The finished states the retention janitor removes (and indexes); DEAD
#: jobs wait for an admin (retry or trash).
RETAINED_STATES = frozenset({JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED})


def finished_entry(paths: Paths, job: Job) -> str | None:
    """The finished-index entry ``job`` has (None: it needs none, e.g. DEAD)."""
    if job.state not in RETAINED_STATES or job.finished_at is None:
        return None
    return paths.finished_entry(job.finished_at, job.uuid)


CONSUME_ATTEMPTS = 5
HANDOFF_POLL = 0.5     # seconds between two looks at a waiting hand-off's abort()



def first_claim(job: Job) -> bool:
    """Whether claiming ``job`` now is its first claim ever (no run of it can
    exist yet): its claim transaction may set the working marker too."""
    return job.claims == 0 and job.attempt == 1

class Ownership:
    """The claim operations of a board (see the module docstring).

    Args:
        client: the board's started KazooClient.
        paths: the board's paths.
        records: reads (and quarantines) job records.
        index: where a job put back gets its queue entry.
        notifier: gets the ``job.*`` events of claims and their ends.
        max_record_bytes: a finished record's limit (results are dropped past it).
    """

    def __init__(self, client: KazooClient, paths: Paths, records: Records,
                 index: QueueIndex, notifier: Notifier, *, max_record_bytes: int) -> None:
        self.client = client
        self.paths = paths
        self.records = records
        self.index = index
        self.notifier = notifier
        self.max_record_bytes = max_record_bytes
        self._minutes: set[str] = set()
        self._minutes_lock = threading.Lock()

    @property
    def session_id(self) -> int | None:
        client_id = self.client.client_id
        return client_id[0] if client_id else None

    def claim(self, job: Job | str, owner: str) -> Job:
        """Claim a job directly (conductors use :class:`Claimer`, which picks
        the best job). Returns the job with its :class:`Claim` (fencing token).

        Raises:
            AlreadyClaimed: somebody holds it.
            NotReady: it is delayed.
            JobNotFound: no such job.
        """
        job_id = job if isinstance(job, str) else job.uuid
        with _zk.translated(f"claiming job {job_id}"):
            current, stat = self.records.read(check_job_id(job_id))
            if current.state is not JobState.UNCLAIMED:
                if current.state is JobState.CLAIMED:
                    raise AlreadyClaimed(job_id, self.claim_owner(job_id))
                raise BoardError(f"job {job_id} is {current.state} and cannot be claimed")
            if current.not_before and current.not_before > time.time():
                raise NotReady(job_id, current.not_before)
            claimed = self.take(current, stat.version, owner)
            if claimed is None:
                raise AlreadyClaimed(job_id, self.claim_owner(job_id))
            return claimed

    def take(self, job: Job, version: int, owner: str, *, entry: str | None = None,
             running_exists: bool = False) -> Job | None:
        """One claim transaction. ``entry`` is the queue entry to remove with it;
        ``running_exists`` when taking over an orphan. None when somebody else
        won the race (the record's version moved, or the entry is gone)."""
        return self.take_async(job, version, owner, entry=entry,
                               running_exists=running_exists)()

    def take_async(self, job: Job, version: int, owner: str, *, entry: str | None = None,
                   running_exists: bool = False,
                   mark_working: bool = False) -> Callable[[], Job | None]:
        """Send the claim transaction of :meth:`take` now; the returned call
        waits for its answer. Claims sent together share ZooKeeper's commits.

        ``mark_working`` (a conductor's claimer): a job never claimed before
        has had no run to wait for, so its working marker (see
        :meth:`start_working`) is set by the claim transaction itself
        (``Claim.working``; the run drops it, with its consume)."""
        now = time.time()
        claimed = job.with_event("claimed", state=JobState.CLAIMED, owner=owner,
                                 claims=job.claims + 1, claimed_at=now, transfer_to=None)
        working = mark_working and not running_exists and first_claim(job)
        txn = self.client.transaction()
        if entry is not None:
            txn.delete(entry)
        txn.create(self.paths.claim(job.uuid), owner.encode(), ephemeral=True)
        if running_exists:
            txn.set_data(self.paths.running_marker(job.uuid), owner.encode())
        else:
            txn.create(self.paths.running_marker(job.uuid), owner.encode())
        txn.set_data(self.paths.job(job.uuid), claimed.encode(), version=version)
        if working:
            txn.create(self.paths.working_marker(job.uuid), claimed.run_mark.encode(),
                       ephemeral=True)
        pending = txn.commit_async()

        def answer() -> Job | None:
            try:
                results = pending.get(timeout=READ_TIMEOUT)
            except ConnectionLoss:
                return self._claim_after_connection_loss(job.uuid, owner)
            except KazooTimeoutError as exc:   # may still land: the claimer settles it later
                raise BoardUnavailable(f"no answer to the claim of job {job.uuid} "
                                       f"within {READ_TIMEOUT:g}s") from exc
            error = _zk.first_error(results)
            if error is not None:
                if working and error is results[-1]:
                    # Only the working marker failed (a stray one, or a board
                    # without its directory yet): claim without it; the run
                    # then waits for it and sets its own.
                    return self.take_async(job, version, owner, entry=entry)()
                return None
            stat = results[-2] if working else results[-1]
            held = replace(claimed, claim=Claim(owner, stat.mzxid, stat.version, now,
                                                working=working))
            kind = EventKind.JOB_RECLAIMED if job.claims else EventKind.JOB_CLAIMED
            self.notifier.emit(kind, job_id=job.uuid, owner=owner,
                               details={"posted_at": max(job.created_at, job.not_before or 0),
                                        "priority": job.priority,
                                        "claims": claimed.claims})
            return held

        return answer

    def _claim_after_connection_loss(self, job_id: str, owner: str) -> Job | None:
        """The claim may or may not have committed: our session's ephemeral
        claim node tells."""
        if not self.holds_claim(job_id):
            return None
        job, record_stat = self.records.read(job_id)
        return replace(job, claim=Claim(owner, record_stat.mzxid, record_stat.version,
                                        job.claimed_at or time.time()))

    def holds_claim(self, job_id: str, *, watch: Callable[[Any], None] | None = None) -> bool:
        """Whether this board's session holds the job's claim node (a claim
        left by an earlier session of the same owner does not count).
        ``watch`` is set on the claim node.

        Raises:
            BoardUnavailable: ZooKeeper unreachable, or this session expired.
        """
        with _zk.translated(f"checking the claim of job {job_id}"):
            stat = self.client.retry(self.client.exists, self.paths.claim(job_id), watch=watch)
        return stat is not None and stat.ephemeralOwner == self.session_id

    def watch_claim(self, job_id: str, watch: Callable[[Any], None],
                    answer: Callable[[bool | None], None]) -> None:
        """Set ``watch`` on the job's claim node without waiting: ``answer``
        is called later, on kazoo's thread, with whether this session holds
        the claim (:meth:`holds_claim`'s answer), or None when the check
        failed (the connection dropped first; the watch may not be set).
        Neither call may block."""
        def done(result: Any) -> None:
            try:
                stat = result.get_nowait()
            except Exception:  # noqa: BLE001 - told to the caller as unknown
                answer(None)
                return
            answer(stat is not None and stat.ephemeralOwner == self.session_id)

        try:
            self.client.exists_async(self.paths.claim(job_id), watch=watch).rawlink(done)
        except Exception:  # noqa: BLE001 - not connected: unknown, as above
            answer(None)

    def claim_owner(self, job_id: str) -> str | None:
        """Who holds the claim on a job now (None when nobody).

        Raises:
            BoardUnavailable: ZooKeeper unreachable.
        """
        with _zk.translated(f"reading the claim of job {job_id}"):
            try:
                data, _ = self.client.get(self.paths.claim(job_id))
            except NoNodeError:
                return None
        return data.decode(errors="replace")

    def _held(self, job: Job | str, owner: str) -> tuple[Job, int]:
        """The record and version to act on as ``owner``; checks the claim."""
        job_id = job if isinstance(job, str) else job.uuid
        if not isinstance(job, str) and job.claim is not None and job.claim.owner == owner:
            return job, job.claim.record_version
        current, stat = self.records.read(job_id)
        if current.state is not JobState.CLAIMED:
            raise NotClaimed(job_id, current.state)
        actual = self.claim_owner(job_id)
        if actual != owner:
            raise NotOwner(job_id, owner, actual)
        return current, stat.version

    def _ownership_failure(self, job_id: str, owner: str) -> BoardError:
        try:
            current, _ = self.records.read(job_id)
        except JobNotFound:
            return JobNotFound(job_id)
        if current.state is not JobState.CLAIMED:
            return ClaimLost(job_id, owner) if current.state is JobState.UNCLAIMED \
                else NotClaimed(job_id, current.state)
        actual = self.claim_owner(job_id)
        return NotOwner(job_id, owner, actual) if actual and actual != owner \
            else ClaimLost(job_id, owner)

    def consume(self, job: Job | str, owner: str, outcome: dict[str, Any] | None = None,
                *, state: JobState = JobState.COMPLETE, working: bool = False) -> Job:
        """Finish a claimed job: record ``outcome`` (kept for :meth:`wait`) and
        drop the claim, in one transaction. ``working``: the caller's run
        holds the job's working marker, which goes in the same transaction.

        Raises:
            NotClaimed: the job is not claimed.
            NotOwner / ClaimLost: ``owner`` no longer holds it.
        """
        job_id = job if isinstance(job, str) else job.uuid
        with _zk.translated(f"consuming job {job_id}"):
            current, version = self._held(job, owner)
            finished = current.with_event(state.value.lower(), state=state,
                                          finished_at=time.time(),
                                          outcome=self._fit_outcome(current, outcome))
            data = finished.encode()
            # A cancelled finish takes its cancel request along, if there is
            # one (a job cancelled before it ran has none). Other finishes
            # leave a late request to retry and the repair sweep: no extra
            # round trip on the hot path.
            cancel_stat = (self.client.retry(self.client.exists,
                                             self.paths.cancel_request(job_id))
                           if state is JobState.CANCELLED else None)
            finished = self._commit_finish(job_id, owner, finished, data, version,
                                           cancel_stat, working)
        kind = {JobState.COMPLETE: EventKind.JOB_COMPLETED,
                JobState.CANCELLED: EventKind.JOB_CANCELLED}.get(state, EventKind.JOB_FAILED)
        self.notifier.emit(kind, job_id=job_id, owner=owner,
                           details={"claimed_at": current.claimed_at, "state": state.value,
                                    "name": current.name})
        return finished

    def _commit_finish(self, job_id: str, owner: str, finished: Job, data: bytes,
                       version: int, cancel_stat: Any, working: bool) -> Job:
        """The consume transaction (see :meth:`_end_claim`)."""
        deletes = ([] if cancel_stat is None
                   else [(self.paths.cancel_request(job_id), cancel_stat.version)])
        self._end_claim(job_id, owner, data, version, deletes=deletes,
                        index=self.index_finished(finished), working=working,
                        landed=lambda record: record.finished_at == finished.finished_at)
        return finished

    def _end_claim(self, job_id: str, owner: str, data: bytes, version: int, *,
                   deletes: Sequence[tuple[str, int]] = (), index: str | None = None,
                   working: bool = False, landed: Callable[[Job], bool]) -> None:
        """Commit the transaction that ends our claim: the record (``data``,
        checked against ``version``), a finished-index entry ``index``, the
        claim and running marker, ``deletes`` ((path, version) pairs) and,
        with ``working``, our working marker, all or nothing.

        Sent again after a connection loss that left it unlanded (``landed``
        tells from the record; not landed, the claim is still ours while the
        session lives, so sending it again is safe, and the version check
        refuses it otherwise); without the working marker when it is gone
        already; without the index entry when it exists already, or after
        making its minute's directory again (a janitor racing a clock).

        Raises:
            NotClaimed / NotOwner / ClaimLost: the claim or the record moved on.
            BoardUnavailable: the connection stayed lost.
        """
        for attempt in range(CONSUME_ATTEMPTS):
            txn = self.client.transaction()
            txn.set_data(self.paths.job(job_id), data, version=version)
            if index is not None:
                txn.create(index)
            txn.delete(self.paths.claim(job_id))
            txn.delete(self.paths.running_marker(job_id))
            for path, path_version in deletes:
                txn.delete(path, version=path_version)
            if working:
                txn.delete(self.paths.working_marker(job_id))
            try:
                results = txn.commit()
            except ConnectionLoss:
                if landed(self.records.read(job_id)[0]):
                    return
                if attempt + 1 == CONSUME_ATTEMPTS:
                    raise
                continue
            error = _zk.first_error(results)
            if error is None:
                return
            if working and error is results[-1]:
                working = False
                continue
            if index is not None and error is results[1] and isinstance(
                    error, (NoNodeError, NodeExistsError)):
                if isinstance(error, NoNodeError):
                    self.ensure_finished_minute(index, again=True)
                else:
                    index = None
                continue
            break
        raise self._ownership_failure(job_id, owner)

    def index_finished(self, job: Job) -> str | None:
        """The finished-index entry of a job that is finishing now (see
        :mod:`jobboard.board.layout`), its minute's directory made sure of;
        None for a state the retention janitor never removes (DEAD)."""
        path = finished_entry(self.paths, job)
        if path is not None:
            self.ensure_finished_minute(path)
        return path

    def ensure_finished_minute(self, entry: str, *, again: bool = False) -> None:
        """Make the directory of a finished-index entry (once per minute and
        process, unless ``again``)."""
        minute = entry.rsplit("/", 1)[0]
        with self._minutes_lock:
            if minute in self._minutes and not again:
                return
        self.client.retry(_zk.ensure, self.client, minute)
        with self._minutes_lock:
            if len(self._minutes) > 16:
                self._minutes.clear()
            self._minutes.add(minute)

    def refuse(self, job: Job | str, owner: str, reason: str, *, max_refusals: int) -> Job:
        """Give back a claimed job ``owner`` cannot run (it cannot import the
        job's factory), uncounted against ``max_claims``, with ``refusals``
        plus one; the refusal that reaches ``max_refusals`` parks the job
        instead (DEAD with ``reason``, retryable). One transaction either way.

        Raises:
            NotClaimed / NotOwner / ClaimLost.
        """
        job_id = job if isinstance(job, str) else job.uuid
        with _zk.translated(f"giving back job {job_id}"):
            current, version = self._held(job, owner)
            refusals = current.refusals + 1
            claim, running = self.paths.claim(job_id), self.paths.running_marker(job_id)
            if refusals >= max_refusals:
                parked = current.with_event("parked", state=JobState.DEAD, owner=None,
                                            transfer_to=None, refusals=refusals,
                                            finished_at=time.time(),
                                            outcome={"reason": reason})
                txn = self.client.transaction()
                txn.delete(claim)
                txn.delete(running)
                txn.set_data(self.paths.job(job_id), parked.encode(), version=version)
                txn.create(self.paths.dead_marker(job_id))
                results = txn.commit()
                error = _zk.first_error(results)
                if isinstance(error, NodeExistsError) and error is results[-1]:
                    txn = self.client.transaction()   # a marker left over: keep it
                    txn.delete(claim)
                    txn.delete(running)
                    txn.set_data(self.paths.job(job_id), parked.encode(), version=version)
                    error = _zk.first_error(txn.commit())
                if error is not None:
                    raise self._ownership_failure(job_id, owner)
                log.warning("job %s parked: %s", job_id, reason)
                self.notifier.emit(EventKind.JOB_DEAD, job_id=job_id,
                                   details={"reason": reason})
                return parked
            released = current.with_event("refused", state=JobState.UNCLAIMED, owner=None,
                                          transfer_to=None, refusals=refusals)
            released = replace(released, history=(*released.history[:-1], {
                **released.history[-1], "owner": owner, "reason": reason[:200]}))

            def release(txn: Any) -> None:
                txn.delete(claim)
                txn.delete(running)
                txn.set_data(self.paths.job(job_id), released.encode(), version=version)

            if self.index.commit(release, released, version + 1)[1] is not None:
                raise self._ownership_failure(job_id, owner)
        self.notifier.emit(EventKind.JOB_ABANDONED, job_id=job_id, owner=owner)
        return released

    def _fit_outcome(self, job: Job, outcome: dict[str, Any] | None) -> dict[str, Any] | None:
        """Drop the results from an outcome too large to keep in the record."""
        if outcome is None:
            return None
        size = len(dumps(outcome)) + len(job.encode())
        if size <= self.max_record_bytes:
            return outcome
        trimmed = {k: v for k, v in outcome.items() if k != "results"}
        trimmed["results_omitted"] = f"{size} bytes is over the board's record limit"
        return trimmed

    def abandon(self, job: Job | str, owner: str, *, crashed: bool = False) -> Job:
        """Give a claimed job back: it is claimable again at once, ahead of
        jobs of the same priority. ``crashed``: the holder could not run it for
        a reason of the job's own (not a dependency's), which counts against
        ``max_claims`` like a holder's death.

        Raises:
            NotClaimed / NotOwner / ClaimLost.
        """
        job_id = job if isinstance(job, str) else job.uuid
        with _zk.translated(f"abandoning job {job_id}"):
            current, version = self._held(job, owner)
            released = current.with_event("abandoned", state=JobState.UNCLAIMED,
                                          owner=None, transfer_to=None,
                                          deaths=current.deaths + int(crashed))

            def release(txn: Any) -> None:
                txn.delete(self.paths.claim(job_id))
                txn.delete(self.paths.running_marker(job_id))
                txn.set_data(self.paths.job(job_id), released.encode(), version=version)

            if self.index.commit(release, released, version + 1, restore=True)[1] is not None:
                raise self._ownership_failure(job_id, owner)
        self.notifier.emit(EventKind.JOB_ABANDONED, job_id=job_id, owner=owner)
        return released

    def suspend_held(self, job: Job | str, owner: str, *, working: bool = False) -> Job:
        """The holder gives a job up into SUSPENDED, as an admin's suspend
        request asked (its flow stopped at a task boundary; the logbook keeps
        what finished): the claim, the running marker, the request and, with
        ``working``, this run's working marker go in the transaction that
        writes SUSPENDED. Not claimable until :meth:`Admin.resume
        <jobboard.board.admin.Admin.resume>`.

        Raises:
            NotClaimed / NotOwner / ClaimLost.
        """
        job_id = job if isinstance(job, str) else job.uuid
        with _zk.translated(f"suspending job {job_id}"):
            current, version = self._held(job, owner)
            suspended = current.with_event("suspended", state=JobState.SUSPENDED, owner=None,
                                           transfer_to=None)
            suspended = replace(suspended, history=(*suspended.history[:-1], {
                **suspended.history[-1], "owner": owner}))
            request = self.paths.suspend_request(job_id)
            request_stat = self.client.retry(self.client.exists, request)
            self._end_claim(job_id, owner, suspended.encode(), version,
                            deletes=[(request, -1)] if request_stat is not None else [],
                            working=working,
                            landed=lambda record: record.state is JobState.SUSPENDED)
        self.notifier.emit(EventKind.JOB_SUSPENDED, job_id=job_id, owner=owner,
                           details={"name": current.name, "was": JobState.CLAIMED.value})
        return suspended

    def restore_orphan(self, job_id: str, *, me: str | None = None) -> Job | None:
        """Put back a job whose claim vanished (its holder's session ended) but
        whose running marker remains. When an admin transferred it to ``me``,
        claim it for ``me`` instead; when transferred to another live
        conductor, leave it for that one. A job with a pending suspend
        request is suspended instead (see :mod:`jobboard.board.admin`).
        Returns the job claimed for ``me``, else None. Safe to race: only
        one caller's transaction succeeds."""
        with _zk.translated(f"reclaiming job {job_id}"):
            running = self.client.exists(self.paths.running_marker(job_id))
            if running is None or self.client.exists(self.paths.claim(job_id)):
                return None
            try:
                current, stat = self.records.read(job_id)
            except JobNotFound:
                _zk.delete_quietly(self.client, self.paths.running_marker(job_id))
                return None
            except MalformedData as exc:
                self.records.quarantine(self.paths.job(job_id), str(exc),
                                        also_delete=(self.paths.running_marker(job_id),))
                return None
            if current.state is not JobState.CLAIMED:   # a stray marker: drop it alone
                try:
                    self.client.delete(self.paths.running_marker(job_id),
                                       version=running.version)
                except (NoNodeError, BadVersionError):
                    pass
                return None
            target = current.transfer_to
            request = self.client.exists(self.paths.suspend_request(job_id))
            if request is not None:
                self._suspend_orphan(current, stat.version, running, request)
                return None
            if target and target == me:
                return self.take(current, stat.version, me, running_exists=True)
            if target and self.client.exists(self.paths.conductor(target)):
                return None
            # The holder's session ended with the job in its hands: a death
            # (a transfer whose target is gone is not one).
            released = current.with_event("reclaimed", state=JobState.UNCLAIMED,
                                          owner=None, transfer_to=None,
                                          deaths=current.deaths + (0 if target else 1))

            def release(txn: Any) -> None:
                claim = self.paths.claim(job_id)
                txn.create(claim, b"")   # asserts nobody holds a claim right now
                txn.delete(claim)
                txn.delete(self.paths.running_marker(job_id), version=running.version)
                txn.set_data(self.paths.job(job_id), released.encode(), version=stat.version)

            if self.index.commit(release, released, stat.version + 1, restore=True)[1] is None:
                log.info("job %s lost its holder %s; put back on the board",
                         job_id, current.owner)
            return None

    def _suspend_orphan(self, job: Job, version: int, running: Any, request: Any) -> None:
        """An orphan whose suspend request its holder did not live to honour:
        SUSPENDED, with a death counted as for any orphan (not for a
        transfer's). Its working marker, if a live old holder still has
        one, makes the holder after the resume wait as a hand-off does."""
        job_id = job.uuid
        suspended = job.with_event("suspended", state=JobState.SUSPENDED, owner=None,
                                   transfer_to=None,
                                   deaths=job.deaths + (0 if job.transfer_to else 1))
        claim = self.paths.claim(job_id)
        txn = self.client.transaction()
        txn.create(claim, b"")   # asserts nobody holds a claim right now
        txn.delete(claim)
        txn.delete(self.paths.running_marker(job_id), version=running.version)
        txn.delete(self.paths.suspend_request(job_id), version=request.version)
        txn.set_data(self.paths.job(job_id), suspended.encode(), version=version)
        if _zk.first_error(txn.commit()) is None:
            log.info("job %s lost its holder %s with a suspend request pending; suspended",
                     job_id, job.owner)
            self.notifier.emit(EventKind.JOB_SUSPENDED, job_id=job_id,
                               details={"name": job.name, "was": JobState.CLAIMED.value})

    def start_working(self, job_id: str, mark: str | int, *, stop_timeout: float,
                      abort: Callable[[], bool] = lambda: False) -> float | None:
        """The hand-off: wait until no other run's tasks of the job are running
        (its working marker is gone: they stopped, or that session ended), at
        most ``stop_timeout`` seconds, then mark the job as worked on by this
        run (``mark``: :attr:`Job.run_mark` of its claim). Past the timeout the other run's marker is
        replaced: its tasks were asked to stop that long ago. A marker of an
        older run of this same session (a job given back and claimed again
        while that run still stops) is waited for the same way.

        Returns:
            The seconds waited, or None when ``abort()`` turned true first
            (the claim was lost meanwhile: nothing is marked or replaced).

        Raises:
            BoardUnavailable: ZooKeeper unreachable.
        """
        path = self.paths.working_marker(job_id)
        mine = str(mark).encode()
        started = time.monotonic()
        deadline = started + max(0.0, stop_timeout)
        gone = threading.Event()

        def on_change(event: Any) -> None:
            gone.set()

        with _zk.translated(f"waiting for job {job_id}'s previous holder to stop"):
            while not abort():
                try:
                    self.client.retry(self.client.create, path, mine, ephemeral=True,
                                      makepath=True)
                    return time.monotonic() - started
                except NodeExistsError:
                    pass
                gone.clear()
                try:
                    data, stat = self.client.retry(self.client.get, path, watch=on_change)
                except NoNodeError:
                    continue
                if stat.ephemeralOwner == self.session_id and data == mine:
                    return time.monotonic() - started     # an earlier attempt landed
                left = deadline - time.monotonic()
                if left > 0:
                    gone.wait(min(left, HANDOFF_POLL))    # and look at abort() again
                    continue
                log.warning("job %s: its previous holder did not stop its tasks within "
                            "%.0fs; starting anyway", job_id, stop_timeout)
                try:
                    self.client.retry(self.client.delete, path, version=stat.version)
                except (NoNodeError, BadVersionError):
                    pass
        return None

    def stop_working(self, job_id: str, mark: str | int) -> None:
        """Drop this run's working marker (another run's is left alone)."""
        path = self.paths.working_marker(job_id)
        with _zk.translated(f"handing job {job_id} on"):
            try:
                data, stat = self.client.retry(self.client.get, path)
            except NoNodeError:
                return
            if stat.ephemeralOwner == self.session_id and data == str(mark).encode():
                try:
                    self.client.retry(self.client.delete, path, version=stat.version)
                except (NoNodeError, BadVersionError):
                    pass

    def orphans(self) -> list[str]:
        """Jobs marked running whose claim is gone."""
        with _zk.translated("listing claims"):
            running = set(_zk.children(self.client, self.paths.running))
            if not running:
                return []
            claimed = set(_zk.children(self.client, self.paths.claims))
        return sorted(running - claimed)

    def transfer(self, job: Job | str, from_owner: str | None, to_owner: str) -> Job:
        """Move a claim to another live conductor, which picks the job up and
        resumes it (its fencing token is newer, so the old holder's late
        writes are refused). ``from_owner`` None transfers from whoever holds it.

        Raises:
            OwnerNotFound: ``to_owner`` is not a live conductor.
            NotClaimed / NotOwner.
        """
        job_id = job if isinstance(job, str) else job.uuid
        with _zk.translated(f"transferring job {job_id}"):
            if self.client.exists(self.paths.conductor(to_owner)) is None:
                raise OwnerNotFound(to_owner)
            current, stat = self.records.read(check_job_id(job_id))
            if current.state is not JobState.CLAIMED:
                raise NotClaimed(job_id, current.state)
            actual = self.claim_owner(job_id)
            if from_owner is not None and actual != from_owner:
                raise NotOwner(job_id, from_owner, actual)
            moved = current.with_event("transferred", transfer_to=to_owner, owner=to_owner)
            txn = self.client.transaction()
            txn.delete(self.paths.claim(job_id))
            txn.set_data(self.paths.job(job_id), moved.encode(), version=stat.version)
            results = txn.commit()
            if _zk.first_error(results) is not None:
                raise self._ownership_failure(job_id, actual or "")
        return moved

    def claims(self) -> list[dict[str, Any]]:
        """Current claims: job id, owner, since (epoch seconds), fencing token."""
        out = []
        with _zk.translated("listing claims"):
            for job_id in sorted(_zk.children(self.client, self.paths.claims)):
                try:
                    data, stat = self.client.get(self.paths.claim(job_id))
                except NoNodeError:
                    continue
                out.append({"job_id": job_id, "owner": data.decode(errors="replace"),
                            "since": stat.ctime / 1000.0, "token": stat.czxid})
        return out
