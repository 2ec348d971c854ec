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
from typing import Any, Callable, Iterable, Iterator

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from jobboard.board import _zk
from jobboard.board.admin import Admin
from jobboard.board.ownership import Ownership
from jobboard.board.job import Job, JobOutcome, check_job_id, is_job_id, new_job_id
from jobboard.board.layout import (BUCKET_SIZE, LAYOUT_VERSION, Bucket,
                                   DelayedBucket, DelayedEntry, Entry, Paths,
                                   check_priority)
from jobboard.errors import (BoardError, JobNotFound,
                             MalformedData, PayloadTooLarge, WaitTimeout)
from jobboard.events import EventKind, Notifier
from jobboard.serialization import dumps
from jobboard.states import JobState

log = logging.getLogger(__name__)

# ZooKeeper refuses packets over jute.maxbuffer (1 MiB by default); a post is
# one multi carrying the record plus a few small ops, so keep well under it.
DEFAULT_MAX_RECORD_BYTES = 900_000
DEFAULT_MAX_CLAIMS = 5
PIPELINE_WINDOW = 256


class Board(Ownership, Admin):
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
                        posted.append(self._posted(job, target, results[-1]))
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
                return self._posted(job, target, results[-1])
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

    def _posted(self, job: Job, target: tuple[str, str, int], entry_path: str) -> Job:
        self._note_entry(target, entry_path)
        self.notifier.emit(EventKind.JOB_POSTED, job_id=job.uuid, details={"name": job.name})
        return job

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
        """The bucket posts of ``priority`` go to; made sure to exist when it
        is (re)chosen, so that a post never has to create a bucket itself."""
        number = self._post_buckets.get(priority)
        if number is None:
            numbers = [b.number for b in self._queue_buckets() if b.priority == priority]
            number = max(numbers, default=1) or 1
            if number not in numbers:
                _zk.ensure(self.client, self.paths.bucket(Bucket(priority, number)))
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
            _zk.ensure(self.client, self.paths.bucket(Bucket(group, current + 1)))

    def _repair_post_target(self, target: tuple[str, str, int]) -> None:
        """The bucket (or shard) for a post is missing. A queue bucket is
        missing because claimers drained and deleted it after posters moved
        on: forget it (the next post re-reads the current one). Re-creating
        it would leave an empty bucket nobody posts to, for good."""
        kind, prefix, group = target
        self._set_up = False
        self.setup()
        if kind == "queue":
            self._post_buckets.pop(group, None)
        else:
            _zk.ensure(self.client, prefix.rsplit("/", 1)[0])

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
                       for job_id in self._shard_ids(shard)]
            for job in self._read_many(ids):
                if state is None or job.state is state:
                    yield job

    def _shard_ids(self, shard: str) -> list[str]:
        """The job ids in a shard; a child that is not a job id belonging
        there is reported (it could never be read through :meth:`get`)."""
        ids = []
        for name in sorted(self._children(shard)):
            if self.paths.job(name) == f"{shard}/{name}" and is_job_id(name):
                ids.append(name)
            else:
                self.report_malformed(f"{shard}/{name}", "not a job id of this shard")
        return ids

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

    def _queue_buckets(self, watch: Callable[[Any], None] | None = None) -> list[Bucket]:
        """The queue's buckets in claim order (bad names reported, skipped)."""
        try:
            names = self.client.retry(self.client.get_children, self.paths.queue, watch=watch)
        except NoNodeError:
            return []
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
