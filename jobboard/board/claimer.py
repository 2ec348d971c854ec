"""The claimer: picks and claims the best waiting job for one owner.

A claimer serves one or more queues, in priority order: claim order is the
first of its queues that has a job waiting, then priority, then age. Jobs
of other queues are never looked at. The claimer lists one queue bucket
at a time (never the whole backlog) and works through a cached copy of it, so
a claim costs a constant number of ZooKeeper operations whatever the backlog:
one read of the job record and one transaction. Live conductors split each
bucket between them by entry sequence number (each takes its own share first,
then steals from the far end of the others'), so claimers spread instead of
herding onto the same head entry.

Watches, not polling, say when to look again: a child watch on the bucket
list of each queue served and on the empty buckets of higher priority than the one being worked
(a post there re-plans the next claim), on the claim set (after a change,
settled for :data:`CLAIMS_SETTLE` so that a busy fleet's claims and consumes
cost a few reads a second, not one per job: the jobs marked running whose
claim is gone are orphans, put back on the board) and on the delayed index
(a timer for the next due job).

How it fails: ZooKeeper errors surface as :class:`BoardUnavailable` from
:meth:`Claimer.claim_next`, after the answers of claims already sent were
collected (a committed claim is never dropped); a job record that does not
validate is quarantined with its entry, at no cost to the other jobs of the
batch; an entry whose job is gone or has moved past the entry's record
version is deleted (an entry naming a newer version than the record read
means the read was stale: the record is read again, never the entry
deleted). A claim whose answer could not be read is checked on the next
call and given back if it landed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Callable

from kazoo.exceptions import NoAuthError, NoNodeError

from jobboard.board import _zk
from jobboard.board._watch import ChildWatch
from jobboard.board.board import Board
from jobboard.board.job import Job, is_job_id
from jobboard.board.layout import DEFAULT_QUEUE, Entry, check_queue
from jobboard.board.ownership import first_claim
from jobboard.board.records import READ_TIMEOUT
from jobboard.errors import BoardError, MalformedData

log = logging.getLogger(__name__)

ORPHAN_SWEEP_SECONDS = 30.0
# Seconds a change of the claim set settles before the orphan check reads it.
CLAIMS_SETTLE = 0.2
MAX_ATTEMPTS_PER_CALL = 64
# Job records of the next few candidates are read ahead, pipelined, so that a
# claim usually costs a single round trip (the transaction); a stale read is
# caught by the transaction's version check and read again.
READ_AHEAD = 8


class Claimer:
    """Claims jobs for ``owner``; one per conductor (not thread-safe: call
    :meth:`claim_next` from one thread).

    Args:
        board: the board to claim from.
        owner: the claim owner (the conductor's name).
        members: optional callable returning the live claimers' names, for
            splitting buckets; by default the board's registered conductors.
        queues: the queues claimed from, first the one served first.
    """

    def __init__(self, board: Board, owner: str, *,
                 members: Callable[[], list[str]] | None = None,
                 queues: tuple[str, ...] | list[str] = (DEFAULT_QUEUE,)) -> None:
        if isinstance(queues, str) or not queues:
            raise ValueError("queues must be a non-empty sequence of queue names")
        self.queues = tuple(dict.fromkeys(check_queue(q) for q in queues))
        self.board = board
        self.owner = owner
        self._avoid: dict[str, float] = {}     # job id -> monotonic time to claim it again
        self._avoid_lock = threading.Lock()    # avoid() comes from the job's thread
        self.conflicts = 0
        self._members_fn = members
        self._members: list[str] = [owner]
        self._wake = threading.Event()
        self._replan = True
        self._candidates: list[str] = []
        self._read_ahead: dict[str, object] = {}
        self._skip: set[str] = set()
        self._suspects: set[str] = set()
        self._claims_changed = False
        self._delayed_dirty = True
        self._next_due: float | None = None
        self._last_sweep = float("-inf")     # the first claim sweeps for orphans
        # Claims sent whose answer was not read, with the working marker's mark
        # when the claim set one.
        self._unsure: dict[str, str | None] = {}
        self._watches: list[ChildWatch] = []
        self._started = False
        self._stopped = False

    def start(self) -> "Claimer":
        """Set the watches. Idempotent."""
        if self._started:
            return self
        for queue in self.queues:    # so that the first post to it is watched
            self.board.index.ensure_queue(queue)
        self._set_watches()
        self._started = True
        self._wake.set()
        return self

    def restart(self) -> None:
        """Set every watch again, on a new session (the old session's watches
        are gone, and kazoo's child watches may have died with it), and look
        at the whole board afresh: replan, promote, sweep for orphans."""
        self._replan = True
        self._delayed_dirty = True
        self._last_sweep = float("-inf")
        self._set_watches()
        self._wake.set()

    def _set_watches(self) -> None:
        # ChildWatch never raises into kazoo's threads and sets itself again
        # after a connection loss or a new session; a new set replaces the old.
        for watch in self._watches:
            watch.stop()
        paths, client = self.board.paths, self.board.client
        specs = [(paths.claims, self._on_claims, CLAIMS_SETTLE),
                 (paths.delayed, self._on_delayed, 0.0)]
        if self._members_fn is None:
            specs.insert(0, (paths.conductors, self._on_members, 0.0))
        self._watches = [ChildWatch(client, path, callback, settle=settle).start()
                         for path, callback, settle in specs]
        for watch in self._watches:     # as kazoo's did: first answers in before returning
            watch.wait_first(5.0)

    def stop(self) -> None:
        self._stopped = True
        for watch in self._watches:
            watch.stop()
        self._watches.clear()
        self._wake.set()

    # -- watch callbacks (kazoo's event thread) ----------------------------------

    def _on_members(self, children: list[str]) -> bool:
        self._members = sorted(children) or [self.owner]
        return not self._stopped

    def _on_claims(self, children: list[str]) -> bool:
        # A claim may have vanished: the next call checks for orphans (one
        # listing of the running markers and one of the claims).
        self._claims_changed = True
        self._wake.set()
        return not self._stopped

    def _on_delayed(self, children: list[str]) -> bool:
        self._delayed_dirty = True
        self._wake.set()
        return not self._stopped

    def _on_queue_change(self, _event: object) -> None:
        self._replan = True
        self._wake.set()

    # -- public -----------------------------------------------------------------

    def wake(self) -> None:
        """Make :meth:`wait_for_work` return now (shutdown, capacity freed)."""
        self._wake.set()

    def avoid(self, job_id: str, seconds: float) -> None:
        """Do not claim ``job_id`` for ``seconds`` (this conductor gave it
        back: another one should get it first). Thread-safe."""
        with self._avoid_lock:
            self._avoid[job_id] = time.monotonic() + max(0.0, seconds)
        self._replan = True

    def _avoided(self) -> set[str]:
        now = time.monotonic()
        with self._avoid_lock:
            for job_id in [j for j, until in self._avoid.items() if until <= now]:
                del self._avoid[job_id]
                self._replan = True
            return set(self._avoid)

    def _is_avoided(self, job_id: str) -> bool:
        with self._avoid_lock:
            until = self._avoid.get(job_id)
        return until is not None and until > time.monotonic()

    def wait_for_work(self, timeout: float) -> bool:
        """Block until something claimable may have appeared (a watch fired, a
        delayed job fell due, a job given back may be claimed again) or
        ``timeout`` passed. True when woken."""
        if self._next_due is not None:
            timeout = max(0.0, min(timeout, self._next_due - time.time()))
        with self._avoid_lock:
            until = min(self._avoid.values(), default=None)
        if until is not None:
            timeout = max(0.0, min(timeout, until - time.monotonic()))
        woken = self._wake.wait(timeout)
        self._wake.clear()
        return woken

    def claim_next(self) -> Job | None:
        """Claim the best job available now, or return None when there is none.

        Raises:
            BoardUnavailable: ZooKeeper cannot be reached.
        """
        claimed = self.claim_batch(1)
        return claimed[0] if claimed else None

    def claim_batch(self, limit: int) -> list[Job]:
        """Claim up to ``limit`` of the best jobs available now. The claim
        transactions are sent together, so ZooKeeper commits them in one go.

        Raises:
            BoardUnavailable: ZooKeeper cannot be reached.
        """
        if not self._started:
            self.start()
        with _zk.translated("claiming"):
            self._refresh_members()
            self._settle_unsure()
            orphan = self._handle_orphans()
            if orphan is not None:
                return [orphan]
            self._promote_due()
            for _ in range(MAX_ATTEMPTS_PER_CALL):
                answers: list[tuple[str, Callable[[], Job | None], str | None]] = []
                error: Exception | None = None
                try:
                    for _ in range(limit + MAX_ATTEMPTS_PER_CALL):
                        if len(answers) >= limit:
                            break
                        entry = self._next_entry(read_ahead=max(READ_AHEAD, limit))
                        if entry is None:
                            break
                        answer = self._send(entry)
                        if answer is not None:
                            answers.append(answer)
                except Exception as exc:  # noqa: BLE001 - collect what was sent first
                    error = exc
                claimed = self._collect(answers)
                if error is not None and not claimed:
                    raise error
                if claimed or not answers:
                    return claimed
        return []

    def _collect(self, answers: list[tuple[str, Callable[[], Job | None], str | None]]
                 ) -> list[Job]:
        """Read every answer; one that cannot be read costs its own job only
        (it is checked on the next call and given back if it landed)."""
        claimed = []
        for job_id, answer, mark in answers:
            try:
                job = answer()
            except Exception as exc:  # noqa: BLE001 - that job alone
                log.warning("claim of job %s: no answer (%s); checking it later", job_id, exc)
                self._unsure[job_id] = mark
                continue
            if job is None:
                self.conflicts += 1
            else:
                claimed.append(job)
        return claimed

    def _settle_unsure(self) -> None:
        """Give back claims that landed although their answer was lost, with
        the working marker such a claim set (no run of ours will drop it)."""
        for job_id, mark in sorted(self._unsure.items()):
            try:
                if self.board.holds_claim(job_id):
                    self.board.abandon(job_id, self.owner)
                    log.info("job %s: a claim whose answer was lost had landed; "
                             "given back", job_id)
                if mark is not None:
                    self.board.stop_working(job_id, mark)
            except BoardError as exc:
                log.warning("job %s: cannot settle a lost claim answer yet: %s", job_id, exc)
                continue
            del self._unsure[job_id]

    # -- orphans and delayed jobs ------------------------------------------------

    def _refresh_members(self) -> None:
        if self._members_fn is not None:
            self._members = sorted(self._members_fn()) or [self.owner]

    def _handle_orphans(self) -> Job | None:
        now = time.monotonic()
        if self._claims_changed or now - self._last_sweep > ORPHAN_SWEEP_SECONDS:
            self._claims_changed = False
            try:
                self._suspects.update(self.board.orphans())
            except BaseException:
                self._claims_changed = True      # look again on the next call
                raise
            self._last_sweep = now
        if not self._suspects:
            return None
        suspects = {job_id for job_id in self._suspects if is_job_id(job_id)}
        self._suspects = set()
        client = self.board.client
        try:
            markers = [(job_id, client.exists_async(self.board.paths.running_marker(job_id)))
                       for job_id in suspects]
            orphans = [job_id for job_id, result in markers
                       if result.get(timeout=READ_TIMEOUT)]
        except BaseException:
            self._suspects.update(suspects)      # not settled: again on the next call
            raise
        for n, job_id in enumerate(orphans):
            job = self.board.restore_orphan(job_id, me=self.owner)
            if job is not None:
                self._suspects.update(orphans[n + 1:])
                return job
        return None

    def _promote_due(self) -> None:
        """Move due delayed jobs into the queue; remember when the next is due."""
        if not self._delayed_dirty and (self._next_due is None or self._next_due > time.time()):
            return
        self._delayed_dirty = False
        try:
            self._next_due = self.board.index.promote_due()
        except Exception:
            self._delayed_dirty = True    # look again on the next call
            raise
        self._replan = True

    # -- the queue ----------------------------------------------------------------

    def _next_entry(self, read_ahead: int = READ_AHEAD) -> str | None:
        """The next candidate (skipped entries are left out by _plan)."""
        if self._replan or not self._candidates:
            self._plan()
        if not self._candidates:
            return None
        for path in self._candidates[:read_ahead]:
            if path not in self._read_ahead:
                job_id = path.rsplit("/", 1)[1][:36]
                self._read_ahead[path] = self.board.client.get_async(
                    self.board.paths.job(job_id))
        return self._candidates.pop(0)

    def _plan(self) -> None:
        """Find the first non-empty bucket of the first queue that has one,
        and order its entries for us."""
        self._replan = False
        self._candidates = []
        self._read_ahead = {}
        avoided = self._avoided()
        for queue in self.queues:
            if self._plan_queue(queue, avoided):
                return

    def _plan_queue(self, queue: str, avoided: set[str]) -> bool:
        index = self.board.index
        for bucket in index.buckets(queue, watch=self._on_queue_change):
            listed = index.entries(bucket)
            if listed is None:
                continue
            path = self.board.paths.bucket(bucket)
            entries = [e for e in listed[0] if f"{path}/{e.name}" not in self._skip
                       and e.job_id not in avoided]
            if entries:
                self._candidates = self._order(path, entries)
                return True
            if listed[1].numChildren:
                continue  # only garbage, quarantine leftovers or jobs we gave back
            if index.drop_if_drained(bucket, listed[1]):
                continue   # drained for good: posters moved on
            # Empty but current: a post here must re-plan us (it may outrank
            # the bucket we are about to work on).
            if index.watch_bucket(bucket, self._on_queue_change):
                self._replan = True
        return False

    def _drop(self, entry_path: str) -> None:
        """Delete a stale entry; one that cannot be deleted (it has children)
        is skipped from now on, never met again on every pass."""
        if not self.board.index.remove(entry_path):
            self._skip.add(entry_path)

    def _order(self, path: str, entries: list[Entry]) -> list[str]:
        """Our share of the bucket, oldest first; only when it is empty (in a
        fresh listing) the others' shares, from the far end."""
        members = self._members
        count = len(members)
        index = members.index(self.owner) if self.owner in members else hash(self.owner) % count
        ordered = [e for e in entries if e.seq % count == index]
        if not ordered:
            ordered = entries[::-1]
        return [f"{path}/{e.name}" for e in ordered]

    def _send(self, entry_path: str) -> tuple[str, Callable[[], Job | None], str | None] | None:
        """Send the claim for one entry (its record read ahead): the job id, the
        call that reads the answer, and the mark of the working marker the
        claim sets (a first claim), else None. None when the entry turned out
        stale, its record malformed, or the job dead-lettered."""
        entry = Entry.parse(entry_path.rsplit("/", 1)[1])
        if self._is_avoided(entry.job_id):
            return None     # given back by us after this bucket was planned
        board = self.board
        path = board.paths.job(entry.job_id)
        pending = self._read_ahead.pop(entry_path, None)
        for fresh in (False, True):
            try:
                data, stat = (pending.get(timeout=READ_TIMEOUT) if pending is not None and not fresh
                              else board.client.retry(board.client.get, path))
            except NoNodeError:   # trashed or quarantined: the entry is stale
                self._drop(entry_path)
                return None
            except NoAuthError:   # a record this client may not read: skip it, alone
                board.records.report(path, "not readable with this board's credentials")
                self._drop(entry_path)
                return None
            try:
                job = board.records.decode(entry.job_id, data)
            except MalformedData as exc:
                self._skip.add(entry_path)
                board.records.quarantine(path, str(exc), version=stat.version, data=data,
                                         also_delete=(entry_path,))
                return None
            if board.index.is_live(job, stat.version, entry.version):
                break
            if entry.version is not None and entry.version > stat.version and not fresh:
                continue    # the read ahead is older than the entry: read again
            if entry.version is None or entry.version <= stat.version:
                self._drop(entry_path)   # the record moved past this entry
            else:
                self._skip.add(entry_path)   # newer than its record: never claimable
            return None
        if job.deaths >= board.max_claims:
            self._skip.add(entry_path)
            board.dead_letter(job, stat.version, entry_path,
                              f"its holder died or crashed {job.deaths} times while "
                              f"running it (limit {board.max_claims})")
            return None
        mark = replace(job, claims=job.claims + 1).run_mark if first_claim(job) else None
        return job.uuid, board.take_async(job, stat.version, self.owner, entry=entry_path,
                                          mark_working=True), mark
