"""The job board: post, look up, claim, abandon, consume, transfer, wait.

Every state change is one ZooKeeper multi-op transaction, so a job is never
half-claimed or half-consumed (see :mod:`jobboard.board.layout` for the
znodes). Ownership is checked through the job record's version: every change
of owner rewrites the record, so a holder whose claim was reclaimed,
transferred or abandoned fails its next write with :class:`ClaimLost` or
:class:`NotOwner` instead of clobbering the new owner.

How it fails: ZooKeeper unreachable -> :class:`BoardUnavailable`; unknown job
-> :class:`JobNotFound`; a record that does not decode -> reported once
(logged, listed by :meth:`Board.malformed`) and skipped by claims and listings.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator

from kazoo.client import KazooClient
from kazoo.exceptions import (BadVersionError, NodeExistsError, NoNodeError,
                              NotEmptyError)

from jobboard.board import _zk
from jobboard.board.job import Claim, Job, JobOutcome, check_job_id, new_job_id
from jobboard.board.layout import (BUCKET_SIZE, LAYOUT_VERSION, RESTORE_BUCKET, Bucket,
                                   DelayedBucket, DelayedEntry, Entry, Paths,
                                   check_priority)
from jobboard.errors import (AlreadyClaimed, BoardError, ClaimLost, JobNotFound,
                             MalformedData, NotClaimed, NotOwner, NotReady,
                             OwnerNotFound, PayloadTooLarge, WaitTimeout)
from jobboard.events import EventKind, Notifier
from jobboard.serialization import dumps, loads
from jobboard.states import JobState

log = logging.getLogger(__name__)

# ZooKeeper refuses packets over jute.maxbuffer (1 MiB by default); a post is
# one multi carrying the record plus a few small ops, so keep well under it.
DEFAULT_MAX_RECORD_BYTES = 900_000
DEFAULT_MAX_CLAIMS = 5
PIPELINE_WINDOW = 256


class Board:
    """A job board under one root znode.

    Args:
        client: a started KazooClient (the board does not own it unless made by
            :meth:`connect`).
        root: the board's root znode.
        max_record_bytes: largest encoded job accepted by :meth:`post`.
        max_claims: a job claimed this many times without finishing is
            dead-lettered by the next claim instead of running again.
        notifier: where ``job.*`` events go.
    """

    def __init__(self, client: KazooClient, *, root: str = "/jobboard",
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 max_claims: int = DEFAULT_MAX_CLAIMS,
                 notifier: Notifier | None = None) -> None:
        self.client = client
        self.paths = Paths(root)
        self.max_record_bytes = max_record_bytes
        self.max_claims = max_claims
        self.bucket_size = BUCKET_SIZE
        self.notifier = notifier or Notifier()
        self._owns_client = False
        self._post_buckets: dict[int, int] = {}
        self._delayed_buckets: dict[int, int] = {}
        self._malformed: dict[str, str] = {}
        # Jobs this board released lately (consume/abandon), so its claimer does
        # not mistake its own releases for vanished claims.
        self._released: collections.deque[str] = collections.deque(maxlen=4096)
        self._lock = threading.Lock()
        self._set_up = False

    # -- connection -------------------------------------------------------------

    @classmethod
    def connect(cls, hosts: str, *, root: str = "/jobboard",
                auth: tuple[str, str] | None = None, timeout: float = 10.0,
                session_timeout: float = 10.0, **options: Any) -> "Board":
        """Connect to ZooKeeper and open the board under ``root``.

        Args:
            hosts: ``host:port,...`` (optionally with a chroot).
            auth: ``(user, password)``: znodes get digest ACLs for these
                credentials, so clients without them can neither read nor claim.
            timeout: seconds to wait for the first connection.
            session_timeout: the ZooKeeper session timeout asked for; a dead
                holder's claims vanish after it.

        Raises:
            BoardUnavailable: ZooKeeper cannot be reached within ``timeout``.
        """
        client = _zk.make_client(hosts, auth=auth, session_timeout=session_timeout)
        _zk.start(client, hosts, timeout)
        board = cls(client, root=root, **options)
        board._owns_client = True
        try:
            board.setup()
        except Exception:
            board.close()
            raise
        return board

    def close(self) -> None:
        if self._owns_client:
            try:
                self.client.stop()
            finally:
                self.client.close()

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def session_id(self) -> int | None:
        client_id = self.client.client_id
        return client_id[0] if client_id else None

    def setup(self) -> None:
        """Create the board's containers once (idempotent, safe to race)."""
        if self._set_up:
            return
        with _zk.translated("setting up the board"):
            if self.client.exists(self.paths.layout) is None:
                self.client.ensure_path(self.paths.root)
                pending = [self.client.create_async(path)
                           for path in self.paths.containers() + self.paths.shards()]
                for result in pending:
                    try:
                        result.get(timeout=30)
                    except NodeExistsError:
                        pass
                try:
                    self.client.create(self.paths.layout, dumps({"layout": LAYOUT_VERSION}))
                except NodeExistsError:
                    pass
        self._set_up = True

    # -- posting ----------------------------------------------------------------

    def post(self, factory: str, *, args: dict[str, Any] | None = None,
             store: dict[str, Any] | None = None, name: str | None = None,
             priority: int = 0, delay: float | None = None, key: str | None = None,
             details: dict[str, Any] | None = None) -> Job:
        """Post a job; returns it as stored.

        Args:
            factory: ``package.module:function`` that builds the flow.
            args: keyword arguments for the factory.
            store: the flow's initial inputs.
            priority: higher runs first (-9999..9999).
            delay: seconds before the job may be claimed.
            key: idempotency key: posting again with the same key returns the
                job already posted (atomic, also under concurrent posters).

        Raises:
            PayloadTooLarge: the encoded job exceeds ``max_record_bytes``.
            MalformedData: a value cannot be encoded with msgpack.
        """
        job, data = self._prepare(factory, args, store, name, priority, delay, key, details)
        with _zk.translated("posting a job"):
            return self.client.retry(self._post_once, job, data)

    def post_many(self, specs: Iterable[dict[str, Any]]) -> list[Job]:
        """Post many jobs, pipelining the transactions (same arguments as
        :meth:`post`, one dict per job). Jobs with a ``key`` are posted one by
        one so that duplicates resolve exactly as in :meth:`post`."""
        prepared = [self._prepare(spec["factory"], spec.get("args"), spec.get("store"),
                                  spec.get("name"), spec.get("priority", 0),
                                  spec.get("delay"), spec.get("key"), spec.get("details"))
                    for spec in specs]
        posted: list[Job] = []
        with _zk.translated("posting jobs"):
            for start in range(0, len(prepared), PIPELINE_WINDOW):
                window = prepared[start:start + PIPELINE_WINDOW]
                pending = []
                for job, data in window:
                    if job.key is not None:
                        pending.append((job, data, None))
                        continue
                    txn, entry_ops = self._post_transaction(job, data)
                    pending.append((job, data, (txn.commit_async(), entry_ops)))
                for job, data, sent in pending:
                    if sent is None:
                        posted.append(self.client.retry(self._post_once, job, data))
                        continue
                    async_result, target = sent
                    results = async_result.get(timeout=60)
                    if _zk.first_error(results) is None:
                        self._note_entry(target, results[-1])
                        posted.append(job)
                        self.notifier.emit(EventKind.JOB_POSTED, job_id=job.uuid,
                                           details={"name": job.name})
                    else:  # a bucket was missing or rolled: redo it the careful way
                        posted.append(self.client.retry(self._post_once, job, data))
        return posted

    def _prepare(self, factory: str, args: dict | None, store: dict | None,
                 name: str | None, priority: int, delay: float | None, key: str | None,
                 details: dict | None) -> tuple[Job, bytes]:
        if not isinstance(factory, str) or ":" not in factory:
            raise ValueError(f"factory must look like 'package.module:function', not {factory!r}")
        if delay is not None and delay < 0:
            raise ValueError("delay must be >= 0 seconds")
        now = time.time()
        job = Job(uuid=new_job_id(), name=name or factory.rpartition(":")[2],
                  factory=factory, args=dict(args or {}), store=dict(store or {}),
                  priority=check_priority(priority),
                  not_before=now + delay if delay else None, key=key,
                  details=dict(details or {}), created_at=now)
        job = job.with_event("posted")
        data = job.encode()
        if len(data) > self.max_record_bytes:
            raise PayloadTooLarge(len(data), self.max_record_bytes)
        return job, data

    def _post_once(self, job: Job, data: bytes) -> Job:
        while True:
            txn, target = self._post_transaction(job, data)
            results = txn.commit()
            error = _zk.first_error(results)
            if error is None:
                self._note_entry(target, results[-1])
                self.notifier.emit(EventKind.JOB_POSTED, job_id=job.uuid,
                                   details={"name": job.name})
                return job
            failed_op = results.index(error)
            if isinstance(error, NodeExistsError):
                if job.key is not None and failed_op == 0:
                    existing = self._job_for_key(job.key)
                    if existing is not None:
                        return existing
                    continue  # the key's job was trashed in between: try again
                if self.client.exists(self.paths.job(job.uuid)):
                    return job  # our own earlier attempt committed (connection loss)
                raise BoardError(f"could not post job {job.uuid}: {error!r}")
            if isinstance(error, NoNodeError):
                self._repair_post_target(target)
                continue
            raise BoardError(f"could not post job {job.uuid}: {error!r}")

    def _post_transaction(self, job: Job, data: bytes):
        txn = self.client.transaction()
        if job.key is not None:
            txn.create(self.paths.key(job.key), job.uuid.encode())
        txn.create(self.paths.job(job.uuid), data)
        target = self._entry_target(job)
        txn.create(target[1], b"", sequence=True)
        return txn, target

    def _entry_target(self, job: Job) -> tuple[str, str, int]:
        """(kind, sequential path prefix, group) of the index entry for ``job``."""
        if job.not_before is not None and job.not_before > time.time():
            due_ms = int(job.not_before * 1000)
            bucket = DelayedBucket(due_ms // 1000, self._delayed_buckets.get(due_ms // 1000, 1))
            prefix = f"{self.paths.delayed_bucket(bucket)}/{DelayedEntry.prefix(due_ms, job.uuid)}"
            return "delayed", prefix, bucket.due_second
        bucket = Bucket(job.priority, self._current_bucket(job.priority))
        return "queue", self.paths.entry_prefix(bucket, job.uuid), job.priority

    def _current_bucket(self, priority: int) -> int:
        number = self._post_buckets.get(priority)
        if number is None:
            numbers = [b.number for b in self._queue_buckets() if b.priority == priority]
            number = max(numbers, default=1) or 1
            if not numbers:
                self._ensure(self.paths.bucket(Bucket(priority, number)))
            self._post_buckets[priority] = number
        return number

    def _note_entry(self, target: tuple[str, str, int], created_path: str) -> None:
        """Move posting on to the next bucket once this one's counter is full."""
        kind, _, group = target
        seq = int(created_path[-10:])
        if seq < self.bucket_size:
            return
        buckets = self._post_buckets if kind == "queue" else self._delayed_buckets
        bucket_path = target[1].rsplit("/", 1)[0]
        current = int(bucket_path.rpartition("-")[2])
        with self._lock:
            if buckets.get(group, 1) > current:
                return
            buckets[group] = current + 1
        if kind == "queue":   # open the next bucket before anyone posts to it
            self._ensure(self.paths.bucket(Bucket(group, current + 1)))

    def _repair_post_target(self, target: tuple[str, str, int]) -> None:
        """The bucket (or shard) for a post is missing: create it."""
        kind, prefix, group = target
        bucket_path = prefix.rsplit("/", 1)[0]
        if kind == "queue":
            # A bucket deleted by claimers may have been superseded: re-read.
            self._post_buckets.pop(group, None)
        self._set_up = False
        self.setup()
        try:
            self.client.create(bucket_path, makepath=True)
        except NodeExistsError:
            pass

    def _job_for_key(self, key: str) -> Job | None:
        try:
            data, _ = self.client.get(self.paths.key(key))
        except NoNodeError:
            return None
        try:
            return self.get(data.decode())
        except JobNotFound:
            return None

    # -- reading ----------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job's current record.

        Raises:
            JobNotFound: no such job (or trashed).
            MalformedData: its znode does not hold a valid record.
        """
        job, _ = self._read(check_job_id(job_id))
        return job

    def _read(self, job_id: str) -> tuple[Job, Any]:
        path = self.paths.job(job_id)
        with _zk.translated(f"reading job {job_id}"):
            try:
                data, stat = self.client.retry(self.client.get, path)
            except NoNodeError as exc:
                raise JobNotFound(job_id) from exc
        return Job.decode(data, path=path), stat

    def jobs(self, state: JobState | str | None = None) -> Iterator[Job]:
        """Iterate over jobs, optionally in one state. Waiting jobs come in claim
        order; malformed records are reported once and skipped."""
        state = JobState(state) if state else None
        with _zk.translated("listing jobs"):
            if state is JobState.UNCLAIMED:
                ids = list(self._waiting_ids())
            elif state is JobState.CLAIMED:
                ids = sorted(self.client.get_children(self.paths.running))
            else:
                ids = [job_id for shard in self.paths.shards()
                       for job_id in sorted(self.client.get_children(shard))]
            for job in self._read_many(ids):
                if state is None or job.state is state:
                    yield job

    def _waiting_ids(self) -> Iterator[str]:
        seen: set[str] = set()
        for bucket in self._queue_buckets():
            names = self._children(self.paths.bucket(bucket))
            for entry in sorted(filter(None, map(Entry.parse, names)), key=lambda e: e.seq):
                if entry.job_id not in seen:
                    seen.add(entry.job_id)
                    yield entry.job_id
        for name in sorted(self._children(self.paths.delayed)):
            for child in sorted(self._children(f"{self.paths.delayed}/{name}")):
                parsed = DelayedEntry.parse(child)
                if parsed and parsed.job_id not in seen:
                    seen.add(parsed.job_id)
                    yield parsed.job_id

    def _read_many(self, job_ids: list[str]) -> Iterator[Job]:
        for start in range(0, len(job_ids), PIPELINE_WINDOW):
            batch = job_ids[start:start + PIPELINE_WINDOW]
            pending = [(job_id, self.client.get_async(self.paths.job(job_id))) for job_id in batch]
            for job_id, result in pending:
                try:
                    data, _ = result.get(timeout=30)
                except NoNodeError:
                    continue
                path = self.paths.job(job_id)
                try:
                    yield Job.decode(data, path=path)
                except MalformedData as exc:
                    self.report_malformed(path, str(exc))

    def _children(self, path: str) -> list[str]:
        try:
            return self.client.retry(self.client.get_children, path)
        except NoNodeError:
            return []

    def _queue_buckets(self) -> list[Bucket]:
        names = self._children(self.paths.queue)
        buckets = []
        for name in names:
            bucket = Bucket.parse(name)
            if bucket is None:
                self.report_malformed(f"{self.paths.queue}/{name}", "not a queue bucket name")
            else:
                buckets.append(bucket)
        return sorted(buckets, key=lambda b: b.name)

    def report_malformed(self, path: str, reason: str) -> None:
        """Log a bad znode once; admins see it in :meth:`malformed`."""
        with self._lock:
            if path in self._malformed:
                return
            self._malformed[path] = reason
        log.warning("skipping malformed znode %s: %s", path, reason)

    def released_recently(self) -> set[str]:
        return set(self._released)

    def malformed(self) -> dict[str, str]:
        """Bad znodes this board has met so far: path -> reason."""
        with self._lock:
            return dict(self._malformed)

    def scan_malformed(self) -> dict[str, str]:
        """Read every job record and queue entry, reporting what does not decode
        (an admin's full check; lists every shard)."""
        with _zk.translated("scanning the board"):
            for _ in self.jobs():
                pass
            for bucket in self._queue_buckets():
                for name in self._children(self.paths.bucket(bucket)):
                    if Entry.parse(name) is None:
                        self.report_malformed(f"{self.paths.bucket(bucket)}/{name}",
                                              "not a queue entry name")
        return self.malformed()

    # -- claims -------------------------------------------------------------------

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
            current, stat = self._read(check_job_id(job_id))
            if current.state is not JobState.UNCLAIMED:
                if current.state is JobState.CLAIMED:
                    raise AlreadyClaimed(job_id, self._claim_owner(job_id))
                raise BoardError(f"job {job_id} is {current.state} and cannot be claimed")
            if current.not_before and current.not_before > time.time():
                raise NotReady(job_id, current.not_before)
            claimed = self.take(current, stat.version, owner)
            if claimed is None:
                raise AlreadyClaimed(job_id, self._claim_owner(job_id))
            return claimed

    def take(self, job: Job, version: int, owner: str, *, entry: str | None = None,
             running_exists: bool = False) -> Job | None:
        """One claim transaction. ``entry`` is the queue entry to remove with it;
        ``running_exists`` when taking over an orphan. None when somebody else
        won the race (the record's version moved, or the entry is gone)."""
        return self.take_async(job, version, owner, entry=entry,
                               running_exists=running_exists)()

    def take_async(self, job: Job, version: int, owner: str, *, entry: str | None = None,
                   running_exists: bool = False) -> Callable[[], Job | None]:
        """Send the claim transaction of :meth:`take` now; the returned call
        waits for its answer. Claims sent together share ZooKeeper's commits."""
        now = time.time()
        claimed = job.with_event("claimed", state=JobState.CLAIMED, owner=owner,
                                 claims=job.claims + 1, claimed_at=now, transfer_to=None)
        txn = self.client.transaction()
        if entry is not None:
            txn.delete(entry)
        txn.create(self.paths.claim(job.uuid), owner.encode(), ephemeral=True)
        if running_exists:
            txn.set_data(self.paths.running_marker(job.uuid), owner.encode())
        else:
            txn.create(self.paths.running_marker(job.uuid), owner.encode())
        txn.set_data(self.paths.job(job.uuid), claimed.encode(), version=version)
        pending = txn.commit_async()

        def answer() -> Job | None:
            try:
                results = pending.get(timeout=30)
            except (_zk.ConnectionLoss, _zk.KazooTimeoutError):
                return self._claim_after_connection_loss(job.uuid, owner)
            if _zk.first_error(results) is not None:
                return None
            stat = results[-1]
            kind = EventKind.JOB_RECLAIMED if job.claims else EventKind.JOB_CLAIMED
            self.notifier.emit(kind, job_id=job.uuid, owner=owner,
                               details={"posted_at": max(job.created_at, job.not_before or 0),
                                        "priority": job.priority,
                                        "claims": claimed.claims})
            return replace(claimed, claim=Claim(owner, stat.mzxid, stat.version, now))

        return answer

    def _claim_after_connection_loss(self, job_id: str, owner: str) -> Job | None:
        """The claim may or may not have committed: our session's ephemeral
        claim node tells."""
        stat = self.client.retry(self.client.exists, self.paths.claim(job_id))
        if stat is None or stat.ephemeralOwner != self.session_id:
            return None
        job, record_stat = self._read(job_id)
        return replace(job, claim=Claim(owner, record_stat.mzxid, record_stat.version,
                                        job.claimed_at or time.time()))

    def claim_owner(self, job_id: str) -> str | None:
        """Who holds the claim on a job now (None when nobody)."""
        return self._claim_owner(job_id)

    def _claim_owner(self, job_id: str) -> str | None:
        try:
            data, _ = self.client.get(self.paths.claim(job_id))
            return data.decode(errors="replace")
        except NoNodeError:
            return None

    def _held(self, job: Job | str, owner: str) -> tuple[Job, int]:
        """The record and version to act on as ``owner``; checks the claim."""
        job_id = job if isinstance(job, str) else job.uuid
        if not isinstance(job, str) and job.claim is not None and job.claim.owner == owner:
            return job, job.claim.record_version
        current, stat = self._read(job_id)
        if current.state is not JobState.CLAIMED:
            raise NotClaimed(job_id)
        actual = self._claim_owner(job_id)
        if actual != owner:
            raise NotOwner(job_id, owner, actual)
        return current, stat.version

    def _ownership_failure(self, job_id: str, owner: str) -> BoardError:
        try:
            current, _ = self._read(job_id)
        except JobNotFound:
            return JobNotFound(job_id)
        if current.state is not JobState.CLAIMED:
            return ClaimLost(job_id, owner) if current.state is JobState.UNCLAIMED \
                else NotClaimed(job_id)
        actual = self._claim_owner(job_id)
        return NotOwner(job_id, owner, actual) if actual and actual != owner \
            else ClaimLost(job_id, owner)

    def consume(self, job: Job | str, owner: str, outcome: dict[str, Any] | None = None,
                *, state: JobState = JobState.COMPLETE) -> Job:
        """Finish a claimed job: record ``outcome`` (kept for :meth:`wait`) and
        drop the claim, in one transaction.

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
            txn = self.client.transaction()
            txn.set_data(self.paths.job(job_id), finished.encode(), version=version)
            txn.delete(self.paths.claim(job_id))
            txn.delete(self.paths.running_marker(job_id))
            if state is JobState.CANCELLED:
                txn.delete(self.paths.cancel_request(job_id))
            self._released.append(job_id)
            results = txn.commit()
            if _zk.first_error(results) is not None:
                raise self._ownership_failure(job_id, owner)
        kind = EventKind.JOB_COMPLETED if state is JobState.COMPLETE else EventKind.JOB_FAILED
        self.notifier.emit(kind, job_id=job_id, owner=owner,
                           details={"claimed_at": current.claimed_at, "state": state.value})
        return finished

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

    def abandon(self, job: Job | str, owner: str) -> Job:
        """Give a claimed job back: it is claimable again at once, ahead of
        jobs of the same priority.

        Raises:
            NotClaimed / NotOwner / ClaimLost.
        """
        job_id = job if isinstance(job, str) else job.uuid
        with _zk.translated(f"abandoning job {job_id}"):
            current, version = self._held(job, owner)
            released = current.with_event("abandoned", state=JobState.UNCLAIMED,
                                          owner=None, transfer_to=None)
            self._released.append(job_id)
            while True:
                txn = self.client.transaction()
                txn.delete(self.paths.claim(job_id))
                txn.delete(self.paths.running_marker(job_id))
                txn.set_data(self.paths.job(job_id), released.encode(), version=version)
                target = self._requeue_op(txn, released)
                results = txn.commit()
                error = _zk.first_error(results)
                if error is None:
                    break
                if isinstance(error, NoNodeError) and results.index(error) == 3:
                    self._ensure(target)
                    continue
                raise self._ownership_failure(job_id, owner)
        self.notifier.emit(EventKind.JOB_ABANDONED, job_id=job_id, owner=owner)
        return released

    def _requeue_op(self, txn, job: Job) -> str:
        """Add the create of ``job``'s index entry, for a job put back: the
        restore bucket of its priority, or the delayed index if not yet due.
        Returns the parent that must exist."""
        if job.not_before is not None and job.not_before > time.time():
            kind, prefix, _ = self._entry_target(job)
        else:
            prefix = self.paths.entry_prefix(Bucket(job.priority, RESTORE_BUCKET), job.uuid)
        txn.create(prefix, b"", sequence=True)
        return prefix.rsplit("/", 1)[0]

    def _ensure(self, path: str) -> None:
        try:
            self.client.create(path, makepath=True)
        except NodeExistsError:
            pass

    def restore_orphan(self, job_id: str, *, me: str | None = None) -> Job | None:
        """Put back a job whose claim vanished (its holder's session ended) but
        whose running marker remains. When an admin transferred it to ``me``,
        claim it for ``me`` instead; when transferred to another live
        conductor, leave it for that one. Returns the job claimed for ``me``,
        else None. Safe to race: only one caller's transaction succeeds."""
        with _zk.translated(f"reclaiming job {job_id}"):
            running = self.client.exists(self.paths.running_marker(job_id))
            if running is None or self.client.exists(self.paths.claim(job_id)):
                return None
            try:
                current, stat = self._read(job_id)
            except JobNotFound:
                self._delete_quietly(self.paths.running_marker(job_id))
                return None
            except MalformedData as exc:
                self.report_malformed(self.paths.job(job_id), str(exc))
                return None
            target = current.transfer_to
            if target and target == me:
                return self.take(current, stat.version, me, running_exists=True)
            if target and self.client.exists(self.paths.conductor(target)):
                return None
            released = current.with_event("reclaimed", state=JobState.UNCLAIMED,
                                          owner=None, transfer_to=None)
            while True:
                txn = self.client.transaction()
                claim = self.paths.claim(job_id)
                txn.create(claim, b"")   # asserts nobody holds a claim right now
                txn.delete(claim)
                txn.delete(self.paths.running_marker(job_id), version=running.version)
                txn.set_data(self.paths.job(job_id), released.encode(), version=stat.version)
                parent = self._requeue_op(txn, released)
                results = txn.commit()
                error = _zk.first_error(results)
                if error is None:
                    log.info("job %s lost its holder %s; put back on the board",
                             job_id, current.owner)
                    return None
                if isinstance(error, NoNodeError) and results.index(error) == 4:
                    self._ensure(parent)
                    continue
                return None

    def orphans(self) -> list[str]:
        """Jobs marked running whose claim is gone."""
        with _zk.translated("listing claims"):
            running = set(self._children(self.paths.running))
            if not running:
                return []
            claimed = set(self._children(self.paths.claims))
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
            current, stat = self._read(check_job_id(job_id))
            if current.state is not JobState.CLAIMED:
                raise NotClaimed(job_id)
            actual = self._claim_owner(job_id)
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
            for job_id in sorted(self._children(self.paths.claims)):
                try:
                    data, stat = self.client.get(self.paths.claim(job_id))
                except NoNodeError:
                    continue
                out.append({"job_id": job_id, "owner": data.decode(errors="replace"),
                            "since": stat.ctime / 1000.0, "token": stat.czxid})
        return out

    # -- admin ------------------------------------------------------------------

    def trash(self, job: Job | str) -> None:
        """Delete a job that nobody holds, with its index entries and key.

        Raises:
            AlreadyClaimed: it is claimed (abandon or cancel it first).
        """
        job_id = check_job_id(job if isinstance(job, str) else job.uuid)
        with _zk.translated(f"trashing job {job_id}"):
            current, stat = self._read(job_id)
            if current.state is JobState.CLAIMED:
                raise AlreadyClaimed(job_id, self._claim_owner(job_id))
            txn = self.client.transaction()
            txn.delete(self.paths.job(job_id), version=stat.version)
            if current.key is not None:
                txn.delete(self.paths.key(current.key))
            results = txn.commit()
            if _zk.first_error(results) is not None:
                # The key node may be gone already: delete the record alone.
                self.client.delete(self.paths.job(job_id), version=stat.version)
        # Index entries pointing at a missing record are dropped by claimers.
        self._drop_cancel_request(job_id)
        self._delete_quietly(self.paths.dead_marker(job_id))

    def retry(self, job: Job | str) -> Job:
        """Put a dead-lettered or failed job back on the board with a fresh
        claim count (its logbook keeps what already finished)."""
        job_id = check_job_id(job if isinstance(job, str) else job.uuid)
        with _zk.translated(f"retrying job {job_id}"):
            current, stat = self._read(job_id)
            if current.state not in (JobState.DEAD, JobState.FAILED, JobState.CANCELLED):
                raise BoardError(f"job {job_id} is {current.state}; only DEAD, FAILED or "
                                 "CANCELLED jobs can be retried")
            revived = current.with_event("retried", state=JobState.UNCLAIMED, claims=0,
                                         owner=None, outcome=None, finished_at=None,
                                         not_before=None)
            while True:
                txn = self.client.transaction()
                txn.set_data(self.paths.job(job_id), revived.encode(), version=stat.version)
                parent = self._requeue_op(txn, revived)
                results = txn.commit()
                error = _zk.first_error(results)
                if error is None:
                    self._delete_quietly(self.paths.dead_marker(job_id))
                    return revived
                if isinstance(error, NoNodeError) and results.index(error) == 1:
                    self._ensure(parent)
                    continue
                raise BoardError(f"job {job_id} changed while retrying it; try again")

    def dead_letter(self, job: Job, version: int, entry: str | None, reason: str) -> Job:
        """Take a job out of circulation (state DEAD) with its history."""
        dead = job.with_event("dead-lettered", state=JobState.DEAD, finished_at=time.time(),
                              outcome={"reason": reason})
        txn = self.client.transaction()
        if entry is not None:
            txn.delete(entry)
        txn.set_data(self.paths.job(job.uuid), dead.encode(), version=version)
        txn.create(self.paths.dead_marker(job.uuid))
        if _zk.first_error(txn.commit()) is None:
            log.warning("job %s dead-lettered: %s", job.uuid, reason)
            self.notifier.emit(EventKind.JOB_DEAD, job_id=job.uuid, details={"reason": reason})
        return dead

    def cancel(self, job: Job | str) -> JobState:
        """Cancel a job. A waiting job is removed at once (state CANCELLED); a
        claimed one gets a request its holder sees, stopping the flow at the
        next task boundary and reverting it. Returns the state after the call."""
        job_id = check_job_id(job if isinstance(job, str) else job.uuid)
        with _zk.translated(f"cancelling job {job_id}"):
            current, stat = self._read(job_id)
            if current.finished:
                return current.state
            if current.state is JobState.UNCLAIMED:
                cancelled = current.with_event("cancelled", state=JobState.CANCELLED,
                                               finished_at=time.time(),
                                               outcome={"reason": "cancelled by an admin"})
                try:
                    self.client.set(self.paths.job(job_id), cancelled.encode(),
                                    version=stat.version)
                    return JobState.CANCELLED
                except BadVersionError:
                    return self.cancel(job_id)
            try:
                self.client.create(self.paths.cancel_request(job_id), b"")
            except NodeExistsError:
                pass
            return JobState.CLAIMED

    def cancel_requested(self, job_id: str, watch=None) -> bool:
        return self.client.exists(self.paths.cancel_request(job_id), watch=watch) is not None

    def _drop_cancel_request(self, job_id: str) -> None:
        self._delete_quietly(self.paths.cancel_request(job_id))

    def _delete_quietly(self, path: str) -> None:
        try:
            self.client.delete(path)
        except (NoNodeError, NotEmptyError):
            pass

    # -- waiting ------------------------------------------------------------------

    def wait(self, job_id: str, timeout: float | None = None) -> JobOutcome:
        """Block until the job is finished; returns its outcome.

        Raises:
            WaitTimeout: not finished within ``timeout`` seconds.
            JobNotFound: no such job (or trashed while waiting).
        """
        job_id = check_job_id(job_id)
        changed = threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        path = self.paths.job(job_id)
        while True:
            changed.clear()
            with _zk.translated(f"waiting for job {job_id}"):
                try:
                    data, _ = self.client.retry(self.client.get, path,
                                                watch=lambda _event: changed.set())
                except NoNodeError as exc:
                    raise JobNotFound(job_id) from exc
            job = Job.decode(data, path=path)
            if job.finished:
                return JobOutcome.of(job)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(job_id, timeout or 0.0, job.state)
            # Re-check now and then in case the session (and its watch) was lost.
            changed.wait(min(remaining, 5.0) if remaining is not None else 5.0)

    # -- depth (for metrics) ----------------------------------------------------

    def depth(self) -> dict[str, Any]:
        """Board gauges from znode stats, without listing the waiting jobs:
        one stat per bucket, one read for the oldest entry per priority.

        Returns:
            ``{"waiting": {priority: count}, "delayed": n, "claimed": n,
            "dead": n, "oldest_waiting_age": seconds or None}``
        """
        waiting: dict[int, int] = {}
        oldest: float | None = None
        with _zk.translated("measuring the board"):
            buckets = self._queue_buckets()
            stats = [(b, self.client.exists_async(self.paths.bucket(b))) for b in buckets]
            first_of_priority: dict[int, Bucket] = {}
            for bucket, result in stats:
                stat = result.get(timeout=30)
                if stat is None or stat.numChildren == 0:
                    continue
                waiting[bucket.priority] = waiting.get(bucket.priority, 0) + stat.numChildren
                first_of_priority.setdefault(bucket.priority, bucket)
            for bucket in first_of_priority.values():
                entries = [e for e in map(Entry.parse, self._children(self.paths.bucket(bucket))) if e]
                if not entries:
                    continue
                head = min(entries, key=lambda e: e.seq)
                try:
                    job, _ = self._read(head.job_id)
                except (JobNotFound, MalformedData):
                    continue
                oldest = job.created_at if oldest is None else min(oldest, job.created_at)
            delayed = 0
            for name in self._children(self.paths.delayed):
                stat = self.client.exists(f"{self.paths.delayed}/{name}")
                delayed += stat.numChildren if stat else 0
            counts = {}
            for label, path in (("claimed", self.paths.claims), ("dead", self.paths.dead)):
                stat = self.client.exists(path)
                counts[label] = stat.numChildren if stat else 0
        return {"waiting": waiting, "delayed": delayed, **counts,
                "oldest_waiting_age": None if oldest is None else max(0.0, time.time() - oldest)}

    # -- conductors -------------------------------------------------------------

    def register_conductor(self, name: str, info: dict[str, Any]) -> None:
        """Register a live conductor (ephemeral: gone with its session)."""
        with _zk.translated(f"registering conductor {name}"):
            path = self.paths.conductor(name)
            try:
                self.client.create(path, dumps(info), ephemeral=True)
            except NodeExistsError:
                _, stat = self.client.get(path)
                if stat.ephemeralOwner != self.session_id:
                    raise BoardError(f"a conductor named {name!r} is already running") from None
                self.client.set(path, dumps(info))

    def update_conductor(self, name: str, info: dict[str, Any]) -> None:
        with _zk.translated(f"updating conductor {name}"):
            self.client.set(self.paths.conductor(name), dumps(info))

    def conductors(self) -> list[dict[str, Any]]:
        out = []
        with _zk.translated("listing conductors"):
            for name in sorted(self._children(self.paths.conductors)):
                try:
                    data, stat = self.client.get(self.paths.conductor(name))
                    info = loads(data) if data else {}
                except NoNodeError:
                    continue
                except MalformedData as exc:
                    self.report_malformed(self.paths.conductor(name), str(exc))
                    continue
                out.append({"name": name, **(info if isinstance(info, dict) else {})})
        return out
