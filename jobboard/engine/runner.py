"""The engine: runs one job's flow, recording every step in its journal.

The journal (:class:`~jobboard.engine.journal.Journal`; the conductor's is
the SQL logbook) is where every transition is saved before it is acted on.
``Engine.run()`` compiles the flow to a DAG, takes the journal over (which
returns what it already knows about the job: see the journal writes below)
and then:

1. on resume applies each changed task's ``on_version_change``
   (:mod:`.versions`);
2. runs the forward phase (:mod:`.forward`): ready atoms through the
   executor, saving ``RUNNING`` before a task is handed over and ``SUCCESS``
   with its result before any dependant starts; conditional links record
   skipped branches ``IGNORE``; retry controllers revert and re-run their
   subflow;
3. on a failure no controller retries (after its retry policy gave up)
   stops starting tasks, lets running ones finish, and runs the revert phase
   (:mod:`.revert`) over everything that ran, latest completion first, a
   task only after everything depending on it;
4. on resume skips ``SUCCESS`` and ``IGNORE`` atoms (results come from the
   journal), re-runs ``RUNNING``/``PENDING`` ones (and ``FAILURE``/``RETRYING``
   ones with attempts left), carries on a controller's retry (``RETRYING``)
   and an interrupted revert.

The phases use the engine's recording helpers (``_save_atoms``, ``_defer``,
``_emit``, ``_arguments``, ``_submit``...): they are parts of one engine run,
split only to keep each module readable.

Journal writes (one transaction per task boundary): the take-over returns
the flow as saved; the flow's ``RUNNING`` state, the ``PENDING`` rows of a
new flow and the first tasks' ``RUNNING`` go together. For a job that has
not run before (``new``), the take-over goes with them: the engine prepares
the start of a new flow, gate and locks included, and the journal saves it
only if it holds no flow for the attempt; when it does, it returns it,
nothing is written, and the run starts again from what it returned. Then a
finished task's ``SUCCESS`` and the ``RUNNING`` of every task starting
next, saved before those tasks are handed to the executor; the last tasks'
``SUCCESS`` goes with the flow's final state. So a new flow of T linear
tasks costs T + 1 transactions (T + 2 when the take-over goes alone).
What waits for the next write waits only while the engine prepares the next
starts (the gate, flow locks) or is about to end: before it waits for
running tasks or sleeps for a retry it saves what is left on its own, and a
gate about to block calls :meth:`Engine.flush` first. Events
(``FLOW_STARTED``, ``TASK_SUCCEEDED``) are emitted once what they report is
saved.

Time limits: a call of ``execute``/``revert`` running longer than its
task's ``timeout`` (or the engine's ``task_timeout``), counted from when the
executor started it, is interrupted with ``kill=True`` (a worker process is
killed; a thread is only flagged and left as a straggler) and its attempt
fails at once with ``TaskTimeout``; the retry policy then applies.

Heartbeats (``Task.heartbeat``) reach the engine through the executor; the
engine saves the latest one into the running atom's ``meta`` (``progress``,
``note``, ``heartbeat_at``) at most once per ``heartbeat_interval`` per call,
on its own thread, and emits ``TASK_HEARTBEAT``.

Stopping: ``cancel()`` asks every running call to stop (``Task.cancelled``)
and waits for them at most ``stop_timeout``, then kills what it can and stops
waiting. A call that ended because it was asked to stop is left ``RUNNING``
(run again by the next owner), or, after ``cancel(revert=True)``, recorded as
failed by the cancel and reverted with the rest. A ``cancel()`` arriving
while reverting stops the revert the same way (the flow stays ``REVERTING``
for the next owner). Whenever ``run()`` returns or raises, every call it
started has been asked to stop, and waited for up to ``stop_timeout`` before
being killed (``running_tasks`` names those still running afterwards).

How it fails: a ``StaleOwner`` from the journal stops the engine at once
(outcome ``CANCELLED``, ``fenced=True``, no further writes); any other
journal error, a lock error, or an exception from a listener (``Cancelled``
or a ``BaseException`` simulating a crash) propagates out of ``run()``,
leaving the journal as it was for another conductor to resume.
"""

from __future__ import annotations

import logging
import threading
from collections import ChainMap
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from jobboard.engine.calls import Call, Inflight
from jobboard.engine.compile import compile_flow
from jobboard.engine.executor import Executor, ThreadExecutor
from jobboard.engine.flows import Flow
from jobboard.engine.forward import Forward
from jobboard.engine.journal import AtomDetail, Failure, FlowDetail, Journal
from jobboard.engine.locking import LockedTask, Locker, render_locks
from jobboard.engine.revert import TO_REVERT, Reverter
from jobboard.engine.tasks import Task, call_parameters
from jobboard.engine.versions import reconcile_versions
from jobboard.errors import EngineError, FlowInvalid, StaleOwner
from jobboard.events import EventKind, Notifier
from jobboard.states import AtomState, FlowState

__all__ = ["Engine", "Outcome"]

log = logging.getLogger(__name__)

_KILL_SETTLE = 1.0   # seconds to let killed calls report their end before run() returns
_FINISHED = (FlowState.SUCCESS, FlowState.REVERTED, FlowState.FAILURE, FlowState.CANCELLED)


class _Known(Exception):
    """The take-over found a flow saved for the attempt: the run starts
    again from it. Nothing of the new flow's start was written or handed
    over, and what it prepared goes (the caller drops the failures, e.g. of
    a decider, and results; every atom is made again from the flow; the
    writes waiting were taken by the take-over)."""

    def __init__(self, detail: FlowDetail) -> None:
        super().__init__(detail.job_id)
        self.detail = detail


@dataclass
class Outcome:
    """How a run ended.

    Attributes:
        state: ``SUCCESS``, ``REVERTED`` (a task failed, everything was
            undone), ``FAILURE`` (a revert failed too) or ``CANCELLED``.
        results: Every name provided by a task that stands successful.
        failure: The failure that made the flow revert (or the revert
            failure), None on success.
        fenced: The run stopped because a newer owner took the journal over.
        reverted: A cancelled run was reverted (``cancel(revert=True)``).
    """

    state: FlowState
    results: dict[str, Any] = field(default_factory=dict)
    failure: Failure | None = None
    fenced: bool = False
    reverted: bool = False

    @property
    def ok(self) -> bool:
        return self.state == FlowState.SUCCESS


def record_unbuilt(journal: Journal, error: BaseException, *, job_id: str, token: int,
                   owner: str, name: str, attempt: int = 1) -> Failure | None:
    """Record in the journal that a job's flow could not even be built (its
    factory failed, or the flow is invalid): the attempt's flow is saved
    ``FAILURE`` with the reason. Returns the failure recorded, or None when
    a newer token holds the journal (nothing was written).

    Raises:
        LogbookError: the journal failed other than by fencing.
    """
    failure = Failure.from_exception(error)
    try:
        journal.take_over(job_id, token, owner, name=name, attempt=attempt)
        journal.save_flow(job_id, name, FlowState.FAILURE, token=token,
                          meta={"error": str(error), "failure": failure.to_dict()})
    except StaleOwner:
        return None
    return failure


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _kind(name: str, controllers: Mapping[str, Any]) -> str:
    return "retry" if name in controllers else "task"


class Engine:
    """Runs one job's flow against its journal.

    Args:
        flow: The flow (or a single task), as its factory built it.
        journal: Where every state transition is recorded (the logbook).
        job_id: The job; its journal holds one flow detail per attempt.
        token: The claim's fencing token; writes with an older token than
            the journal's are refused (``StaleOwner``) and stop the engine.
        store: The flow's initial inputs.
        executor: Runs the tasks; a ``ThreadExecutor()`` owned by the
            engine by default (a given executor is not shut down).
        notifier: Receives an event at each checkpoint.
        locker: ``locker(names) -> context manager`` holding named locks;
            without one, declared locks are not taken.
        owner: The conductor's name, recorded with the token.
        attempt: The job's attempt (``retry`` adds one): a later attempt
            than the journal's starts the flow afresh; earlier ones are kept.
        gate: Called before each task starts; may block (the conductor
            blocks while its ZooKeeper session is suspended; it calls
            :meth:`flush` first). A ``cancel()`` meanwhile is honoured when
            it returns.
        task_timeout: Seconds a task call may run when the task sets no
            ``timeout`` of its own; None: no limit.
        stop_timeout: Seconds to wait for running calls after asking them
            to stop (cancel, and the end of ``run()``) before killing them
            and waiting no more.
        heartbeat_interval: Minimum seconds between two heartbeat saves of
            one call.
        new: The job has not run before (its first claim): the journal is
            expected to hold no flow for the attempt, and the take-over goes
            with the first write. A flow found there all the same is resumed.

    Raises:
        FlowInvalid: A cycle, a duplicate name, or an input that neither the
            store nor an earlier task provides.
        ValueError: A negative or zero time setting.
    """

    def __init__(self, flow: Flow | Task, *, journal: Journal, job_id: str, token: int,
                 store: Mapping[str, Any] | None = None, executor: Executor | None = None,
                 notifier: Notifier | None = None, locker: Locker | None = None,
                 owner: str = "", gate: Callable[[], None] | None = None,
                 task_timeout: float | None = None, stop_timeout: float = 30.0,
                 heartbeat_interval: float = 2.0, attempt: int = 1, new: bool = False) -> None:
        if task_timeout is not None and task_timeout <= 0:
            raise ValueError("task_timeout must be positive (or None)")
        if stop_timeout < 0 or heartbeat_interval < 0:
            raise ValueError("stop_timeout and heartbeat_interval must not be negative")
        self.task_timeout = task_timeout
        self.stop_timeout = stop_timeout
        self.flow = flow
        self.store: dict[str, Any] = dict(store or {})
        self.compiled = compile_flow(flow, store_keys=self.store.keys())
        self.journal = journal
        self.job_id = job_id
        self.token = token
        self.attempt = attempt
        self.owner = owner
        self.notifier = notifier or Notifier()
        self.locker = locker
        self._gate = gate
        self._executor = executor
        self._cancel = threading.Event()
        self._cancel_revert = False
        self._halts = 0            # cancel(revert=False) calls: stop a revert too
        self._guard = threading.Lock()
        self._calls = Inflight(heartbeat_interval)
        self._started = False
        self.atoms: dict[str, AtomDetail] = {}
        self._provided: dict[str, dict[str, Any]] = {}
        self._failures: dict[str, Failure] = {}
        self._seq = 0
        # Atoms whose save waits for the next write, with what to emit after
        # it (an atom None: only the call), and the flow state to save with it.
        self._pending: list[tuple[AtomDetail | None, Callable[[], None] | None]] = []
        self._pending_flow: FlowState | None = None
        self._new = new
        self._taking_over = False      # the next write is the take-over (see _save_atoms)

    # -- public ----------------------------------------------------------------

    def cancel(self, revert: bool = False) -> None:
        """Stop starting tasks and ask running ones to stop. Thread-safe.

        Running calls see ``Task.cancelled``; the engine waits for them at
        most ``stop_timeout``, then kills what it can (worker processes) and
        stops waiting (threads are left to finish: stragglers).

        Args:
            revert: Also revert what completed (an admin's cancel); a call
                that ended because it was asked to stop counts as failed by
                the cancel and is reverted too. Without it the journal is
                left as is, so the flow can be resumed (an interrupted task
                stays ``RUNNING`` and runs again), and a revert under way
                stops as well.
        """
        with self._guard:
            self._cancel_revert = self._cancel_revert or revert
            if not revert:
                self._halts += 1
            self._cancel.set()
        self._calls.poke()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def running_tasks(self) -> list[str]:
        """Names of the tasks whose execute or revert this engine started and
        that are still running (after ``run()``: stragglers), sorted."""
        return self._calls.names()

    def run(self) -> Outcome:
        """Run (or resume) the flow to its end.

        Returns:
            The :class:`Outcome`.

        Raises:
            EngineError: ``run()`` was already called on this engine.
            LogbookError: The journal failed other than by fencing.
            LockTimeout: A flow lock could not be taken.
        """
        with self._guard:
            if self._started:
                raise EngineError("an Engine runs once; build a new one to resume")
            self._started = True
        executor = self._executor or ThreadExecutor()
        clean = False
        with ExitStack() as locks:
            try:
                outcome = self._run(executor, locks)
                clean = True
                return outcome
            except StaleOwner as exc:
                # Only the engine's own journal writes raise it here: a task's
                # exceptions end in its future.
                log.warning("job %s: engine stopped, %s", self.job_id, exc)
                self._emit(EventKind.FLOW_CANCELLED, fenced=True, reason=str(exc))
                return Outcome(FlowState.CANCELLED, self._results(), fenced=True)
            finally:
                # Before the flow's locks go: nothing of ours runs unlocked.
                self._release(executor)
                if self._executor is None:
                    executor.shutdown(wait=clean and not self._calls.unfinished())

    # -- helpers ---------------------------------------------------------------

    def _emit(self, kind: EventKind, task: str | None = None, **details: Any) -> None:
        self.notifier.emit(kind, job_id=self.job_id, flow=self.flow.name, task=task,
                           owner=self.owner or None, details=details)

    def _save_atom(self, atom: AtomDetail) -> None:
        self._save_atoms([atom])

    def _save_atoms(self, atoms: list[AtomDetail]) -> None:
        """Save the deferred flow state and atoms and ``atoms`` in one
        transaction, then run the deferred calls (each event only once what
        it reports is saved)."""
        pending, self._pending = self._pending, []
        flow, self._pending_flow = self._pending_flow, None
        batch = [atom for atom, _ in pending if atom is not None] + atoms
        if self._taking_over:
            self._taking_over = False
            detail = self.journal.take_over(self.job_id, self.token, self.owner,
                                            name=self.flow.name, attempt=self.attempt,
                                            start=flow or FlowState.RUNNING, atoms=batch)
            if detail is not None:
                raise _Known(detail)
        elif flow is not None:
            self.journal.save_flow(self.job_id, self.flow.name, flow, token=self.token,
                                   atoms=batch)
        elif batch:
            self.journal.save_atoms(self.job_id, batch, token=self.token)
        for _, after in pending:
            if after is not None:
                after()

    def flush(self) -> None:
        """Save the finished tasks whose save waits for the next write, now.
        For the gate, which runs on the engine's thread, to call before it
        blocks: a finished task is not left unsaved while the gate waits."""
        self._save_atoms([])

    def _defer(self, atom: AtomDetail, after: Callable[[], None] | None = None) -> None:
        """Save ``atom`` with the next write (see the module docstring), then
        call ``after``. Nothing is acted on before that write: the next write
        comes before any task starts, before the engine waits, and before
        ``_forward`` returns."""
        self._pending.append((atom, after))

    def _save_flow(self, state: FlowState, *, defer: bool = False,
                   after: Callable[[], None] | None = None) -> None:
        """Save the flow's state with what waits for the next write; with
        ``defer``, as part of the next write (then call ``after``)."""
        self._pending_flow = state
        if after is not None:
            self._pending.append((None, after))
        if not defer:
            self._save_atoms([])

    def _results(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for name in self.compiled.tasks:
            atom = self.atoms.get(name)
            if atom is not None and atom.state == AtomState.SUCCESS:
                results.update(self._provided.get(name, {}))
        return results

    def _arguments(self, name: str) -> dict[str, Any]:
        task = self.compiled.tasks[name]
        args: dict[str, Any] = {}
        for table, required in ((task.requirements, True), (task.optional, False)):
            sources = (self.compiled.sources if required else self.compiled.optional_sources)[name]
            for param, key in table.items():
                src = sources.get(param)
                if src is not None and key in self._provided.get(src, {}):
                    args[param] = self._provided[src][key]
                elif key in self.store:
                    args[param] = self.store[key]
                elif required:
                    raise FlowInvalid(f"task {name!r}: input {key!r} is not available")
        args.update(task.inject)
        return args

    def _context(self, extra: Mapping[str, Any] = {}) -> ChainMap[str, Any]:
        produced: dict[str, Any] = {}
        for values in self._provided.values():
            produced.update(values)
        return ChainMap(dict(extra), produced, self.store)

    def _enter_flow_locks(self, name: str, stack: ExitStack, held: set[int]) -> None:
        """Take the locks of every flow enclosing task ``name`` not yet held;
        they are kept until the end of the run."""
        for flow in self.compiled.flows_of[name]:
            self._enter_locks_of(flow, stack, held)

    def _enter_locks_of(self, flow: Flow, stack: ExitStack, held: set[int]) -> None:
        if id(flow) in held:
            return
        held.add(id(flow))
        if flow.locks and self.locker is not None:
            names = render_locks(flow.locks, self._context(), f"flow {flow.name}")
            stack.enter_context(self.locker(names))

    def _invocation(self, name: str, args: Mapping[str, Any]) -> Task:
        task = self.compiled.tasks[name]
        if not task.locks or self.locker is None:
            return task
        names = render_locks(task.locks, self._context(args), f"task {name}")
        return LockedTask(task, self.locker, names)

    def _restore(self, name: str, atom: AtomDetail) -> None:
        # A controller RETRYING still holds the value its scope is reverted with.
        if atom.state in (AtomState.SUCCESS, AtomState.REVERTING, AtomState.REVERTED,
                          AtomState.REVERT_FAILURE) or (
                atom.state == AtomState.RETRYING and name in self.compiled.controllers):
            try:
                self._provided[name] = self.compiled.tasks[name].provided_values(atom.result)
            except FlowInvalid:
                self._provided.pop(name, None)

    def _mark_finished(self, atom: AtomDetail) -> None:
        self._seq += 1
        atom.finished_at = _now()
        atom.meta = {**(atom.meta or {}), "seq": self._seq}

    # -- calls: submitting, heartbeats, limits, stopping ---------------------------

    def _timeout_of(self, name: str) -> float | None:
        own = getattr(self.compiled.tasks[name], "timeout", None)
        return own if own is not None else self.task_timeout

    def _submit(self, executor: Executor, name: str, phase: str, task: Task,
                *args: Any) -> Future[Any]:
        """Hand one call to the executor, listed in ``self._calls``."""
        call = self._calls.new(name, phase, self._timeout_of(name))
        method = executor.execute if phase == "execute" else executor.revert
        if _takes_observer(executor.execute):
            future = method(task, *args, observer=call)
        else:                              # an executor from before observers
            call.started()
            future = method(task, *args)
        self._calls.add(call, future)
        return future

    def _stop_call(self, executor: Executor, future: Future[Any], *, kill: bool) -> None:
        call = self._calls.get(future)
        if call is None or (call.killed and kill) or (call.stop_asked and not kill):
            return
        call.stop_asked = True
        call.killed = call.killed or kill
        try:
            executor.interrupt(future, kill=kill)
        except Exception:  # noqa: BLE001 - a custom executor's bug must not stop the engine
            log.exception("job %s: interrupting task %s failed", self.job_id, call.name)

    def _give_up(self, executor: Executor, future: Future[Any], why: str) -> None:
        """Kill the call (where the executor can) and stop waiting for it."""
        self._stop_call(executor, future, kill=True)
        self._calls.abandon(future)
        if not future.done():
            call = self._calls.get(future)
            log.warning("job %s: stopped waiting for task %s (%s); it may still be "
                        "running", self.job_id, call.name if call else "?", why)

    def _flush_beats(self) -> None:
        """Save the heartbeats that are due (on the engine's thread)."""
        for call, progress, note, at in self._calls.beats_due():
            atom = self.atoms.get(call.name)
            if atom is None or atom.state not in (AtomState.RUNNING, AtomState.REVERTING):
                continue
            atom.meta = {**(atom.meta or {}), "progress": progress, "note": note,
                         "heartbeat_at": at}
            self._save_atom(atom)
            self._emit(EventKind.TASK_HEARTBEAT, call.name, progress=progress, note=note)

    def _wait(self, futures: set[Future[Any]], *limits: float | None) -> set[Future[Any]]:
        """Wait for any of ``futures``, a poke, or the nearest limit (seconds)."""
        waiting: set[Future[Any]] = set(futures)
        waiting.add(self._calls.nudge)
        candidates = [t for t in (*limits, self._calls.next_due()) if t is not None]
        timeout = max(0.0, min(candidates)) if candidates else None
        done, _ = wait(waiting, timeout=timeout, return_when=FIRST_COMPLETED)
        self._calls.rearm()
        return done

    def _release(self, executor: Executor) -> None:
        """At the end of ``run()``: ask every call still running to stop, wait
        up to ``stop_timeout``, then kill what is left and log stragglers."""
        pending = [c for c in self._calls.unfinished() if not c.killed]
        for call in pending:
            assert call.future is not None
            self._stop_call(executor, call.future, kill=False)
        if pending:
            wait({c.future for c in pending if c.future is not None},
                 timeout=self.stop_timeout)
        for call in pending:
            assert call.future is not None
            if not call.future.done():
                self._give_up(executor, call.future, f"still running {self.stop_timeout:g}s "
                              f"after it was asked to stop")
        killed = {c.future for c in self._calls.unfinished() if c.future is not None}
        if killed:
            wait(killed, timeout=_KILL_SETTLE)      # a killed worker answers at once
        left = self._calls.names()
        if left:
            log.warning("job %s: tasks still running after the engine finished "
                        "(threads cannot be killed): %s", self.job_id, ", ".join(left))

    def _end_call(self, future: Future[Any]) -> Call | None:
        """Forget a finished call; drop its heartbeat from the atom's meta.
        An abandoned call stays listed (``running_tasks``) until it ends."""
        call = self._calls.get(future)
        if call is None:
            return None
        if not call.abandoned:
            self._calls.pop(future)
        atom = self.atoms[call.name]
        if atom.meta and ("progress" in atom.meta or "note" in atom.meta):
            atom.meta = {k: v for k, v in atom.meta.items() if k not in ("progress", "note")}
        return call

    def _interrupted(self, name: str, exc: BaseException) -> None:
        """A call that ended because the engine's cancel asked it to stop."""
        atom = self.atoms[name]
        if not self._cancel_revert:
            # Left RUNNING in the journal: the next owner runs it again.
            log.info("job %s: task %s stopped by the cancel (%s)", self.job_id, name, exc)
            return
        atom.state, atom.failure = AtomState.FAILURE, Failure.from_exception(exc)
        self._mark_finished(atom)
        self._save_atom(atom)
        self._emit(EventKind.TASK_FAILED, name, attempt=atom.attempts,
                   failure=str(atom.failure), interrupted=True)

    # -- the run ---------------------------------------------------------------

    def _run(self, executor: Executor, locks: ExitStack) -> Outcome:
        detail = None
        if not self._new:
            detail = self.journal.take_over(self.job_id, self.token, self.owner,
                                            name=self.flow.name, attempt=self.attempt)
            if detail is not None and detail.state in _FINISHED:
                return self._finished_outcome(detail)
        held: set[int] = set()
        if isinstance(self.flow, Flow):
            self._enter_locks_of(self.flow, locks, held)
        self._taking_over = self._new   # a new flow's take-over: with its first write
        try:
            return self._run_from(detail, executor, locks, held)
        except _Known as known:
            self._failures, self._provided, self._seq = {}, {}, 0
            return self._run_from(known.detail, executor, locks, held)

    def _run_from(self, detail: FlowDetail | None, executor: Executor, locks: ExitStack,
                  held: set[int]) -> Outcome:
        if detail is not None and detail.state in _FINISHED:
            return self._finished_outcome(detail)
        resumed = detail is not None
        known = detail.atoms if detail is not None else {}
        for name in sorted(set(known) - set(self.compiled.tasks)):
            log.warning("job %s: task %r in the journal is not in flow %s any more; ignored",
                        self.job_id, name, self.flow.name)
        reverting = detail is not None and detail.state == FlowState.REVERTING
        # Saved with the first write: the PENDING rows and the first RUNNING.
        self._save_flow(FlowState.REVERTING if reverting else FlowState.RUNNING, defer=True,
                        after=lambda: self._emit(EventKind.FLOW_STARTED, resumed=resumed,
                                                 reverting=reverting,
                                                 tasks=len(self.compiled.tasks)))
        for name, task in self.compiled.tasks.items():
            atom = known.get(name)
            if atom is None:
                atom = AtomDetail(name=name, kind=_kind(name, self.compiled.controllers),
                                  version=task.version)
                self.atoms[name] = atom
                self._defer(atom)          # PENDING: inserted with the first write
                continue
            self.atoms[name] = atom
            self._seq = max(self._seq, int((atom.meta or {}).get("seq", 0)))
            self._restore(name, atom)
            if reverting and atom.failure is not None:
                # The failures that caused the revert (forward: Forward decides).
                self._failures[name] = atom.failure
        if not reverting:
            refused = self._reconcile_versions()
            if refused is not None:
                return refused
            for name, atom in self.atoms.items():
                if atom.state == AtomState.SUCCESS and atom.created_at is not None:
                    self._emit(EventKind.TASK_SKIPPED, name, reason="succeeded earlier")
            end = Forward(self, executor, locks, held).run()
            if end is not None:
                return end
            if not self._failures and not self._cancel_revert:
                if self.cancelled:
                    self._save_atoms([])
                    self._emit(EventKind.FLOW_CANCELLED, fenced=False, reverted=False)
                    return Outcome(FlowState.CANCELLED, self._results())
                self._save_flow(FlowState.SUCCESS)     # with the last tasks' SUCCESS
                self._emit(EventKind.FLOW_SUCCEEDED)
                return Outcome(FlowState.SUCCESS, self._results())
            self._save_flow(FlowState.REVERTING)
        return self._revert_all(executor, locks, held)

    def _revert_all(self, executor: Executor, locks: ExitStack, held: set[int]) -> Outcome:
        """Revert everything that ran (a failure, or ``cancel(revert=True)``)."""
        todo = [n for n, a in self.atoms.items() if a.state in TO_REVERT]
        cause = next(iter(self._failures.values()), None)
        by_cancel = not self._failures
        with self._guard:
            halts = self._halts       # a cancel() from now on stops the revert
        end = Reverter(self, executor, locks, held, halts).revert(todo, self._failures)
        if end.halted:
            return self._halted()
        if end.failure is not None:
            return self._revert_failed(end.failure, cause)
        if by_cancel:
            self._save_flow(FlowState.CANCELLED)
            self._emit(EventKind.FLOW_CANCELLED, fenced=False, reverted=True)
            return Outcome(FlowState.CANCELLED, self._results(), None, reverted=True)
        self._save_flow(FlowState.REVERTED)
        self._emit(EventKind.FLOW_REVERTED, failure=str(cause) if cause else None)
        return Outcome(FlowState.REVERTED, self._results(), cause)

    def _halted(self) -> Outcome:
        """A revert stopped by a cancel: left as is for the next owner."""
        self._save_atoms([])
        self._emit(EventKind.FLOW_CANCELLED, fenced=False, reverted=False)
        return Outcome(FlowState.CANCELLED, self._results())

    def _revert_failed(self, failure: Failure, cause: Failure | None) -> Outcome:
        """A revert failed: the flow ends ``FAILURE``."""
        self._save_flow(FlowState.FAILURE)
        self._emit(EventKind.FLOW_FAILED, failure=str(failure),
                   cause=str(cause) if cause else None)
        return Outcome(FlowState.FAILURE, self._results(), cause or failure, reverted=False)

    def _reset(self, name: str) -> None:
        """Make an atom of a scope about to run again ``PENDING`` (saved with
        the next write); its retry budget starts afresh."""
        atom = self.atoms[name]
        if atom.state == AtomState.PENDING:
            return
        atom.state = AtomState.PENDING
        atom.result = atom.failure = atom.revert_failure = None
        atom.attempts = 0
        atom.started_at = atom.finished_at = None
        atom.meta = {}
        self._provided.pop(name, None)
        self._defer(atom)

    def _reconcile_versions(self) -> Outcome | None:
        """Apply each task's ``on_version_change`` to results saved by
        another version of it; an outcome when one says "fail"."""
        plan = reconcile_versions(self.compiled.tasks, self.atoms)
        for name, old in plan.rerun:
            log.warning("job %s: task %s changed from version %s to %s since its result "
                        "was saved; running it again", self.job_id, name, old,
                        self.compiled.tasks[name].version)
            self._reset(name)
            self.atoms[name].meta = {"rerun_for_version": {"from": old,
                                                           "to": self.compiled.tasks[name].version}}
        for name, old in plan.kept:
            log.info("job %s: task %s changed from version %s to %s; keeping its saved "
                     "result", self.job_id, name, old, self.compiled.tasks[name].version)
        if plan.refusal is None:
            return None
        failure = Failure.from_exception(plan.refusal)
        # One write, like an unbuilt flow's: nothing runs, nothing is reverted.
        pending, self._pending, self._pending_flow = self._pending, [], None
        self.journal.save_flow(self.job_id, self.flow.name, FlowState.FAILURE,
                               token=self.token, meta={"error": str(plan.refusal),
                                                       "failure": failure.to_dict()},
                               atoms=[atom for atom, _ in pending if atom is not None])
        self._emit(EventKind.FLOW_FAILED, failure=str(failure), cause=None)
        return Outcome(FlowState.FAILURE, self._results(), failure)

    def _finished_outcome(self, detail: FlowDetail) -> Outcome:
        """The outcome of a flow that had already finished (nothing runs)."""
        for name, atom in detail.atoms.items():
            if name in self.compiled.tasks:
                self.atoms[name] = atom
                self._restore(name, atom)
        failure = next((a.failure for a in detail.atoms.values() if a.failure), None)
        state = detail.state
        return Outcome(state, self._results(), None if state == FlowState.SUCCESS else failure,
                       reverted=state == FlowState.CANCELLED)


def _takes_observer(execute: Callable[..., Any]) -> bool:
    """Whether an executor's ``execute`` takes ``observer=`` (executors
    written before observers do not)."""
    try:
        parameters = call_parameters(execute)
    except (TypeError, ValueError):
        return False
    return any(p.name == "observer" or p.kind is p.VAR_KEYWORD for p in parameters)
