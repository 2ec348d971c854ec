"""The engine's forward phase: running ready atoms until the flow is done.

:class:`Forward` starts every atom whose predecessors all finished
(``SUCCESS``, or ``IGNORE``), in the compiled order among those ready, and
records each step through its engine (see :mod:`.runner` for the journal
write pattern). On top of the DAG it applies:

* **per-task retries**: a failed attempt with a ``Retry`` policy left goes
  ``RETRYING`` and starts again after the policy's delay;
* **conditional links**: before the first atom after a link with a decider
  starts, the decider sees the results of the link's ``before`` side; a no
  records the ``after`` side (and with ``depth="all"`` everything after it)
  ``IGNORE``, saved with the next write, and never evaluated again;
* **retry controllers** (:mod:`.controllers`): a controller runs inline, as
  an atom of its own; a task failing for good asks the innermost enclosing
  controller, then the next, for a decision. ``RETRY`` saves the controller
  ``RETRYING`` (with the failure in its history) in the same transaction as
  the failure; no atom starts until the running ones finished; then the
  scope is reverted (:class:`~jobboard.engine.revert.Reverter`), its atoms
  reset to ``PENDING`` and the controller runs again. A resumed engine
  finds the controller ``RETRYING`` and carries the retry on from there.

It returns when nothing is running and nothing can start: the flow
succeeded, or it failed (``engine._failures``) or was cancelled and the
caller reverts or stops. How it fails: a scope's revert that fails or is
halted by a cancel ends it with that outcome; journal errors propagate.
"""

from __future__ import annotations

import heapq
import logging
import time
from concurrent.futures import Future
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from jobboard import serialization
from jobboard.engine.calls import error_of
from jobboard.engine.compile import CompiledDecider
from jobboard.engine.controllers import Attempt, Decision, History
from jobboard.engine.executor import Executor
from jobboard.engine.journal import AtomDetail, Failure
from jobboard.engine.revert import TO_REVERT, Reverter
from jobboard.errors import FlowInvalid, MalformedData, TaskInterrupted, TaskTimeout
from jobboard.events import EventKind
from jobboard.states import AtomState

if TYPE_CHECKING:
    from jobboard.engine.runner import Engine, Outcome

__all__ = ["Forward", "DONE"]

log = logging.getLogger(__name__)

#: Atom states that let what follows start.
DONE = (AtomState.SUCCESS, AtomState.IGNORE)


class Forward:
    """One forward phase of an engine's run (see the module docstring)."""

    def __init__(self, engine: "Engine", executor: Executor, locks: ExitStack,
                 held: set[int]) -> None:
        self.e = engine
        self.c = engine.compiled
        self.executor = executor
        self.locks = locks
        self.held = held
        self.ready: list[int] = []                       # heap of compiled indexes
        self.running: dict[Future[Any], str] = {}
        self.delayed: list[tuple[float, int, Any]] = []  # (due, index, policy)
        self.blocked: dict[str, int] = {}
        self.before: dict[str, tuple[Any, ...]] = {}    # what prepare() changed, to undo
        self.stop_by: float | None = None     # monotonic: stop waiting after a cancel
        self.retrying: list[str] = []         # controllers whose scope runs again
        self.retry_scope: set[str] = set()    # the atoms of those scopes
        self.decided: dict[int, bool] = {}    # id(decider) -> its answer this run

    # -- the loop ----------------------------------------------------------------

    def run(self) -> "Outcome | None":
        """Run until done; an outcome only when a scope's revert ended the run."""
        e, c = self.e, self.c
        index, names = c.index, c.order
        self._setup()
        while True:
            halting = bool(e._failures) or e.cancelled
            if not halting and not self.retrying:
                now = time.monotonic()
                while self.delayed and self.delayed[0][0] <= now:
                    heapq.heappush(self.ready, heapq.heappop(self.delayed)[1])
                starting: list[str] = []
                while self.ready and not e._failures and not e.cancelled:
                    if e._gate is not None:
                        e._gate()            # e.g. blocks while ZooKeeper is suspended
                        if e.cancelled:
                            break
                    starting.append(names[heapq.heappop(self.ready)])
                    self._prepare(starting[-1])
                if starting:
                    self._start(starting)
            elif halting:
                self.ready.clear()
                self.delayed.clear()       # left RETRYING: resumable, or reverted
            if e.cancelled and self.running and self.stop_by is None:
                self.stop_by = time.monotonic() + e.stop_timeout
                for future in self.running:
                    e._stop_call(self.executor, future, kill=False)
            if not self.running:
                if self.retrying and not halting:
                    end = self._retry_scopes()
                    if end is not None:
                        return end
                    continue
                if not self.delayed or halting:
                    return None     # what finished is saved with the caller's next write
                e._save_atoms([])            # nothing finished stays unsaved while we wait
                due, _, policy = self.delayed[0]
                policy.sleep(max(0.0, due - time.monotonic()))
                heapq.heappush(self.ready, heapq.heappop(self.delayed)[1])
                continue
            e._save_atoms([])                # nothing finished stays unsaved while we wait
            now = time.monotonic()
            done = e._wait(set(self.running),
                           self.delayed[0][0] - now if self.delayed else None,
                           self.stop_by - now if self.stop_by is not None else None)
            for future in sorted((f for f in done if f in self.running),
                                 key=lambda f: index[self.running[f]]):
                name = self.running.pop(future)
                call = e._end_call(future)
                exc = error_of(future)
                if call is not None and call.stop_asked and exc is not None:
                    e._interrupted(name, exc)
                    continue
                self._settle(name, self._finish(name, future))
            e._flush_beats()
            self._expire()
            if self.stop_by is not None and self.running \
                    and time.monotonic() >= self.stop_by:
                for future, name in list(self.running.items()):
                    e._give_up(self.executor, future, f"did not stop within "
                               f"{e.stop_timeout:g}s of the cancel")
                    e._end_call(future)
                    e._interrupted(name, TaskInterrupted(
                        f"task {name!r} did not stop within {e.stop_timeout:g}s of the "
                        f"cancel and was abandoned", task=name))
                self.running.clear()

    def _setup(self) -> None:
        """What is ready, from the atoms as the journal holds them."""
        e, c = self.e, self.c
        self.retrying = [n for n in c.controllers if e.atoms[n].state == AtomState.RETRYING]
        self._rescope()
        self._count_blocked()
        for n, atom in e.atoms.items():
            if atom.state in DONE or n in self.retry_scope or n in self.retrying:
                continue
            if atom.state in (AtomState.FAILURE, AtomState.RETRYING):
                policy = c.retry_of[n]
                if policy is None or not policy.should_retry(
                        None, atom.attempts, (atom.meta or {}).get("first_attempt_at")):
                    # Its controllers' decisions were saved with this failure:
                    # none retries it, so the flow reverts.
                    e._failures.setdefault(n, atom.failure or Failure(
                        "jobboard.errors.EngineError", "failed before a restart"))
                    continue
            if not self.blocked[n]:
                self._unblocked(n)
        heapq.heapify(self.ready)

    def _count_blocked(self) -> None:
        atoms = self.e.atoms
        self.blocked = {n: sum(1 for p in self.c.preds[n] if atoms[p].state not in DONE)
                        for n in self.c.tasks}

    def _rescope(self) -> None:
        self.retry_scope = set()
        for ctl in self.retrying:
            self.retry_scope.update(self.c.scope[ctl])

    # -- starting ------------------------------------------------------------------

    def _prepare(self, name: str) -> None:
        e = self.e
        atom = e.atoms[name]
        self.before[name] = (atom.state, atom.attempts, atom.started_at, atom.finished_at,
                             atom.meta, atom.version)
        atom.state = AtomState.RUNNING
        atom.attempts += 1
        atom.started_at = datetime.now(timezone.utc)
        atom.finished_at = None
        atom.version = self.c.tasks[name].version
        atom.meta = {k: v for k, v in (atom.meta or {}).items() if k != "not_run"}
        atom.meta.setdefault("first_attempt_at", time.time())   # retry time limits
        e._enter_flow_locks(name, self.locks, self.held)

    def _start(self, names: list[str]) -> None:
        # One transaction: what finished since the last write (each SUCCESS
        # before any dependant starts) and the RUNNING of every task about
        # to start (before it is handed to the executor).
        e = self.e
        if not e.cancelled:
            e._save_atoms([e.atoms[n] for n in names])
            if not e.cancelled:
                for name in names:
                    self._launch(name)
                return
        # Cancelled by the gate or by a listener of a SUCCESS just saved:
        # these never start, as if the cancel had come first.
        for name in names:
            atom = e.atoms[name]
            (atom.state, atom.attempts, atom.started_at, atom.finished_at,
             atom.meta, atom.version) = self.before[name]
        e._save_atoms([e.atoms[n] for n in names if e.atoms[n].created_at])

    def _launch(self, name: str) -> None:
        e = self.e
        atom = e.atoms[name]
        e._emit(EventKind.TASK_STARTED, name, attempt=atom.attempts)
        future: Future[Any]
        try:
            args = e._arguments(name)
            controller = self.c.controllers.get(name)
            if controller is not None:
                # Inline: a controller only computes the attempt's value.
                future = Future()
                history = History.from_list((atom.meta or {}).get("history"))
                try:
                    future.set_result(controller.execute(history, **args))
                except Exception as exc:  # noqa: BLE001 - fails the atom like a task
                    future.set_exception(exc)
            else:
                future = e._submit(self.executor, name, "execute",
                                   e._invocation(name, args), args)
        except FlowInvalid as exc:
            # Its arguments or locks could not be prepared: it never ran,
            # so there is nothing for its revert to undo either.
            atom.meta["not_run"] = True
            future = Future()
            future.set_exception(exc)
        self.running[future] = name

    def _unblocked(self, name: str) -> None:
        """Every predecessor of ``name`` is done: it is ready, unless a
        decider of a link into it says no (or fails)."""
        for decider in self.c.deciders_into.get(name, ()):
            if not self._decide(decider, name):
                return
        heapq.heappush(self.ready, self.c.index[name])

    def _settle(self, name: str, retry_in: float | None) -> None:
        atoms = self.e.atoms
        if retry_in is not None:
            policy = self.c.retry_of[name]
            heapq.heappush(self.delayed, (time.monotonic() + retry_in, self.c.index[name],
                                          policy))
        elif atoms[name].state == AtomState.SUCCESS:
            self._release_successors([name])

    def _release_successors(self, names: list[str]) -> None:
        atoms = self.e.atoms
        for name in names:
            for s in self.c.succs[name]:
                self.blocked[s] -= 1
                if not self.blocked[s] and atoms[s].state not in DONE:
                    self._unblocked(s)

    # -- conditional links -----------------------------------------------------------

    def _decide(self, decider: CompiledDecider, entry: str) -> bool:
        """Ask ``decider`` (once per run); on a no, skip its targets."""
        known = self.decided.get(id(decider))
        if known is not None:
            return known
        e = self.e
        history = {n: e.atoms[n].result for n in decider.sources
                   if e.atoms[n].state == AtomState.SUCCESS}
        try:
            answer = bool(decider.link.decider(history))   # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - a broken decider fails its branch
            atom = e.atoms[entry]
            atom.state, atom.failure = AtomState.FAILURE, Failure.from_exception(exc)
            atom.meta = {**(atom.meta or {}), "not_run": True}
            e._mark_finished(atom)
            self._failed(entry, atom)
            return False
        self.decided[id(decider)] = answer
        if not answer:
            self._ignore(decider)
        return answer

    def _ignore(self, decider: CompiledDecider) -> None:
        """Record the decider's targets (and, with depth "all", everything
        after them) ``IGNORE``, with the next write."""
        e, c = self.e, self.c
        skip: list[str] = []
        seen: set[str] = set()
        todo = list(decider.targets)
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if e.atoms[n].state not in (AtomState.PENDING, AtomState.IGNORE):
                continue          # it ran already (a scope retried): leave it be
            skip.append(n)
            if decider.link.depth == "all":
                todo.extend(c.succs[n])
        skip.sort(key=c.index.__getitem__)
        for n in skip:
            atom = e.atoms[n]
            atom.state = AtomState.IGNORE
            atom.meta = {**(atom.meta or {}), "ignored_by": decider.label}
            e._defer(atom, lambda n=n: e._emit(EventKind.TASK_SKIPPED, n, reason="ignored",
                                               link=decider.label))
        self._release_successors(skip)

    # -- finishing an attempt -------------------------------------------------------

    def _finish(self, name: str, future: Future[Any],
                error: BaseException | None = None) -> float | None:
        """Record the end of an attempt (``error``: it failed so, whatever the
        future says); returns a delay if it is to be retried."""
        e = self.e
        task = self.c.tasks[name]
        atom = e.atoms[name]
        exc = error if error is not None else error_of(future)
        if exc is None:
            result = future.result()
            try:
                values = task.provided_values(result)
                serialization.dumps(result)     # refused now, not in a later batch
            except (FlowInvalid, MalformedData) as err:
                exc, atom.result = err, None
            else:
                atom.state, atom.result, atom.failure = AtomState.SUCCESS, result, None
                e._mark_finished(atom)
                e._provided[name] = values
                attempt = atom.attempts
                # Saved with the next write: the next task's RUNNING, or before
                # the engine waits or returns.
                e._defer(atom, lambda: e._emit(EventKind.TASK_SUCCEEDED, name,
                                               attempt=attempt))
                return None
        failure = Failure.from_exception(exc)
        atom.failure = failure
        policy = self.c.retry_of[name]
        if (policy is not None and not e._failures and not e.cancelled
                and name not in self.retry_scope
                and policy.should_retry(exc, atom.attempts, atom.meta.get("first_attempt_at"))):
            delay = policy.delay(atom.attempts, atom.meta.get("first_attempt_at"))
            atom.state = AtomState.RETRYING
            e._save_atom(atom)
            e._emit(EventKind.TASK_RETRYING, name, attempt=atom.attempts, delay=delay,
                    failure=str(failure))
            return delay
        atom.state = AtomState.FAILURE
        e._mark_finished(atom)
        self._failed(name, atom)
        return None

    def _failed(self, name: str, atom: AtomDetail) -> None:
        """``name`` failed for good: ask its controllers, innermost first,
        and save the failure with what they decided, in one transaction."""
        e, c = self.e, self.c
        failure = atom.failure
        assert failure is not None
        saved = [atom]
        after = [lambda: e._emit(EventKind.TASK_FAILED, name, attempt=atom.attempts,
                                 failure=str(failure))]
        ctl = None if e._failures or name in self.retry_scope else c.controller_of.get(name)
        while ctl is not None:
            ctl_atom = e.atoms[ctl]
            history = History([*History.from_list((ctl_atom.meta or {}).get("history")),
                               Attempt(ctl_atom.result, {name: failure})])
            ctl_atom.meta = {**(ctl_atom.meta or {}), "history": history.to_list()}
            saved.append(ctl_atom)
            decision = self._consult(ctl, history)
            if decision == Decision.RETRY:
                ctl_atom.state = AtomState.RETRYING
                self.retrying.append(ctl)
                self._rescope()
                after.append(lambda ctl=ctl, n=len(history): e._emit(
                    EventKind.TASK_RETRYING, ctl, attempt=n, scope=list(c.scope[ctl]),
                    failure=str(failure)))
                break
            log.info("job %s: retry controller %s decided %s after %s failed",
                     e.job_id, ctl, decision, name)
            ctl = c.controller_of.get(ctl) if decision == Decision.REVERT else None
        else:
            if name not in self.retry_scope:
                e._failures[name] = failure
        e._save_atoms(saved)
        for emit in after:
            emit()

    def _consult(self, ctl: str, history: History) -> Decision:
        e = self.e
        try:
            decision = self.c.controllers[ctl].on_failure(history, **e._arguments(ctl))
            return Decision(decision)
        except Exception:  # noqa: BLE001 - a broken controller reverts the flow
            log.exception("job %s: retry controller %s failed to decide; reverting the flow",
                          e.job_id, ctl)
            return Decision.REVERT_ALL

    def _retry_scopes(self) -> "Outcome | None":
        """Nothing runs: revert each retrying controller's scope, reset it and
        make the controller ready again."""
        e, c = self.e, self.c
        while self.retrying:
            ctl = self.retrying[0]
            scope = c.scope[ctl]
            history = History.from_list((e.atoms[ctl].meta or {}).get("history"))
            with e._guard:
                halts = e._halts
            todo = [n for n in scope if e.atoms[n].state in TO_REVERT]
            end = Reverter(e, self.executor, self.locks, self.held, halts).revert(
                todo, history.last_failures)
            if end.halted:
                return e._halted()
            if end.failure is not None:
                cause = next(iter(history.last_failures.values()), None)
                return e._revert_failed(end.failure, cause)
            for n in scope:
                e._reset(n)
            scope_set = set(scope)
            for decider in c.deciders:      # asked again on the new attempt
                if scope_set.intersection(decider.sources) or scope_set.intersection(
                        decider.targets):
                    self.decided.pop(id(decider), None)
            self.retrying.pop(0)
            self._rescope()
            log.info("job %s: retry controller %s runs its scope again (attempt %d)",
                     e.job_id, ctl, len(history) + 1)
        self._count_blocked()
        names = c.order
        # Reset atoms leave the queues; what is left waits as before.
        self.ready = [i for i in self.ready if not self.blocked[names[i]]
                      and e.atoms[names[i]].state != AtomState.PENDING]
        self.delayed = [d for d in self.delayed
                        if e.atoms[names[d[1]]].state == AtomState.RETRYING]
        heapq.heapify(self.ready)
        heapq.heapify(self.delayed)
        queued = {names[i] for i in self.ready} | {names[d[1]] for d in self.delayed}
        for n in names:
            if e.atoms[n].state in (AtomState.PENDING, AtomState.RETRYING) \
                    and not self.blocked[n] and n not in queued:
                self._unblocked(n)
        return None

    # -- time limits -------------------------------------------------------------------

    def _expire(self) -> None:
        e = self.e
        for call in e._calls.expired():
            future = call.future
            if future is None or future not in self.running:
                continue
            name = self.running.pop(future)
            asked = call.stop_asked
            e._give_up(self.executor, future, "time limit")
            e._end_call(future)
            limit = call.timeout if call.timeout is not None else 0.0
            if asked:                       # already stopping for a cancel
                e._interrupted(name, TaskTimeout(name, limit))
                continue
            self._settle(name, self._finish(name, future, TaskTimeout(name, limit)))
