"""The znode layout of a board: every path and name, in one place.

::

    {root}/layout                      format marker, written once when the board is set up
    {root}/jobs/{xx}/{uuid}            the job record (msgpack), sharded by the uuid's first
                                       two hex digits (256 shards), for every job in any state
    {root}/queue/{queue}/{bucket}/{uuid}_{version}-{seq}
                                       waiting index: one entry per claimable job, in
                                       the buckets of the job's queue (layout 3)
    {root}/finished/{minute}/{uuid}    finished index: COMPLETE, FAILED and CANCELLED
                                       jobs by the minute they finished (epoch seconds
                                       // 60), for the retention janitor (layout 3)
    {root}/delayed/{bucket}/{due}_{uuid}_{version}-{seq}
                                       not-before index: promoted into the queue when due
    {root}/claims/{uuid}               ephemeral claim, data = owner; czxid = fencing token
    {root}/running/{uuid}              persistent twin of a claim: outlives the claim's
                                       session, so a vanished claim is noticed (reclaim)
    {root}/working/{uuid}              ephemeral: the job's tasks run on this session's
                                       holder; a new holder starts only once it is gone
                                       (or the stop timeout passed): the hand-off
    {root}/keys/{sha256(key)}          idempotency keys: data = job uuid
    {root}/cancel/{uuid}               an admin's request to stop a claimed job
    {root}/suspend/{uuid}              an admin's request to suspend a claimed job at its
                                       next task boundary (its holder watches it)
    {root}/dead/{uuid}                 index of dead-lettered jobs (for counts and listing)
    {root}/conductors/{name}           ephemeral registration of a live conductor
    {root}/locks/...                   named distributed locks (jobboard.locks)
    {root}/leaders/{duty}              elections of the conductor running a fleet duty
                                       (``fsck``, ``scheduler``)
    {root}/schedules/{name}            a schedule's definition (jobboard.schedules)
    {root}/schedules/{name}/status     what the scheduler did for it: cursor, last fire
    {root}/malformed/{n}               quarantine: a record that failed validation, moved
                                       aside with its path, the reason and its bytes

Each queue (``default`` unless a job names another) has its own directory
of buckets, ``{root}/queue/{queue}``; a queue name is a short token
(:data:`QUEUE_PATTERN`: a lowercase letter, then up to 31 of ``a-z0-9_-``),
so it never looks like a bucket name (which starts with a digit). A claimer
lists only the directories of the queues it serves, one bucket at a time:
the cost of a claim does not grow with the number of queues or of waiting
jobs.

Layout 3 (this release) moved the buckets of layout 1 and 2, which sat
directly under ``{root}/queue``, into ``{root}/queue/default``, and added
the finished index. An older board is upgraded by :meth:`Board.upgrade
<jobboard.board.Board.upgrade>` (``jobboard upgrade``, or a conductor of
this release as it starts): every old entry is moved into its job's queue
(one transaction each, checked against the record's version, so nothing is
lost or doubled while conductors run), every finished job is indexed, and
only then the ``layout`` marker says 3. An entry still written to the old
place afterwards (a poster of the old release that was already connected)
is moved by the repair sweep (finding ``old-layout-entry``).

Queue buckets are named ``{inverted priority:05d}-{n:010d}`` so that sorting
bucket names gives claim order: higher priority first, then older buckets. A
bucket holds at most about :data:`BUCKET_SIZE` entries: posters move on to the
next ``n`` once the bucket's sequence counter (its cversion, which ZooKeeper
appends to sequential children) passes the limit. Bucket ``n = 0`` of each
priority receives jobs put back by abandon and reclaim, ahead of the rest.
No listing on the claim path returns more than one bucket, so no
``get_children`` approaches ZooKeeper's 1 MB packet limit, whatever the
backlog. Delayed buckets are named ``{due second:011d}-{n:06d}``.

An entry names the job and the version its record has while the entry is
live (the record version written in the same transaction as the entry).
Every change of a record bumps its version, so an entry name is never used
twice for the life of a board, even when a drained bucket is deleted and made
again and its sequence counter restarts: a claimer holding a stale entry can
only ever delete that stale entry, never a fresh one. Entries written by
layout 1 (``{uuid}-{seq}``, no version) are still read.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from jobboard.errors import InvalidArgument

LAYOUT_VERSION = 3
DEFAULT_QUEUE = "default"
QUEUE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
BUCKET_SIZE = 1000
RESTORE_BUCKET = 0
PRIORITY_MIN = -9999
PRIORITY_MAX = 9999
SEQ_DIGITS = 10
UUID_LEN = 36


def check_priority(priority: int) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidArgument(f"priority must be an int, not {type(priority).__name__}",
                              argument="priority")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidArgument(f"priority {priority} is outside {PRIORITY_MIN}..{PRIORITY_MAX}",
                              argument="priority")
    return priority


def check_queue(queue: str) -> str:
    """``queue`` if it is a queue name (:data:`QUEUE_PATTERN`).

    Raises:
        InvalidArgument: anything else (``argument == "queue"``).
    """
    if not isinstance(queue, str) or not QUEUE_PATTERN.fullmatch(queue):
        raise InvalidArgument(f"queue must be a lowercase letter followed by at most 31 of "
                              f"a-z, 0-9, '_' and '-', not {queue!r}"[:200], argument="queue")
    return queue


def is_queue_name(name: str) -> bool:
    return isinstance(name, str) and QUEUE_PATTERN.fullmatch(name) is not None


@dataclass(frozen=True)
class Bucket:
    """A queue bucket: all its entries share one queue and one priority.
    ``queue`` None: a bucket of layout 1 or 2 (directly under ``{root}/queue``)."""

    priority: int
    number: int
    queue: str | None = DEFAULT_QUEUE

    @property
    def name(self) -> str:
        return f"{PRIORITY_MAX - self.priority:05d}-{self.number:010d}"

    @classmethod
    def parse(cls, name: str, queue: str | None = DEFAULT_QUEUE) -> "Bucket | None":
        inverted, sep, number = name.partition("-")
        if not sep or len(inverted) != 5 or not inverted.isdigit() or not number.isdigit():
            return None
        return cls(PRIORITY_MAX - int(inverted), int(number), queue)


@dataclass(frozen=True)
class DelayedBucket:
    due_second: int
    number: int

    @property
    def name(self) -> str:
        return f"{self.due_second:011d}-{self.number:06d}"

    @classmethod
    def parse(cls, name: str) -> "DelayedBucket | None":
        due, sep, number = name.partition("-")
        if not sep or not due.isdigit() or not number.isdigit():
            return None
        return cls(int(due), int(number))


def parse_minute(name: str) -> int | None:
    """The minute a child of the finished index names (its path's form:
    ten ASCII digits), or None for any other name."""
    if len(name) == 10 and name.isascii() and name.isdigit():
        return int(name)
    return None


def _parse_entry_tail(name: str) -> tuple[str, int | None, int] | None:
    """``{uuid}_{version}-{seq}`` (or layout 1's ``{uuid}-{seq}``) ->
    (job id, version or None, seq); None for anything else."""
    job_id, rest = name[:UUID_LEN], name[UUID_LEN:]
    if len(job_id) != UUID_LEN or len(rest) < SEQ_DIGITS + 2:
        return None
    head, seq = rest[:-SEQ_DIGITS], rest[-SEQ_DIGITS:]
    if not seq.isdigit() or not head.endswith("-"):
        return None
    head = head[:-1]
    if head == "":
        return job_id, None, int(seq)
    if head[0] != "_" or not head[1:].isdigit() or len(head) > 12:
        return None
    return job_id, int(head[1:]), int(seq)


@dataclass(frozen=True)
class Entry:
    """A queue entry name: ``{uuid}_{version}-{seq}`` (version None: layout 1)."""

    name: str
    job_id: str
    version: int | None
    seq: int

    @staticmethod
    def prefix(job_id: str, version: int) -> str:
        return f"{job_id}_{version}-"

    @classmethod
    def parse(cls, name: str) -> "Entry | None":
        parsed = _parse_entry_tail(name)
        return None if parsed is None else cls(name, *parsed)


@dataclass(frozen=True)
class DelayedEntry:
    """A delayed entry name: ``{due ms:013d}_{uuid}_{version}-{seq}``."""

    name: str
    due_ms: int
    job_id: str
    version: int | None

    @staticmethod
    def prefix(due_ms: int, job_id: str, version: int) -> str:
        return f"{due_ms:013d}_{Entry.prefix(job_id, version)}"

    @classmethod
    def parse(cls, name: str) -> "DelayedEntry | None":
        due, sep, rest = name.partition("_")
        parsed = _parse_entry_tail(rest) if sep and due.isdigit() and len(due) == 13 else None
        return None if parsed is None else cls(name, int(due), parsed[0], parsed[1])


class Paths:
    """Absolute paths of one board."""

    def __init__(self, root: str) -> None:
        root = "/" + root.strip("/")
        if root == "/":
            raise InvalidArgument("the board root cannot be '/'", argument="root")
        self.root = root
        self.layout = f"{root}/layout"
        self.jobs = f"{root}/jobs"
        self.queues = f"{root}/queue"
        # The default queue's directory: where layout 2 tools listed "the queue".
        self.queue = self.queue_dir(DEFAULT_QUEUE)
        self.delayed = f"{root}/delayed"
        self.claims = f"{root}/claims"
        self.running = f"{root}/running"
        self.keys = f"{root}/keys"
        self.cancel_requests = f"{root}/cancel"
        self.suspend_requests = f"{root}/suspend"
        self.dead = f"{root}/dead"
        self.conductors = f"{root}/conductors"
        self.locks = f"{root}/locks"
        self.quarantine = f"{root}/malformed"
        self.leaders = f"{root}/leaders"
        self.working = f"{root}/working"
        self.schedules = f"{root}/schedules"
        self.finished = f"{root}/finished"

    def containers(self) -> list[str]:
        return [self.jobs, self.queues, self.queue, self.delayed,
                self.claims, self.running, self.keys, self.cancel_requests,
                self.suspend_requests, self.dead,
                self.conductors, self.locks, self.quarantine, self.working, self.schedules,
                self.finished]

    def shards(self) -> list[str]:
        return [f"{self.jobs}/{n:02x}" for n in range(256)]

    def job(self, job_id: str) -> str:
        return f"{self.jobs}/{job_id[:2]}/{job_id}"

    def queue_dir(self, queue: str) -> str:
        return f"{self.queues}/{queue}"

    def bucket(self, bucket: Bucket) -> str:
        if bucket.queue is None:     # layout 1 and 2
            return f"{self.queues}/{bucket.name}"
        return f"{self.queues}/{bucket.queue}/{bucket.name}"

    def finished_minute(self, minute: int) -> str:
        return f"{self.finished}/{minute:010d}"

    def finished_entry(self, finished_at: float, job_id: str) -> str:
        return f"{self.finished_minute(int(finished_at // 60))}/{job_id}"

    def delayed_bucket(self, bucket: DelayedBucket) -> str:
        return f"{self.delayed}/{bucket.name}"

    def marker_dirs(self) -> tuple[str, ...]:
        """The directories of per-job markers, each child named by its job's
        id: claims, running markers, cancel and suspend requests, dead-letter
        markers (in that order)."""
        return (self.claims, self.running, self.cancel_requests, self.suspend_requests,
                self.dead)

    def markers(self, job_id: str) -> tuple[str, ...]:
        """The marker paths that may name ``job_id`` (see :meth:`marker_dirs`);
        they go with its record. Its working marker is not one: it is
        ephemeral and belongs to a run, which drops it (or its session does)."""
        return tuple(f"{parent}/{job_id}" for parent in self.marker_dirs())

    def claim(self, job_id: str) -> str:
        return f"{self.claims}/{job_id}"

    def running_marker(self, job_id: str) -> str:
        return f"{self.running}/{job_id}"

    def key(self, key: str) -> str:
        return f"{self.keys}/{hashlib.sha256(key.encode()).hexdigest()}"

    def cancel_request(self, job_id: str) -> str:
        return f"{self.cancel_requests}/{job_id}"

    def suspend_request(self, job_id: str) -> str:
        return f"{self.suspend_requests}/{job_id}"

    def dead_marker(self, job_id: str) -> str:
        return f"{self.dead}/{job_id}"

    def working_marker(self, job_id: str) -> str:
        return f"{self.working}/{job_id}"

    def schedule(self, name: str) -> str:
        return f"{self.schedules}/{name}"

    def schedule_status(self, name: str) -> str:
        return f"{self.schedules}/{name}/status"

    def conductor(self, name: str) -> str:
        return f"{self.conductors}/{name}"
