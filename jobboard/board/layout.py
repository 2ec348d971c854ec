"""The znode layout of a board: every path and name, in one place.

::

    {root}/layout                      format marker, written once when the board is set up
    {root}/jobs/{xx}/{uuid}            the job record (msgpack), sharded by the uuid's first
                                       two hex digits (256 shards), for every job in any state
    {root}/queue/{bucket}/{uuid}-{seq} waiting index: one entry per claimable job
    {root}/delayed/{bucket}/{due}_{uuid}-{seq}
                                       not-before index: promoted into the queue when due
    {root}/claims/{uuid}               ephemeral claim, data = owner; czxid = fencing token
    {root}/running/{uuid}              persistent twin of a claim: outlives the claim's
                                       session, so a vanished claim is noticed (reclaim)
    {root}/keys/{sha256(key)}          idempotency keys: data = job uuid
    {root}/cancel/{uuid}               an admin's request to stop a claimed job
    {root}/dead/{uuid}                 index of dead-lettered jobs (for counts and listing)
    {root}/conductors/{name}           ephemeral registration of a live conductor
    {root}/locks/...                   named distributed locks (jobboard.locks)

Queue buckets are named ``{inverted priority:05d}-{n:010d}`` so that sorting
bucket names gives claim order: higher priority first, then older buckets. A
bucket holds at most about :data:`BUCKET_SIZE` entries: posters move on to the
next ``n`` once the bucket's sequence counter (its cversion, which ZooKeeper
appends to sequential children) passes the limit. Bucket ``n = 0`` of each
priority receives jobs put back by abandon and reclaim, ahead of the rest.
No listing on the claim path returns more than one bucket, so no
``get_children`` approaches ZooKeeper's 1 MB packet limit, whatever the
backlog. Delayed buckets are named ``{due second:011d}-{n:06d}``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

LAYOUT_VERSION = 1
BUCKET_SIZE = 1000
RESTORE_BUCKET = 0
PRIORITY_MIN = -9999
PRIORITY_MAX = 9999
SEQ_DIGITS = 10
UUID_LEN = 36


def check_priority(priority: int) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority {priority} outside [{PRIORITY_MIN}, {PRIORITY_MAX}]")
    return priority


@dataclass(frozen=True)
class Bucket:
    """A queue bucket: all its entries share one priority."""

    priority: int
    number: int

    @property
    def name(self) -> str:
        return f"{PRIORITY_MAX - self.priority:05d}-{self.number:010d}"

    @classmethod
    def parse(cls, name: str) -> "Bucket | None":
        inverted, sep, number = name.partition("-")
        if not sep or len(inverted) != 5 or not inverted.isdigit() or not number.isdigit():
            return None
        return cls(PRIORITY_MAX - int(inverted), int(number))


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


@dataclass(frozen=True)
class Entry:
    """A queue entry name: ``{uuid}-{seq}``."""

    job_id: str
    seq: int

    @classmethod
    def parse(cls, name: str) -> "Entry | None":
        job_id, seq = name[:UUID_LEN], name[UUID_LEN + 1:]
        if len(name) != UUID_LEN + 1 + SEQ_DIGITS or name[UUID_LEN] != "-" or not seq.isdigit():
            return None
        return cls(job_id, int(seq))


@dataclass(frozen=True)
class DelayedEntry:
    """A delayed entry name: ``{due ms:013d}_{uuid}-{seq}``."""

    due_ms: int
    job_id: str

    @staticmethod
    def prefix(due_ms: int, job_id: str) -> str:
        return f"{due_ms:013d}_{job_id}-"

    @classmethod
    def parse(cls, name: str) -> "DelayedEntry | None":
        due, sep, rest = name.partition("_")
        if not sep or not due.isdigit() or len(rest) != UUID_LEN + 1 + SEQ_DIGITS:
            return None
        return cls(int(due), rest[:UUID_LEN])


class Paths:
    """Absolute paths of one board."""

    def __init__(self, root: str) -> None:
        root = "/" + root.strip("/")
        if root == "/":
            raise ValueError("the board root cannot be '/'")
        self.root = root
        self.layout = f"{root}/layout"
        self.jobs = f"{root}/jobs"
        self.queue = f"{root}/queue"
        self.delayed = f"{root}/delayed"
        self.claims = f"{root}/claims"
        self.running = f"{root}/running"
        self.keys = f"{root}/keys"
        self.cancel_requests = f"{root}/cancel"
        self.dead = f"{root}/dead"
        self.conductors = f"{root}/conductors"
        self.locks = f"{root}/locks"

    def containers(self) -> list[str]:
        return [self.jobs, self.queue, self.delayed, self.claims, self.running,
                self.keys, self.cancel_requests, self.dead, self.conductors, self.locks]

    def shards(self) -> list[str]:
        return [f"{self.jobs}/{n:02x}" for n in range(256)]

    def job(self, job_id: str) -> str:
        return f"{self.jobs}/{job_id[:2]}/{job_id}"

    def bucket(self, bucket: Bucket) -> str:
        return f"{self.queue}/{bucket.name}"

    def entry_prefix(self, bucket: Bucket, job_id: str) -> str:
        return f"{self.queue}/{bucket.name}/{job_id}-"

    def delayed_bucket(self, bucket: DelayedBucket) -> str:
        return f"{self.delayed}/{bucket.name}"

    def claim(self, job_id: str) -> str:
        return f"{self.claims}/{job_id}"

    def running_marker(self, job_id: str) -> str:
        return f"{self.running}/{job_id}"

    def key(self, key: str) -> str:
        return f"{self.keys}/{hashlib.sha256(key.encode()).hexdigest()}"

    def cancel_request(self, job_id: str) -> str:
        return f"{self.cancel_requests}/{job_id}"

    def dead_marker(self, job_id: str) -> str:
        return f"{self.dead}/{job_id}"

    def conductor(self, name: str) -> str:
        return f"{self.conductors}/{name}"
