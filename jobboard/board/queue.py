"""The queue index: where waiting jobs are found, in claim order.

One class owns the index (see :mod:`jobboard.board.layout` for the names):
the queues, the buckets of each queue and priority and the restore bucket
ahead of them, the delayed buckets, the entry names, the promotion of due
delayed jobs, the repair of an entry whose bucket went missing, and the move
of entries left by layout 1 and 2 into their queue (:meth:`QueueIndex.migrate_legacy`).

An entry is always written in the same transaction as the record version it
stands for (a post, a put-back) or with a check of that version (a
promotion), and is named after it, so an entry name is never reused and
"a live entry" has one meaning: its job is UNCLAIMED at the version the
entry names. Anything else is a stale entry, safe to delete.

How it fails: ZooKeeper errors surface as
:class:`~jobboard.errors.BoardUnavailable`; a bucket drained and deleted by
claimers while a poster was about to use it is repaired and the transaction
sent again; a name that is not an entry or bucket is reported, never read as
one.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator, NamedTuple

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError

from jobboard.board import _zk
from jobboard.board.job import Job
from jobboard.board.layout import (BUCKET_SIZE, RESTORE_BUCKET, Bucket, DelayedBucket,
                                   DelayedEntry, Entry, Paths, is_queue_name)
from jobboard.board.records import PIPELINE_WINDOW, READ_TIMEOUT, Records
from jobboard.errors import BoardError, BoardUnavailable, JobNotFound, MalformedData
from jobboard.states import JobState

Watch = Callable[[Any], None]


class EntryTarget(NamedTuple):
    """Where the entry of one job version goes."""

    kind: str        # "queue", "restore" or "delayed"
    parent: str      # the bucket's path
    prefix: str      # the sequential path the entry is created with
    group: int       # priority (queue, restore) or due second (delayed)
    number: int      # the bucket's number
    queue: str = ""  # the job's queue


class QueueIndex:
    """The waiting and delayed index of one board.

    Args:
        client: the board's started KazooClient.
        paths: the board's paths.
        records: the board's records (bad names are reported there).
        bucket_size: entries per queue bucket before posters move on.
    """

    def __init__(self, client: KazooClient, paths: Paths, records: Records, *,
                 bucket_size: int = BUCKET_SIZE) -> None:
        self.client = client
        self.paths = paths
        self.records = records
        self.bucket_size = bucket_size
        self._post_buckets: dict[tuple[str, int], int] = {}
        self._delayed_buckets: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- writing entries --------------------------------------------------------

    def target(self, job: Job, version: int, *, restore: bool = False,
               due: bool = False) -> EntryTarget:
        """Where the entry for ``job`` at record ``version`` goes: the delayed
        index when not yet due (unless ``due``), else the restore bucket of its
        priority (``restore``: a put-back goes ahead) or the current one."""
        if not due and job.not_before is not None and job.not_before > time.time():
            due_ms = int(job.not_before * 1000)
            second = due_ms // 1000
            delayed = DelayedBucket(second, self._delayed_buckets.get(second, 1))
            parent = self.paths.delayed_bucket(delayed)
            return EntryTarget("delayed", parent,
                               f"{parent}/{DelayedEntry.prefix(due_ms, job.uuid, version)}",
                               second, delayed.number)
        number = RESTORE_BUCKET if restore else self._current_bucket(job.queue, job.priority)
        parent = self.paths.bucket(Bucket(job.priority, number, job.queue))
        return EntryTarget("restore" if restore else "queue", parent,
                           f"{parent}/{Entry.prefix(job.uuid, version)}", job.priority, number,
                           job.queue)

    def add_entry(self, txn: Any, target: EntryTarget) -> None:
        txn.create(target.prefix, b"", sequence=True)

    def commit(self, add_ops: Callable[[Any], None], job: Job, version: int, *,
               restore: bool = False, due: bool = False) -> tuple[list, Exception | None]:
        """Commit a transaction of ``add_ops`` plus, last, the entry for
        ``job`` at record ``version``. A missing bucket is repaired and the
        transaction sent again. Returns the results and the error that
        failed it (None on success)."""
        while True:
            target = self.target(job, version, restore=restore, due=due)
            txn = self.client.transaction()
            add_ops(txn)
            self.add_entry(txn, target)
            results = txn.commit()
            error = _zk.first_error(results)
            if isinstance(error, NoNodeError) and results.index(error) == len(results) - 1:
                self.repair(target)
                continue
            if error is None:
                self.note_created(target, results[-1])
            return results, error

    def note_created(self, target: EntryTarget, created_path: str) -> None:
        """Move posting on to the next bucket once this one's counter is full."""
        if target.kind == "restore" or int(created_path[-10:]) < self.bucket_size:
            return
        buckets: dict[Any, int] = (self._post_buckets if target.kind == "queue"
                                   else self._delayed_buckets)
        key = (target.queue, target.group) if target.kind == "queue" else target.group
        with self._lock:
            if buckets.get(key, 1) > target.number:
                return
            buckets[key] = target.number + 1
        if target.kind == "queue":   # open the next bucket before anyone posts to it
            _zk.ensure(self.client, self.paths.bucket(Bucket(target.group, target.number + 1,
                                                             target.queue)))

    def repair(self, target: EntryTarget) -> None:
        """The bucket of ``target`` is missing. A queue bucket is missing
        because claimers drained and deleted it after posters moved on:
        forget it (the next target re-reads the current one; making it again
        would leave an empty bucket nobody posts to, for good). A restore or
        delayed bucket is made again."""
        if target.kind == "queue":
            with self._lock:
                self._post_buckets.pop((target.queue, target.group), None)
        else:
            _zk.ensure(self.client, target.parent)

    def _current_bucket(self, queue: str, priority: int) -> int:
        """The bucket posts of ``priority`` to ``queue`` go to; made sure to
        exist when it is (re)chosen, so that a post never has to create a
        bucket itself (nor the queue's directory)."""
        number = self._post_buckets.get((queue, priority))
        if number is None:
            numbers = [b.number for b in self.buckets(queue) if b.priority == priority]
            number = max(numbers, default=1) or 1
            if number not in numbers:
                _zk.ensure(self.client, self.paths.bucket(Bucket(priority, number, queue)))
            with self._lock:
                self._post_buckets[(queue, priority)] = number
        return number

    def remove(self, entry_path: str) -> bool:
        """Delete an entry (stale, or taken by a transaction that failed)."""
        with _zk.translated(f"removing {entry_path}"):
            return _zk.delete_quietly(self.client, entry_path)

    # -- reading ----------------------------------------------------------------

    def queues(self) -> list[str]:
        """The names of the board's queues (those a job was ever posted to)."""
        names, _ = self._top()
        return names

    def _top(self) -> tuple[list[str], list[Bucket]]:
        """The children of ``{root}/queue``: queue names and layout-2 buckets
        (anything else is reported)."""
        queues: list[str] = []
        legacy: list[Bucket] = []
        for name in sorted(_zk.children(self.client, self.paths.queues)):
            bucket = Bucket.parse(name, None)
            if bucket is not None:
                legacy.append(bucket)
            elif is_queue_name(name):
                queues.append(name)
            else:
                self.records.report(f"{self.paths.queues}/{name}", "not a queue name")
        return queues, legacy

    def ensure_queue(self, queue: str) -> None:
        """Make the queue's directory, so that a claimer can watch it."""
        with _zk.translated(f"making queue {queue}"):
            _zk.ensure(self.client, self.paths.queue_dir(queue))

    def buckets(self, queue: str | None = None, watch: Watch | None = None) -> list[Bucket]:
        """The buckets of ``queue`` in claim order (bad names reported,
        skipped); ``watch`` is set on the queue's directory. ``queue`` None:
        the buckets of every queue, in the order of priority then age."""
        if queue is None:
            found = [b for name in self.queues() for b in self.buckets(name)]
            return sorted(found, key=lambda b: (b.name, b.queue or ""))
        buckets = []
        parent = self.paths.queue_dir(queue)
        for name in _zk.children(self.client, parent, watch=watch):
            bucket = Bucket.parse(name, queue)
            if bucket is None:
                self.records.report(f"{parent}/{name}", "not a queue bucket name")
            else:
                buckets.append(bucket)
        return sorted(buckets, key=lambda b: b.name)

    def legacy_buckets(self) -> list[Bucket]:
        """Buckets of layout 1 and 2, directly under ``{root}/queue``."""
        return self._top()[1]

    def entries(self, bucket: Bucket) -> tuple[list[Entry], Any] | None:
        """A bucket's entries (oldest first) and its stat; None when it is
        gone. Names that are not entries are reported."""
        path = self.paths.bucket(bucket)
        try:
            names, stat = self.client.retry(self.client.get_children, path,
                                            include_data=True)
        except NoNodeError:
            return None
        except NoAuthError:
            self.records.report(path, "not readable with this board's credentials")
            return None
        entries = []
        for name in names:
            entry = Entry.parse(name)
            if entry is None:
                self.records.report(f"{path}/{name}", "not a queue entry name")
            else:
                entries.append(entry)
        entries.sort(key=lambda e: e.seq)
        return entries, stat

    def drop_if_drained(self, bucket: Bucket, stat: Any) -> bool:
        """Delete an empty bucket posters no longer use (the restore bucket,
        or one whose counter passed the bucket size). True when deleted."""
        if bucket.number == RESTORE_BUCKET or stat.cversion >= self.bucket_size:
            return _zk.delete_quietly(self.client, self.paths.bucket(bucket))
        return False

    def watch_bucket(self, bucket: Bucket, watch: Watch) -> bool:
        """Set a child watch on an empty bucket; True when it is not empty
        any more (or gone)."""
        try:
            return bool(self.client.retry(self.client.get_children,
                                          self.paths.bucket(bucket), watch=watch))
        except NoNodeError:
            return True

    def delayed_entries(self) -> Iterator[tuple[str, DelayedEntry | None]]:
        """(path, parsed entry) of every delayed entry, earliest bucket first;
        a name that is not a delayed entry comes with None (and is reported)."""
        for name in sorted(_zk.children(self.client, self.paths.delayed)):
            bucket = DelayedBucket.parse(name)
            if bucket is None:
                self.records.report(f"{self.paths.delayed}/{name}", "not a delayed bucket name")
                continue
            parent = self.paths.delayed_bucket(bucket)
            for child in sorted(_zk.children(self.client, parent)):
                entry = DelayedEntry.parse(child)
                if entry is None:
                    self.records.report(f"{parent}/{child}", "not a delayed entry name")
                yield f"{parent}/{child}", entry

    def waiting_ids(self, queue: str | None = None) -> Iterator[str]:
        """Job ids with an entry (in ``queue``, or any), in claim order, then
        entries not yet moved out of an older layout, then the delayed ones
        (of every queue)."""
        seen: set[str] = set()
        buckets = self.buckets(queue) + (self.legacy_buckets() if queue is None else [])
        for bucket in buckets:
            listed = self.entries(bucket)
            for entry in listed[0] if listed else ():
                if entry.job_id not in seen:
                    seen.add(entry.job_id)
                    yield entry.job_id
        for _, entry in self.delayed_entries():
            if entry is not None and entry.job_id not in seen:
                seen.add(entry.job_id)
                yield entry.job_id

    def entries_of(self, job: Job, version: int) -> list[str]:
        """The paths of the entries standing for ``job`` at record ``version``
        (normally one; none when it is missing). Lists the delayed buckets of
        the job's due second, then the buckets of its queue and priority: a
        promotion meanwhile is seen on one side or the other. An admin's
        call (a listing per bucket), never on the claim path."""
        found: list[str] = []
        if job.not_before is not None:
            second = int(job.not_before * 1000) // 1000
            for name in sorted(_zk.children(self.client, self.paths.delayed)):
                bucket = DelayedBucket.parse(name)
                if bucket is None or bucket.due_second != second:
                    continue
                parent = self.paths.delayed_bucket(bucket)
                for child in _zk.children(self.client, parent):
                    entry = DelayedEntry.parse(child)
                    if entry is not None and (entry.job_id, entry.version) == (job.uuid,
                                                                               version):
                        found.append(f"{parent}/{child}")
        for bucket in self.buckets(job.queue):
            if bucket.priority != job.priority:
                continue
            listed = self.entries(bucket)
            for entry in listed[0] if listed else ():
                if (entry.job_id, entry.version) == (job.uuid, version):
                    found.append(f"{self.paths.bucket(bucket)}/{entry.name}")
        return found

    def walk(self) -> Iterator[tuple[str, str | None, int | None]]:
        """Every name under the index, a bucket listed at a time, for a
        repair sweep: ``(path, job id, version)`` of each entry, and
        ``(path, None, None)`` of each name that is not the index's. The
        delayed index is walked before the queues and the buckets of layouts
        1 and 2 last, so a promotion or a move during the walk is seen on one
        side or the other."""
        roots: list[tuple[str, Callable[[str], Any], Callable[[str], Any]]] = [
            (self.paths.delayed, DelayedBucket.parse, DelayedEntry.parse)]
        for name in sorted(_zk.children(self.client, self.paths.queues)):
            if is_queue_name(name):
                roots.append((self.paths.queue_dir(name), Bucket.parse, Entry.parse))
            elif Bucket.parse(name, None) is None:
                yield f"{self.paths.queues}/{name}", None, None
        roots.append((self.paths.queues, lambda name: Bucket.parse(name, None), Entry.parse))
        for root, bucket_of, entry_of in roots:
            for name in sorted(_zk.children(self.client, root)):
                parent = f"{root}/{name}"
                if bucket_of(name) is None:
                    if root != self.paths.queues:
                        yield parent, None, None
                    continue
                for child in sorted(_zk.children(self.client, parent)):
                    entry = entry_of(child)
                    if entry is None:
                        yield f"{parent}/{child}", None, None
                    else:
                        yield f"{parent}/{child}", entry.job_id, entry.version

    @staticmethod
    def is_live(job: Job, version: int, entry_version: int | None) -> bool:
        """Whether an entry naming ``entry_version`` stands for ``job`` as
        read at record ``version`` (layout-1 entries name no version)."""
        return job.state is JobState.UNCLAIMED and entry_version in (None, version)

    # -- delayed jobs -----------------------------------------------------------

    def promote_due(self) -> float | None:
        """Move due delayed jobs into the queue. Returns when the next one is
        due (epoch seconds), None when none is waiting."""
        now = time.time()
        later: list[float] = []
        for name in sorted(_zk.children(self.client, self.paths.delayed)):
            bucket = DelayedBucket.parse(name)
            if bucket is None:
                self.records.report(f"{self.paths.delayed}/{name}", "not a delayed bucket name")
                continue
            if bucket.due_second > now:
                later.append(bucket.due_second)
                break
            parent = self.paths.delayed_bucket(bucket)
            remaining = False
            for child in sorted(_zk.children(self.client, parent)):
                entry = DelayedEntry.parse(child)
                if entry is None:
                    self.records.report(f"{parent}/{child}", "not a delayed entry name")
                    remaining = True
                elif entry.due_ms > now * 1000:
                    later.append(entry.due_ms / 1000)
                    remaining = True
                else:
                    self._promote(f"{parent}/{child}", entry)
            if not remaining:
                _zk.delete_quietly(self.client, parent)
        return min(later, default=None)

    def _promote(self, entry_path: str, entry: DelayedEntry) -> None:
        """Move one due job from the delayed index into the queue, checking
        that its record is still at the version the entry names."""
        try:
            job, stat = self.records.read(entry.job_id)
        except JobNotFound:    # trashed while it waited: its entry goes too
            _zk.delete_quietly(self.client, entry_path)
            return
        except BoardError as exc:   # not readable with our credentials: skip it
            if isinstance(exc, BoardUnavailable):
                raise
            self.records.report(self.paths.job(entry.job_id), str(exc))
            return
        except MalformedData as exc:
            self.records.quarantine(self.paths.job(entry.job_id), str(exc),
                                    also_delete=(entry_path,))
            return
        if not self.is_live(job, stat.version, entry.version):
            _zk.delete_quietly(self.client, entry_path)
            return
        record = self.paths.job(job.uuid)

        def move(txn: Any) -> None:
            txn.delete(entry_path)
            txn.check(record, stat.version)

        self.commit(move, job, stat.version, due=True)   # a lost race: someone else moved it

    # -- gauges -----------------------------------------------------------------

    def depth(self) -> dict[str, Any]:
        """Waiting jobs per priority and per queue, delayed jobs, and the age
        of the oldest waiting job, from znode stats: one listing per queue,
        one stat per bucket and one record read per queue and priority, never
        a listing of the backlog. Entries not yet moved out of an older
        layout count in the ``default`` queue."""
        waiting: dict[int, int] = {}
        by_queue: dict[str, int] = {}
        oldest: float | None = None
        queues, legacy = self._top()
        buckets = [b for queue in queues for b in self.buckets(queue)] + legacy
        first: dict[tuple[str | None, int], Bucket] = {}
        stats = _zk.stats(self.client, [self.paths.bucket(b) for b in buckets])
        for queue in queues:
            by_queue[queue] = 0
        for bucket, stat in zip(buckets, stats):
            if stat is None or stat.numChildren == 0:
                continue
            waiting[bucket.priority] = waiting.get(bucket.priority, 0) + stat.numChildren
            queue = bucket.queue or "default"
            by_queue[queue] = by_queue.get(queue, 0) + stat.numChildren
            first.setdefault((bucket.queue, bucket.priority), bucket)
        for bucket in first.values():
            listed = self.entries(bucket)
            if not listed or not listed[0]:
                continue
            try:
                job, _ = self.records.read(listed[0][0].job_id)
            except (JobNotFound, MalformedData):
                continue
            oldest = job.created_at if oldest is None else min(oldest, job.created_at)
        delayed_buckets = [f"{self.paths.delayed}/{name}"
                           for name in _zk.children(self.client, self.paths.delayed)]
        delayed = sum(stat.numChildren for stat in _zk.stats(self.client, delayed_buckets)
                      if stat)
        return {"waiting": waiting, "queues": by_queue, "delayed": delayed,
                "oldest_waiting_age": None if oldest is None else max(0.0, time.time() - oldest)}

    # -- layout 1 and 2 -------------------------------------------------------------

    def is_legacy_entry(self, entry_path: str) -> bool:
        """Whether ``entry_path`` is an entry of a layout-2 bucket."""
        return entry_path.rsplit("/", 2)[0] == self.paths.queues

    def migrate_legacy(self) -> int:
        """Move every entry of a layout-1/2 bucket into its job's queue, in
        claim order: per entry, one transaction that deletes the old entry,
        checks the record's version and creates the new entry (the reads
        pipelined). A stale old entry is deleted; a drained old bucket too.
        Safe beside live claimers and posters (each move is guarded; a lost
        race leaves the job to whoever won it). Returns the entries moved."""
        moved = 0
        with _zk.translated("moving queue entries to layout 3"):
            for bucket in self.legacy_buckets():
                listed = self.entries(bucket)
                if listed is None:
                    continue
                parent = self.paths.bucket(bucket)
                entries = listed[0]
                for start in range(0, len(entries), PIPELINE_WINDOW):
                    window = entries[start:start + PIPELINE_WINDOW]
                    pending = [(entry, self.client.get_async(self.paths.job(entry.job_id)))
                               for entry in window]
                    for entry, result in pending:
                        moved += self._move_legacy(f"{parent}/{entry.name}", entry, result,
                                                   restore=bucket.number == RESTORE_BUCKET)
                _zk.delete_quietly(self.client, parent)   # only when drained
        return moved

    def _move_legacy(self, entry_path: str, entry: Entry, result: Any, *,
                     restore: bool) -> int:
        try:
            data, stat = result.get(timeout=READ_TIMEOUT)
            job = self.records.decode(entry.job_id, data)
        except NoNodeError:
            _zk.delete_quietly(self.client, entry_path)
            return 0
        except MalformedData as exc:
            self.records.quarantine(self.paths.job(entry.job_id), str(exc),
                                    also_delete=(entry_path,))
            return 0
        if not self.is_live(job, stat.version, entry.version):
            _zk.delete_quietly(self.client, entry_path)
            return 0
        record = self.paths.job(job.uuid)

        def move(txn: Any) -> None:
            txn.delete(entry_path)
            txn.check(record, stat.version)

        return int(self.commit(move, job, stat.version, restore=restore, due=True)[1] is None)
