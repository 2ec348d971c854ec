"""The repairs of the repair sweep (:mod:`jobboard.board.repair`), one
finding at a time.

Each fix reads the job's record again and acts only while the job still is
what was judged: in one transaction guarded by the record's version (or by
asserting that no claim exists), so a job that moved on meanwhile is left
alone. A fix returns True when it put its finding right, False when there
was nothing (left) to do or it lost a race.

How it fails: a record that turns out malformed raises
:class:`~jobboard.errors.MalformedData`; ZooKeeper refusing one znode (an
ACL) raises kazoo's error, for the sweep to report that finding as not
repaired; ZooKeeper unreachable raises too (the sweep translates it).
"""

from __future__ import annotations

from typing import Any, Callable

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError

from jobboard.board import _zk
from jobboard.board.admin import Admin
from jobboard.board.job import Job, is_job_id
from jobboard.board.layout import Paths
from jobboard.board.ownership import Ownership, finished_entry
from jobboard.board.queue import QueueIndex
from jobboard.board.records import Records
from jobboard.states import JobState

MOVE_ASIDE_DEPTH = 4


class Fixes:
    """Puts findings right on one board (see the module docstring).

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

    def fresh(self, job_id: str) -> tuple[Job | None, int]:
        """The record as it is now (None, -1 when gone).

        Raises:
            MalformedData: it does not validate.
        """
        try:
            data, stat = self.client.retry(self.client.get, self.paths.job(job_id))
        except NoNodeError:
            return None, -1
        return self.records.decode(job_id, data), stat.version

    def guarded(self, job_id: str, version: int, add_ops: Callable[[Any], None]) -> bool:
        """Commit ``add_ops`` only while the record is still at ``version``
        (every claim and end of a claim bumps it); a gone record (-1) has
        nothing to guard: job ids are never used again."""
        txn = self.client.transaction()
        if version >= 0:
            txn.check(self.paths.job(job_id), version)
        add_ops(txn)
        return _zk.first_error(txn.commit()) is None

    # -- strays and malformed records ------------------------------------------------

    def move_aside(self, path: str, reason: str, depth: int = 0) -> bool:
        """Quarantine ``path`` (with what is under it, a few levels deep)."""
        if depth < MOVE_ASIDE_DEPTH:
            for child in _zk.children(self.client, path):
                self.move_aside(f"{path}/{child}", reason, depth + 1)
        return self.records.quarantine(path, reason)

    def quarantine(self, job_id: str, reason: str, version: int, data: bytes) -> bool:
        """Move a malformed record aside, only while it is at ``version``."""
        return self.records.quarantine(self.paths.job(job_id), reason, version=version,
                                       data=data)

    # -- the queue index ---------------------------------------------------------------

    def requeue(self, job_id: str, version: int) -> bool:
        job, now = self.fresh(job_id)
        if job is None or now != version or job.state is not JobState.UNCLAIMED:
            return False
        record = self.paths.job(job_id)
        return self.index.commit(lambda txn: txn.check(record, version), job, version)[1] is None

    def move_legacy(self, path: str, job_id: str, entry_version: int | None) -> bool:
        job, version = self.fresh(job_id)
        if job is None or not self.index.is_live(job, version, entry_version):
            return _zk.delete_quietly(self.client, path)
        record = self.paths.job(job_id)

        def move(txn: Any) -> None:
            txn.delete(path)
            txn.check(record, version)

        restore = path.rsplit("/", 2)[1].endswith("-0000000000")
        return self.index.commit(move, job, version, restore=restore, due=True)[1] is None

    def drop_stale_entry(self, path: str, job_id: str, entry_version: int | None) -> bool:
        job, version = self.fresh(job_id)
        if job is not None and self.index.is_live(job, version, entry_version):
            return False
        return _zk.delete_quietly(self.client, path)

    # -- the finished index ------------------------------------------------------------

    def drop_finished_entry(self, path: str, job_id: str) -> bool:
        job, version = self.fresh(job_id)
        if job is not None and finished_entry(self.paths, job) == path:
            return False
        return self.guarded(job_id, version, lambda txn: txn.delete(path))

    def index_finished(self, job_id: str, version: int) -> bool:
        job, now = self.fresh(job_id)
        entry = None if job is None or now != version else finished_entry(self.paths, job)
        if entry is None:
            return False
        self.ownership.ensure_finished_minute(entry, again=True)
        return self.guarded(job_id, version, lambda txn: txn.create(entry))

    # -- claims and running markers ------------------------------------------------------

    def drop_claim(self, job_id: str) -> bool:
        job, version = self.fresh(job_id)
        if job is not None and job.state is JobState.CLAIMED:
            return False
        paths = [self.paths.claim(job_id), self.paths.running_marker(job_id)]
        present = [path for path, stat in zip(paths, _zk.stats(self.client, paths))
                   if stat is not None]
        return self.guarded(job_id, version, lambda txn: [txn.delete(p) for p in present])

    def restore(self, job_id: str) -> bool:
        self.ownership.restore_orphan(job_id)
        return self.client.exists(self.paths.running_marker(job_id)) is None

    def mark_running(self, job_id: str) -> bool:
        job, version = self.fresh(job_id)
        if job is None or job.state is not JobState.CLAIMED:
            return False
        return self.guarded(job_id, version, lambda txn: txn.create(
            self.paths.running_marker(job_id), (job.owner or "").encode()))

    def release(self, job_id: str, version: int) -> bool:
        job, now = self.fresh(job_id)
        if job is None or now != version or job.state is not JobState.CLAIMED:
            return False
        released = job.with_event("repaired", state=JobState.UNCLAIMED, owner=None,
                                  transfer_to=None)
        paths = self.paths

        def put_back(txn: Any) -> None:
            for path in (paths.claim(job_id), paths.running_marker(job_id)):
                txn.create(path, b"")   # asserts nobody holds it right now
                txn.delete(path)
            txn.set_data(paths.job(job_id), released.encode(), version=version)

        return self.index.commit(put_back, released, version + 1, restore=True)[1] is None

    # -- markers, requests and keys --------------------------------------------------------

    def drop_marker(self, path: str, job_id: str, belongs: Callable[[Job], bool]) -> bool:
        """Delete a marker (or request) of ``job_id`` unless its job ``belongs``."""
        if not is_job_id(job_id):
            return _zk.delete_quietly(self.client, path)
        job, version = self.fresh(job_id)
        if job is not None and belongs(job):
            return False
        return self.guarded(job_id, version, lambda txn: txn.delete(path))

    def apply_suspend(self, job_id: str) -> bool:
        job, _ = self.fresh(job_id)
        if job is None or job.state is not JobState.UNCLAIMED:
            return False
        return self.admin.suspend(job_id) is JobState.SUSPENDED

    def apply_cancel(self, job_id: str) -> bool:
        job, _ = self.fresh(job_id)
        if job is None or job.state is not JobState.UNCLAIMED:
            return False
        return self.admin.cancel(job_id) is JobState.CANCELLED

    def make_dead_marker(self, job_id: str) -> bool:
        job, version = self.fresh(job_id)
        if job is None or job.state is not JobState.DEAD:
            return False
        return self.guarded(job_id, version,
                            lambda txn: txn.create(self.paths.dead_marker(job_id)))

    def drop_key(self, path: str, job_id: str) -> bool:
        if is_job_id(job_id):
            job, _ = self.fresh(job_id)
            if job is not None and job.key is not None and self.paths.key(job.key) == path:
                return False
        try:   # only while it still names that job (not a key posted again since)
            data, stat = self.client.retry(self.client.get, path)
            if data.decode("ascii", errors="replace") != job_id:
                return False
            self.client.delete(path, version=stat.version)
            return True
        except (NoNodeError, BadVersionError):
            return False
