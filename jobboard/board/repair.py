"""The repair sweep (``jobboard fsck [--repair]``): every layout invariant,
checked and put right.

The invariants, and what a repair does when one is broken:

=========================  ==================================================
finding                    repair
=========================  ==================================================
``malformed-record``       a record that does not validate: moved aside
                           (quarantine), listed as MALFORMED
``stray-znode``            a name under the shards, the queue or the delayed
                           index that is not what the layout puts there:
                           moved aside
``unqueued-job``           an UNCLAIMED job with no live entry (it would wait
                           forever): a new entry, checked against the record
                           version that was judged
``stale-entry``            an entry whose job is gone, not waiting, or at
                           another record version: deleted
``old-layout-entry``       a live entry in a bucket of layout 1 or 2 (directly
                           under ``{root}/queue``; a poster of an older
                           release): moved into its job's queue
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
                           deleted
``stray-suspend``          a suspend request for a job that is not CLAIMED:
                           for an UNCLAIMED job (the request raced with a
                           put-back) the job is suspended, as its next holder
                           would have done; otherwise deleted. A SUSPENDED
                           job itself is consistent with no entry and no claim
``unreadable``             a record this client may not read (another ACL):
                           reported, left alone
=========================  ==================================================

Why it is safe to run beside live conductors and posters: every state change
of the board is one transaction, so the only broken states are those a bug,
a lost race of an older release or a hostile writer left; and every repair
reads the record again and acts in a transaction guarded by the record's
version (or by asserting that no claim exists), so a job that moved on
meanwhile is left alone. The sweep reads the records before listing the
index, and the delayed index before the queue, so a job posted or promoted
during the sweep is never taken for a job without an entry.

Cost: one read of every record and one listing of every index bucket; run
by one conductor at a time (elected), every ``--fsck-interval`` seconds.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoAuthError, NoNodeError, ZookeeperError

from jobboard.board import _zk
from jobboard.board.admin import Admin
from jobboard.board.job import Job, is_job_id
from jobboard.board.layout import Paths
from jobboard.board.ownership import Ownership
from jobboard.board.queue import QueueIndex
from jobboard.board.records import PIPELINE_WINDOW, READ_TIMEOUT, Records
from jobboard.errors import MalformedData
from jobboard.states import JobState

log = logging.getLogger(__name__)

MOVE_ASIDE_DEPTH = 4


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
        client: the board's started KazooClient.
        paths, records, index, ownership, admin: the board's collaborators.
    """

    def __init__(self, client: KazooClient, paths: Paths, records: Records,
                 index: QueueIndex, ownership: Ownership, admin: Admin) -> None:
        self.client = client
        self.paths = paths
        self.records = records
        self.index = index
        self.ownership = ownership
        self.admin = admin

    def sweep(self, *, fix: bool = False) -> list[Finding]:
        """Check every invariant; with ``fix``, repair what is broken.

        Raises:
            BoardUnavailable: ZooKeeper unreachable.
        """
        with _zk.translated("checking the board"):
            return _Sweep(self, fix).run()


class _Sweep:
    """One pass over the board (state of a single :meth:`Repair.sweep`)."""

    def __init__(self, repair: Repair, fix: bool) -> None:
        self.r = repair
        self.fix = fix
        self.findings: list[Finding] = []
        self.jobs: dict[str, tuple[Job, int]] = {}
        self.malformed: dict[str, tuple[bytes, int, str]] = {}   # id -> data, version, why
        self.dead: set[str] = set()

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

    def run(self) -> list[Finding]:
        r = self.r
        ids, strays = r.records.scan_shards()
        for path in strays:
            self.found("stray-znode", path, "not a job id of this shard", None,
                       lambda path=path: self.move_aside(path, "not a job id of this shard"))
        self.read_records(ids)
        entries, garbage = r.index.scan()          # listed after the records were read
        for job_id, (data, version, reason) in self.malformed.items():
            path = r.paths.job(job_id)
            self.found("malformed-record", path, reason, job_id,
                       lambda path=path, data=data, version=version, reason=reason,
                       listed=tuple(p for p, _ in entries.pop(job_id, ())):
                       r.records.quarantine(path, reason, version=version, data=data,
                                            also_delete=listed))
        for path in garbage:
            self.found("stray-znode", path, "not a name of the queue index", None,
                       lambda path=path: self.move_aside(path, "not a name of the queue index"))
        self.check_entries(entries)
        self.check_claims()
        self.check_keys()
        self.check_markers(r.paths.dead, "dead-marker", lambda j: j.state is JobState.DEAD)
        self.check_markers(r.paths.cancel_requests, "stale-cancel",
                           lambda j: j.state is JobState.CLAIMED)
        self.check_suspend_requests()
        for job_id, (job, _) in self.jobs.items():
            if job.state is JobState.DEAD and job_id not in self.dead:
                self.found("dead-marker", r.paths.dead_marker(job_id),
                           "a DEAD job without its marker", job_id,
                           lambda job_id=job_id: self.make_dead_marker(job_id))
        return self.findings

    # -- records ------------------------------------------------------------------

    def read_records(self, ids: list[str]) -> None:
        r = self.r
        for start in range(0, len(ids), PIPELINE_WINDOW):
            batch = ids[start:start + PIPELINE_WINDOW]
            pending = [(job_id, r.client.get_async(r.paths.job(job_id))) for job_id in batch]
            for job_id, result in pending:
                try:
                    data, stat = result.get(timeout=READ_TIMEOUT)
                except NoNodeError:
                    continue
                except NoAuthError:
                    self.found("unreadable", r.paths.job(job_id),
                               "not readable with this board's credentials", job_id,
                               lambda: False)
                    continue
                try:
                    job = r.records.decode(job_id, data)
                except MalformedData as exc:
                    self.malformed[job_id] = (data, stat.version, str(exc))
                    continue
                # The checks read a record's state and key (a repair reads the
                # record again): the rest is not kept, so a sweep of 100,000
                # jobs holds their states, not their payloads.
                self.jobs[job_id] = (replace(job, args={}, store={}, details={}, history=(),
                                             outcome=None), stat.version)

    def fresh(self, job_id: str) -> tuple[Job | None, int]:
        """The record as it is now (None, -1 when gone)."""
        try:
            data, stat = self.r.client.retry(self.r.client.get, self.r.paths.job(job_id))
        except NoNodeError:
            return None, -1
        return self.r.records.decode(job_id, data), stat.version

    def move_aside(self, path: str, reason: str, depth: int = 0) -> bool:
        if depth < MOVE_ASIDE_DEPTH:
            for child in _zk.children(self.r.client, path):
                self.move_aside(f"{path}/{child}", reason, depth + 1)
        return self.r.records.quarantine(path, reason)

    # -- the index ----------------------------------------------------------------

    def check_entries(self, entries: dict[str, list[tuple[str, int | None]]]) -> None:
        r = self.r
        for job_id, (job, version) in self.jobs.items():
            if job.state is JobState.UNCLAIMED and not any(
                    r.index.is_live(job, version, v) for _, v in entries.get(job_id, ())):
                self.found("unqueued-job", r.paths.job(job_id),
                           "UNCLAIMED with no queue entry: it would wait forever", job_id,
                           lambda job_id=job_id, version=version: self.requeue(job_id, version))
        for job_id, listed in entries.items():
            known = self.jobs.get(job_id)
            for path, entry_version in listed:
                if known is not None and r.index.is_live(known[0], known[1], entry_version):
                    if r.index.is_legacy_entry(path):
                        self.found("old-layout-entry", path,
                                   "an entry of layout 2: not seen by claimers", job_id,
                                   lambda path=path, job_id=job_id, v=entry_version:
                                   self.move_legacy(path, job_id, v))
                    continue
                self.found("stale-entry", path, "its job is gone, not waiting, or newer",
                           job_id, lambda path=path, job_id=job_id, v=entry_version:
                           self.drop_stale_entry(path, job_id, v))

    def requeue(self, job_id: str, version: int) -> bool:
        job, now = self.fresh(job_id)
        if job is None or now != version or job.state is not JobState.UNCLAIMED:
            return False
        record = self.r.paths.job(job_id)
        return self.r.index.commit(lambda txn: txn.check(record, version), job, version)[1] is None

    def move_legacy(self, path: str, job_id: str, entry_version: int | None) -> bool:
        job, version = self.fresh(job_id)
        if job is None or not self.r.index.is_live(job, version, entry_version):
            return _zk.delete_quietly(self.r.client, path)
        record = self.r.paths.job(job_id)

        def move(txn: Any) -> None:
            txn.delete(path)
            txn.check(record, version)

        restore = path.rsplit("/", 2)[1].endswith("-0000000000")
        return self.r.index.commit(move, job, version, restore=restore, due=True)[1] is None

    def drop_stale_entry(self, path: str, job_id: str, entry_version: int | None) -> bool:
        job, version = self.fresh(job_id)
        if job is not None and self.r.index.is_live(job, version, entry_version):
            return False
        return _zk.delete_quietly(self.r.client, path)

    # -- claims and running markers ------------------------------------------------

    def check_claims(self) -> None:
        r = self.r
        claims = set(_zk.children(r.client, r.paths.claims))
        running = set(_zk.children(r.client, r.paths.running))
        for job_id in sorted(claims | running):
            known = self.jobs.get(job_id)
            if known is None or known[0].state is not JobState.CLAIMED:
                state = "gone" if known is None else str(known[0].state)
                self.found("claim-not-running", r.paths.claim(job_id),
                           f"a claim or running marker for a job that is {state}", job_id,
                           lambda job_id=job_id: self.drop_claim(job_id))
            elif job_id in running and job_id not in claims:
                self.found("orphan", r.paths.running_marker(job_id),
                           "running marker without a claim", job_id,
                           lambda job_id=job_id: self.restore(job_id))
            elif job_id not in running:
                self.found("claim-without-marker", r.paths.claim(job_id),
                           "a claim without its running marker (its consume would fail)",
                           job_id, lambda job_id=job_id: self.mark_running(job_id))
        for job_id, (job, version) in self.jobs.items():
            if job.state is JobState.CLAIMED and job_id not in claims | running:
                self.found("claimed-without-holder", r.paths.job(job_id),
                           "CLAIMED with neither claim nor running marker", job_id,
                           lambda job_id=job_id, version=version: self.release(job_id, version))

    def guarded(self, job_id: str, version: int, add_ops: Callable[[Any], None]) -> bool:
        """Commit ``add_ops`` only while the record is still at ``version``
        (every claim and end of a claim bumps it); a gone record (-1) has
        nothing to guard: job ids are never used again."""
        txn = self.r.client.transaction()
        if version >= 0:
            txn.check(self.r.paths.job(job_id), version)
        add_ops(txn)
        return _zk.first_error(txn.commit()) is None

    def existing(self, *paths: str) -> list[str]:
        return [path for path, stat in zip(paths, _zk.stats(self.r.client, list(paths)))
                if stat is not None]

    def drop_claim(self, job_id: str) -> bool:
        job, version = self.fresh(job_id)
        if job is not None and job.state is JobState.CLAIMED:
            return False
        present = self.existing(self.r.paths.claim(job_id), self.r.paths.running_marker(job_id))
        return self.guarded(job_id, version, lambda txn: [txn.delete(p) for p in present])

    def restore(self, job_id: str) -> bool:
        self.r.ownership.restore_orphan(job_id)
        return self.r.client.exists(self.r.paths.running_marker(job_id)) is None

    def mark_running(self, job_id: str) -> bool:
        job, version = self.fresh(job_id)
        if job is None or job.state is not JobState.CLAIMED:
            return False
        return self.guarded(job_id, version, lambda txn: txn.create(
            self.r.paths.running_marker(job_id), (job.owner or "").encode()))

    def release(self, job_id: str, version: int) -> bool:
        job, now = self.fresh(job_id)
        if job is None or now != version or job.state is not JobState.CLAIMED:
            return False
        released = job.with_event("repaired", state=JobState.UNCLAIMED, owner=None,
                                  transfer_to=None)
        paths = self.r.paths

        def put_back(txn: Any) -> None:
            for path in (paths.claim(job_id), paths.running_marker(job_id)):
                txn.create(path, b"")   # asserts nobody holds it right now
                txn.delete(path)
            txn.set_data(paths.job(job_id), released.encode(), version=version)

        return self.r.index.commit(put_back, released, version + 1, restore=True)[1] is None

    # -- keys and markers ----------------------------------------------------------

    def check_keys(self) -> None:
        r = self.r
        names = _zk.children(r.client, r.paths.keys)
        pending = [(name, r.client.get_async(f"{r.paths.keys}/{name}")) for name in names]
        for name, result in pending:
            path = f"{r.paths.keys}/{name}"
            try:
                data, _ = result.get(timeout=READ_TIMEOUT)
            except NoNodeError:
                continue
            job_id = data.decode("ascii", errors="replace")
            known = self.jobs.get(job_id) if is_job_id(job_id) else None
            if known is None or known[0].key is None or r.paths.key(known[0].key) != path:
                self.found("dangling-key", path, f"points to {job_id[:40]!r}, which has "
                           "no job posted with this key", job_id if is_job_id(job_id) else None,
                           lambda path=path, job_id=job_id: self.drop_key(path, job_id))

    def drop_key(self, path: str, job_id: str) -> bool:
        if is_job_id(job_id):
            job, _ = self.fresh(job_id)
            if job is not None and job.key is not None and self.r.paths.key(job.key) == path:
                return False
        try:   # only while it still names that job (not a key posted again since)
            data, stat = self.r.client.retry(self.r.client.get, path)
            if data.decode("ascii", errors="replace") != job_id:
                return False
            self.r.client.delete(path, version=stat.version)
            return True
        except (NoNodeError, BadVersionError):
            return False

    def check_markers(self, parent: str, kind: str, belongs: Callable[[Job], bool]) -> None:
        names = _zk.children(self.r.client, parent)
        if parent == self.r.paths.dead:
            self.dead = set(names)
        for job_id in sorted(names):
            known = self.jobs.get(job_id)
            if known is None or not belongs(known[0]):
                path = f"{parent}/{job_id}"
                self.found(kind, path, "its job is gone or in another state",
                           job_id if is_job_id(job_id) else None,
                           lambda path=path, job_id=job_id: self.drop_marker(path, job_id,
                                                                             belongs))

    def drop_marker(self, path: str, job_id: str, belongs: Callable[[Job], bool]) -> bool:
        if not is_job_id(job_id):
            return _zk.delete_quietly(self.r.client, path)
        job, version = self.fresh(job_id)
        if job is not None and belongs(job):
            return False
        return self.guarded(job_id, version, lambda txn: txn.delete(path))

    def check_suspend_requests(self) -> None:
        r = self.r
        for job_id in sorted(_zk.children(r.client, r.paths.suspend_requests)):
            known = self.jobs.get(job_id)
            if known is not None and known[0].state is JobState.CLAIMED:
                continue
            path = r.paths.suspend_request(job_id)
            if known is not None and known[0].state is JobState.UNCLAIMED:
                self.found("stray-suspend", path, "a suspend request for a waiting job (it "
                           "raced with a put-back): the job is suspended", job_id,
                           lambda job_id=job_id: self.apply_suspend(job_id))
                continue
            self.found("stray-suspend", path, "a suspend request for a job that is gone or "
                       "not running", job_id if is_job_id(job_id) else None,
                       lambda path=path, job_id=job_id: self.drop_marker(
                           path, job_id, lambda j: j.state in (JobState.CLAIMED,
                                                               JobState.UNCLAIMED)))

    def apply_suspend(self, job_id: str) -> bool:
        job, _ = self.fresh(job_id)
        if job is None or job.state is not JobState.UNCLAIMED:
            return False
        return self.r.admin.suspend(job_id) is JobState.SUSPENDED

    def make_dead_marker(self, job_id: str) -> bool:
        job, version = self.fresh(job_id)
        if job is None or job.state is not JobState.DEAD:
            return False
        return self.guarded(job_id, version,
                            lambda txn: txn.create(self.r.paths.dead_marker(job_id)))
