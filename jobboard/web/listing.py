"""The jobs table of the console: filters, counts per state, and paging
that never reads the whole board.

How a page is drawn, and why it stays fast with 100,000 waiting jobs: the
board's znode *names* already sort the jobs, so a page walks names in order
and reads only the records it shows.

* ``UNCLAIMED``: the queue buckets (``{inverted priority}-{n}``, at most
  about 1,000 entries each) in claim order, then the delayed buckets. A
  priority filter skips whole buckets by their name; the page lists one
  bucket's children at a time, from the bucket its cursor points into.
* ``CLAIMED`` and ``DEAD``: the children of ``running/`` and ``dead/``.
* any other state, or all: the 256 record shards in order (uuid order); a
  search text that is a uuid prefix (8 or more hex digits) lists one shard.

Records are read in pipelined batches, only as many as the page needs;
filters on record fields (factory, queue, name, age) read on until the page
is full or :data:`SCAN_BUDGET` records were read, and the page then says how
far it got. The cursor of the next page is the sort key of the last name it
used (keyset paging), so page 500 costs what page 1 costs. Counts per state
come from znode stats (children counts of the buckets, ``claims/``,
``dead/`` and the shards), never from records.

How it fails: ZooKeeper errors surface as
:class:`~jobboard.errors.BoardUnavailable`; a bad filter value is an
:class:`~jobboard.errors.InvalidArgument`; records that vanish or do not
validate are left out (the board reports the latter as MALFORMED).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Iterator

from kazoo.exceptions import NoNodeError

from jobboard.board import Board
from jobboard.board.job import Job
from jobboard.board.layout import DelayedBucket, DelayedEntry
from jobboard.errors import InvalidArgument
from jobboard.states import JobState

__all__ = ["JobFilter", "Page", "SCAN_BUDGET", "PAGE_MAX", "list_jobs", "state_counts",
           "job_queue"]

#: Most records one page reads while looking for matches.
SCAN_BUDGET = 5000
#: Largest page.
PAGE_MAX = 500
_BATCH = 100
_UUID_PREFIX = re.compile(r"[0-9a-f]{8}[0-9a-f-]{0,28}")


def job_queue(job: Job) -> str:
    """The job's queue."""
    return job.queue


@dataclass(frozen=True)
class JobFilter:
    """What the jobs table shows (every field optional; all must match).

    Attributes:
        state: one job state.
        priority: exactly this priority.
        factory: a substring of the factory reference.
        queue: the queue name.
        text: a substring of the name (any case) or a uuid prefix.
        min_age: posted at least this many seconds ago.
        max_age: posted at most this many seconds ago.
    """

    state: JobState | None = None
    priority: int | None = None
    factory: str | None = None
    queue: str | None = None
    text: str | None = None
    min_age: float | None = None
    max_age: float | None = None

    @classmethod
    def from_query(cls, query: dict[str, str]) -> "JobFilter":
        """From URL query parameters (``state``, ``priority``, ``factory``,
        ``queue``, ``q``, ``min_age``, ``max_age``); empty ones are ignored.

        Raises:
            InvalidArgument: a value of the wrong form.
        """
        def text(name: str) -> str | None:
            value = (query.get(name) or "").strip()
            return value or None

        def number(name: str, kind: type) -> Any:
            raw = text(name)
            if raw is None:
                return None
            try:
                value = kind(raw)
            except ValueError:
                raise InvalidArgument(f"{name} must be a number, not {raw[:40]!r}",
                                      argument=name) from None
            if value < 0 and name != "priority":
                raise InvalidArgument(f"{name} cannot be negative", argument=name)
            return value

        state = text("state")
        if state is not None:
            try:
                state = JobState(state.upper())
            except ValueError:
                raise InvalidArgument(f"{state[:40]!r} is not a job state", argument="state") \
                    from None
        return cls(state=state, priority=number("priority", int), factory=text("factory"),
                   queue=text("queue"), text=text("q"), min_age=number("min_age", float),
                   max_age=number("max_age", float))

    def to_query(self) -> dict[str, str]:
        """The URL query parameters of this filter (inverse of :meth:`from_query`)."""
        values = {"state": self.state.value if self.state else None,
                  "priority": self.priority, "factory": self.factory, "queue": self.queue,
                  "q": self.text, "min_age": self.min_age, "max_age": self.max_age}
        return {k: str(v) for k, v in values.items() if v is not None}

    @property
    def uuid_prefix(self) -> str | None:
        """The search text when it can only be a uuid prefix."""
        text = (self.text or "").lower()
        return text if _UUID_PREFIX.fullmatch(text) else None

    def matches(self, job: Job, now: float) -> bool:
        if self.state is not None and job.state is not self.state:
            return False
        if self.priority is not None and job.priority != self.priority:
            return False
        if self.factory is not None and self.factory not in job.factory:
            return False
        if self.queue is not None and job_queue(job) != self.queue:
            return False
        if self.text is not None:
            needle = self.text.lower()
            if self.uuid_prefix is not None:
                if not job.uuid.startswith(needle):
                    return False
            elif not job.uuid.startswith(needle) and needle not in job.name.lower():
                return False
        age = now - job.created_at
        if self.min_age is not None and age < self.min_age:
            return False
        if self.max_age is not None and age > self.max_age:
            return False
        return True


@dataclass(frozen=True)
class Page:
    """One page of the jobs table.

    Attributes:
        jobs: the matching jobs, in the listing's order.
        next_cursor: where the next page starts; None on the last page.
        scanned: records read to draw this page.
        partial: the page stopped at :data:`SCAN_BUDGET` records before it
            was full (more matches may follow ``next_cursor``).
        order: how the jobs are ordered ("claim order", "uuid").
    """

    jobs: list[Job]
    next_cursor: str | None
    scanned: int
    partial: bool
    order: str


# -- candidates: (sort key, job id) in listing order, names only -------------------

def _children(board: Board, path: str) -> list[str]:
    try:
        return board.client.retry(board.client.get_children, path)
    except NoNodeError:
        return []


def _waiting(board: Board, filt: JobFilter, after: str | None) -> Iterator[tuple[str, str]]:
    for bucket in board.index.buckets():
        if filt.priority is not None and bucket.priority != filt.priority:
            continue
        group = f"0/{bucket.name}/"
        if after is not None and group + "~" <= after:
            continue      # the whole bucket is before the cursor: not even listed
        listed = board.index.entries(bucket)
        for entry in listed[0] if listed else ():
            key = f"{group}{entry.seq:010d}"
            if after is None or key > after:
                yield key, entry.job_id
    for name in sorted(_children(board, board.paths.delayed)):
        bucket = DelayedBucket.parse(name)
        group = f"1/{name}/"
        if bucket is None or (after is not None and group + "~" <= after):
            continue
        for child in sorted(_children(board, board.paths.delayed_bucket(bucket))):
            entry = DelayedEntry.parse(child)
            key = group + child
            if entry is not None and (after is None or key > after):
                yield key, entry.job_id


def _named(board: Board, path: str, after: str | None) -> Iterator[tuple[str, str]]:
    for name in sorted(_children(board, path)):
        if after is None or name > after:
            yield name, name


def _shards(board: Board, filt: JobFilter, after: str | None) -> Iterator[tuple[str, str]]:
    prefix = filt.uuid_prefix
    shards = [shard for shard in board.paths.shards()
              if (prefix is None or shard[-2:] == prefix[:2])
              and (after is None or shard[-2:] >= after[:2])]
    # List a few shards ahead, pipelined (4, then 8, ... 32 at a time): a page
    # that fills from one shard lists few, a long search waits little.
    ahead = 4
    while shards:
        chunk, shards = shards[:ahead], shards[ahead:]
        ahead = min(2 * ahead, 32)
        pending = [board.client.get_children_async(shard) for shard in chunk]
        for result in pending:
            try:
                names = result.get(timeout=30)
            except NoNodeError:
                continue
            for name in sorted(names):
                if (after is None or name > after) and \
                        (prefix is None or name.startswith(prefix)):
                    yield name, name


def _candidates(board: Board, filt: JobFilter,
                after: str | None) -> tuple[Iterator[tuple[str, str]], str]:
    if filt.state is JobState.UNCLAIMED:
        return _waiting(board, filt, after), "claim order"
    if filt.state is JobState.CLAIMED:
        return _named(board, board.paths.running, after), "uuid"
    if filt.state is JobState.DEAD:
        return _named(board, board.paths.dead, after), "uuid"
    return _shards(board, filt, after), "uuid"


def list_jobs(board: Board, filt: JobFilter, *, cursor: str | None = None, limit: int = 50,
              budget: int = SCAN_BUDGET, now: float | None = None) -> Page:
    """One page of jobs matching ``filt``, starting after ``cursor``.

    Args:
        board: the board.
        filt: what to show.
        cursor: a previous page's ``next_cursor`` (None: the first page).
        limit: jobs per page (1 .. :data:`PAGE_MAX`).
        budget: most records read for this page.

    Raises:
        InvalidArgument: ``limit`` out of range.
        BoardUnavailable: ZooKeeper cannot be reached.
    """
    if not 1 <= limit <= PAGE_MAX:
        raise InvalidArgument(f"limit must be 1..{PAGE_MAX}", argument="limit")
    now = time.time() if now is None else now
    candidates, order = _candidates(board, filt, cursor or None)
    jobs: list[Job] = []
    scanned = 0
    last_key: str | None = None
    seen: set[str] = set()
    size = 0
    while True:
        # The first batch is what the page lacks (all of it when every record
        # matches); batches double while a filter turns records away.
        size = min(_BATCH, max(2 * size, limit - len(jobs)), budget - scanned)
        batch: list[tuple[str, str]] = []
        for key, job_id in candidates:
            if job_id not in seen:
                seen.add(job_id)
                batch.append((key, job_id))
            if len(batch) >= size:
                break
        if not batch:
            return Page(jobs, None, scanned, False, order)
        found = {job.uuid: job for job, _ in board.records.read_many([j for _, j in batch])}
        for key, job_id in batch:
            scanned += 1
            last_key = key
            job = found.get(job_id)
            if job is not None and filt.matches(job, now):
                jobs.append(job)
                if len(jobs) >= limit:
                    return Page(jobs, key, scanned, False, order)
        if scanned >= budget:
            return Page(jobs, last_key, scanned, True, order)


def state_counts(board: Board) -> dict[str, Any]:
    """Jobs per state from znode stats alone (no record is read).

    Returns:
        ``{"UNCLAIMED": n, "CLAIMED": n, "DEAD": n, "FINISHED": n, "total": n,
        "delayed": n, "waiting_by_priority": {priority: n}}``; ``FINISHED``
        counts COMPLETE, FAILED and CANCELLED together (the board keeps no
        index of those), ``UNCLAIMED`` includes the delayed jobs (the
        waiting count is the queue index's).
    """
    depth = board.depth()
    pending = [board.client.exists_async(shard) for shard in board.paths.shards()]
    total = 0
    for result in pending:
        stat = result.get(timeout=30)
        total += stat.numChildren if stat else 0
    claimed, dead = depth["claimed"], depth["dead"]
    # Index entries of jobs cancelled or claimed outside a claimer stay until
    # a claimer drops them: never count more waiting jobs than there can be.
    waiting = min(sum(depth["waiting"].values()) + depth["delayed"],
                  max(0, total - claimed - dead))
    return {"UNCLAIMED": waiting, "CLAIMED": claimed, "DEAD": dead,
            "FINISHED": max(0, total - waiting - claimed - dead), "total": total,
            "delayed": depth["delayed"],
            "waiting_by_priority": {str(p): n for p, n in sorted(depth["waiting"].items())},
            "oldest_waiting_age": depth.get("oldest_waiting_age")}
