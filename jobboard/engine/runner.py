"""The engine: runs one job's flow, recording every step in the logbook.

``Engine.run()`` compiles the flow to a DAG, loads what the logbook already
knows about the job and then:

1. runs ready tasks through the executor, saving ``RUNNING`` before a task is
   handed over and ``SUCCESS`` with its result before any dependant starts;
2. on a failure (after its retry policy gave up) stops starting tasks, lets
   running ones finish, and reverts everything that ran, latest completion
   first, a task only after everything depending on it;
3. on resume skips ``SUCCESS`` tasks (their results come from the logbook),
   re-runs ``RUNNING``/``PENDING`` ones (and ``FAILURE``/``RETRYING`` ones
   with attempts left), and carries on an interrupted revert.

How it fails: a ``StaleOwner`` from the logbook stops the engine at once
(outcome ``CANCELLED``, ``fenced=True``, no further writes); any other
logbook error, a lock error, or an exception from a listener (``Cancelled``
or a ``BaseException`` simulating a crash) propagates out of ``run()``,
leaving the logbook as it was for another conductor to resume. Running
tasks are then not waited for.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import ChainMap
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, InvalidStateError, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from jobboard.engine.compile import compile_flow
from jobboard.engine.executor import Executor, ThreadExecutor
from jobboard.engine.flows import Flow
from jobboard.engine.locking import LockedTask, Locker, render_locks
from jobboard.engine.tasks import Task
from jobboard.errors import EngineError, FlowInvalid, MalformedData, StaleOwner
from jobboard.events import EventKind, Notifier
from jobboard.logbook import AtomDetail, Failure, FlowDetail, Logbook
from jobboard.states import AtomState, FlowState

__all__ = ["Engine", "Outcome"]

log = logging.getLogger(__name__)

_FINISHED = (FlowState.SUCCESS, FlowState.REVERTED, FlowState.FAILURE, FlowState.CANCELLED)
# Atom states whose task (may have) run and so must be reverted.
_TO_REVERT = (AtomState.SUCCESS, AtomState.FAILURE, AtomState.RETRYING, AtomState.RUNNING,
              AtomState.REVERTING, AtomState.REVERT_FAILURE)


@dataclass
class Outcome:
    """How a run ended.

    Attributes:
        state: ``SUCCESS``, ``REVERTED`` (a task failed, everything was
            undone), ``FAILURE`` (a revert failed too) or ``CANCELLED``.
        results: Every name provided by a task that stands successful.
        failure: The failure that made the flow revert (or the revert
            failure), None on success.
        fenced: The run stopped because a newer owner took the logbook over.
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


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Engine:
    """Runs one job's flow against the logbook.

    Args:
        flow: The flow (or a single task), as its factory built it.
        logbook: Where every state transition is recorded.
        job_id: The job; its logbook holds one flow detail.
        token: The claim's fencing token; writes with an older token than
            the logbook's are refused (``StaleOwner``) and stop the engine.
        store: The flow's initial inputs.
        executor: Runs the tasks; a ``ThreadExecutor()`` owned by the
            engine by default (a given executor is not shut down).
        notifier: Receives an event at each checkpoint.
        locker: ``locker(names) -> context manager`` holding named locks;
            without one, declared locks are not taken.
        owner: The conductor's name, recorded with the token.
        gate: Called before each task starts; may block (the conductor
            blocks while its ZooKeeper session is suspended). A ``cancel()``
            meanwhile is honoured when it returns.

    Raises:
        FlowInvalid: A cycle, a duplicate name, or an input that neither the
            store nor an earlier task provides.
    """

    def __init__(self, flow: Flow | Task, *, logbook: Logbook, job_id: str, token: int,
                 store: Mapping[str, Any] | None = None, executor: Executor | None = None,
                 notifier: Notifier | None = None, locker: Locker | None = None,
                 owner: str = "", gate: Callable[[], None] | None = None) -> None:
        self.flow = flow
        self.store: dict[str, Any] = dict(store or {})
        self.compiled = compile_flow(flow, store_keys=self.store.keys())
        self.logbook = logbook
        self.job_id = job_id
        self.token = token
        self.owner = owner
        self.notifier = notifier or Notifier()
        self.locker = locker
        self._gate = gate
        self._executor = executor
        self._cancel = threading.Event()
        self._cancel_revert = False
        self._guard = threading.Lock()
        self._wake: Future[None] = Future()
        self._started = False
        self.atoms: dict[str, AtomDetail] = {}
        self._provided: dict[str, dict[str, Any]] = {}
        self._failures: dict[str, Failure] = {}
        self._seq = 0

    # -- public ----------------------------------------------------------------

    def cancel(self, revert: bool = False) -> None:
        """Stop starting tasks; running ones finish. Thread-safe.

        Args:
            revert: Also revert what completed (an admin's cancel). Without
                it the logbook is left as is, so the flow can be resumed.
        """
        with self._guard:
            self._cancel_revert = self._cancel_revert or revert
            self._cancel.set()
        try:
            self._wake.set_result(None)
        except InvalidStateError:
            pass

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> Outcome:
        """Run (or resume) the flow to its end.

        Returns:
            The :class:`Outcome`.

        Raises:
            EngineError: ``run()`` was already called on this engine.
            LogbookError: The logbook failed other than by fencing.
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
                # Only the engine's own logbook writes raise it here: a task's
                # exceptions end in its future.
                log.warning("job %s: engine stopped, %s", self.job_id, exc)
                self._emit(EventKind.FLOW_CANCELLED, fenced=True, reason=str(exc))
                return Outcome(FlowState.CANCELLED, self._results(), fenced=True)
            finally:
                if self._executor is None:
                    executor.shutdown(wait=clean)

    # -- helpers ---------------------------------------------------------------

    def _emit(self, kind: EventKind, task: str | None = None, **details: Any) -> None:
        self.notifier.emit(kind, job_id=self.job_id, flow=self.flow.name, task=task,
                           owner=self.owner or None, details=details)

    def _save_atom(self, atom: AtomDetail) -> None:
        self.logbook.save_atom(self.job_id, atom, token=self.token)

    def _save_flow(self, state: FlowState) -> None:
        self.logbook.save_flow(self.job_id, self.flow.name, state, token=self.token)

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
        if atom.state in (AtomState.SUCCESS, AtomState.REVERTING, AtomState.REVERTED,
                          AtomState.REVERT_FAILURE):
            try:
                self._provided[name] = self.compiled.tasks[name].provided_values(atom.result)
            except FlowInvalid:
                self._provided.pop(name, None)

    def _mark_finished(self, atom: AtomDetail) -> None:
        self._seq += 1
        atom.finished_at = _now()
        atom.meta = {**(atom.meta or {}), "seq": self._seq}

    # -- the run ---------------------------------------------------------------

    def _run(self, executor: Executor, locks: ExitStack) -> Outcome:
        self.logbook.take_over(self.job_id, self.token, self.owner, name=self.flow.name)
        detail = self.logbook.load_flow(self.job_id)
        if detail is not None and detail.state in _FINISHED:
            return self._finished_outcome(detail)
        resumed = detail is not None
        known = detail.atoms if detail is not None else {}
        for name in sorted(set(known) - set(self.compiled.tasks)):
            log.warning("job %s: task %r in the logbook is not in flow %s any more; ignored",
                        self.job_id, name, self.flow.name)
        reverting = detail is not None and detail.state == FlowState.REVERTING
        held: set[int] = set()
        if isinstance(self.flow, Flow):
            self._enter_locks_of(self.flow, locks, held)
        self._save_flow(FlowState.REVERTING if reverting else FlowState.RUNNING)
        self._emit(EventKind.FLOW_STARTED, resumed=resumed, reverting=reverting,
                   tasks=len(self.compiled.tasks))
        for name in self.compiled.tasks:
            atom = known.get(name)
            if atom is None:
                atom = AtomDetail(name=name)
                self.atoms[name] = atom
                self._save_atom(atom)
                continue
            self.atoms[name] = atom
            self._seq = max(self._seq, int((atom.meta or {}).get("seq", 0)))
            self._restore(name, atom)
            if reverting and atom.failure is not None:
                # The failures that caused the revert (forward: _forward decides).
                self._failures[name] = atom.failure
            if atom.state == AtomState.SUCCESS and not reverting:
                self._emit(EventKind.TASK_SKIPPED, name, reason="succeeded earlier")
        if not reverting:
            self._forward(executor, locks, held)
            if not self._failures and not self._cancel_revert:
                if self.cancelled:
                    self._emit(EventKind.FLOW_CANCELLED, fenced=False, reverted=False)
                    return Outcome(FlowState.CANCELLED, self._results())
                self._save_flow(FlowState.SUCCESS)
                self._emit(EventKind.FLOW_SUCCEEDED)
                return Outcome(FlowState.SUCCESS, self._results())
            self._save_flow(FlowState.REVERTING)
        return self._revert(executor, locks, held)

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

    def _forward(self, executor: Executor, locks: ExitStack, held: set[int]) -> None:
        c = self.compiled
        index = c.index
        blocked = {n: sum(1 for p in c.preds[n] if self.atoms[p].state != AtomState.SUCCESS)
                   for n in c.tasks}
        ready: list[int] = []
        for n, atom in self.atoms.items():
            if atom.state == AtomState.SUCCESS:
                continue
            if atom.state in (AtomState.FAILURE, AtomState.RETRYING):
                policy = c.retry_of[n]
                if policy is None or not policy.should_retry(
                        None, atom.attempts, (atom.meta or {}).get("first_attempt_at")):
                    self._failures.setdefault(n, atom.failure or Failure(
                        "jobboard.errors.EngineError", "failed before a restart"))
                    continue
            if not blocked[n]:
                ready.append(index[n])
        heapq.heapify(ready)
        names = c.order
        running: dict[Future[Any], str] = {}
        delayed: list[tuple[float, int, Any]] = []   # (due, index, policy)

        def start(name: str) -> None:
            atom = self.atoms[name]
            atom.state = AtomState.RUNNING
            atom.attempts += 1
            atom.started_at = _now()
            atom.finished_at = None
            atom.meta = {k: v for k, v in (atom.meta or {}).items() if k != "not_run"}
            atom.meta.setdefault("first_attempt_at", time.time())   # retry time limits
            self._enter_flow_locks(name, locks, held)
            self._save_atom(atom)
            self._emit(EventKind.TASK_STARTED, name, attempt=atom.attempts)
            try:
                args = self._arguments(name)
                future = executor.execute(self._invocation(name, args), args)
            except FlowInvalid as exc:
                # Its arguments or locks could not be prepared: it never ran,
                # so there is nothing for its revert to undo either.
                atom.meta["not_run"] = True
                future = Future()
                future.set_exception(exc)
            running[future] = name

        while True:
            stopping = bool(self._failures) or self.cancelled
            if not stopping:
                now = time.monotonic()
                while delayed and delayed[0][0] <= now:
                    heapq.heappush(ready, heapq.heappop(delayed)[1])
                while ready and not self._failures and not self.cancelled:
                    if self._gate is not None:
                        self._gate()            # e.g. blocks while ZooKeeper is suspended
                        if self.cancelled:
                            break
                    start(names[heapq.heappop(ready)])
            else:
                ready.clear()
                delayed.clear()       # left RETRYING: resumable, or reverted
            if not running:
                if not delayed or stopping:
                    return
                due, _, policy = delayed[0]
                policy.sleep(max(0.0, due - time.monotonic()))
                heapq.heappush(ready, heapq.heappop(delayed)[1])
                continue
            waiting: set[Future[Any]] = set(running)
            if not self.cancelled:
                waiting.add(self._wake)
            timeout = max(0.0, delayed[0][0] - time.monotonic()) if delayed else None
            done, _ = wait(waiting, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in sorted((f for f in done if f in running),
                                 key=lambda f: index[running[f]]):
                name = running.pop(future)
                retry_in = self._finish(name, future)
                if retry_in is not None:
                    policy = c.retry_of[name]
                    heapq.heappush(delayed, (time.monotonic() + retry_in, index[name], policy))
                elif self.atoms[name].state == AtomState.SUCCESS:
                    for s in c.succs[name]:
                        blocked[s] -= 1
                        if not blocked[s] and self.atoms[s].state != AtomState.SUCCESS:
                            heapq.heappush(ready, index[s])

    def _finish(self, name: str, future: Future[Any]) -> float | None:
        """Record the end of an attempt; returns a delay if it is to be retried."""
        task = self.compiled.tasks[name]
        atom = self.atoms[name]
        exc = future.exception()
        if exc is None:
            result = future.result()
            try:
                values = task.provided_values(result)
                atom.state, atom.result, atom.failure = AtomState.SUCCESS, result, None
                self._mark_finished(atom)
                self._save_atom(atom)
            except (FlowInvalid, MalformedData) as err:
                exc, atom.result = err, None
            else:
                self._provided[name] = values
                self._emit(EventKind.TASK_SUCCEEDED, name, attempt=atom.attempts)
                return None
        failure = Failure.from_exception(exc)
        atom.failure = failure
        policy = self.compiled.retry_of[name]
        if (policy is not None and not self._failures and not self.cancelled
                and policy.should_retry(exc, atom.attempts, atom.meta.get("first_attempt_at"))):
            delay = policy.delay(atom.attempts, atom.meta.get("first_attempt_at"))
            atom.state = AtomState.RETRYING
            self._save_atom(atom)
            self._emit(EventKind.TASK_RETRYING, name, attempt=atom.attempts, delay=delay,
                       failure=str(failure))
            return delay
        atom.state = AtomState.FAILURE
        self._mark_finished(atom)
        self._save_atom(atom)
        self._failures[name] = failure
        self._emit(EventKind.TASK_FAILED, name, attempt=atom.attempts, failure=str(failure))
        return None

    def _revert(self, executor: Executor, locks: ExitStack, held: set[int]) -> Outcome:
        c = self.compiled
        todo = {n for n, a in self.atoms.items() if a.state in _TO_REVERT}
        cause = next(iter(self._failures.values()), None)
        by_cancel = not self._failures
        index = c.index

        def seq(n: str) -> float:
            # Still RUNNING (a crash mid-task): as if it finished last.
            value = (self.atoms[n].meta or {}).get("seq")
            return float("inf") if value is None else float(value)

        while todo:
            free = [n for n in todo if not (c.succs[n] & todo)]
            name = max(free, key=lambda n: (seq(n), index[n]))
            todo.discard(name)
            atom = self.atoms[name]
            if atom.state == AtomState.FAILURE and (atom.meta or {}).get("not_run"):
                atom.state = AtomState.REVERTED
                self._save_atom(atom)
                self._emit(EventKind.TASK_REVERTED, name, skipped=True)
                continue
            atom.state = AtomState.REVERTING
            self._enter_flow_locks(name, locks, held)
            self._save_atom(atom)
            self._emit(EventKind.TASK_REVERTING, name)
            try:
                args = self._arguments(name)
                future = executor.revert(self._invocation(name, args), args, atom.result,
                                         dict(self._failures))
                exc = future.exception()
            except FlowInvalid as err:
                exc = err
            if exc is None:
                atom.state = AtomState.REVERTED
                self._mark_finished(atom)
                self._save_atom(atom)
                self._emit(EventKind.TASK_REVERTED, name)
                continue
            failure = Failure.from_exception(exc)
            atom.state, atom.revert_failure = AtomState.REVERT_FAILURE, failure
            self._mark_finished(atom)
            self._save_atom(atom)
            self._emit(EventKind.TASK_FAILED, name, phase="revert", failure=str(failure))
            self._save_flow(FlowState.FAILURE)
            self._emit(EventKind.FLOW_FAILED, failure=str(failure),
                       cause=str(cause) if cause else None)
            return Outcome(FlowState.FAILURE, self._results(), cause or failure,
                           reverted=False)
        if by_cancel:
            self._save_flow(FlowState.CANCELLED)
            self._emit(EventKind.FLOW_CANCELLED, fenced=False, reverted=True)
            return Outcome(FlowState.CANCELLED, self._results(), None, reverted=True)
        self._save_flow(FlowState.REVERTED)
        self._emit(EventKind.FLOW_REVERTED, failure=str(cause) if cause else None)
        return Outcome(FlowState.REVERTED, self._results(), cause)
