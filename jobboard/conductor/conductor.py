"""The conductor daemon: claim jobs, run them, consume them.

Shaped as initialize / loop / shutdown. The loop claims while it has capacity
(``concurrency`` flows at once; a job whose flow has ended is consumed
outside its slot, while the next one is claimed), from the queues it serves
(in their order), best job first, and otherwise sleeps until a watch says
claimable work may have appeared. Each job runs in its own thread
(:class:`~jobboard.conductor.run.JobRun`). A job whose factory this
conductor cannot import is given back and left alone for
``refusal_backoff`` seconds, for a conductor that can.

Fleet duties, each run by one elected conductor at a time: the repair
sweep, the retention janitor (:mod:`jobboard.conductor.janitor`) and the
scheduler. A conductor that finds a board of an older layout upgrades it
before it claims (:meth:`Board.upgrade <jobboard.board.Board.upgrade>`).

How it fails and recovers:

* ZooKeeper connection SUSPENDED: no job is claimed and no new task starts
  (the engines' gate blocks) until the connection is back;
* session LOST: every claim and lock is gone; every running engine is
  cancelled at its next task boundary, their late logbook writes are fenced
  off, and the conductor goes on claiming with a new session (kazoo opens it),
  registering itself again;
* ``stop(graceful=True)`` (first SIGTERM/SIGINT): stop claiming, let running
  jobs finish for up to ``grace`` seconds, then stop the rest at a task
  boundary and abandon them so others resume them at once;
  ``stop(graceful=False)`` (second signal): abandon everything now.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from jobboard import __version__
from jobboard.board import Board, Claimer, Job
from jobboard.board._watch import ChildWatch
from jobboard.board.layout import DEFAULT_QUEUE, LAYOUT_VERSION
from jobboard.board.retention import DEFAULT_KEEP_FINISHED
from jobboard.conductor.executors import KINDS as EXECUTORS, Executors
from jobboard.conductor.janitor import Janitor, LogbookArchive
from jobboard.conductor.leader import Duty
from jobboard.conductor.readiness import Readiness
from jobboard.conductor.run import JobRun, RunContext
from jobboard.conductor.session import SessionWatch
from jobboard.errors import BoardError, BoardUnavailable, Cancelled, InvalidArgument
from jobboard.events import EventKind
from jobboard.locks import Locks
from jobboard.logbook import Logbook
from jobboard.notify import WebhookPublisher
from jobboard.schedules import Scheduler
from jobboard.threads import ThreadCache

log = logging.getLogger(__name__)

IDLE_WAIT = 5.0
REGISTRATION_INTERVAL = 2.0
DEFAULT_FSCK_INTERVAL = 300.0
DEFAULT_STOP_TIMEOUT = 30.0
DEFAULT_FACTORY_TIMEOUT = 60.0
DEFAULT_REFUSAL_BACKOFF = 5.0


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Conductor:
    """Claims and runs jobs from a board.

    Args:
        board: the board (its client is the conductor's ZooKeeper session).
        logbook: the shared logbook.
        name: unique among live conductors; claims carry it.
        concurrency: flows run at once (a job whose flow has ended is
            consumed on the board outside its slot).
        allow: module prefixes flow factories may be imported from.
        grace: seconds a graceful stop lets running jobs finish.
        task_width: threads per job for tasks that may run in parallel.
        lock_timeout: seconds to wait for the locks a flow or task declares.
        metrics: a :class:`jobboard.metrics.Metrics`, subscribed to the board's
            notifier (like any listener); the logbook's write timings reach
            it when the logbook was made with ``notifier=board.notifier``.
        notify_url: POST one JSON document per finished job there
            (:class:`jobboard.notify.WebhookPublisher`, from :meth:`run` to
            the end of the shutdown).
        notify_secret: sign those requests with this shared secret
            (``X-Jobboard-Signature``; see :mod:`jobboard.notify.signing`).
        fsck_interval: seconds between two repair sweeps of the board, run
            by one conductor of the fleet at a time (0: this one never does).
        executor: ``"thread"`` (tasks on threads of this process) or
            ``"process"`` (tasks in worker processes, which a time limit, a
            cancel or a hand-off can kill).
        task_timeout: seconds a task may run unless it sets its own
            ``timeout`` (None: no limit).
        stop_timeout: seconds a task asked to stop (cancel, transfer, time
            limit, shutdown) gets before it is abandoned (threads) or killed
            (processes); a new holder waits as long for the old one's tasks.
        factory_timeout: seconds a flow factory may take to build the flow;
            one that does not return fails its job.
        scheduler: stand in the election of the fleet's scheduler, which
            posts the fires of the board's schedules (one conductor at a
            time); False: never run it here (``--no-scheduler``).
        queues: the queues claimed from, the first served first
            (``--queue gpu,default``).
        keep_finished: seconds a COMPLETE, FAILED or CANCELLED job stays on
            the board before the fleet's janitor (one conductor at a time)
            removes it, its outcome kept in the logbook (0: at once; None:
            this conductor never runs the janitor).
        refusal_backoff: seconds a job this conductor gave back (it cannot
            import its factory) is left for others before it is claimed here
            again.

    Raises:
        InvalidArgument: a setting out of range.
    """

    def __init__(self, board: Board, logbook: Logbook, *, name: str | None = None,
                 concurrency: int = 4, allow: Sequence[str] = (), grace: float = 30.0,
                 task_width: int = 4, lock_timeout: float = 60.0,
                 metrics: Any | None = None,
                 fsck_interval: float = DEFAULT_FSCK_INTERVAL,
                 executor: str = "thread", task_timeout: float | None = None,
                 stop_timeout: float = DEFAULT_STOP_TIMEOUT,
                 factory_timeout: float = DEFAULT_FACTORY_TIMEOUT,
                 scheduler: bool = True, queues: Sequence[str] = (DEFAULT_QUEUE,),
                 keep_finished: float | None = DEFAULT_KEEP_FINISHED,
                 refusal_backoff: float = DEFAULT_REFUSAL_BACKOFF,
                 notify_url: str | None = None,
                 notify_secret: bytes | None = None) -> None:
        if concurrency < 1:
            raise InvalidArgument("concurrency must be at least 1", argument="concurrency")
        if executor not in EXECUTORS:
            raise InvalidArgument(f"executor must be one of {', '.join(EXECUTORS)}, "
                                  f"not {executor!r}", argument="executor")
        if task_timeout is not None and not task_timeout > 0:
            raise InvalidArgument("task_timeout must be positive", argument="task_timeout")
        if not stop_timeout >= 0:
            raise InvalidArgument("stop_timeout must be >= 0", argument="stop_timeout")
        if notify_secret is not None and notify_url is None:
            raise InvalidArgument("notify_secret without notify_url: nothing to sign",
                                  argument="notify_secret")
        if not factory_timeout > 0:
            raise InvalidArgument("factory_timeout must be positive", argument="factory_timeout")
        if keep_finished is not None and not keep_finished >= 0:
            raise InvalidArgument("keep_finished must be >= 0", argument="keep_finished")
        if not refusal_backoff >= 0:
            raise InvalidArgument("refusal_backoff must be >= 0", argument="refusal_backoff")
        self.board = board
        self.logbook = logbook
        self.notifier = board.notifier
        self.name = name or default_name()
        self.concurrency = concurrency
        self.allow = tuple(allow)
        self.grace = grace
        self.task_width = task_width
        self.lock_timeout = lock_timeout
        self.executor = executor
        self.task_timeout = task_timeout
        self.stop_timeout = stop_timeout
        self.factory_timeout = factory_timeout
        self.executors = Executors(executor, concurrency=concurrency, task_width=task_width)
        self.readiness = Readiness(lambda: self.logbook.check(), on_change=self._on_readiness)
        self.locks = Locks(board.client, root=board.paths.locks, identifier=self.name)
        # By (job, claim token): a job given back and claimed again while its
        # old run still stops is two runs for a moment.
        self.runs: dict[tuple[str, int], JobRun] = {}
        # The runs whose flow has not ended: each holds one of the
        # ``concurrency`` slots (a run finishing its job on the board does not).
        self._flows: set[tuple[str, int]] = set()
        self._unreleased: dict[str, Job] = {}   # claims a run could not give back
        self._runs_lock = threading.Lock()
        self._job_threads = ThreadCache("job")       # a run's thread, reused
        self._capacity = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._hard_stop = threading.Event()
        self._started_at = time.time()
        self._registered_generation = -1
        self._registered_info: dict[str, Any] = {}
        self._registration_due = 0.0
        self.claimer = Claimer(board, self.name, queues=tuple(queues))
        self.queues = self.claimer.queues
        self.keep_finished = keep_finished
        self.refusal_backoff = refusal_backoff
        if board.archive is None:   # wait() on a pruned job answers from the logbook
            board.archive = LogbookArchive(logbook)
        self.janitor: Janitor | None = None
        self.fsck_interval = fsck_interval
        self._repair_duty: Duty | None = None
        self.run_scheduler = scheduler
        self.scheduler: Scheduler | None = None
        self.session = SessionWatch(board.client, on_lost=self._on_session_lost,
                                    on_state=self._on_state)
        self._run_context = RunContext(
            board=board, journal=logbook, owner=self.name, session=self.session,
            executors=self.executors, locker=self.locker, gate=self.gate,
            journal_down=self.readiness.down, release_later=self.release_later,
            allow=self.allow, factory_timeout=factory_timeout, task_timeout=task_timeout,
            stop_timeout=stop_timeout,
            avoid=lambda job_id: self.claimer.avoid(job_id, self.refusal_backoff),
            requests=self._requested, flow_ended=self._flow_ended)
        # Admin requests (cancel, suspend) by job id, from two directory watches.
        self._cancels: frozenset[str] = frozenset()
        self._suspends: frozenset[str] = frozenset()
        self._request_watches: list[ChildWatch] = []
        if metrics is not None:
            self.notifier.subscribe(metrics.listener)
        self.webhook: WebhookPublisher | None = None
        if notify_url is not None:
            self.webhook = WebhookPublisher(notify_url, notifier=self.notifier,
                                            secret=notify_secret)

    # -- the daemon ---------------------------------------------------------------

    def run(self) -> None:
        """Claim and run jobs until :meth:`stop` is called."""
        log.info("conductor %s starting (concurrency %d, queues %s, allowed factories %s)",
                 self.name, self.concurrency, ",".join(self.queues),
                 list(self.allow) or "none")
        try:
            self.logbook.check()     # refuse to start on a logbook we cannot use
            if not self._join_board():
                return
            self.notifier.emit(EventKind.CONDUCTOR_STARTED, owner=self.name,
                               details={"version": __version__})
            self._publish_ready()
            if self.webhook is not None:
                self.webhook.start()
            self._watch_requests()
            if self.fsck_interval > 0:
                self._repair_duty = Duty(
                    self.board.client, f"{self.board.paths.leaders}/fsck", self.name,
                    interval=self.fsck_interval, work=self._repair_board,
                    generation=lambda: self.session.generation).start()
            if self.keep_finished is not None:
                archive = self.board.archive if isinstance(self.board.archive,
                                                           LogbookArchive) \
                    else LogbookArchive(self.logbook)
                self.janitor = Janitor(self.board, archive, keep_finished=self.keep_finished,
                                       identifier=self.name,
                                       generation=lambda: self.session.generation).start()
            if self.run_scheduler:
                self.scheduler = Scheduler(self.board, name=self.name).start()
            self._loop()
        finally:
            self._shutdown()

    def _join_board(self) -> bool:
        """Upgrade an older board, register, set the claimer's watches:
        retried while ZooKeeper is unavailable (a member restarting, an
        election, a session expiring as it starts), for a dependency outage
        must not end the daemon. False when stopped before it could."""
        delay = 0.1
        while not self._stopping.is_set():
            try:
                if (self.board.layout_version or LAYOUT_VERSION) < LAYOUT_VERSION:
                    done = self.board.upgrade()
                    log.info("board upgraded from layout %d to %d: %d waiting job(s) moved "
                             "into their queue, %d finished job(s) indexed", done["from"],
                             done["to"], done["moved"], done["indexed"])
                self._register()
                self.claimer.start()
                return True
            except BoardUnavailable as exc:
                log.warning("board unavailable while starting (%s); retrying in %.1fs",
                            exc, delay)
                self._stopping.wait(delay)
                delay = min(5.0, delay * 2)
        return False

    def stop(self, graceful: bool = True) -> None:
        """Ask the conductor to stop; returns at once (see :meth:`wait`)."""
        if not graceful:
            self._hard_stop.set()
        self._stopping.set()
        self.claimer.wake()
        self._capacity.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`run` has returned; False on timeout."""
        return self._stopped.wait(timeout)

    @property
    def in_flight(self) -> int:
        with self._runs_lock:
            return len(self.runs)

    @property
    def busy(self) -> int:
        """Slots taken: the jobs whose flow is running or about to."""
        with self._runs_lock:
            return len(self._flows)

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            if not self.session.connected:
                self.session.wait_connected(1.0)
                continue
            try:
                self._keep_registered()
                self._release_unreleased()
                if not self.readiness.ready:
                    self._stopping.wait(min(1.0, self.readiness.recover()))
                    continue
                if self.busy >= self.concurrency:
                    self._capacity.wait(1.0)
                    self._capacity.clear()
                    continue
                jobs = self.claimer.claim_batch(self.concurrency - self.busy)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the daemon silently
                failures += 1
                if isinstance(exc, BoardUnavailable):
                    log.warning("board unavailable (%s); retrying", exc)
                else:
                    log.exception("claiming failed unexpectedly; retrying")
                self._stopping.wait(min(5.0, 0.1 * 2 ** failures))
                continue
            if self.claimer.conflicts:
                self.notifier.emit(EventKind.CLAIM_CONFLICTS, owner=self.name,
                                   details={"count": self.claimer.conflicts})
                self.claimer.conflicts = 0
            if not jobs:
                self.claimer.wait_for_work(IDLE_WAIT)
                continue
            for job in jobs:
                self._start(job)

    def _start(self, job: Job) -> None:
        run = JobRun(self._run_context, job)
        with self._runs_lock:
            self.runs[run.key] = run
            self._flows.add(run.key)
        self._in_flight_changed()
        self._job_threads.submit(self._run_job, run)

    def _run_job(self, run: JobRun) -> None:
        threading.current_thread().name = f"job-{run.job.uuid[:8]}"
        try:
            run.run()
        finally:
            with self._runs_lock:
                self.runs.pop(run.key, None)
                self._flows.discard(run.key)
            self._in_flight_changed()
            self._capacity.set()

    def _flow_ended(self, key: tuple[str, int]) -> None:
        with self._runs_lock:
            self._flows.discard(key)
        self._capacity.set()

    def _shutdown(self) -> None:
        deadline = time.monotonic() + (0 if self._hard_stop.is_set() else self.grace)
        if self.runs:
            log.info("conductor %s stopping: waiting up to %.1fs for %d running job(s)",
                     self.name, max(0.0, deadline - time.monotonic()), self.in_flight)
        while self.in_flight and time.monotonic() < deadline and not self._hard_stop.is_set():
            self._capacity.wait(0.2)
            self._capacity.clear()
        with self._runs_lock:
            left = list(self.runs.values())
        if left:
            log.info("grace period over: stopping %d job(s) at their next task boundary "
                     "and handing them back", len(left))
        for run in left:
            run.interrupt()
        if self._hard_stop.is_set():
            for run in left:   # do not wait for tasks: hand the jobs on now
                run._abandon()
        else:
            for run in left:   # its tasks get stop_timeout; then it gives the job back
                run.finished.wait(max(5.0, self.lock_timeout, self.stop_timeout + 2.0))
        self.claimer.stop()
        self.executors.shutdown()
        for watch in self._request_watches:
            watch.stop()
        if self._repair_duty is not None:
            self._repair_duty.stop()
        if self.janitor is not None:
            self.janitor.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        self.session.close()
        if self.webhook is not None:
            self.webhook.close()     # what is queued goes out within its timeout
        self.board.unregister_conductor(self.name)
        log.info("conductor %s stopped", self.name)
        self._stopped.set()

    def release_later(self, job: Job) -> None:
        """A run could not give its job back (ZooKeeper unreachable): the
        loop tries again, so a session that survives never keeps a claim
        nobody works on."""
        with self._runs_lock:
            self._unreleased[job.uuid] = job

    def _release_unreleased(self) -> None:
        with self._runs_lock:
            pending = list(self._unreleased.values())
        for job in pending:
            try:
                if self.board.holds_claim(job.uuid):
                    self.board.abandon(job, self.name)
                    log.info("job %s given back", job.uuid)
            except BoardUnavailable:
                return                       # next loop
            except BoardError as exc:        # no longer ours: nothing to give back
                log.info("job %s: not given back: %s", job.uuid, exc)
            with self._runs_lock:
                self._unreleased.pop(job.uuid, None)

    def _repair_board(self) -> None:
        """The repair sweep, while this conductor leads it."""
        findings = self.board.fsck(repair=True)
        if findings:
            log.warning("repair sweep: %d finding(s), %d repaired", len(findings),
                        sum(f.repaired for f in findings))

    # -- session ------------------------------------------------------------------

    def _watch_requests(self) -> None:
        """Two watches for every job's admin requests, not two per job (an
        exists watch on a request that never comes stays in kazoo for good)."""
        paths = self.board.paths
        self._request_watches = [
            ChildWatch(self.board.client, paths.cancel_requests, self._on_cancels).start(),
            ChildWatch(self.board.client, paths.suspend_requests, self._on_suspends).start()]
        for watch in self._request_watches:
            watch.wait_first(5.0)

    def _requested(self, job_id: str) -> tuple[bool, bool]:
        return job_id in self._cancels, job_id in self._suspends

    def _on_cancels(self, children: list[str]) -> None:
        # kazoo's thread: only flags are set (the engine's cancel is one).
        self._cancels = frozenset(children)
        for run in self._runs_of(self._cancels):
            run.request_cancel()

    def _on_suspends(self, children: list[str]) -> None:
        self._suspends = frozenset(children)
        for run in self._runs_of(self._suspends):
            run.request_suspend()

    def _runs_of(self, job_ids: frozenset[str]) -> list[JobRun]:
        with self._runs_lock:
            return [run for (job_id, _), run in self.runs.items() if job_id in job_ids]

    def _on_session_lost(self) -> None:
        with self._runs_lock:
            runs = list(self.runs.values())
        for run in runs:
            run.lose_claim()
        self.notifier.emit(EventKind.SESSION_LOST, owner=self.name)

    def _on_state(self, state: str) -> None:
        self.notifier.emit(EventKind.ZOOKEEPER_STATE, owner=self.name,
                           details={"state": str(state)})
        self._publish_ready()
        self.claimer.wake()

    # -- readiness ----------------------------------------------------------------

    def _on_readiness(self, ready: bool, reason: str | None) -> None:
        self._registration_due = 0.0     # tell the fleet at the next loop
        self._publish_ready()
        self.claimer.wake()

    def _publish_ready(self) -> None:
        self.notifier.emit(EventKind.CONDUCTOR_READY, owner=self.name, details={
            "ready": self.readiness.ready and self.session.connected,
            "reason": self.readiness.reason})

    def gate(self) -> None:
        """Called by engines before each task: wait while the connection is
        suspended; after a LOST the engine is cancelled and starts nothing."""
        while not self.session.connected and not self._hard_stop.is_set():
            self.session.wait_connected(0.5)

    # -- registration ---------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        with self._runs_lock:
            jobs = sorted({job_id for job_id, _ in self.runs})
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "started_at": self._started_at, "version": __version__,
                "concurrency": self.concurrency, "jobs": jobs, "queues": list(self.queues),
                "ready": self.readiness.ready, "reason": self.readiness.reason,
                "not_ready_since": self.readiness.since}

    def _register(self) -> None:
        self._registered_info = self._info()
        self.board.register_conductor(self.name, self._registered_info)
        self._registered_generation = self.session.generation

    def _keep_registered(self) -> None:
        """Register again after a session loss; refresh the jobs in flight now
        and then when they changed (not on every job: that would be a write
        per job; not when idle: a write every few seconds per conductor)."""
        if self._registered_generation != self.session.generation:
            self._register()
            self.claimer.restart()
            return
        now = time.monotonic()
        if now >= self._registration_due:
            self._registration_due = now + REGISTRATION_INTERVAL
            info = self._info()
            if info == self._registered_info:
                return
            try:
                self.board.update_conductor(self.name, info)
                self._registered_info = info
            except BoardError:
                self._register()

    def _in_flight_changed(self) -> None:
        self.notifier.emit(EventKind.JOBS_IN_FLIGHT, owner=self.name,
                           details={"count": self.in_flight})

    # -- locks for flows and tasks ------------------------------------------------

    @contextmanager
    def locker(self, specs: Sequence[str]) -> Iterator[Any]:
        """Hold the declared locks (the engine's LockSpecs: names with a kind)."""
        if not self.session.connected:
            raise Cancelled("ZooKeeper connection suspended; not taking locks")
        with self.locks.acquire_all(list(specs), timeout=self.lock_timeout) as group:
            for held in group:
                self.notifier.emit(EventKind.LOCK_ACQUIRED, owner=self.name,
                                   details={"kind": held.kind, "waited": held.waited})
            yield group
