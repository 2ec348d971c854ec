"""Retention: finished jobs leave ZooKeeper, their outcome goes to an archive.

ZooKeeper keeps every znode in memory, so finished records cannot stay for
ever. A COMPLETE, FAILED or CANCELLED job is indexed when it finishes, in
the same transaction, under ``{root}/finished/{minute}/{uuid}`` (see
:mod:`jobboard.board.layout`); :meth:`Retention.prune` walks the minutes
older than the cut-off (never the whole board), and for each job:

1. reads its record (pipelined, :data:`~jobboard.board.records.PIPELINE_WINDOW`
   at a time) and checks it is still finished and old enough (a job retried
   meanwhile only loses its stale index entry);
2. hands the batch to the :class:`OutcomeArchive` (the logbook, wired by the
   conductor and the CLI), which keeps each job's outcome; a job the archive
   did not take stays on the board for the next pass;
3. deletes, in one transaction per job (sent together, answers collected
   after), the record (at the version read: a record that changed is left),
   its index entry, its **idempotency key** (keys expire with their jobs,
   so a post with the key of a pruned job posts a new job) and every
   marker naming it (:meth:`Paths.markers`: a cancel or suspend request that
   outlived the finish it raced with, and whatever a broken board left).
   A marker that goes between its read and the transaction (a holder
   dropping its request, the repair sweep) costs one more round.

Which znodes go with a job's record is decided here, once
(:func:`read_dependents`), for every delete of a
record: retention, :meth:`Admin.trash <jobboard.board.admin.Admin.trash>`
and the quarantine of a malformed finished record. No marker can be made
for a job once its record is gone: the admin requests are created only in
a transaction that checks the record is still at the CLAIMED version read
(:meth:`Admin.cancel <jobboard.board.admin.Admin.cancel>`,
:meth:`Admin.suspend <jobboard.board.admin.Admin.suspend>`), and the
claim, running and dead markers only with a change of the record. What an
older release or a crash left behind anyway, the repair sweep deletes
(``claim-not-running``, ``dead-marker``, ``stale-cancel``,
``stray-suspend``: each judges a marker whose job is gone).

DEAD jobs are not indexed and never pruned: they wait for an admin (retry
or trash). :meth:`Board.wait <jobboard.board.Board.wait>` on a pruned job
answers from the archive.

How it fails: ZooKeeper errors surface as
:class:`~jobboard.errors.BoardUnavailable` (what was deleted stays deleted;
the next pass goes on); an archive that raises leaves its batch on the board
(the error propagates); a malformed record is quarantined.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from jobboard.board import _zk
from jobboard.board.job import Job, JobOutcome
from jobboard.board.layout import Paths, parse_minute
from jobboard.board.ownership import RETAINED_STATES
from jobboard.board.records import PIPELINE_WINDOW, READ_TIMEOUT, Records
from jobboard.errors import InvalidArgument, MalformedData

log = logging.getLogger(__name__)

#: ``--keep-finished`` when none is given: seven days.
DEFAULT_KEEP_FINISHED = 7 * 24 * 3600.0

#: Transactions sent for one job whose markers keep going under the pass.
DELETE_ATTEMPTS = 3

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration: ``7d``, ``12h``, ``30m``, ``45s``, ``2w``, or a
    plain number of seconds (``0`` included).

    Raises:
        InvalidArgument: anything else (``argument == "duration"``).
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text >= 0:
            return float(text)
    elif isinstance(text, str):
        match = _DURATION.fullmatch(text)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    raise InvalidArgument(f"{text!r} is not a duration (like 7d, 12h, 30m, 45s or 0)",
                          argument="duration")


def read_dependents(client: KazooClient, paths: Paths, job_id: str,
                    key: str | None = None, *, also: Sequence[str] = ()
                    ) -> Callable[[], list[str]]:
    """Send the reads (pipelined) that tell which of the job's markers
    (:meth:`Paths.markers <jobboard.board.layout.Paths.markers>`) and of
    ``also`` exist, and whether the idempotency ``key`` still names
    ``job_id``; the returned call waits for the answers: the paths to
    delete, in the transaction that deletes the record, for nothing to be
    left behind.

    Raises (from the returned call):
        kazoo's errors (the caller translates them).
    """
    markers = (*paths.markers(job_id), *also)
    pending = [client.exists_async(path) for path in markers]
    key_path = None if key is None else paths.key(key)
    key_read = None if key_path is None else client.get_async(key_path)

    def answer() -> list[str]:
        present = [path for path, result in zip(markers, pending)
                   if result.get(timeout=READ_TIMEOUT) is not None]
        if key_read is not None and key_path is not None:
            try:
                data, _ = key_read.get(timeout=READ_TIMEOUT)
            except NoNodeError:       # trashed by hand, or dropped by fsck
                data = b""
            if data == job_id.encode():  # not a key posted again since, for another job
                present.append(key_path)
        return present

    return answer


@runtime_checkable
class OutcomeArchive(Protocol):
    """Where the outcome of a finished job is kept once its record is pruned."""

    def save(self, jobs: Sequence[tuple[Job, int]]) -> set[str]:
        """Keep the outcome of each ``(job, token)`` (``token``: the zxid of
        the record's last change, newer than any claim's fencing token).
        Returns the ids of the jobs kept; the others stay on the board."""
        ...

    def outcome(self, job_id: str) -> JobOutcome | None:
        """The outcome kept for ``job_id``; None when none was."""
        ...


@dataclass
class PruneReport:
    """What one pass of :meth:`Retention.prune` did."""

    removed: int = 0             # records deleted (outcome archived)
    stale_entries: int = 0       # index entries of jobs gone, retried or re-finished
    not_archived: int = 0        # left on the board: the archive did not take them
    kept: int = 0                # indexed but not old enough yet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Retention:
    """Prunes one board's finished jobs (see the module docstring).

    Args:
        client: the board's started KazooClient.
        paths: the board's paths.
        records: reads (and quarantines) job records.
    """

    def __init__(self, client: KazooClient, paths: Paths, records: Records) -> None:
        self.client = client
        self.paths = paths
        self.records = records

    def prune(self, older_than: float, *, archive: OutcomeArchive | None,
              batch: int = PIPELINE_WINDOW, now: float | None = None) -> PruneReport:
        """Remove the jobs that finished more than ``older_than`` seconds ago,
        after ``archive`` kept their outcome (None: nothing is kept).

        Raises:
            BoardUnavailable: ZooKeeper unreachable.
        """
        if older_than < 0:
            raise InvalidArgument("older_than must be >= 0", argument="older_than")
        cutoff = (time.time() if now is None else now) - older_than
        report = PruneReport()
        with _zk.translated("pruning finished jobs"):
            for name in sorted(_zk.children(self.client, self.paths.finished)):
                minute = parse_minute(name)
                if minute is None:
                    self.records.report(f"{self.paths.finished}/{name}", "not a minute")
                    continue
                if minute * 60 > cutoff:
                    break
                parent = self.paths.finished_minute(minute)
                ids = sorted(_zk.children(self.client, parent))
                for start in range(0, len(ids), max(1, batch)):
                    self._prune_batch(minute, ids[start:start + batch], cutoff, archive,
                                      report)
                if (minute + 1) * 60 <= cutoff:
                    _zk.delete_quietly(self.client, parent)   # only when emptied
        if report.removed or report.stale_entries:
            log.info("retention: %d finished job(s) removed, %d stale index entries",
                     report.removed, report.stale_entries)
        return report

    def _prune_batch(self, minute: int, ids: list[str], cutoff: float,
                     archive: OutcomeArchive | None, report: PruneReport) -> None:
        parent = self.paths.finished_minute(minute)
        pending = [(job_id, self.client.get_async(self.paths.job(job_id))) for job_id in ids]
        due: list[tuple[Job, Any]] = []
        stale: list[str] = []
        for job_id, result in pending:
            entry = f"{parent}/{job_id}"
            try:
                data, stat = result.get(timeout=READ_TIMEOUT)
                job = self.records.decode(job_id, data)
            except NoNodeError:                  # trashed: the entry alone is left
                stale.append(entry)
                continue
            except MalformedData as exc:
                markers = read_dependents(self.client, self.paths, job_id)()
                self.records.quarantine(self.paths.job(job_id), str(exc),
                                        also_delete=(entry, *markers))
                continue
            if (job.state not in RETAINED_STATES or job.finished_at is None
                    or int(job.finished_at // 60) != minute):
                stale.append(entry)              # retried (and maybe finished again)
            elif job.finished_at > cutoff:
                report.kept += 1
            else:
                due.append((job, stat))
        for entry in stale:
            report.stale_entries += int(_zk.delete_quietly(self.client, entry))
        if not due:
            return
        if archive is not None:
            kept = archive.save([(job, stat.mzxid) for job, stat in due])
            report.not_archived += sum(1 for job, _ in due if job.uuid not in kept)
            due = [(job, stat) for job, stat in due if job.uuid in kept]
        reads = [(job, stat, self._read_dependents(job)) for job, stat in due]
        sent = [(job, stat, self._delete_async(job, stat, dependents()))
                for job, stat, dependents in reads]
        for job, stat, result in sent:
            for attempt in range(1, DELETE_ATTEMPTS + 1):
                results = result.get(timeout=READ_TIMEOUT)
                error = _zk.first_error(results)
                if error is None:
                    report.removed += 1
                    break
                if error is results[0] or error is results[1] or attempt == DELETE_ATTEMPTS:
                    # the record changed (retried) since it was read, or another
                    # janitor pass took it: left as it is
                    break
                # a marker or the key went meanwhile: read them again
                result = self._delete_async(job, stat, self._read_dependents(job)())

    def _read_dependents(self, job: Job) -> Callable[[], list[str]]:
        return read_dependents(self.client, self.paths, job.uuid, job.key)

    def _delete_async(self, job: Job, stat: Any, dependents: list[str]) -> Any:
        """Send the transaction deleting ``job``'s record (at the version of
        ``stat``), its finished-index entry and ``dependents`` (see
        :func:`read_dependents`); the record and the entry come first."""
        txn = self.client.transaction()
        txn.delete(self.paths.job(job.uuid), version=stat.version)
        txn.delete(self.paths.finished_entry(job.finished_at or 0.0, job.uuid))
        for path in dependents:
            txn.delete(path)
        return txn.commit_async()

    def index_all(self) -> int:
        """Index every finished job that is not (records of a board made
        before the finished index; :meth:`Board.upgrade`). Reads every
        record. Returns the entries made."""
        made = 0
        minutes: set[str] = set()
        with _zk.translated("indexing finished jobs"):
            ids = self.records.all_ids()
            for job, _ in self.records.read_many(ids):
                if job.state not in RETAINED_STATES or job.finished_at is None:
                    continue
                path = self.paths.finished_entry(job.finished_at, job.uuid)
                minute = path.rsplit("/", 1)[0]
                if minute not in minutes:
                    _zk.ensure(self.client, minute)
                    minutes.add(minute)
                try:
                    self.client.retry(self.client.create, path)
                    made += 1
                except NodeExistsError:
                    pass
        return made
