"""The repair sweep (``jobboard fsck [--repair]``): every layout invariant,
checked and put right.

The invariants, and what a repair does when one is broken:

=========================  ==================================================
finding                    repair
=========================  ==================================================
``malformed-record``       a record that does not validate: moved aside
                           (quarantine) with its index entries, listed as
                           MALFORMED
``stray-znode``            a name under the shards, the queue, the delayed
                           or the finished index that is not what the layout
                           puts there: moved aside
``unqueued-job``           an UNCLAIMED job with no live entry (it would wait
                           forever): a new entry, checked against the record
                           version that was judged
``stale-entry``            an entry whose job is gone, not waiting, or at
                           another record version: deleted. Likewise an
                           entry of the finished index whose job is gone, not
                           finished, or finished in another minute (a retry
                           or a trash of an older release left one): deleted,
                           checked against the record version judged
``old-layout-entry``       a live entry in a bucket of layout 1 or 2 (directly
                           under ``{root}/queue``; a poster of an older
                           release): moved into its job's queue
``unindexed-job``          a COMPLETE, FAILED or CANCELLED job with no entry
                           in the finished index (the retention janitor would
                           never remove it): the entry is made, checked
                           against the record version judged
``orphan``                 a running marker without a claim: the job is put
                           back (as a claimer does when it sees it)
``claimed-without-holder`` a CLAIMED record with neither claim nor running
                           marker: put back on the queue
``claim-not-running``      a claim (or running marker) whose job is gone,
                           finished or not CLAIMED: deleted
``claim-without-marker``   a claim without its running marker (its holder's
                           consume would fail): the marker is made
``dangling-key``           an idempotency key pointing to no job, or to a
                           job posted with another key: deleted
``dead-marker``            a dead-letter marker out of step with the record:
                           made or deleted
``stale-cancel``           a cancel request for a job that is not CLAIMED:
                           for an UNCLAIMED job (the request raced with a
                           put-back) the job is cancelled, as its next holder
                           would have done; otherwise deleted
``stray-suspend``          a suspend request for a job that is not CLAIMED:
                           for an UNCLAIMED job (the request raced with a
                           put-back) the job is suspended, as its next holder
                           would have done; otherwise deleted. A SUSPENDED
                           job itself is consistent with no entry and no claim
``unreadable``             a record this client may not read (another ACL):
                           reported, left alone
=========================  ==================================================

How a sweep goes, and what it holds. The claims, running markers, dead
markers, cancel and suspend requests are listed first (names only: one at
most per job running, dead or asked to stop). Then the shards
(``{root}/jobs/{xx}``), one at a time: the shard's records are read
(pipelined) and checked against those markers, and only compact traces of
them are kept: the id and record version of each waiting job, the id and
minute of each finished one, the key of each keyed one. Then the queue
index, the finished index and the keys are listed, a bucket, a minute or a
window at a time, and compared with those traces. So a sweep holds the
records of one shard, the listing of one bucket and a few dozen bytes per
waiting, finished or keyed job, never the records of the whole board.

Why what it reports is true now: its picture of the board is not taken at
one instant, and on a busy board jobs are posted, claimed and finished while
it is taken. Nothing is reported from the picture alone: what looks wrong is
judged again (a window of suspects at a time, the reads pipelined) from the
job's record read anew and from the znode concerned (marker, index entry,
key) as it is now, and reported only when it is still wrong and the record
did not change while it was judged (it is read a third time). A job that
only moved on is let go (counted; one DEBUG line per sweep): if something is
wrong with it, the next sweep sees it.

Why it is safe to run beside live conductors and posters: every state change
of the board is one transaction, so the only broken states are those a bug,
a lost race of an older release or a hostile writer left; and every repair
(:mod:`jobboard.board.fixes`) reads the record again and acts in a
transaction guarded by the record's version (or by asserting that no claim
exists), so a job that moved on meanwhile is left alone. The records are
read before the indexes are listed, and the delayed index before the queue,
so a job posted or promoted during the sweep is never taken for a job
without an entry.

Cost: one read of every record and one listing of every index bucket, plus
two reads for each suspect (mostly jobs that moved during the sweep), and a
second listing of the queue index when a waiting job still looks
unqueued after its re-read (on a busy board, most sweeps: a job posted or
put back while the index was listed); run by one conductor at a time
(elected), every ``--fsck-interval`` seconds.

How it fails: ZooKeeper unreachable raises
:class:`~jobboard.errors.BoardUnavailable` (what was repaired stays
repaired); a repair ZooKeeper refuses, or whose record turns out malformed,
is reported as not repaired.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any, Callable, Iterator, NamedTuple

from kazoo.exceptions import NoAuthError, NoNodeError, ZookeeperError

from jobboard.board import _zk
from jobboard.board.fixes import Fixes
from jobboard.board.job import Job, is_job_id
from jobboard.board.layout import parse_minute
from jobboard.board.ownership import finished_entry
from jobboard.board.records import PIPELINE_WINDOW, READ_TIMEOUT
from jobboard.errors import MalformedData
from jobboard.states import JobState

log = logging.getLogger(__name__)

#: Every kind of finding, in the order a sweep lists them.
KINDS = ("malformed-record", "unreadable", "stray-znode", "unqueued-job", "stale-entry",
         "old-layout-entry", "unindexed-job", "orphan", "claimed-without-holder",
         "claim-not-running", "claim-without-marker", "dangling-key", "dead-marker",
         "stale-cancel", "stray-suspend")
_RANK = {kind: n for n, kind in enumerate(KINDS)}


@dataclass
class Finding:
    """One broken invariant: what, where, and whether it was put right."""

    kind: str
    path: str
    detail: str
    job_id: str | None = None
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Repair:
    """Checks (and repairs) one board's layout.

    Args:
        fixes: the repairs, with the board's collaborators (client, paths,
            records, queue index) the checks read through.
    """

    def __init__(self, fixes: Fixes) -> None:
        self.fixes = fixes
        self.client = fixes.client
        self.paths = fixes.paths
        self.records = fixes.records
        self.index = fixes.index

    def sweep(self, *, fix: bool = False) -> list[Finding]:
        """Check every invariant; with ``fix``, repair what is broken.

        Raises:
            BoardUnavailable: ZooKeeper unreachable.
        """
        with _zk.translated("checking the board"):
            return Sweep(self, fix).run()


class Verdict(NamedTuple):
    """What a check finds wrong, and the repair that puts it right."""

    kind: str
    path: str
    detail: str
    repair: Callable[[], bool]


@dataclass(frozen=True)
class Now:
    """A record as read: ``job`` None when it is gone (``version`` -1) or
    does not validate (then ``reason`` says why, ``data`` holds its bytes)."""

    job: Job | None
    version: int = -1
    reason: str | None = None
    data: bytes = b""


GONE = Now(None)
# (job, record version, has(path)) -> what is wrong, or None
Judge = Callable[[Job | None, int, Callable[[str], bool]], Verdict | None]


class Sweep:
    """One pass over the board (see the module docstring).

    :meth:`run` takes the steps in order; a test may take them itself and
    change the board between them: :meth:`list_markers`, then for each
    shard :meth:`read_shard`, :meth:`check_shard` and :meth:`remember`,
    then :meth:`check_queue_index`, :meth:`check_finished_index` and
    :meth:`check_keys`. Each step reports only what its re-reads confirm
    (:meth:`confirm`); ``findings`` is what was reported, ``dismissed`` how
    many suspects turned out to have moved on.
    """

    def __init__(self, repair: Repair, fix: bool) -> None:
        self.r = repair
        self.fix = fix
        self.fixes = repair.fixes
        self.findings: list[Finding] = []
        self.dismissed = 0
        self.pending: list[tuple[str, Callable[[Now], Verdict | None]]] = []
        # marker directory -> shard ("xx", "" for names that are no job id) -> names
        self.markers: dict[str, dict[str, set[str]]] = {}
        # compact traces of the shards read, for the indexes listed after them
        self.waiting: dict[str, int] = {}          # UNCLAIMED job -> record version
        self.finished: dict[str, int] = {}         # finished job -> minute of its entry
        self.keyed: set[tuple[str, str]] = set()   # (key znode name, job id)
        self.malformed: dict[str, bool] = {}       # malformed job -> moved aside

    def run(self) -> list[Finding]:
        self.list_markers()
        for shard in self.r.paths.shards():
            jobs = self.read_shard(shard)
            self.check_shard(shard, jobs)
            self.remember(jobs)
        self.check_shard("", {})                   # markers that name no job id
        self.check_queue_index()
        self.check_finished_index()
        self.check_keys()
        if self.dismissed:
            log.debug("fsck: %d suspect(s) had only moved on, not reported", self.dismissed)
        return sorted(self.findings, key=lambda f: _RANK.get(f.kind, len(KINDS)))

    def found(self, kind: str, path: str, detail: str, job_id: str | None,
              action: Callable[[], bool]) -> None:
        finding = Finding(kind, path, detail, job_id)
        if self.fix:
            try:
                finding.repaired = bool(action())
            except MalformedData as exc:
                finding.detail += f" (record turned out malformed: {exc})"
            except ZookeeperError as exc:   # this znode alone (e.g. not ours to touch)
                finding.detail += f" (not repaired: ZooKeeper refused, {type(exc).__name__})"
        self.findings.append(finding)
        log.warning("fsck: %s %s: %s%s", kind, path, detail,
                    " (repaired)" if finding.repaired else "")

    def stray(self, path: str, why: str) -> None:
        self.found("stray-znode", path, why, None, lambda: self.fixes.move_aside(path, why))

    # -- judging twice ----------------------------------------------------------------

    def suspect(self, job_id: str, recheck: Callable[[Now], Verdict | None]) -> None:
        """Something about ``job_id`` looked wrong in the sweep's picture:
        ``recheck`` judges it again from its record read anew (see
        :meth:`confirm`)."""
        self.pending.append((job_id, recheck))
        if len(self.pending) >= PIPELINE_WINDOW:
            self.confirm()

    def confirm(self) -> None:
        """Judge the suspects again, from their records read anew and the
        znodes concerned as they are now; report what is still wrong, unless
        the record changed meanwhile (read once more after judging)."""
        pending, self.pending = self.pending, []
        before = self.reread([job_id for job_id, _ in pending])
        judged: list[tuple[str, int, Verdict]] = []
        for job_id, recheck in pending:
            now = before[job_id]
            if now is not None and (verdict := recheck(now)) is not None:
                judged.append((job_id, now.version, verdict))
            else:
                self.dismissed += 1
        after = self.reread([job_id for job_id, _, _ in judged])
        for job_id, version, verdict in judged:
            now = after[job_id]
            if now is None or now.version != version:
                self.dismissed += 1
                continue
            self.found(verdict.kind, verdict.path, verdict.detail,
                       job_id if is_job_id(job_id) else None, verdict.repair)

    def judge(self, job_id: str, known: tuple[Job, int] | None, verdict_of: Judge) -> None:
        """Judge ``job_id`` by the sweep's picture (``known``: its record as
        read, the markers as listed); a suspect when something is wrong."""
        job, version = known if known is not None else (None, -1)
        if verdict_of(job, version, self.listed) is not None:
            self.suspect(job_id, lambda now: verdict_of(now.job, now.version, self.exists))

    def reread(self, ids: list[str]) -> dict[str, Now | None]:
        """The records of ``ids`` as they are now (reads pipelined); None
        for one this client may not read. A name that is no job id has no
        record (GONE)."""
        pending = {job_id: self.r.client.get_async(self.r.paths.job(job_id))
                   for job_id in dict.fromkeys(ids) if is_job_id(job_id)}
        out: dict[str, Now | None] = {job_id: GONE for job_id in ids}
        for job_id, result in pending.items():
            out[job_id] = self.settle(job_id, result)
        return out

    def settle(self, job_id: str, result: Any) -> Now | None:
        try:
            data, stat = result.get(timeout=READ_TIMEOUT)
        except NoNodeError:
            return GONE
        except NoAuthError:
            return None
        try:
            return Now(self.r.records.decode(job_id, data), stat.version)
        except MalformedData as exc:
            return Now(None, stat.version, str(exc), data)

    def exists(self, path: str) -> bool:
        return self.r.client.retry(self.r.client.exists, path) is not None

    def listed(self, path: str) -> bool:
        parent, name = path.rsplit("/", 1)
        return name in self.markers.get(parent, {}).get(_shard_of(name), ())

    # -- shards -----------------------------------------------------------------------

    def list_markers(self) -> None:
        """List the marker directories, names grouped by their job's shard."""
        p = self.r.paths
        for parent in p.marker_dirs():
            grouped: dict[str, set[str]] = defaultdict(set)
            for name in _zk.children(self.r.client, parent):
                grouped[_shard_of(name)].add(name)
            self.markers[parent] = grouped

    def read_shard(self, shard: str) -> dict[str, tuple[Job, int]]:
        """The records of one shard (a path of :meth:`Paths.shards`), kept
        without their payloads; strays, malformed and unreadable records
        are judged here."""
        r = self.r
        ids, strays = r.records.scan_shard(shard)
        for path in strays:
            self.stray(path, "not a job id of this shard")
        jobs: dict[str, tuple[Job, int]] = {}
        for start in range(0, len(ids), PIPELINE_WINDOW):
            pending = [(job_id, r.client.get_async(r.paths.job(job_id)))
                       for job_id in ids[start:start + PIPELINE_WINDOW]]
            for job_id, result in pending:
                now = self.settle(job_id, result)
                if now is None:
                    self.found("unreadable", r.paths.job(job_id),
                               "not readable with this board's credentials", job_id,
                               lambda: False)
                elif now.reason is not None:
                    self.suspect(job_id, partial(self.malformed_verdict, job_id))
                elif now.job is not None:
                    # the checks read a record's state, version, key and finish
                    # time (a repair reads the record again): not its payload
                    jobs[job_id] = (replace(now.job, args={}, store={}, details={},
                                            history=(), outcome=None), now.version)
        self.confirm()       # a malformed record is moved aside before its markers are judged
        return jobs

    def check_shard(self, shard: str, jobs: dict[str, tuple[Job, int]]) -> None:
        """Judge the jobs of one shard against the markers naming them
        (``shard`` "": the markers that name no job id)."""
        p = self.r.paths
        key = shard.rsplit("/", 1)[-1]
        names = {parent: groups.get(key, set()) for parent, groups in self.markers.items()}
        claimed = {job_id for job_id, (job, _) in jobs.items() if job.state is JobState.CLAIMED}
        dead = {job_id for job_id, (job, _) in jobs.items() if job.state is JobState.DEAD}
        for job_id in sorted(names[p.claims] | names[p.running] | claimed):
            self.judge(job_id, jobs.get(job_id), partial(self.claim_verdict, job_id))
        for job_id in sorted(names[p.dead] | dead):
            self.judge(job_id, jobs.get(job_id), partial(self.dead_verdict, job_id))
        for job_id in sorted(names[p.cancel_requests]):
            self.judge(job_id, jobs.get(job_id), partial(self.cancel_verdict, job_id))
        for job_id in sorted(names[p.suspend_requests]):
            self.judge(job_id, jobs.get(job_id), partial(self.suspend_verdict, job_id))
        self.confirm()
        for groups in self.markers.values():    # judged: not needed any more
            groups.pop(key, None)

    def remember(self, jobs: dict[str, tuple[Job, int]]) -> None:
        """Keep what the index checks need of a shard's jobs: ids, versions,
        minutes and keys, not records."""
        for job_id, (job, version) in jobs.items():
            if job.state is JobState.UNCLAIMED:
                self.waiting[job_id] = version
            if (entry := finished_entry(self.r.paths, job)) is not None:
                self.finished[job_id] = int(entry.rsplit("/", 2)[1])
            if job.key is not None:
                self.keyed.add((self.r.paths.key(job.key).rsplit("/", 1)[1], job_id))

    def malformed_verdict(self, job_id: str, now: Now) -> Verdict | None:
        if now.reason is None:
            return None
        self.malformed.setdefault(job_id, False)
        return Verdict("malformed-record", self.r.paths.job(job_id), now.reason,
                       lambda: self.quarantine(job_id, now))

    def quarantine(self, job_id: str, now: Now) -> bool:
        """Move a malformed record aside (its index entries go when they are
        listed); only while it is at the version judged."""
        moved = self.fixes.quarantine(job_id, now.reason or "malformed", now.version, now.data)
        self.malformed[job_id] = moved
        return moved

    def of_malformed(self, path: str, job_id: str) -> bool:
        """Whether ``path`` is an index entry of a malformed record: part of
        that finding, deleted once the record was moved aside."""
        if job_id not in self.malformed:
            return False
        if self.malformed[job_id]:
            _zk.delete_quietly(self.r.client, path)
        return True

    # -- claims and running markers ------------------------------------------------

    def claim_verdict(self, job_id: str, job: Job | None, version: int,
                      has: Callable[[str], bool]) -> Verdict | None:
        p = self.r.paths
        claim, running = has(p.claim(job_id)), has(p.running_marker(job_id))
        held = job is not None and job.state is JobState.CLAIMED
        if not (claim or running):
            if held:
                return Verdict("claimed-without-holder", p.job(job_id),
                               "CLAIMED with neither claim nor running marker",
                               lambda: self.fixes.release(job_id, version))
            return None
        if not held:
            state = "gone" if job is None else str(job.state)
            return Verdict("claim-not-running", p.claim(job_id),
                           f"a claim or running marker for a job that is {state}",
                           lambda: self.fixes.drop_claim(job_id))
        if not claim:
            return Verdict("orphan", p.running_marker(job_id), "running marker without a claim",
                           lambda: self.fixes.restore(job_id))
        if not running:
            return Verdict("claim-without-marker", p.claim(job_id),
                           "a claim without its running marker (its consume would fail)",
                           lambda: self.fixes.mark_running(job_id))
        return None

    # -- dead markers, cancel and suspend requests ------------------------------------

    def dead_verdict(self, job_id: str, job: Job | None, version: int,
                     has: Callable[[str], bool]) -> Verdict | None:
        path = self.r.paths.dead_marker(job_id)
        dead = job is not None and job.state is JobState.DEAD
        if has(path) and not dead:
            return Verdict("dead-marker", path, "its job is gone or in another state",
                           lambda: self.fixes.drop_marker(path, job_id, _is_dead))
        if dead and not has(path):
            return Verdict("dead-marker", path, "a DEAD job without its marker",
                           lambda: self.fixes.make_dead_marker(job_id))
        return None

    def cancel_verdict(self, job_id: str, job: Job | None, version: int,
                       has: Callable[[str], bool]) -> Verdict | None:
        return self.request_verdict("stale-cancel", self.r.paths.cancel_request(job_id),
                                    job_id, job, has, ("cancel", "cancelled"),
                                    self.fixes.apply_cancel, _is_claimed)

    def suspend_verdict(self, job_id: str, job: Job | None, version: int,
                        has: Callable[[str], bool]) -> Verdict | None:
        return self.request_verdict("stray-suspend", self.r.paths.suspend_request(job_id),
                                    job_id, job, has, ("suspend", "suspended"),
                                    self.fixes.apply_suspend, _is_live)

    def request_verdict(self, kind: str, path: str, job_id: str, job: Job | None,
                        has: Callable[[str], bool], words: tuple[str, str],
                        honour: Callable[[str], bool],
                        belongs: Callable[[Job], bool]) -> Verdict | None:
        """An admin's request (cancel, suspend) for a job that is not
        CLAIMED: for a waiting job (the request raced with a put-back) it is
        honoured, as the job's next holder would have; otherwise deleted."""
        if not has(path) or (job is not None and job.state is JobState.CLAIMED):
            return None
        action, done = words
        if job is not None and job.state is JobState.UNCLAIMED:
            return Verdict(kind, path, f"a {action} request for a waiting job (it raced "
                           f"with a put-back): the job is {done}", lambda: honour(job_id))
        return Verdict(kind, path, f"a {action} request for a job that is gone or not "
                       "running", lambda: self.fixes.drop_marker(path, job_id, belongs))

    # -- the queue index ----------------------------------------------------------------

    def check_queue_index(self) -> None:
        """Every entry against the waiting jobs remembered; then the waiting
        jobs no live entry was listed for."""
        index = self.r.index
        for path, job_id, entry_version in self.queue_entries(report=True):
            if self.of_malformed(path, job_id):
                continue
            version = self.waiting.get(job_id)
            if version is not None and entry_version in (None, version):
                del self.waiting[job_id]                      # it has its entry
                if not index.is_legacy_entry(path):
                    continue
            self.suspect(job_id, partial(self.entry_verdict, path, job_id, entry_version))
        self.confirm()
        self.check_unqueued()

    def entry_verdict(self, path: str, job_id: str, entry_version: int | None,
                      now: Now) -> Verdict | None:
        index = self.r.index
        if now.job is not None and index.is_live(now.job, now.version, entry_version):
            # put back or promoted since it was read: queued, all the same
            self.waiting.pop(job_id, None)
            if index.is_legacy_entry(path) and self.exists(path):
                return Verdict("old-layout-entry", path,
                               "an entry of layout 2: not seen by claimers",
                               lambda: self.fixes.move_legacy(path, job_id, entry_version))
            return None
        if not self.exists(path):
            return None
        return Verdict("stale-entry", path, "its job is gone, not waiting, or newer",
                       lambda: self.fixes.drop_stale_entry(path, job_id, entry_version))

    def check_unqueued(self) -> None:
        """The waiting jobs no live entry was listed for: those still
        waiting when read again are looked for in the index once more
        (listed anew, a bucket at a time), then read a third time."""
        suspects, self.waiting = sorted(self.waiting), {}
        still: dict[str, tuple[Job, int]] = {}
        for start in range(0, len(suspects), PIPELINE_WINDOW):
            window = suspects[start:start + PIPELINE_WINDOW]
            for job_id, now in self.reread(window).items():
                if now is not None and now.job is not None \
                        and now.job.state is JobState.UNCLAIMED:
                    still[job_id] = (now.job, now.version)
                else:
                    self.dismissed += 1
        if still:
            for _, job_id, entry_version in self.queue_entries(report=False):
                known = still.get(job_id)
                if known is not None and self.r.index.is_live(*known, entry_version):
                    del still[job_id]
                    self.dismissed += 1
        for job_id, (_, version) in sorted(still.items()):
            self.suspect(job_id, partial(self.unqueued_verdict, job_id, version))
        self.confirm()

    def unqueued_verdict(self, job_id: str, version: int, now: Now) -> Verdict | None:
        if now.version != version or now.job is None or now.job.state is not JobState.UNCLAIMED:
            return None
        return Verdict("unqueued-job", self.r.paths.job(job_id),
                       "UNCLAIMED with no queue entry: it would wait forever",
                       lambda: self.fixes.requeue(job_id, version))

    def queue_entries(self, *, report: bool) -> Iterator[tuple[str, str, int | None]]:
        """(path, job id, version) of every entry of the queue index, a
        bucket listed at a time (:meth:`QueueIndex.walk`). With ``report``, a
        name that is not the index's is reported as a stray."""
        for path, job_id, version in self.r.index.walk():
            if job_id is not None:
                yield path, job_id, version
            elif report:
                self.stray(path, "not a name of the queue index")

    # -- the finished index ---------------------------------------------------------

    def check_finished_index(self) -> None:
        """Every entry of the finished index against the finished jobs
        remembered, a minute at a time; then the finished jobs no entry was
        listed for."""
        p = self.r.paths
        for name in sorted(_zk.children(self.r.client, p.finished)):
            parent = f"{p.finished}/{name}"
            minute = parse_minute(name)
            if minute is None:
                self.stray(parent, "not a minute of the finished index")
                continue
            for job_id in sorted(_zk.children(self.r.client, parent)):
                path = f"{parent}/{job_id}"
                if not is_job_id(job_id):
                    self.stray(path, "not a job id of the finished index")
                elif self.of_malformed(path, job_id):
                    continue
                elif self.finished.get(job_id) == minute:
                    del self.finished[job_id]
                else:
                    self.suspect(job_id, partial(self.finished_entry_verdict, path, job_id))
        self.confirm()
        unindexed, self.finished = sorted(self.finished), {}
        for job_id in unindexed:
            self.suspect(job_id, partial(self.unindexed_verdict, job_id))
        self.confirm()

    def finished_entry_verdict(self, path: str, job_id: str, now: Now) -> Verdict | None:
        if now.job is not None and finished_entry(self.r.paths, now.job) == path:
            return None
        if not self.exists(path):
            return None
        return Verdict("stale-entry", path, "a finished-index entry whose job is gone, not "
                       "finished, or finished in another minute",
                       lambda: self.fixes.drop_finished_entry(path, job_id))

    def unindexed_verdict(self, job_id: str, now: Now) -> Verdict | None:
        job = now.job
        entry = None if job is None else finished_entry(self.r.paths, job)
        if job is None or entry is None or self.exists(entry):
            return None
        return Verdict("unindexed-job", self.r.paths.job(job_id),
                       f"{job.state.value} with no entry in the finished index: retention "
                       "would never remove it",
                       lambda: self.fixes.index_finished(job_id, now.version))

    # -- keys -------------------------------------------------------------------------

    def check_keys(self) -> None:
        """Every idempotency key (read a window at a time) against the keyed
        jobs remembered."""
        r = self.r
        names = _zk.children(r.client, r.paths.keys)
        for start in range(0, len(names), PIPELINE_WINDOW):
            pending = [(name, r.client.get_async(f"{r.paths.keys}/{name}"))
                       for name in names[start:start + PIPELINE_WINDOW]]
            for name, result in pending:
                try:
                    data, _ = result.get(timeout=READ_TIMEOUT)
                except NoNodeError:
                    continue
                job_id = data.decode("ascii", errors="replace")
                if (name, job_id) not in self.keyed:
                    self.suspect(job_id, partial(self.key_verdict, f"{r.paths.keys}/{name}",
                                                 job_id))
        self.keyed = set()
        self.confirm()

    def key_verdict(self, path: str, job_id: str, now: Now) -> Verdict | None:
        if now.job is not None and now.job.key is not None \
                and self.r.paths.key(now.job.key) == path:
            return None
        try:
            data, _ = self.r.client.retry(self.r.client.get, path)
        except NoNodeError:
            return None
        if data.decode("ascii", errors="replace") != job_id:
            return None          # posted again since: judged by the next sweep
        return Verdict("dangling-key", path, f"points to {job_id[:40]!r}, which has no job "
                       "posted with this key", lambda: self.fixes.drop_key(path, job_id))


def _shard_of(name: str) -> str:
    """The shard of the job a marker names ("" when the name is no job id)."""
    return name[:2] if is_job_id(name) else ""


def _is_dead(job: Job) -> bool:
    return job.state is JobState.DEAD


def _is_claimed(job: Job) -> bool:
    return job.state is JobState.CLAIMED


def _is_live(job: Job) -> bool:
    return job.state in (JobState.CLAIMED, JobState.UNCLAIMED)
