"""Posting jobs: check the arguments, write the record and its queue entry
(and idempotency key) in one transaction.

Every argument is checked before anything is written, and the record is
decoded back with the same validation claimers apply, so a post never
leaves a record that a conductor would have to quarantine.

How it fails: a bad argument -> :class:`~jobboard.errors.InvalidArgument`
(a ``ValueError``); a record over the limit ->
:class:`~jobboard.errors.PayloadTooLarge`; a value msgpack cannot encode ->
:class:`~jobboard.errors.MalformedData`; ZooKeeper unreachable ->
:class:`~jobboard.errors.BoardUnavailable`. Nothing is written in any of
these cases.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from jobboard.board import _zk
from jobboard.board.job import NAME_MAX_LENGTH, Job, check_factory, is_job_id, new_job_id
from jobboard.board.layout import DEFAULT_QUEUE, Paths, check_priority, check_queue
from jobboard.board.queue import QueueIndex
from jobboard.board.records import PIPELINE_WINDOW, Records
from jobboard.errors import (BoardError, InvalidArgument, JobNotFound, MalformedData,
                             PayloadTooLarge)
from jobboard.events import EventKind, Notifier



def _mapping(value: Any, argument: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidArgument(f"{argument} must be a dict with str keys, "
                              f"not {type(value).__name__}", argument=argument)
    return dict(value)


def _text(value: Any, argument: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > NAME_MAX_LENGTH:
        raise InvalidArgument(f"{argument} must be a non-empty str of at most "
                              f"{NAME_MAX_LENGTH} characters", argument=argument)
    return value


def _delay(value: Any) -> float | None:
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise InvalidArgument(f"delay must be a finite number of seconds >= 0, not {value!r}",
                              argument="delay")
    return float(value)


class Posting:
    """Posts jobs to one board.

    Args:
        client: the board's started KazooClient.
        paths: the board's paths.
        records: reads the job an idempotency key points to.
        index: where the queue entry goes.
        notifier: gets ``job.posted``.
        max_record_bytes: largest encoded job accepted.
        ensure_layout: called when a shard is missing (the board sets itself up).
    """

    def __init__(self, client: KazooClient, paths: Paths, records: Records,
                 index: QueueIndex, notifier: Notifier, *, max_record_bytes: int,
                 ensure_layout: Any) -> None:
        self.client = client
        self.paths = paths
        self.records = records
        self.index = index
        self.notifier = notifier
        self.max_record_bytes = max_record_bytes
        self._ensure_layout = ensure_layout

    def post(self, factory: str, *, args: dict[str, Any] | None = None,
             store: dict[str, Any] | None = None, name: str | None = None,
             priority: int = 0, delay: float | None = None, key: str | None = None,
             details: dict[str, Any] | None = None, queue: str = DEFAULT_QUEUE) -> Job:
        """See :meth:`jobboard.board.Board.post`."""
        job, data = self.prepare(factory, args=args, store=store, name=name,
                                 priority=priority, delay=delay, key=key, details=details,
                                 queue=queue)
        with _zk.translated("posting a job"):
            return self.client.retry(self._post_once, job, data)

    def post_many(self, specs: Iterable[dict[str, Any]]) -> list[Job]:
        """See :meth:`jobboard.board.Board.post_many`."""
        prepared = []
        for spec in specs:
            if not isinstance(spec, dict) or "factory" not in spec:
                raise InvalidArgument("each job spec must be a dict with a 'factory'",
                                      argument="specs")
            prepared.append(self.prepare(**spec))
        posted: list[Job] = []
        with _zk.translated("posting jobs"):
            for start in range(0, len(prepared), PIPELINE_WINDOW):
                window = prepared[start:start + PIPELINE_WINDOW]
                pending = []
                for job, data in window:
                    if job.key is not None:
                        pending.append((job, data, None))
                        continue
                    txn = self.client.transaction()
                    txn.create(self.paths.job(job.uuid), data)
                    target = self.index.target(job, 0)
                    self.index.add_entry(txn, target)
                    pending.append((job, data, (txn.commit_async(), target)))
                for job, data, sent in pending:
                    if sent is None:
                        posted.append(self.client.retry(self._post_once, job, data))
                        continue
                    async_result, target = sent
                    results = async_result.get(timeout=60)
                    if _zk.first_error(results) is None:
                        self.index.note_created(target, results[-1])
                        posted.append(self._posted(job))
                    else:  # a bucket was missing or rolled: redo it the careful way
                        posted.append(self.client.retry(self._post_once, job, data))
        return posted

    def prepare(self, factory: str, *, args: dict | None = None, store: dict | None = None,
                name: str | None = None, priority: int = 0, delay: float | None = None,
                key: str | None = None, details: dict | None = None,
                queue: str = DEFAULT_QUEUE) -> tuple[Job, bytes]:
        """Check every argument and encode the record (nothing is written)."""
        factory = check_factory(factory)
        queue = check_queue(queue)
        delay = _delay(delay)
        now = time.time()
        job = Job(uuid=new_job_id(), name=_text(name, "name") or factory.rpartition(":")[2],
                  factory=factory, args=_mapping(args, "args"), store=_mapping(store, "store"),
                  priority=check_priority(priority), queue=queue,
                  not_before=now + delay if delay else None, key=_text(key, "key"),
                  details=_mapping(details, "details"), created_at=now)
        job = job.with_event("posted")
        data = job.encode()
        if len(data) > self.max_record_bytes:
            raise PayloadTooLarge(len(data), self.max_record_bytes)
        try:   # the claimers' own check: never post what they would quarantine
            Job.decode(data, path=self.paths.job(job.uuid), job_id=job.uuid)
        except MalformedData as exc:
            raise InvalidArgument(f"the job would not be a valid record: {exc}") from exc
        return job, data

    def _post_once(self, job: Job, data: bytes) -> Job:
        record = self.paths.job(job.uuid)

        def add_ops(txn: Any) -> None:
            if job.key is not None:
                txn.create(self.paths.key(job.key), job.uuid.encode())
            txn.create(record, data)

        while True:
            results, error = self.index.commit(add_ops, job, 0)
            if error is None:
                return self._posted(job)
            failed_op = results.index(error)
            if isinstance(error, NodeExistsError):
                if job.key is not None and failed_op == 0:
                    existing = self.job_for_key(job.key)
                    if existing is not None:
                        return existing
                    continue  # the key's job was trashed in between: try again
                if self.client.exists(record):
                    return job  # our own earlier attempt committed (connection loss)
                raise BoardError(f"could not post job {job.uuid}: {error!r}")
            if isinstance(error, NoNodeError):   # a shard is missing
                self._ensure_layout()
                continue
            raise BoardError(f"could not post job {job.uuid}: {error!r}")

    def _posted(self, job: Job) -> Job:
        self.notifier.emit(EventKind.JOB_POSTED, job_id=job.uuid, details={"name": job.name})
        return job

    def job_for_key(self, key: str) -> Job | None:
        """The job an idempotency key points to, None when none does."""
        try:
            data, _ = self.client.get(self.paths.key(key))
        except NoNodeError:
            return None
        job_id = data.decode("ascii", errors="replace")
        if not is_job_id(job_id):
            return None
        try:
            return self.records.read(job_id)[0]
        except (JobNotFound, MalformedData):
            return None
