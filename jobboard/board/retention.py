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
   its index entry and its **idempotency key**: keys expire with their
   jobs, so a post with the key of a pruned job posts a new job.

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
from typing import Any, Protocol, Sequence, runtime_checkable

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
                self.records.quarantine(self.paths.job(job_id), str(exc), also_delete=(entry,))
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
        sent = [(job, stat, self._delete_async(job, stat, with_key=True)) for job, stat in due]
        for job, stat, result in sent:
            results = result.get(timeout=READ_TIMEOUT)
            error = _zk.first_error(results)
            if error is not None and job.key is not None and error is results[-1]:
                # the key went already (trashed by hand, fsck): delete without it
                results = self._delete_async(job, stat, with_key=False).get(
                    timeout=READ_TIMEOUT)
                error = _zk.first_error(results)
            if error is None:
                report.removed += 1
            # else the record changed (retried) since it was read, or another
            # janitor pass took it: left as it is

    def _delete_async(self, job: Job, stat: Any, *, with_key: bool) -> Any:
        txn = self.client.transaction()
        txn.delete(self.paths.job(job.uuid), version=stat.version)
        txn.delete(self.paths.finished_entry(job.finished_at or 0.0, job.uuid))
        if with_key and job.key is not None:
            txn.delete(self.paths.key(job.key))
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
