"""The retention janitor: finished jobs leave ZooKeeper, the logbook keeps
their outcome.

One conductor of the fleet at a time runs it (an election, the same
:class:`~jobboard.conductor.leader.Duty` as the repair sweep, under
``{root}/leaders/retention``): every :func:`sweep_interval` seconds it calls
:meth:`Board.prune <jobboard.board.Board.prune>` for the jobs that finished
more than ``keep_finished`` seconds ago, with a :class:`LogbookArchive`.

Where the outcome lives once the record is gone: the board record held the
job's outcome (state, results, failure, reason); before deleting it, the
archive writes that outcome, with the job's name, factory, queue and times,
into the meta of the job's flow in the logbook (key :data:`ARCHIVE_KEY`),
beside the flow's own state and its tasks' results, which were there
already. A job that never ran (cancelled while waiting) gets a flow holding
only that. The write is fenced like any other: the archive takes the
logbook over with the zxid of the record's last change, newer than every
claim's token, so a late holder cannot overwrite it and it cannot overwrite
a newer holder. ``Board.wait``, ``jobboard show`` and ``jobboard jobs
--state COMPLETE`` answer from there (:meth:`LogbookArchive.outcome`,
:meth:`LogbookArchive.document`).

How it fails: a logbook that cannot be written leaves the batch on the
board (the janitor logs and tries again at its next interval); a job whose
logbook a newer token holds is left on the board.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator, Sequence

from jobboard.board import Board, Job, JobOutcome
from jobboard.board.retention import PruneReport
from jobboard.conductor.leader import Duty
from jobboard.errors import LogbookNotFound, StaleOwner
from jobboard.states import FlowState, JobState

log = logging.getLogger(__name__)

#: The key of the flow meta that holds a pruned job's outcome.
ARCHIVE_KEY = "board_outcome"
ARCHIVE_OWNER = "retention"

_FLOW_STATE = {JobState.COMPLETE: FlowState.SUCCESS, JobState.FAILED: FlowState.FAILURE,
               JobState.CANCELLED: FlowState.CANCELLED}
# The flow states a job in each finished state may have left in the logbook.
_FLOW_STATES_OF = {JobState.COMPLETE: {FlowState.SUCCESS},
                   JobState.FAILED: {FlowState.FAILURE, FlowState.REVERTED},
                   JobState.CANCELLED: {FlowState.CANCELLED, FlowState.REVERTED,
                                        FlowState.PENDING}}


def sweep_interval(keep_finished: float) -> float:
    """Seconds between two janitor passes: half the retention, between 0.5 s
    and a minute (so ``--keep-finished 0`` removes jobs within a second)."""
    return min(60.0, max(0.5, keep_finished / 2))


def archived_document(job: Job) -> dict[str, Any]:
    """What the logbook keeps of a job whose record is pruned."""
    outcome = job.outcome or {}
    return {"job_id": job.uuid, "state": job.state.value, "name": job.name,
            "factory": job.factory, "queue": job.queue, "priority": job.priority,
            "attempt": job.attempt, "key": job.key, "created_at": job.created_at,
            "finished_at": job.finished_at, "results": outcome.get("results") or {},
            "failure": outcome.get("failure"), "reason": outcome.get("reason"),
            "pruned_at": time.time()}


class LogbookArchive:
    """The :class:`~jobboard.board.retention.OutcomeArchive` on a logbook.

    Args:
        logbook: a :class:`jobboard.logbook.Logbook` (anything with its
            ``take_over``, ``save_flow``, ``load_flow`` and
            ``list_logbooks``).
    """

    def __init__(self, logbook: Any) -> None:
        self.logbook = logbook

    def save(self, jobs: Sequence[tuple[Job, int]]) -> set[str]:
        """Write each job's outcome into its flow's meta (two logbook
        transactions a job). Returns the ids written.

        Raises:
            LogbookError: the logbook cannot be written (nothing more is tried).
        """
        kept: set[str] = set()
        for job, token in jobs:
            try:
                flow = self.logbook.take_over(job.uuid, token, ARCHIVE_OWNER, name=job.name,
                                              attempt=job.attempt)
                meta = dict(flow.meta or {}) if flow is not None else {}
                meta[ARCHIVE_KEY] = archived_document(job)
                self.logbook.save_flow(
                    job.uuid, flow.name if flow is not None else job.name,
                    flow.state if flow is not None else _FLOW_STATE[job.state],
                    token=token, meta=meta)
            except StaleOwner as exc:
                log.warning("job %s: its outcome is not archived (%s); left on the board",
                            job.uuid, exc)
                continue
            kept.add(job.uuid)
        return kept

    def document(self, job_id: str) -> dict[str, Any] | None:
        """The archived document of a pruned job (None when there is none)."""
        try:
            flow = self.logbook.load_flow(job_id)
        except LogbookNotFound:
            return None
        if flow is None or not isinstance((flow.meta or {}).get(ARCHIVE_KEY), dict):
            return None
        return dict(flow.meta[ARCHIVE_KEY])

    def outcome(self, job_id: str) -> JobOutcome | None:
        document = self.document(job_id)
        if document is None:
            return None
        try:
            state = JobState(document.get("state"))
        except ValueError:
            return None
        return JobOutcome(job_id, state, dict(document.get("results") or {}),
                          document.get("failure"), document.get("reason"))

    def finished(self, state: JobState, *, limit: int = 100,
                 skip: set[str] | frozenset[str] = frozenset()) -> Iterator[dict[str, Any]]:
        """Archived documents of pruned jobs in ``state``, newest logbook
        first, at most ``limit`` (ids in ``skip`` are left out: they are
        still on the board). Reads one flow per logbook whose flow state fits."""
        states = _FLOW_STATES_OF.get(state, set())
        offset, found = 0, 0
        while found < limit:
            page = self.logbook.list_logbooks(limit=200, offset=offset)
            if not page:
                return
            offset += len(page)
            for info in page:
                if info.job_id in skip or info.flow_state not in states:
                    continue
                document = self.document(info.job_id)
                if document is not None and document.get("state") == state.value:
                    found += 1
                    yield document
                    if found >= limit:
                        return


class Janitor:
    """Runs retention on the elected conductor (see the module docstring).

    Args:
        board: the conductor's board.
        archive: where outcomes go before records are deleted.
        keep_finished: seconds a finished job stays on the board (0: none).
        identifier: the conductor's name (the election contender).
        generation: the conductor's session generation now.
    """

    def __init__(self, board: Board, archive: LogbookArchive, *, keep_finished: float,
                 identifier: str, generation: Callable[[], int]) -> None:
        self.board = board
        self.archive = archive
        self.keep_finished = keep_finished
        self.last: PruneReport | None = None
        self.duty = Duty(board.client, f"{board.paths.leaders}/retention", identifier,
                         interval=sweep_interval(keep_finished), work=self.sweep,
                         generation=generation)

    def start(self) -> "Janitor":
        self.duty.start()
        return self

    def stop(self) -> None:
        self.duty.stop()

    def sweep(self) -> PruneReport:
        """One pass: prune what finished more than ``keep_finished`` ago."""
        self.last = self.board.prune(self.keep_finished, archive=self.archive)
        return self.last
