"""Running one claimed job: take over its logbook, rebuild its flow, run the
engine, and consume the job with its outcome.

How it ends, case by case:

* the flow succeeds -> consumed COMPLETE with its results;
* a task fails and the flow is reverted -> consumed FAILED with the failure;
* a task runs past its time limit -> that attempt fails (``TaskTimeout``);
  its retry policy decides, as for any failure;
* the factory cannot be loaded, raises, does not return within
  ``factory_timeout``, or the flow is invalid -> consumed FAILED with the
  reason, recorded in the logbook too: never retried forever;
* an admin cancels it -> the running task is asked to stop (killed with the
  process executor past ``stop_timeout``), the flow is reverted, and the job
  is consumed CANCELLED;
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
from typing import TYPE_CHECKING, Any

from jobboard.board import Job
from jobboard.engine import Engine, build_flow
from jobboard.errors import (BoardError, BoardUnavailable, Cancelled, EngineError,
                             LockTimeout, LogbookError, StaleOwner)
from jobboard.logbook import Failure
from jobboard.states import FlowState, JobState

if TYPE_CHECKING:
    from jobboard.conductor.conductor import Conductor

log = logging.getLogger(__name__)


class JobRun:
    """One job in flight on a conductor."""

    def __init__(self, conductor: "Conductor", job: Job) -> None:
        self.conductor = conductor
        self.job = job
        self.key = (job.uuid, job.claim.token if job.claim else 0)
        self._pauses_seen = conductor.session.pauses
        self.engine: Engine | None = None
        self.claim_lost = threading.Event()
        self.cancel_requested = threading.Event()
        self.shutting_down = threading.Event()
        self.releasing = threading.Event()     # our own consume/abandon deletes the claim
        self.finished = threading.Event()

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

    def interrupt(self) -> None:
        """Shutdown past the grace period: stop, then abandon the job."""
        self.shutting_down.set()
        if self.engine is not None:
            self.engine.cancel()

    # -- the run ------------------------------------------------------------------

    def run(self) -> None:
        board = self.conductor.board
        name = self.conductor.name
        job = self.job
        try:
            self._watch_claim()
            outcome = self._run_flow()
            if outcome is None:
                return
            state, document = outcome
            self.releasing.set()
            board.consume(job, name, document, state=state)
            log.info("job %s (%s) %s", job.uuid, job.name, state.value)
        except LogbookError as exc:
            # The logbook's failure (down, schema, credentials, disk), not the
            # job's: give it back uncounted and claim nothing more until the
            # logbook answers again.
            self.conductor.readiness.down(f"logbook failed: {exc}")
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
            self.finished.set()

    def _run_flow(self) -> tuple[JobState, dict[str, Any]] | None:
        """Returns (state, outcome document) to consume with, or None when the
        job must not be consumed by us."""
        conductor = self.conductor
        job = self.job
        token = job.claim.token
        waited = conductor.board.start_working(job.uuid, token, stop_timeout=conductor.stop_timeout,
                                               abort=self._stopping)
        if waited is None:                  # lost or stopping while waiting for the hand-off
            if not self.claim_lost.is_set():
                self._abandon()
            return None
        if waited >= 0.5:
            log.info("job %s: waited %.1fs for its previous holder to stop", job.uuid, waited)
        executor = conductor.executor_for_job()
        try:
            try:
                flow = build_flow(job.factory, job.args, conductor.allow,
                                  timeout=conductor.factory_timeout)
                self.engine = Engine(
                    flow, logbook=conductor.logbook, job_id=job.uuid, token=token,
                    attempt=job.attempt, store=job.store, executor=executor,
                    notifier=conductor.board.notifier, locker=conductor.locker,
                    owner=conductor.name, gate=self._gate,
                    task_timeout=conductor.task_timeout, stop_timeout=conductor.stop_timeout)
            except EngineError as exc:
                return self._broken(exc)
            if self.claim_lost.is_set() or self.shutting_down.is_set():
                self.engine.cancel()
            if self.cancel_requested.is_set():   # set by the watch _watch_claim placed
                self.engine.cancel(revert=True)
            outcome = self.engine.run()
        finally:
            if self.engine is not None and self.engine.running_tasks:
                log.warning("job %s: task(s) %s ignored the request to stop; handing the job "
                            "on anyway", job.uuid, ", ".join(self.engine.running_tasks))
            conductor.release_executor(executor)
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
                log.warning("job %s: claim lost; left to its new owner", job.uuid)
            return None
        if outcome.state is FlowState.CANCELLED and not outcome.reverted:
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
        session = self.conductor.session
        while not (self.claim_lost.is_set() or self.shutting_down.is_set()):
            if not session.connected and self.engine is not None:
                self.engine.flush()    # what finished is saved before we wait
            self.conductor.gate()
            if not session.paused_since(self._pauses_seen):
                return
            seen = session.pauses
            try:
                held = self.conductor.board.holds_claim(self.job.uuid)
            except BoardUnavailable:
                self.shutting_down.wait(0.05)
                continue
            self._pauses_seen = seen
            if not held:
                self.lose_claim()
            return

    def _broken(self, exc: EngineError) -> tuple[JobState, dict[str, Any]] | None:
        """The flow cannot even be built: fail the job for good, with the reason
        in the logbook and on the board."""
        job = self.job
        reason = str(exc)
        log.error("job %s: %s; marking it failed", job.uuid, reason)
        failure = Failure.from_exception(exc)
        try:
            logbook = self.conductor.logbook
            logbook.take_over(job.uuid, job.claim.token, self.conductor.name, name=job.name,
                              attempt=job.attempt)
            logbook.save_flow(job.uuid, job.name, FlowState.FAILURE, token=job.claim.token,
                              meta={"error": reason, "failure": failure.to_dict()})
        except StaleOwner:
            return None
        except LogbookError as err:
            log.warning("job %s: could not record the failure in the logbook: %s",
                        job.uuid, err)
        return JobState.FAILED, {"flow_state": FlowState.FAILURE.value, "reason": reason,
                                 "failure": failure.to_dict()}

    def _stopping(self) -> bool:
        return self.claim_lost.is_set() or self.shutting_down.is_set()

    def _stop_working(self) -> None:
        """Our tasks of this job have stopped: the next holder may start."""
        try:
            self.conductor.board.stop_working(self.job.uuid, self.job.claim.token)
        except BoardError as exc:   # gone with our session at the latest
            log.warning("job %s: could not hand the job on yet: %s", self.job.uuid, exc)

    def _claim_still_ours(self) -> bool:
        try:
            return self.conductor.board.holds_claim(self.job.uuid)
        except BoardUnavailable:
            return False        # unreachable or expired: the session's end frees it

    def _abandon(self, *, crashed: bool = False) -> None:
        if self.claim_lost.is_set():
            return
        self.releasing.set()
        try:
            self.conductor.board.abandon(self.job, self.conductor.name, crashed=crashed)
            log.info("job %s abandoned for another conductor", self.job.uuid)
        except BoardUnavailable as exc:     # our session may well survive: try again
            log.warning("job %s: could not abandon yet: %s", self.job.uuid, exc)
            self.conductor.release_later(self.job)
        except BoardError as exc:
            log.warning("job %s: could not abandon: %s", self.job.uuid, exc)

    def _watch_claim(self) -> None:
        """Watch the claim and the cancel request; both fire on kazoo's thread."""
        board = self.conductor.board
        job_id = self.job.uuid

        def on_claim(event: Any) -> None:
            if event is not None and event.type == "DELETED" and not self.releasing.is_set():
                log.warning("job %s: claim vanished", job_id)
                self.lose_claim()

        def on_cancel(event: Any) -> None:
            if event is not None and event.type == "CREATED":
                self.request_cancel()
            elif not self.finished.is_set():
                try:
                    board.cancel_requested(job_id, watch=on_cancel)
                except BoardError as exc:   # the gate still checks the claim
                    log.warning("job %s: cannot watch for a cancel request: %s", job_id, exc)

        if not board.holds_claim(job_id, watch=on_claim):
            self.lose_claim()
        if board.cancel_requested(job_id, watch=on_cancel):
            self.request_cancel()
