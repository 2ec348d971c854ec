"""The engine's revert phase: undoing a set of atoms, latest finished first.

:class:`Reverter` reverts the atoms it is given (the whole flow's after a
failure or an admin's cancel, or one retry controller's scope before the
scope runs again), one at a time on the engine's thread: an atom only once
every atom after it in the flow (its successors, and what its flow
pattern's ``revert_links`` put before it) is reverted, the latest finished
first. Each atom goes ``REVERTING`` (saved before its revert is handed to
the executor) then ``REVERTED`` or ``REVERT_FAILURE``. A task that never
ran (its arguments or locks could not be prepared) and a retry controller
are marked ``REVERTED`` without a call.

How it fails: a revert that raises (or passes its time limit) stops the
phase at that atom with the failure (:attr:`RevertEnd.failure`); a
``cancel()`` without ``revert=True`` stops it too (:attr:`RevertEnd.halted`),
leaving the atom ``REVERTING`` for the next owner. Journal errors propagate.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobboard.engine.calls import error_of
from jobboard.engine.executor import Executor
from jobboard.engine.journal import Failure
from jobboard.errors import FlowInvalid, TaskTimeout
from jobboard.events import EventKind
from jobboard.states import AtomState

if TYPE_CHECKING:
    from jobboard.engine.runner import Engine

__all__ = ["Reverter", "RevertEnd", "TO_REVERT"]

#: Atom states whose task (may have) run and so must be reverted.
TO_REVERT = (AtomState.SUCCESS, AtomState.FAILURE, AtomState.RETRYING, AtomState.RUNNING,
             AtomState.REVERTING, AtomState.REVERT_FAILURE)


@dataclass
class RevertEnd:
    """How a revert phase ended: everything reverted (both fields empty),
    a revert that failed, or halted by a cancel."""

    failure: Failure | None = None
    halted: bool = False


class Reverter:
    """Reverts atoms of one engine (see the module docstring).

    Args:
        engine: The engine whose atoms, journal and executor calls it uses.
        executor: Runs the revert calls.
        locks, held: The flow locks of the run (taken as needed).
        halts: The engine's count of ``cancel(revert=False)`` calls when the
            phase began; a later one halts the phase.
    """

    def __init__(self, engine: "Engine", executor: Executor, locks: ExitStack,
                 held: set[int], halts: int) -> None:
        self.engine = engine
        self.executor = executor
        self.locks = locks
        self.held = held
        self.halts = halts

    def revert(self, names: Collection[str], failures: Mapping[str, Failure]) -> RevertEnd:
        """Revert ``names``; ``failures`` (task name -> failure) are handed
        to each task's revert as the failures that caused it."""
        e = self.engine
        c = e.compiled
        todo = set(names)
        index = c.index

        def seq(n: str) -> float:
            # Still RUNNING (a crash mid-task): as if it finished last.
            value = (e.atoms[n].meta or {}).get("seq")
            return float("inf") if value is None else float(value)

        def waits(n: str) -> bool:
            return bool(c.succs[n] & todo) or bool(c.revert_before.get(n, set()) & todo)

        while todo:
            free = [n for n in todo if not waits(n)] or \
                [n for n in todo if not c.succs[n] & todo]
            name = max(free, key=lambda n: (seq(n), index[n]))
            todo.discard(name)
            atom = e.atoms[name]
            if name in c.controllers or (atom.state == AtomState.FAILURE
                                         and (atom.meta or {}).get("not_run")):
                atom.state = AtomState.REVERTED
                e._save_atom(atom)
                e._emit(EventKind.TASK_REVERTED, name, skipped=True)
                continue
            atom.state = AtomState.REVERTING
            e._enter_flow_locks(name, self.locks, self.held)
            e._save_atom(atom)
            e._emit(EventKind.TASK_REVERTING, name)
            try:
                args = e._arguments(name)
                future = e._submit(self.executor, name, "revert", e._invocation(name, args),
                                   args, atom.result, dict(failures))
            except FlowInvalid as err:
                exc: BaseException | None = err
            else:
                halted, exc = self._await(name, future)
                if halted:
                    return RevertEnd(halted=True)
            if exc is None:
                atom.state = AtomState.REVERTED
                e._mark_finished(atom)
                e._save_atom(atom)
                e._emit(EventKind.TASK_REVERTED, name)
                continue
            failure = Failure.from_exception(exc)
            atom.state, atom.revert_failure = AtomState.REVERT_FAILURE, failure
            e._mark_finished(atom)
            e._save_atom(atom)
            e._emit(EventKind.TASK_FAILED, name, phase="revert", failure=str(failure))
            return RevertEnd(failure=failure)
        return RevertEnd()

    def _await(self, name: str, future: Future[Any]) -> tuple[bool, BaseException | None]:
        """Wait for one revert call, saving heartbeats and enforcing its time
        limit; returns (halted by a cancel, its error or None)."""
        e = self.engine
        stop_by: float | None = None
        while not future.done():
            with e._guard:
                halting = e._halts != self.halts
            if halting and stop_by is None:
                stop_by = time.monotonic() + e.stop_timeout
                e._stop_call(self.executor, future, kill=False)
            done = e._wait({future}, stop_by - time.monotonic() if stop_by else None)
            if future in done:
                break
            e._flush_beats()
            call = e._calls.get(future)
            if call is not None and call in e._calls.expired():
                e._give_up(self.executor, future, "time limit")
                e._end_call(future)
                limit = call.timeout if call.timeout is not None else 0.0
                return False, TaskTimeout(name, limit, phase="revert")
            if stop_by is not None and time.monotonic() >= stop_by:
                e._give_up(self.executor, future, f"did not stop within "
                           f"{e.stop_timeout:g}s of the cancel")
                e._end_call(future)
                return True, None
        call = e._end_call(future)
        exc = error_of(future)
        if call is not None and call.stop_asked and exc is not None:
            return True, None
        return False, exc
