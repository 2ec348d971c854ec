"""The scheduler: one process at a time posts each schedule's fires.

Contenders (conductors, or any process) stand in a kazoo election at
``{root}/leaders/scheduler``; the leader loads the schedules (with watches),
posts the fires that are due, and sleeps on an event until the next fire
time, at most ``max_wait`` seconds, or until a watch reports a change (a
schedule added, paused, resumed, replaced or removed).

Exactly once per tick: the job for fire time ``t`` of schedule ``s`` is
posted with the idempotency key ``schedule:{s}@{t in ms}``, and only then is
``t`` written as the schedule's cursor in its status znode. A leader that
dies (or stalls) between the two leaves a cursor before ``t``; the next
leader posts ``t`` again, and the board answers with the job already
posted under that key instead of a second one. Two leaders at once (a
stalled leader whose session expired, waking next to its successor) are
harmless the same way, and the status is written with a version check so
the cursor never moves back.

Idempotency keys live as long as their job's record: a job trashed or
pruned by retention takes its key along. The cursor makes that safe once it
is written; the one gap is a job that finished *and* was pruned in the
moments between a leader's post and its successor's first tick (possible
only with ``--keep-finished 0``), which would be posted again.

How it fails: ZooKeeper unreachable -> logged, tried again after a pause
(fires that come due meanwhile are missed fires, handled by the policy);
a schedule whose record does not validate -> reported once and never
fired, the others go on; a fire the board refuses (a payload too large) ->
logged, recorded as the schedule's ``error`` and skipped; session lost ->
leadership ends at once and the process stands again with its new session.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from kazoo.protocol.states import KazooState

from jobboard.errors import BoardUnavailable, JobBoardError
from jobboard.errors import ScheduleNotFound
from jobboard.schedules._plan import plan_fires
from jobboard.schedules._record import Schedule, ScheduleStatus
from jobboard.schedules._store import ScheduleInfo, Schedules

if TYPE_CHECKING:
    from jobboard.board import Board

log = logging.getLogger(__name__)

ELECTION = "scheduler"
DEFAULT_MAX_WAIT = 60.0
RETRY_WAIT = 2.0


class Scheduler:
    """Posts the fires of the board's schedules while it leads.

    Args:
        board: the board (its client's session is the one that leads).
        name: shown as the election contender and in the status (default host-pid).
        clock: epoch seconds now.
        max_wait: longest sleep between two looks at the schedules (a safety
            net: watches wake it on every change).
    """

    def __init__(self, board: "Board", *, name: str | None = None,
                 clock: Callable[[], float] = time.time,
                 max_wait: float = DEFAULT_MAX_WAIT) -> None:
        self.board = board
        self.client = board.client
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.clock = clock
        self.max_wait = max_wait
        self.schedules = Schedules(board, clock=clock)
        self.election_path = f"{board.paths.leaders}/{ELECTION}"
        self.posted = 0                  # fires this process posted (or found posted)
        self.terms = 0                   # times it became the leader
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._leading = threading.Event()
        self._dirty = True
        self._generation = 0
        self._reported: dict[str, str] = {}
        self._known: dict[str, ScheduleInfo] = {}
        self._thread: threading.Thread | None = None
        self._election: Any = None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> "Scheduler":
        """Stand for election in a thread of its own; returns at once."""
        self.client.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._stand, name="scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop leading or standing; waits up to ``timeout`` for the thread."""
        self._stop.set()
        self._wake.set()
        election = self._election
        if election is not None:
            election.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.remove_listener(self._on_state)

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def wait_leading(self, timeout: float) -> bool:
        """Wait until this scheduler leads; False on timeout."""
        return self._leading.wait(timeout)

    def wake(self) -> None:
        """Look at the schedules again now."""
        self._dirty = True
        self._wake.set()

    def _on_state(self, state: str) -> None:
        # kazoo's thread: never block here
        if state == KazooState.LOST:
            self._generation += 1
        if state != KazooState.SUSPENDED:
            self.wake()

    def _stand(self) -> None:
        while not self._stop.is_set():
            try:
                self._election = self.client.Election(self.election_path, self.name)
                self._election.run(self._lead)
            except Exception as exc:  # noqa: BLE001 - stand again after a pause
                if self._stop.is_set():
                    return
                log.warning("scheduler election failed (%s); standing again", exc)
                self._stop.wait(RETRY_WAIT)

    # -- leading -------------------------------------------------------------------

    def _lead(self) -> None:
        generation = self._generation
        log.info("%s leads the scheduler", self.name)
        self._dirty = True
        self.terms += 1
        self._leading.set()
        try:
            while not self._stop.is_set() and generation == self._generation:
                self._wake.clear()
                try:
                    wait = self.tick()
                except BoardUnavailable as exc:
                    log.warning("scheduler: board unavailable (%s); trying again in %gs",
                                exc, RETRY_WAIT)
                    self._dirty = True
                    wait = RETRY_WAIT
                except Exception:  # noqa: BLE001 - a bug must not end the leadership silently
                    log.exception("scheduler failed; trying again in %gs", RETRY_WAIT)
                    self._dirty = True
                    wait = RETRY_WAIT
                self._wake.wait(max(0.0, wait))
        finally:
            self._leading.clear()
            log.info("%s no longer leads the scheduler", self.name)

    def tick(self) -> float:
        """Post what is due now, once; returns the seconds until the next fire.

        The leader calls it in its loop; called directly (tests, a one-shot
        tool) it posts without standing for election, which the idempotency
        keys make safe next to a leader.

        Raises:
            BoardUnavailable: ZooKeeper cannot be reached.
        """
        if self._dirty:
            self._dirty = False
            self._known = {info.name: info for info in self.schedules.load(self._on_change)}
        now = self.clock()
        next_wake = now + self.max_wait
        for name, info in list(self._known.items()):
            if self._stop.is_set():
                break
            if info.broken is not None or info.schedule is None:
                self._report(name, info.broken or "unreadable")
                continue
            self._reported.pop(name, None)
            if info.schedule.paused:
                continue
            fire = self._fire_due(info, now)
            if fire is not None:
                next_wake = min(next_wake, fire)
        return next_wake - self.clock()

    def _on_change(self, _event: Any) -> None:
        self.wake()

    def _report(self, name: str, reason: str) -> None:
        if self._reported.get(name) != reason:
            self._reported[name] = reason
            log.error("schedule %s is broken and does not fire: %s", name, reason)

    def _fire_due(self, info: ScheduleInfo, now: float) -> float | None:
        """Post the due fires of one schedule (per its policy); returns its next
        fire time."""
        schedule = info.schedule
        assert schedule is not None
        status = info.status or ScheduleStatus()
        plan = plan_fires(schedule, status.cursor, now)
        current: ScheduleInfo | None = info
        if plan.skip_to is not None:
            log.warning("schedule %s: %d missed fire(s) skipped (policy %s)", schedule.name,
                        plan.skipped, schedule.missed.value)
            current = self._save(info, dataclasses.replace(
                status, cursor=plan.skip_to, leader=self.name,
                skipped=status.skipped + plan.skipped))
        for fire_time in plan.post:
            if current is None:
                break
            current = self._post(current, schedule, fire_time)
        if current is None:
            return now   # the status moved under us, or the schedule went: look again
        return plan.next_fire

    def _post(self, info: ScheduleInfo, schedule: Schedule,
              fire_time: float) -> ScheduleInfo | None:
        status = info.status or ScheduleStatus()
        error = None
        job_id = status.last_job
        try:
            job = self.board.post(schedule.factory, **self._post_arguments(schedule, fire_time))
            job_id = job.uuid
            self.posted += 1
            log.info("schedule %s fired for %s: job %s", schedule.name,
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(fire_time)), job.uuid)
        except BoardUnavailable:
            raise
        except (JobBoardError, TypeError) as exc:   # refused for good: skip this fire
            error = f"fire at {fire_time:.3f} not posted: {exc}"
            log.error("schedule %s: %s", schedule.name, error)
        posted = error is None
        return self._save(info, ScheduleStatus(
            cursor=fire_time, leader=self.name, error=error,
            last_fire=fire_time if posted else status.last_fire, last_job=job_id,
            posted_at=self.clock() if posted else status.posted_at,
            fires=status.fires + posted, skipped=status.skipped + (not posted)))

    @staticmethod
    def _post_arguments(schedule: Schedule, fire_time: float) -> dict[str, Any]:
        arguments: dict[str, Any] = dict(
            args=schedule.args, store=schedule.store, name=schedule.name,
            priority=schedule.priority, key=schedule.key(fire_time),
            details={"schedule": schedule.name, "fire_time": fire_time})
        if schedule.queue is not None:   # else the board's default queue
            arguments["queue"] = schedule.queue
        return arguments

    def _save(self, info: ScheduleInfo, status: ScheduleStatus) -> ScheduleInfo | None:
        """Write the status over the version we know; None when somebody else
        wrote it (or the schedule went): reload before going on."""
        try:
            version = self.schedules.record(info.name, status, info.status_version)
        except ScheduleNotFound:
            version = None
        if version is None:
            self._dirty = True
            return None
        saved = dataclasses.replace(info, status=status, status_version=version)
        self._known[info.name] = saved
        return saved
