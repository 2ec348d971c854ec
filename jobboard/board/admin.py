"""Admin operations and board-wide views: trash, retry, dead letters,
cancel, suspend and resume, board depth for metrics, and the registry of
live conductors.

One of the collaborators :class:`~jobboard.board.Board` is made of.

Suspend and resume (the table in :mod:`jobboard.states`): a waiting job is
suspended at once, its entry removed in the transaction that writes
SUSPENDED; a claimed job gets a request (``{root}/suspend/{uuid}``) that its
holder watches: it stops at the next task boundary and gives the job up into
SUSPENDED itself (:meth:`Ownership.suspend_held
<jobboard.board.ownership.Ownership.suspend_held>`). A request (cancel or
suspend) is made only in a transaction that checks the record is still at
the CLAIMED version read, so none is ever made for a job that finished or
went meanwhile; :meth:`Admin.trash` and the retention janitor delete a
job's requests and markers in the transaction that deletes its record
(:meth:`Paths.markers <jobboard.board.layout.Paths.markers>`). A request outlives a
put-back it raced with (the holder died, or gave the job back for another
reason): the next holder honours it before running anything, a claimer's
orphan restore suspends instead of putting back, and the repair sweep
suspends a waiting job that has one. Resume puts the job back in the restore
bucket of its priority, ahead of the rest, and the next holder continues
from the logbook.

How it fails: an action the job's state does not allow raises
:class:`~jobboard.errors.InvalidTransition` (one line); a job that keeps
changing under the call raises :class:`~jobboard.errors.BoardError`;
ZooKeeper errors surface as :class:`~jobboard.errors.BoardUnavailable`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from jobboard.board import _zk
from jobboard.board.job import Job, check_job_id
from jobboard.board.layout import Paths
from jobboard.board.ownership import Ownership, finished_entry
from jobboard.board.queue import QueueIndex
from jobboard.board.records import Records
from jobboard.board.retention import read_dependents
from jobboard.errors import AlreadyClaimed, BoardError, InvalidTransition, MalformedData
from jobboard.events import EventKind, Notifier
from jobboard.serialization import dumps, loads
from jobboard.states import JobState

log = logging.getLogger(__name__)

SUSPEND_ATTEMPTS = 5    # reads of a job that keeps changing under a suspend
TRASH_ATTEMPTS = 5      # ... under a trash


class Admin:
    """Admin operations of a board (see the module docstring).

    Args:
        client: the board's started KazooClient.
        paths: the board's paths.
        records: reads job records.
        index: where a retried job gets its queue entry; the board's depth.
        ownership: who holds a claim.
        notifier: gets ``job.dead``.
    """

    def __init__(self, client: KazooClient, paths: Paths, records: Records,
                 index: QueueIndex, ownership: Ownership, notifier: Notifier) -> None:
        self.client = client
        self.paths = paths
        self.records = records
        self.index = index
        self.ownership = ownership
        self.notifier = notifier

    def trash(self, job: Job | str) -> None:
        """Delete a job that nobody holds, in one transaction with its key,
        its entry in the finished index and every marker naming it
        (:meth:`Paths.markers <jobboard.board.layout.Paths.markers>`: cancel
        and suspend requests, dead-letter marker, stray claim or running
        marker). Its queue or delayed entries are left: claimers and the
        promoter drop an entry whose record is gone.

        Raises:
            AlreadyClaimed: it is claimed (abandon or cancel it first).
            JobNotFound: no such job (or it went meanwhile).
            BoardError: it kept changing under the call; try again.
        """
        job_id = check_job_id(job if isinstance(job, str) else job.uuid)
        with _zk.translated(f"trashing job {job_id}"):
            for _ in range(TRASH_ATTEMPTS):
                current, stat = self.records.read(job_id)
                if current.state is JobState.CLAIMED:
                    raise AlreadyClaimed(job_id, self.ownership.claim_owner(job_id))
                entry = finished_entry(self.paths, current)
                dependents = read_dependents(self.client, self.paths, job_id, current.key,
                                             also=() if entry is None else (entry,))()
                txn = self.client.transaction()
                txn.delete(self.paths.job(job_id), version=stat.version)
                for path in dependents:
                    txn.delete(path)
                if _zk.first_error(txn.commit()) is None:
                    return
                # the record changed (claimed?), or a marker or the key went
                # meanwhile: look again
        raise BoardError(f"job {job_id} kept changing while trashing it; try again")

    def retry(self, job: Job | str) -> Job:
        """Run a FAILED, CANCELLED or DEAD job again, as a new attempt: its
        flow starts afresh (the logbook keeps the earlier attempts), with fresh
        claim and death counts; its requests, dead-letter marker and entry in
        the finished index go in the same transaction.

        Raises:
            InvalidTransition: the job is waiting, claimed or COMPLETE.
        """
        job_id = check_job_id(job if isinstance(job, str) else job.uuid)
        with _zk.translated(f"retrying job {job_id}"):
            current, stat = self.records.read(job_id)
            if current.state not in (JobState.DEAD, JobState.FAILED, JobState.CANCELLED):
                raise InvalidTransition(job_id, current.state, "retry",
                                        "only FAILED, CANCELLED or DEAD jobs can be retried")
            revived = current.with_event("retried", state=JobState.UNCLAIMED, claims=0,
                                         deaths=0, refusals=0, attempt=current.attempt + 1,
                                         owner=None, outcome=None, finished_at=None,
                                         not_before=None, transfer_to=None)
            record = revived.encode()
            entry = finished_entry(self.paths, current)
            leftovers = [(path, stat_) for path in (self.paths.dead_marker(job_id),
                                                    self.paths.cancel_request(job_id),
                                                    self.paths.suspend_request(job_id), entry)
                         if path is not None
                         and (stat_ := self.client.exists(path)) is not None]

            def revive(txn: Any) -> None:
                txn.set_data(self.paths.job(job_id), record, version=stat.version)
                for path, marker_stat in leftovers:
                    txn.delete(path, version=marker_stat.version)

            if self.index.commit(revive, revived, stat.version + 1,
                                 restore=True)[1] is not None:
                raise BoardError(f"job {job_id} changed while retrying it; try again")
            return revived

    def dead_letter(self, job: Job, version: int, entry: str | None, reason: str) -> Job:
        """Take a job out of circulation (state DEAD) with its history."""
        dead = job.with_event("dead-lettered", state=JobState.DEAD, finished_at=time.time(),
                              outcome={"reason": reason})
        txn = self.client.transaction()
        if entry is not None:
            txn.delete(entry)
        txn.set_data(self.paths.job(job.uuid), dead.encode(), version=version)
        if self.client.exists(self.paths.dead_marker(job.uuid)) is None:
            txn.create(self.paths.dead_marker(job.uuid))
        if _zk.first_error(txn.commit()) is None:
            log.warning("job %s dead-lettered: %s", job.uuid, reason)
            self.notifier.emit(EventKind.JOB_DEAD, job_id=job.uuid, details={"reason": reason})
        return dead

    def cancel(self, job: Job | str) -> JobState:
        """Cancel a job. A waiting or suspended job is removed at once (state
        CANCELLED, its queue entry and any request deleted in the same
        transaction; a suspended job's finished tasks are not reverted: nobody
        runs it); a claimed one gets a request its holder sees, stopping the
        flow at the next task boundary and reverting it (made only while the
        record is still as read: a job that moved on meanwhile is looked at
        again). Returns the state after the call.

        Raises:
            JobNotFound: no such job (or it went meanwhile: pruned, trashed).
        """
        job_id = check_job_id(job if isinstance(job, str) else job.uuid)
        with _zk.translated(f"cancelling job {job_id}"):
            current, stat = self.records.read(job_id)
            if current.finished:
                return current.state
            if current.state in (JobState.UNCLAIMED, JobState.SUSPENDED):
                cancelled = current.with_event("cancelled", state=JobState.CANCELLED,
                                               finished_at=time.time(),
                                               outcome={"reason": "cancelled by an admin"})
                indexed = self.ownership.index_finished(cancelled)
                entries = (self.index.entries_of(current, stat.version)
                           if current.state is JobState.UNCLAIMED else [])
                # a request that raced with a put-back would outlive the job
                requests = [(path, found) for path in (self.paths.cancel_request(job_id),
                                                       self.paths.suspend_request(job_id))
                            if (found := self.client.retry(self.client.exists, path))]
                txn = self.client.transaction()
                txn.set_data(self.paths.job(job_id), cancelled.encode(), version=stat.version)
                if indexed is not None:
                    txn.create(indexed)
                for entry in entries:
                    txn.delete(entry)
                for path, found in requests:
                    txn.delete(path, version=found.version)
                results = txn.commit()
                error = _zk.first_error(results)
                if error is None:
                    self.notifier.emit(EventKind.JOB_CANCELLED, job_id=job_id,
                                       details={"state": JobState.CANCELLED.value,
                                                "name": current.name,
                                                "reason": "cancelled by an admin"})
                    return JobState.CANCELLED
                if indexed is not None and error is results[1]:   # the minute went: again
                    self.ownership.ensure_finished_minute(indexed, again=True)
                    return self.cancel(job_id)
                if isinstance(error, (BadVersionError, NoNodeError)):
                    return self.cancel(job_id)    # the job, an entry or a request moved on
                raise BoardError(f"could not cancel job {job_id}: {error!r}")
            if not self._request(self.paths.cancel_request(job_id), job_id, stat.version):
                return self.cancel(job_id)    # it moved on (or went) meanwhile: look again
            return JobState.CLAIMED

    def cancel_requested(self, job_id: str, watch=None) -> bool:
        with _zk.translated(f"checking job {job_id} for a cancel request"):
            path = self.paths.cancel_request(job_id)
            return self.client.retry(self.client.exists, path, watch=watch) is not None

    # -- suspend and resume ----------------------------------------------------------

    def suspend(self, job: Job | str) -> JobState:
        """Suspend a job (see the module docstring). Returns the state after
        the call: SUSPENDED (it was waiting, or suspended already), or CLAIMED
        (its holder was asked to stop at the next task boundary).

        Raises:
            InvalidTransition: the job is COMPLETE, FAILED, CANCELLED or DEAD.
            BoardError: it kept changing under the call; try again.
        """
        job_id = check_job_id(job if isinstance(job, str) else job.uuid)
        request = self.paths.suspend_request(job_id)
        with _zk.translated(f"suspending job {job_id}"):
            for _ in range(SUSPEND_ATTEMPTS):
                current, stat = self.records.read(job_id)
                if current.state is JobState.SUSPENDED:
                    return JobState.SUSPENDED
                if current.state is JobState.UNCLAIMED:
                    if self._suspend_waiting(current, stat.version):
                        return JobState.SUSPENDED
                    continue
                if current.state is not JobState.CLAIMED:
                    raise InvalidTransition(job_id, current.state, "suspend",
                                            "only a waiting or running job can be suspended")
                # Made while still held: its holder (or, if it dies, whoever
                # restores the job) honours it. Otherwise it moved on
                # meanwhile: look again.
                if self._request(request, job_id, stat.version):
                    return JobState.CLAIMED
        raise BoardError(f"job {job_id} kept changing while suspending it; try again")

    def _request(self, path: str, job_id: str, version: int) -> bool:
        """Make an admin's request (cancel, suspend) of a job read CLAIMED at
        ``version``, in a transaction that checks the record is still at
        that version: a request is never made for a job that moved on or
        went meanwhile (finished and pruned, trashed), so none outlives its
        record. Sent again through a connection loss (one that landed
        finds the request there).

        Returns:
            True when the request is there (made now or before); False when
            the record moved on or went.

        Raises:
            BoardError: ZooKeeper refused it.
        """
        def commit() -> list:
            txn = self.client.transaction()
            txn.check(self.paths.job(job_id), version)
            txn.create(path, b"")
            return txn.commit()

        results = self.client.retry(commit)
        error = _zk.first_error(results)
        if isinstance(error, NoNodeError) and error is results[1]:
            _zk.ensure(self.client, path.rsplit("/", 1)[0])   # a board made before it
            results = self.client.retry(commit)
            error = _zk.first_error(results)
        if error is None or (isinstance(error, NodeExistsError) and error is results[1]):
            return True
        if error is results[0]:
            return False
        raise BoardError(f"could not make the request {path}: {error!r}")

    def _suspend_waiting(self, job: Job, version: int) -> bool:
        """UNCLAIMED -> SUSPENDED, its entries (and a stray request) deleted
        in the same transaction. False when the job moved on meanwhile."""
        suspended = job.with_event("suspended", state=JobState.SUSPENDED, owner=None,
                                   transfer_to=None)
        entries = self.index.entries_of(job, version)
        request = self.paths.suspend_request(job.uuid)
        request_stat = self.client.retry(self.client.exists, request)
        txn = self.client.transaction()
        txn.set_data(self.paths.job(job.uuid), suspended.encode(), version=version)
        for entry in entries:
            txn.delete(entry)
        if request_stat is not None:
            txn.delete(request, version=request_stat.version)
        if _zk.first_error(txn.commit()) is not None:
            return False
        self.notifier.emit(EventKind.JOB_SUSPENDED, job_id=job.uuid,
                           details={"name": job.name, "was": JobState.UNCLAIMED.value})
        return True

    def resume(self, job: Job | str) -> Job:
        """Put a SUSPENDED job back on the board, ahead of the jobs of its
        priority (a delayed one not yet due waits for its time); its next
        holder continues from the logbook: finished tasks are not run again.

        Raises:
            InvalidTransition: the job is not SUSPENDED.
            BoardError: it changed under the call; try again.
        """
        job_id = check_job_id(job if isinstance(job, str) else job.uuid)
        request = self.paths.suspend_request(job_id)
        with _zk.translated(f"resuming job {job_id}"):
            current, stat = self.records.read(job_id)
            if current.state is not JobState.SUSPENDED:
                raise InvalidTransition(job_id, current.state, "resume",
                                        "only a SUSPENDED job can be resumed")
            resumed = current.with_event("resumed", state=JobState.UNCLAIMED, owner=None,
                                         transfer_to=None)
            request_stat = self.client.retry(self.client.exists, request)

            def put_back(txn: Any) -> None:
                txn.set_data(self.paths.job(job_id), resumed.encode(), version=stat.version)
                if request_stat is not None:     # a stray one would suspend it again
                    txn.delete(request, version=request_stat.version)

            if self.index.commit(put_back, resumed, stat.version + 1,
                                 restore=True)[1] is not None:
                raise BoardError(f"job {job_id} changed while resuming it; try again")
        self.notifier.emit(EventKind.JOB_RESUMED, job_id=job_id, details={"name": current.name})
        return resumed

    def suspend_requested(self, job_id: str, watch=None) -> bool:
        """Whether an admin asked to suspend the job (``watch`` set on the request)."""
        with _zk.translated(f"checking job {job_id} for a suspend request"):
            path = self.paths.suspend_request(job_id)
            return self.client.retry(self.client.exists, path, watch=watch) is not None

    def drop_suspend_request(self, job_id: str) -> None:
        """Delete a suspend request the holder could not honour (its flow
        ended first, or a cancel won)."""
        with _zk.translated(f"dropping the suspend request of job {job_id}"):
            _zk.delete_quietly(self.client, self.paths.suspend_request(job_id))


    # -- depth (for metrics) ----------------------------------------------------

    def depth(self) -> dict[str, Any]:
        """Board gauges from znode stats, without listing the waiting jobs.

        Returns:
            ``{"waiting": {priority: count}, "queues": {queue: count},
            "delayed": n, "claimed": n, "dead": n,
            "oldest_waiting_age": seconds or None}``
        """
        with _zk.translated("measuring the board"):
            depth = self.index.depth()
            claimed, dead = (stat.numChildren if stat else 0
                             for stat in _zk.stats(self.client,
                                                   [self.paths.claims, self.paths.dead]))
        return {**depth, "claimed": claimed, "dead": dead}

    # -- conductors -------------------------------------------------------------

    def register_conductor(self, name: str, info: dict[str, Any]) -> None:
        """Register a live conductor (ephemeral: gone with its session).
        Retried through connection losses: a node found already there is
        ours (an earlier attempt landed) only if this session owns it."""
        path, data = self.paths.conductor(name), dumps(info)

        def register() -> None:
            try:
                self.client.create(path, data, ephemeral=True)
            except NodeExistsError:
                _, stat = self.client.get(path)
                if stat.ephemeralOwner != self.ownership.session_id:
                    raise BoardError(f"a conductor named {name!r} is already running") from None
                self.client.set(path, data)

        with _zk.translated(f"registering conductor {name}"):
            self.client.retry(register)

    def unregister_conductor(self, name: str) -> bool:
        """Remove a conductor's registration if this session made it (a
        conductor refused as a duplicate must not remove the one running).
        True when it was removed; never raises a ZooKeeper error (the
        registration goes with its session anyway)."""
        path = self.paths.conductor(name)
        try:
            _, stat = self.client.get(path)
            if stat.ephemeralOwner != self.ownership.session_id:
                return False
            self.client.delete(path, version=stat.version)
            return True
        except Exception:  # noqa: BLE001 - gone with the session anyway
            return False

    def update_conductor(self, name: str, info: dict[str, Any]) -> None:
        with _zk.translated(f"updating conductor {name}"):
            self.client.retry(self.client.set, self.paths.conductor(name), dumps(info))

    def conductors(self) -> list[dict[str, Any]]:
        out = []
        with _zk.translated("listing conductors"):
            for name in sorted(_zk.children(self.client, self.paths.conductors)):
                try:
                    data, stat = self.client.get(self.paths.conductor(name))
                    info = loads(data) if data else {}
                except NoNodeError:
                    continue
                except MalformedData as exc:
                    self.records.report(self.paths.conductor(name), str(exc))
                    continue
                out.append({"name": name, **(info if isinstance(info, dict) else {})})
        return out
