"""Job records as read from ZooKeeper: validated at the edge, once.

Every record is decoded and checked field by field where it is read
(:meth:`jobboard.board.job.Job.decode`, which also checks the uuid against the
znode name), so code further in gets a valid :class:`Job` or nothing.

A record that fails validation is never the problem of another job:

* on the claim path and in a repair sweep it is **quarantined**: moved aside
  to ``{root}/malformed/`` (with its original path, the reason and its
  bytes) in one transaction that also drops its queue entry, so no claimer
  reads it again;
* read commands (``get``, listings) only report it: logged once per process
  and listed by :meth:`Records.malformed` as MALFORMED, with the reason.

How it fails: ZooKeeper errors surface as
:class:`~jobboard.errors.BoardUnavailable`; a quarantine that loses a race
(the record changed or went meanwhile) does nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from jobboard.board import _zk
from jobboard.board.job import Job, is_job_id
from jobboard.board.layout import Paths
from jobboard.errors import JobNotFound, MalformedData
from jobboard.serialization import dumps, loads

log = logging.getLogger(__name__)

PIPELINE_WINDOW = 256
READ_TIMEOUT = 30.0
# A quarantined record keeps its bytes when they fit beside the reason.
QUARANTINE_KEEP_BYTES = 512_000


class Records:
    """Reads, validates and quarantines job records of one board.

    Args:
        client: the board's started KazooClient.
        paths: the board's paths.
    """

    def __init__(self, client: KazooClient, paths: Paths) -> None:
        self.client = client
        self.paths = paths
        self._malformed: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- reading ----------------------------------------------------------------

    def read(self, job_id: str, *, watch: Any = None) -> tuple[Job, Any]:
        """The job's record and its znode stat.

        Raises:
            JobNotFound: no such job.
            MalformedData: the record is invalid (reported once).
        """
        path = self.paths.job(job_id)
        with _zk.translated(f"reading job {job_id}"):
            try:
                data, stat = self.client.retry(self.client.get, path, watch=watch)
            except NoNodeError as exc:
                raise JobNotFound(job_id) from exc
        return self.decode(job_id, data), stat

    def decode(self, job_id: str, data: bytes) -> Job:
        """Validate a record read from ``job_id``'s znode (reported once when bad).

        Raises:
            MalformedData: it is not a valid record of that job.
        """
        path = self.paths.job(job_id)
        try:
            return Job.decode(data, path=path, job_id=job_id)
        except MalformedData as exc:
            self.report(path, str(exc))
            raise

    def read_many(self, job_ids: list[str]) -> Iterator[tuple[Job, Any]]:
        """Records and stats of many jobs, reads pipelined; missing and
        invalid ones (reported) are left out."""
        for start in range(0, len(job_ids), PIPELINE_WINDOW):
            batch = job_ids[start:start + PIPELINE_WINDOW]
            pending = [(job_id, self.client.get_async(self.paths.job(job_id)))
                       for job_id in batch]
            for job_id, result in pending:
                try:
                    data, stat = result.get(timeout=READ_TIMEOUT)
                    yield self.decode(job_id, data), stat
                except (NoNodeError, MalformedData):
                    continue

    def scan_shards(self) -> tuple[list[str], list[str]]:
        """Every job id on the board, and the paths of shard children that
        are not a job id belonging there (lists all 256 shards, pipelined)."""
        pending = [(shard, self.client.get_children_async(shard))
                   for shard in self.paths.shards()]
        ids: list[str] = []
        strays: list[str] = []
        for shard, result in pending:
            try:
                names = result.get(timeout=READ_TIMEOUT)
            except NoNodeError:
                continue
            shard_ids, shard_strays = self._split(shard, names)
            ids += shard_ids
            strays += shard_strays
        return ids, strays

    def scan_shard(self, shard: str) -> tuple[list[str], list[str]]:
        """The job ids of one shard (a path of :meth:`Paths.shards`), and the
        paths of its children that are not a job id belonging there: for a
        walk of the board that holds one shard at a time."""
        return self._split(shard, _zk.children(self.client, shard))

    def _split(self, shard: str, names: list[str]) -> tuple[list[str], list[str]]:
        ids: list[str] = []
        strays: list[str] = []
        for name in sorted(names):
            if is_job_id(name) and self.paths.job(name) == f"{shard}/{name}":
                ids.append(name)
            else:
                strays.append(f"{shard}/{name}")
        return ids, strays

    def all_ids(self) -> list[str]:
        """Every job id on the board; stray shard children are reported."""
        ids, strays = self.scan_shards()
        for path in strays:
            self.report(path, "not a job id of this shard")
        return ids

    # -- bad records ----------------------------------------------------------------

    def report(self, path: str, reason: str) -> None:
        """Log a bad znode once; admins see it in :meth:`malformed`."""
        with self._lock:
            if path in self._malformed:
                return
            self._malformed[path] = reason
        log.warning("skipping malformed znode %s: %s", path, reason)

    def quarantine(self, path: str, reason: str, *, version: int | None = None,
                   data: bytes | None = None, also_delete: tuple[str, ...] = ()) -> bool:
        """Move the znode at ``path`` aside, with ``also_delete`` (its queue
        entry), in one transaction. ``version`` guards against a record that
        changed since it was judged. True when it was moved; when another
        moved it first, ``also_delete`` is deleted all the same."""
        self.report(path, reason)
        with _zk.translated(f"quarantining {path}"):
            if data is None or version is None:
                try:
                    data, stat = self.client.retry(self.client.get, path)
                except NoNodeError:
                    self._delete_quietly(also_delete)
                    return False
                version = stat.version
            kept = data if len(data) <= QUARANTINE_KEEP_BYTES else data[:QUARANTINE_KEEP_BYTES]
            document = dumps({"path": path, "reason": reason, "at": time.time(),
                              "size": len(data), "data": kept})
            txn = self.client.transaction()
            txn.create(f"{self.paths.quarantine}/q-", document, sequence=True)
            txn.delete(path, version=version)
            for extra in also_delete:
                txn.delete(extra)
            results = txn.commit()
            error = _zk.first_error(results)
            if isinstance(error, NoNodeError) and results.index(error) == 0:
                _zk.ensure(self.client, self.paths.quarantine)   # a layout-1 board
                return self.quarantine(path, reason, version=version, data=data,
                                       also_delete=also_delete)
            if error is not None and also_delete and results.index(error) > 1:
                # one of them went meanwhile: move the record with the others
                left = tuple(extra for extra in also_delete
                             if self.client.exists(extra) is not None)
                return self.quarantine(path, reason, version=version, data=data,
                                       also_delete=left)
            if isinstance(error, NoNodeError) and results.index(error) == 1:
                # moved aside (or trashed) by another meanwhile: what named it
                # goes all the same, or it would name nothing for good
                self._delete_quietly(also_delete)
        if error is None:
            log.warning("moved %s aside (quarantine): %s", path, reason)
        return error is None

    def _delete_quietly(self, paths: tuple[str, ...]) -> None:
        for path in paths:
            _zk.delete_quietly(self.client, path)

    def quarantined(self) -> dict[str, str]:
        """Records moved aside: original path -> reason."""
        out: dict[str, str] = {}
        with _zk.translated("listing quarantined records"):
            names = _zk.children(self.client, self.paths.quarantine)
            pending = [(name, self.client.get_async(f"{self.paths.quarantine}/{name}"))
                       for name in sorted(names)]
            for name, result in pending:
                try:
                    document = loads(result.get(timeout=READ_TIMEOUT)[0])
                    out[str(document["path"])] = str(document["reason"])
                except NoNodeError:
                    continue
                except (MalformedData, KeyError, TypeError):
                    out[f"{self.paths.quarantine}/{name}"] = "unreadable quarantine entry"
        return out

    def malformed(self) -> dict[str, str]:
        """Bad znodes this process met, and records quarantined by anyone:
        path -> reason."""
        with self._lock:
            found = dict(self._malformed)
        found.update(self.quarantined())
        return found
