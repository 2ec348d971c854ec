"""Running one claimed job: take over its logbook, rebuild its flow, run the
engine, and consume the job with its outcome.

How it ends, case by case:

* the flow succeeds -> consumed COMPLETE with its results;
* a task fails and the flow is reverted -> consumed FAILED with the failure;
* a task runs past its time limit -> that attempt fails (``TaskTimeout``);
  its retry policy decides, as for any failure;
* this conductor cannot import the factory (its module is outside
  ``--allow``, or the allowed package is not installed here) -> given back uncounted for a
  conductor that can (``refusals`` + 1; the ``max_refusals``-th parks the job
  DEAD with the reason), and not claimed here again for a while;
* the factory cannot be loaded otherwise, raises, does not return within
  ``factory_timeout``, or the flow is invalid -> consumed FAILED with the
  reason, recorded in the logbook too: never retried forever;
* an admin cancels it -> the running task is asked to stop (killed with the
  process executor past ``stop_timeout``), the flow is reverted, and the job
  is consumed CANCELLED;
* an admin suspends it -> the engine stops at the next task boundary as for
  a hand-off (running tasks asked to stop, nothing reverted, the logbook
  kept), then the job is given up into SUSPENDED with the claim, the markers
  and the request in one transaction (:meth:`~jobboard.board.Board.suspend_held`).
  A cancel request wins over a suspend request; a flow that ends before it
  stops is consumed as usual and the request dropped;
* the claim is lost (session expired, transferred, abandoned by an admin) ->
  the running task is asked to stop the same way; nothing is consumed; a late
  logbook write is refused by fencing (``StaleOwner``). The next holder
  starts only once our tasks stopped (the working marker, see
  :meth:`~jobboard.board.Board.start_working`) or ``stop_timeout`` passed;
* the conductor shuts down past its grace period -> the engine stops and the
  job is abandoned, so another conductor resumes it at once;
* the logbook fails (unreachable, schema missing, credentials, disk) -> the
  job is handed back without counting against it, and the conductor turns
  NOT READY until the logbook answers again
  (:mod:`jobboard.conductor.readiness`);
* a flow lock stays held elsewhere past ``lock_timeout`` -> handed back,
  uncounted: it waits its turn;
* the board cannot take the job back (ZooKeeper unreachable) -> the
  conductor tries again from its loop while its session lives;
* an unexpected error of ours -> the job is handed back, counted like a
  holder's death, so a job that always breaks us ends DEAD with the reason;
* the board refuses the finish (the claim moved on) -> a claim still ours is
  given back, never kept unworked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from jobboard.board import Board, Job
from jobboard.conductor.executors import Executors
from jobboard.conductor.session import SessionWatch
from jobboard.engine import Engine, build_flow
from jobboard.events import EventKind
from jobboard.engine.factory import is_allowed
from jobboard.engine.journal import Failure, Journal
from jobboard.engine.runner import record_unbuilt
from jobboard.errors import (BoardError, BoardUnavailable, Cancelled, EngineError,
                             FactoryNotFound, LockTimeout, LogbookError)
from jobboard.states import FlowState, JobState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What a job run needs of the conductor that claimed the job.

    Attributes:
        board: The board the job was claimed from (as ``owner``).
        journal: Where the engine records the flow (the logbook).
        owner: The conductor's name, the claim's owner.
        session: The conductor's ZooKeeper session watch (connected, pauses).
        executors: Where the tasks run.
        locker: Takes the named locks a flow or task declares.
        gate: Called before each task; blocks while the connection is suspended.
        journal_down: Called with the reason when the journal fails: the
            conductor turns NOT READY.
        release_later: Called with a job the run could not give back (the
            conductor tries again from its loop).
        flow_ended: Called with the run's key once its flow has stopped and
            its executor is back, before the job is consumed: the conductor
            may start its next job while this one is finished on the board.
        requests: ``requests(job_id) -> (cancel, suspend)``: whether an admin
            asked to cancel or suspend the job. The conductor watches the
            request directories (two watches for all its jobs) and tells
            the runs of later requests (``request_cancel``, ``request_suspend``).
    """

    board: Board
    journal: Journal
    owner: str
    session: SessionWatch
    executors: Executors
    locker: Callable[[Sequence[str]], AbstractContextManager[Any]]
    gate: Callable[[], None]
    journal_down: Callable[[str], None]
    release_later: Callable[[Job], None]
    allow: tuple[str, ...] = ()
    factory_timeout: float = 60.0
    task_timeout: float | None = None
    stop_timeout: float = 30.0
    avoid: Callable[[str], None] = lambda job_id: None   # a job given back: not again here
    requests: Callable[[str], tuple[bool, bool]] = lambda job_id: (False, False)
    flow_ended: Callable[[tuple[str, int]], None] = lambda key: None


def cannot_import(exc: EngineError, factory: str, allow: Sequence[str]) -> str | None:
    """Why this conductor cannot import ``factory``: its module is outside
    ``allow``, or the allowed package it is under is not installed here. None
    when ``exc`` is the factory's own fault (an import error inside an allowed
    module, a module missing from an installed package, a missing function,
    an invalid flow)."""
    module = factory.partition(":")[0]
    if not is_allowed(module, allow):
        return f"{module} is outside its --allow prefixes {list(allow)}"
    cause = exc.__cause__
    if isinstance(exc, FactoryNotFound) and isinstance(cause, ModuleNotFoundError):
        missing = cause.name or ""
        for prefix in (p.rstrip(".") for p in allow):
            if (is_allowed(module, prefix) and missing
                    and (prefix == missing or prefix.startswith(missing + "."))):
                return f"no module {missing!r} is installed there"
    return None


class JobRun:
    """One job in flight on a conductor."""

    def __init__(self, context: RunContext, job: Job) -> None:
        self.context = context
        self.job = job
        self.key = (job.uuid, job.claim.token if job.claim else 0)
        self._pauses_seen = context.session.pauses
        self.engine: Engine | None = None
        self.claim_lost = threading.Event()
        self.cancel_requested = threading.Event()
        self.suspend_requested = threading.Event()
        self.shutting_down = threading.Event()
        self.releasing = threading.Event()     # our own consume/abandon deletes the claim
        self.finished = threading.Event()
        # This run holds the job's working marker (set by the claim itself
        # for a job never claimed before, else by start_working).
        self._working = bool(job.claim and job.claim.working)
        self._claim_unsure = False    # the claim watch's check got no answer

    # -- signals from outside (watch threads, shutdown) ---------------------------

    def lose_claim(self) -> None:
        """The claim vanished: stop at the next task boundary, keep the logbook
        as it is for the next owner."""
        if not self.finished.is_set():
            self.claim_lost.set()
            if self.engine is not None:
                self.engine.cancel()

    def request_cancel(self) -> None:
        self.cancel_requested.set()
        if self.engine is not None:
            self.engine.cancel(revert=True)

    def request_suspend(self) -> None:
        """An admin asked to suspend the job: stop at the next task boundary,
        keep the logbook (a cancel under way goes on: it wins)."""
        if self.suspend_requested.is_set() or self.finished.is_set():
            return
        self.suspend_requested.set()
        log.info("job %s: suspend requested; stopping at the next task boundary",
                 self.job.uuid)
        if self.engine is not None and not self.cancel_requested.is_set():
            self.engine.cancel()

    def interrupt(self) -> None:
        """Shutdown past the grace period: stop, then abandon the job."""
        self.shutting_down.set()
        if self.engine is not None:
            self.engine.cancel()

    # -- the run ------------------------------------------------------------------

    def run(self) -> None:
        board = self.context.board
        name = self.context.owner
        job = self.job
        try:
            self._watch_claim()
            outcome = self._run_flow()
            self.context.flow_ended(self.key)
            if outcome is None:
                return
            state, document = outcome
            self.releasing.set()
            board.consume(job, name, document, state=state, working=self._working)
            self._working = False             # gone with the consume
            log.info("job %s (%s) %s", job.uuid, job.name, state.value)
            if self.suspend_requested.is_set():   # it ended before it could stop
                self._drop_suspend_request()
        except LogbookError as exc:
            # The logbook's failure (down, schema, credentials, disk), not the
            # job's: give it back uncounted and claim nothing more until the
            # logbook answers again.
            self.context.journal_down(f"logbook failed: {exc}")
            log.warning("job %s: handed back, the logbook failed", job.uuid)
            self._abandon()
        except (LockTimeout, Cancelled) as exc:
            # A flow lock held elsewhere, or ZooKeeper suspended while taking
            # one: the job waits its turn, uncounted.
            log.warning("job %s: handed back: %s", job.uuid, exc)
            self._abandon()
        except BoardUnavailable as exc:
            # Consuming retried through connection losses; still unreachable:
            # give the job back if we can (the next owner finds the flow
            # finished in the logbook), else the session's end releases it.
            log.warning("job %s: could not finish on the board: %s", job.uuid, exc)
            self._abandon()
        except BoardError as exc:
            # Refused (the claim moved on, or the record changed under us): a
            # claim still ours is given back, never kept unworked.
            log.warning("job %s: could not finish on the board: %s", job.uuid, exc)
            if self._claim_still_ours():
                self._abandon()
        except Exception:  # noqa: BLE001 - a bug must not kill the conductor
            log.exception("job %s: unexpected error; handing it back (counted against "
                          "its claims)", job.uuid)
            self._abandon(crashed=True)
        finally:
            if self.claim_lost.is_set():    # once per run: the claim went while it ran here
                board.notifier.emit(EventKind.CLAIM_LOST, job_id=job.uuid, owner=name,
                                    flow=self.engine.flow.name if self.engine else None)
            self._stop_working()
            self.finished.set()

    def _run_flow(self) -> tuple[JobState, dict[str, Any]] | None:
        """Returns (state, outcome document) to consume with, or None when the
        job must not be consumed by us."""
        context = self.context
        job = self.job
        token = job.claim.token
        if not self._working:
            waited = context.board.start_working(job.uuid, job.run_mark,
                                                 stop_timeout=context.stop_timeout,
                                                 abort=self._stopping)
            if waited is None:              # lost or stopping while waiting for the hand-off
                if not self.claim_lost.is_set():
                    self._abandon()
                return None
            self._working = True
            if waited >= 0.5:
                log.info("job %s: waited %.1fs for its previous holder to stop",
                         job.uuid, waited)
        consuming = False
        executor = context.executors.acquire()
        try:
            try:
                flow = build_flow(job.factory, job.args, context.allow,
                                  timeout=context.factory_timeout)
                self.engine = Engine(
                    flow, journal=context.journal, job_id=job.uuid, token=token,
                    attempt=job.attempt, store=job.store, executor=executor,
                    notifier=context.board.notifier, locker=context.locker,
                    owner=context.owner, gate=self._gate,
                    task_timeout=context.task_timeout, stop_timeout=context.stop_timeout,
                    new=job.claim.working)    # its first claim: no journal yet
            except EngineError as exc:
                return self._broken(exc)
            if self.claim_lost.is_set() or self.shutting_down.is_set():
                self.engine.cancel()
            if self.cancel_requested.is_set():   # set by the watch _watch_claim placed
                self.engine.cancel(revert=True)
            elif self.suspend_requested.is_set():
                self.engine.cancel()
            outcome = self.engine.run()
            stopped = outcome.state is FlowState.CANCELLED and not outcome.reverted
            held = not (outcome.fenced or self.claim_lost.is_set())
            # A flow that ended (not stopped) is consumed next, and a flow
            # stopped for a suspend is given up: either with the working
            # marker in the same transaction.
            consuming = held and (not stopped or self.suspend_requested.is_set())
        finally:
            if self.engine is not None and self.engine.running_tasks:
                log.warning("job %s: task(s) %s ignored the request to stop; handing the job "
                            "on anyway", job.uuid, ", ".join(self.engine.running_tasks))
                consuming = False
            context.executors.release(executor)
            if not consuming:
                self._stop_working()
        if outcome.fenced or self.claim_lost.is_set():
            if self._claim_still_ours():
                # Lost only in appearance (a check failed mid-reconnect): give
                # it back rather than hold it unworked.
                log.warning("job %s: stopped although the claim is still ours; "
                            "abandoning it for another conductor", job.uuid)
                self.claim_lost.clear()
                self._abandon()
            else:
                self.claim_lost.set()       # a fenced write says so too
                log.warning("job %s: claim lost; left to its new owner", job.uuid)
            return None
        if outcome.state is FlowState.CANCELLED and not outcome.reverted:
            if self.suspend_requested.is_set():
                self._suspend()
            else:
                self._abandon()
            return None
        document: dict[str, Any] = {"flow_state": outcome.state.value,
                                    "results": outcome.results}
        if outcome.failure is not None:
            document["failure"] = outcome.failure.to_dict()
        if outcome.state is FlowState.SUCCESS:
            return JobState.COMPLETE, document
        if outcome.state is FlowState.CANCELLED:
            document["reason"] = "cancelled by an admin; reverted"
            return JobState.CANCELLED, document
        return JobState.FAILED, document

    def _gate(self) -> None:
        """Before each task: wait out a suspended connection, then make sure the
        claim is still ours. The claim watch and the session's LOST say when it
        is gone, with no round trip per task; only after this process stood
        still (a pause past the session timeout is learnt late) does the gate
        ask ZooKeeper. A connection that drops again while asking is waited
        out too: only a claim seen gone or held by another session is lost."""
        session = self.context.session
        while not (self.claim_lost.is_set() or self.shutting_down.is_set()):
            if not session.connected and self.engine is not None:
                self.engine.flush()    # what finished is saved before we wait
            self.context.gate()
            unsure = self._claim_unsure
            if not (unsure or session.paused_since(self._pauses_seen)):
                return
            seen = session.pauses
            try:
                held = self.context.board.holds_claim(self.job.uuid,
                                                      watch=self._on_claim if unsure else None)
            except BoardUnavailable:
                self.shutting_down.wait(0.05)
                continue
            self._pauses_seen = seen
            if unsure:
                self._claim_unsure = False
            if not held:
                self.lose_claim()
            return

    def _broken(self, exc: EngineError) -> tuple[JobState, dict[str, Any]] | None:
        """The flow cannot even be built: give the job back when this
        conductor cannot import its factory, else fail the job for good, with
        the reason in the journal (through the engine) and on the board."""
        job = self.job
        why = cannot_import(exc, job.factory, self.context.allow)
        if why is not None:
            self._refuse(f"no conductor serving queue {job.queue!r} can import "
                         f"{job.factory} (last refused by {self.context.owner}: {why})")
            return None
        log.error("job %s: %s; marking it failed", job.uuid, exc)
        try:
            failure = record_unbuilt(self.context.journal, exc, job_id=job.uuid,
                                     token=job.claim.token, owner=self.context.owner,
                                     name=job.name, attempt=job.attempt)
            if failure is None:
                return None                 # fenced: a newer owner has it
        except LogbookError as err:
            log.warning("job %s: could not record the failure in the logbook: %s",
                        job.uuid, err)
            failure = Failure.from_exception(exc)
        return JobState.FAILED, {"flow_state": FlowState.FAILURE.value, "reason": str(exc),
                                 "failure": failure.to_dict()}

    def _refuse(self, reason: str) -> None:
        log.warning("job %s: given back: %s", self.job.uuid, reason)
        self.context.avoid(self.job.uuid)
        self.releasing.set()
        try:
            self.context.board.refuse(self.job, self.context.owner, reason)
        except BoardUnavailable as exc:
            log.warning("job %s: could not give it back yet: %s", self.job.uuid, exc)
            self.context.release_later(self.job)
        except BoardError as exc:
            log.warning("job %s: could not give it back: %s", self.job.uuid, exc)

    def _suspend(self) -> None:
        """Give the job up into SUSPENDED, our working marker with it."""
        self.releasing.set()
        try:
            self.context.board.suspend_held(self.job, self.context.owner,
                                            working=self._working)
            self._working = False
            log.info("job %s suspended at a task boundary", self.job.uuid)
        except BoardUnavailable as exc:     # given back later; the request stays
            log.warning("job %s: could not suspend yet: %s", self.job.uuid, exc)
            self.context.release_later(self.job)
        except BoardError as exc:
            log.warning("job %s: could not suspend: %s", self.job.uuid, exc)

    def _drop_suspend_request(self) -> None:
        try:
            self.context.board.drop_suspend_request(self.job.uuid)
        except BoardError as exc:    # left to retry, trash and the repair sweep
            log.warning("job %s: could not drop its suspend request: %s", self.job.uuid, exc)

    def _on_claim(self, event: Any) -> None:
        if event is not None and event.type == "DELETED" and not self.releasing.is_set():
            log.warning("job %s: claim vanished", self.job.uuid)
            self.lose_claim()

    def _on_claim_answer(self, held: bool | None) -> None:
        if held is None:         # unknown (connection lost): the gate asks again
            self._claim_unsure = True
        elif not held:
            self.lose_claim()

    def _stopping(self) -> bool:
        return self.claim_lost.is_set() or self.shutting_down.is_set()

    def _stop_working(self) -> None:
        """Our tasks of this job have stopped: the next holder may start."""
        if not self._working:
            return
        self._working = False
        try:
            self.context.board.stop_working(self.job.uuid, self.job.run_mark)
        except BoardError as exc:   # gone with our session at the latest
            log.warning("job %s: could not hand the job on yet: %s", self.job.uuid, exc)

    def _claim_still_ours(self) -> bool:
        try:
            return self.context.board.holds_claim(self.job.uuid)
        except BoardUnavailable:
            return False        # unreachable or expired: the session's end frees it

    def _abandon(self, *, crashed: bool = False) -> None:
        if self.claim_lost.is_set():
            return
        self.releasing.set()
        try:
            self.context.board.abandon(self.job, self.context.owner, crashed=crashed)
            log.info("job %s abandoned for another conductor", self.job.uuid)
        except BoardUnavailable as exc:     # our session may well survive: try again
            log.warning("job %s: could not abandon yet: %s", self.job.uuid, exc)
            self.context.release_later(self.job)
        except BoardError as exc:
            log.warning("job %s: could not abandon: %s", self.job.uuid, exc)

    def _watch_claim(self) -> None:
        """Watch the claim (it fires on kazoo's thread, once), without
        waiting for ZooKeeper's answer: a claim already gone stops the engine
        at its next task boundary. Take in the admin requests made before the
        run (later ones reach the run from the conductor's watches)."""
        job_id = self.job.uuid
        self.context.board.watch_claim(job_id, self._on_claim, self._on_claim_answer)
        cancel, suspend = self.context.requests(job_id)
        if cancel:
            self.request_cancel()
        if suspend:
            self.request_suspend()
