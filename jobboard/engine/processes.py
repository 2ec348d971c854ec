"""A process executor: task calls in worker processes that can be killed one by one.

:class:`ProcessExecutor` keeps ``width`` reusable worker processes, each run
by a *slot* thread in the parent that feeds it one call at a time over its
own pipe. ``concurrent.futures.ProcessPoolExecutor`` is not used because a
worker that dies breaks its whole pool, and one worker cannot be killed
without killing the rest.

The protocol on a worker's pipe (pickled tuples)::

    parent -> child   ("call", id, kind, payload)   kind "execute" | "revert"
                      ("stop", id, reason)          sets the call's cancelled flag
                      ("exit",)                     finish and leave
    child -> parent   ("ready", pid)
                      ("started", id)               unpickled, the task's code begins
                      ("beat", id, progress, note)  Task.heartbeat
                      ("done", id, ok, blob)        pickled result, or (exception, traceback text)

Start method: ``spawn`` by default, chosen on purpose. The conductor runs
kazoo's connection and handler threads and SQLAlchemy's pool; ``fork()``
copies only the forking thread but every lock as it was, so a child forked
while another thread held a lock (logging's, a connection pool's, kazoo's
queue) can deadlock on first use, and it inherits sockets to ZooKeeper and
the database. ``spawn`` starts a clean interpreter (about 0.1-0.3 s per
worker, paid once per worker, not per task); ``forkserver`` is as safe and
starts faster once its server is up, and may be chosen with
``start_method="forkserver"``; ``fork`` is accepted for single-threaded
programs only. Tasks and their arguments are pickled to the child, so tasks
must be defined at module level (importable by the child); results and
exceptions are pickled back.

Locks declared by a task (:class:`~jobboard.engine.locking.LockedTask`) are
ZooKeeper locks of the parent's session: the slot thread takes them, ships
the inner task, and releases them when the child answers (or dies).

How it fails, always on the call's future, never on the caller:

* a task, its arguments or result that cannot be pickled ->
  :class:`~jobboard.errors.NotPicklable` naming what and why;
* the worker exits under a call (``os._exit``, a signal, the OOM killer) ->
  :class:`~jobboard.errors.WorkerDied` ("worker process exited with code -9");
  only that call fails and the worker is replaced for the next call;
* ``interrupt(future, kill=True)`` -> the worker is killed and the call
  fails with :class:`~jobboard.errors.TaskInterrupted`; a call interrupted
  before it reached its worker (queued, waiting for its locks, or while the
  worker was starting) fails with ``TaskInterrupted`` without running, and
  no other call's worker is ever killed in its place;
* the task's locks cannot be taken -> the locker's own error
  (:class:`~jobboard.errors.LockTimeout`, ``BoardUnavailable``, ...), as
  raised; the call does not run and the worker is kept;
* a worker that does not come up within ``start_timeout`` -> ``WorkerDied``;
* an exception the child cannot send back as itself ->
  :class:`RemoteTaskError` carrying its type and message; the child's
  traceback rides along as the ``__cause__`` of the exception.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import Future
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait as wait_ready
from typing import Any

from jobboard.engine.control import CallControl, CallObserver, running
from jobboard.engine.executor import Executor, drain, notify_started, settle
from jobboard.engine.locking import LockedTask
from jobboard.engine.tasks import Task, call_execute, call_revert
from jobboard.errors import EngineError, NotPicklable, TaskInterrupted, WorkerDied

__all__ = ["ProcessExecutor", "RemoteTaskError"]

log = logging.getLogger(__name__)

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_POLL = 5.0          # re-check the slot's state at least this often while a call runs


class RemoteTaskError(Exception):
    """A task's exception that could not be pickled back as itself."""

    def __init__(self, exc_type: str, message: str) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message

    def __reduce__(self) -> Any:
        return (type(self), (self.exc_type, self.message))


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (its ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\"\"\"\n" + self.text + "\"\"\""


@dataclass(eq=False)
class _Call:
    id: int
    kind: str                          # "execute" | "revert"
    name: str
    payload: bytes
    future: "Future[Any]"
    control: CallControl
    observer: CallObserver | None
    locks: AbstractContextManager[Any] | None
    killed: bool = False               # set before the stop request, read after it
    slot: "_Slot | None" = field(default=None, repr=False)


class ProcessExecutor(Executor):
    """Runs task calls in up to ``width`` worker processes, one call each.

    Workers start on demand and are reused; a worker that died or was killed
    is replaced on the next call. May be shared by several engines (jobs) at
    once: calls queue in submission order, and interrupting one touches only
    its own worker. Measured cost: see the README (starting a spawn worker
    is the expensive part; a call on a warm worker is a pipe round trip).

    Args:
        width: Number of worker processes (task calls running at once).
        start_method: ``"spawn"`` (default), ``"forkserver"`` or ``"fork"``
            (see the module docstring for why not fork).
        start_timeout: Seconds a new worker may take to report ready.
        exit_timeout: Seconds a worker may take to leave at shutdown before
            it is killed.

    Raises:
        ValueError: ``width`` below 1 or an unknown start method.
    """

    def __init__(self, width: int = 4, *, start_method: str = "spawn",
                 start_timeout: float = 30.0, exit_timeout: float = 5.0) -> None:
        if width < 1:
            raise ValueError("width must be at least 1")
        self.width = width
        self.start_method = start_method
        self._mp = multiprocessing.get_context(start_method)
        self.start_timeout = start_timeout
        self.exit_timeout = exit_timeout
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._calls: dict[Future[Any], _Call] = {}
        self._ids = itertools.count(1)
        self._slots: list[_Slot] = []
        self._closed = False

    # -- Executor --------------------------------------------------------------

    def execute(self, task: Task, arguments: Mapping[str, Any], *,
                observer: CallObserver | None = None) -> "Future[Any]":
        return self._submit("execute", task, observer, (dict(arguments),))

    def revert(self, task: Task, arguments: Mapping[str, Any], result: Any,
               failures: Mapping[str, Any], *,
               observer: CallObserver | None = None) -> "Future[Any]":
        return self._submit("revert", task, observer, (dict(arguments), result, dict(failures)))

    def interrupt(self, future: "Future[Any]", *, kill: bool = False) -> bool:
        with self._lock:
            call = self._calls.get(future)
        if call is None or future.done():
            return False
        reason = "killed" if kill else "asked to stop"
        if kill:
            # Before the stop request: whoever sees the request sees the kill
            # (the slot re-checks both after starting a worker and after sending).
            call.killed = True
        call.control.request_stop(reason)
        if future.cancel():                          # still queued: never starts
            self._forget(call)
            return True
        slot = call.slot
        if slot is not None:
            slot.stop(call, reason, kill=kill)
        return True

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers. With ``wait``, running calls finish first; without,
        workers are killed and their calls fail with ``TaskInterrupted``.
        Queued calls are cancelled either way."""
        with self._lock:
            self._closed = True
            slots = list(self._slots)
        for item in drain(self._queue):
            item.future.cancel()
            self._forget(item)
        for _ in slots:
            self._queue.put(None)
        for slot in slots:
            if not wait:
                slot.kill_current("the executor was shut down")
        if wait:
            for slot in slots:
                slot.thread.join(self.exit_timeout + self.start_timeout)

    # -- helpers ---------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        """The process ids of the live workers."""
        with self._lock:
            slots = list(self._slots)
        return [pid for pid in (s.pid for s in slots) if pid is not None]

    def pid_of(self, future: "Future[Any]") -> int | None:
        """The pid of the worker running the call behind ``future``, if any."""
        with self._lock:
            call = self._calls.get(future)
        slot = call.slot if call is not None else None
        return slot.pid if slot is not None and slot.current is call else None

    def _submit(self, kind: str, task: Task, observer: CallObserver | None,
                args: tuple[Any, ...]) -> "Future[Any]":
        future: Future[Any] = Future()
        locks = None
        inner = task
        if isinstance(task, LockedTask):
            locks, inner = task.holding(), task.inner
        try:
            payload = pickle.dumps((inner, *args), protocol=_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - pickling raises many kinds
            what = "task object" if not _picklable(inner) else "arguments"
            future.set_exception(NotPicklable(task.name, what, f"{type(exc).__name__}: {exc}"))
            return future
        call = _Call(next(self._ids), kind, task.name, payload, future,
                     CallControl(task.name, observer), observer, locks)
        with self._lock:
            if self._closed:
                raise RuntimeError("ProcessExecutor is shut down")
            self._calls[future] = call
            # One slot per call in flight (queued or running), up to the width.
            if len(self._slots) < min(self.width, len(self._calls)):
                self._slots.append(_Slot(self, len(self._slots)))
        self._queue.put(call)
        return future

    def _forget(self, call: _Call) -> None:
        with self._lock:
            self._calls.pop(call.future, None)


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj, protocol=_PROTOCOL)
        return True
    except Exception:  # noqa: BLE001
        return False


class _Slot:
    """One worker process and the parent thread that feeds it calls."""

    def __init__(self, executor: ProcessExecutor, index: int) -> None:
        self.executor = executor
        self.index = index
        self.process: Any = None                  # a multiprocessing Process
        self.conn: Connection | None = None
        self.current: _Call | None = None
        # Guards ``current``, ``process`` and ``conn`` against :meth:`stop`,
        # which runs on the interrupting thread (reentrant: stop sends under it).
        self._state_lock = threading.RLock()
        self._doomed = False                      # killed by stop(): do not reuse
        self._send_lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"jobboard-process-slot-{index}")
        self.thread.start()

    @property
    def pid(self) -> int | None:
        process = self.process
        try:
            return process.pid if process is not None and process.is_alive() else None
        except ValueError:                        # closed by the slot thread meanwhile
            return None

    # -- the slot thread -------------------------------------------------------

    def _loop(self) -> None:
        executor = self.executor
        try:
            while True:
                call = executor._queue.get()
                if call is None:
                    return
                if not call.future.set_running_or_notify_cancel():
                    executor._forget(call)
                    continue
                try:
                    self._serve(call)
                except BaseException as exc:  # noqa: BLE001 - a bug here must fail one call only
                    log.exception("task %s: process slot failed", call.name)
                    if settle(call.future, error=EngineError(
                            f"task {call.name!r}: the process executor failed: {exc!r}")):
                        # Failed mid-call: the worker's state is unknown. (After the
                        # call settled, e.g. a lock release failing, it is idle.)
                        self._discard_process()
                finally:
                    with self._state_lock:
                        self.current = None
                        doomed, self._doomed = self._doomed, False
                    if doomed:
                        # Killed just as its call finished: never reuse a dying worker.
                        self._discard_process()
                    executor._forget(call)
        finally:
            self._exit_process()

    def _serve(self, call: _Call) -> None:
        with ExitStack() as held:
            if call.locks is not None:
                try:
                    held.enter_context(call.locks)
                except Exception as exc:  # noqa: BLE001 - LockTimeout, BoardUnavailable, ...
                    # The locker's error is the call's outcome, as raised; the
                    # worker never saw the call, so it stays.
                    settle(call.future, error=exc)
                    return
            if self._interrupted_before_sending(call) or not self._begin(call):
                return
            try:
                self._send(("call", call.id, call.kind, call.payload))
            except OSError:
                with self._state_lock:
                    self.current = None               # a stop meanwhile only flags the call
                self._discard_process()               # died while idle: one new try
                if not self._begin(call):
                    return
                self._send(("call", call.id, call.kind, call.payload))
            if call.control.stop_requested:           # asked while we were sending
                self.stop(call, call.control.reason or "asked to stop", kill=call.killed)
            self._await(call)

    def _begin(self, call: _Call) -> bool:
        """Have a worker ready and make ``call`` current, unless it was stopped.

        Starting a worker takes a while; an interrupt meanwhile finds
        ``call.slot`` unset and only flags the call, so the flag is checked
        again here, atomically with making the call current (from then on
        :meth:`stop` reaches it).
        """
        if not self._ensure_process(call):
            return False
        with self._state_lock:
            if not call.control.stop_requested:
                self.current = call
                call.slot = self
                return True
        return not self._interrupted_before_sending(call)

    @staticmethod
    def _interrupted_before_sending(call: _Call) -> bool:
        """Fail ``call`` with TaskInterrupted if it was asked to stop; True if so."""
        if not call.control.stop_requested:
            return False
        settle(call.future, error=TaskInterrupted(
            f"task {call.name!r} was {call.control.reason or 'asked to stop'} "
            f"before it started", task=call.name))
        return True

    def _await(self, call: _Call) -> None:
        conn, process = self.conn, self.process
        assert conn is not None and process is not None
        while True:
            ready = wait_ready([conn, process.sentinel], timeout=_POLL)
            if conn in ready:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    message = None
                if message is not None:
                    if message[0] == "started" and message[1] == call.id:
                        # The time limit counts from here: importing the
                        # task's module in a fresh worker is not the task's time.
                        notify_started(call.observer, call.name)
                        continue
                    if message[0] == "beat" and message[1] == call.id:
                        if call.observer is not None:
                            try:
                                call.observer.heartbeat(message[2], message[3])
                            except Exception:  # noqa: BLE001
                                log.exception("task %s: heartbeat not delivered", call.name)
                        continue
                    if message[0] == "done" and message[1] == call.id:
                        self._settle(call, message[2], message[3])
                        return
                    continue
            elif process.sentinel not in ready:
                continue
            # The worker is gone (or its pipe broke): the call dies with it.
            process.join(self.executor.exit_timeout)
            code = process.exitcode
            self._discard_process()
            if call.killed:
                error: BaseException = TaskInterrupted(
                    f"task {call.name!r}: worker process killed "
                    f"({call.control.reason or 'asked to stop'}; exit code {code})",
                    task=call.name)
            else:
                error = WorkerDied(call.name, code)
                log.warning("task %s: worker process exited with code %s; replacing it",
                            call.name, code)
            settle(call.future, error=error)
            return

    def _settle(self, call: _Call, ok: bool, blob: bytes) -> None:
        try:
            value = pickle.loads(blob)
        except Exception as exc:  # noqa: BLE001
            settle(call.future, error=NotPicklable(
                call.name, "result" if ok else "exception",
                f"it did not unpickle in the parent: {type(exc).__name__}: {exc}"))
            return
        if ok:
            settle(call.future, result=value)
            return
        error, text = value
        if text:
            error.__cause__ = _RemoteTraceback(text)
        settle(call.future, error=error)

    # -- the worker process ----------------------------------------------------

    def _ensure_process(self, call: _Call) -> bool:
        if self.process is not None and self.process.is_alive():
            return True
        self._discard_process()
        parent, child = self.executor._mp.Pipe(duplex=True)
        process = self.executor._mp.Process(
            target=_child_main, args=(child,), daemon=True,
            name=f"jobboard-worker-{self.index}")
        try:
            process.start()
        except Exception as exc:  # noqa: BLE001 - e.g. the task module is not importable
            parent.close()
            child.close()
            settle(call.future, error=EngineError(
                f"task {call.name!r}: could not start a worker process: {exc}"))
            return False
        child.close()
        self.process, self.conn = process, parent
        deadline = time.monotonic() + self.executor.start_timeout
        while True:
            left = deadline - time.monotonic()
            ready = wait_ready([parent, process.sentinel], timeout=max(0.0, left))
            if parent in ready:
                try:
                    message = parent.recv()
                except (EOFError, OSError):
                    message = None
                if message is not None and message[0] == "ready":
                    return True
            if process.sentinel in ready or left <= 0 or parent in ready:
                code = process.exitcode
                self._discard_process()
                log.error("a worker process did not start within %ss (exit code %s)",
                          self.executor.start_timeout, code)
                settle(call.future, error=WorkerDied(call.name, code))
                return False

    def _send(self, message: tuple[Any, ...]) -> None:
        conn = self.conn
        if conn is None:
            raise OSError("no worker process")
        with self._send_lock:
            conn.send(message)

    def stop(self, call: _Call, reason: str, *, kill: bool) -> None:
        """Ask the worker running ``call`` to stop; with ``kill``, kill it.

        Holds the slot's state lock throughout, so the slot cannot move on to
        another call between the check and the kill: a worker is only ever
        killed for the call it is running.
        """
        if kill:
            call.killed = True
        with self._state_lock:
            if self.current is not call or call.future.done():
                return                  # not sent yet (_begin checks the flag), or over
            try:
                self._send(("stop", call.id, reason))
            except OSError:
                pass
            process = self.process
            if kill and process is not None:
                self._doomed = True     # the slot thread discards it after this call
                # SIGKILL: a hung task may ignore SIGTERM. Not yet closed:
                # _discard_process swaps it out under this same lock first.
                process.kill()

    def kill_current(self, reason: str) -> None:
        call = self.current
        if call is not None:
            call.control.request_stop(reason)
            self.stop(call, reason, kill=True)

    def _discard_process(self) -> None:
        with self._state_lock:                    # stop() never kills a closed process
            process, conn = self.process, self.conn
            self.process = self.conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(self.executor.exit_timeout)
            try:
                process.close()
            except ValueError:
                pass

    def _exit_process(self) -> None:
        process = self.process
        if process is not None and process.is_alive():
            try:
                self._send(("exit",))
            except OSError:
                pass
            process.join(self.executor.exit_timeout)
        self._discard_process()


# -- the child side ------------------------------------------------------------

class _PipeObserver:
    """Sends a call's heartbeats up the pipe (the parent's slot delivers them)."""

    def __init__(self, send: Any, call_id: int) -> None:
        self._send = send
        self._id = call_id

    def started(self) -> None:
        pass

    def heartbeat(self, progress: float | None, note: str | None) -> None:
        self._send(("beat", self._id, progress, note))


def _child_main(conn: Connection) -> None:
    """A worker process: run calls from the pipe one at a time."""
    # Ctrl-C in the conductor's terminal is the parent's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send_lock = threading.Lock()
    guard = threading.Lock()
    controls: dict[int, CallControl] = {}
    stops: dict[int, str] = {}                 # stop requests for calls not begun yet
    calls: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                os._exit(0)                    # the parent is gone: so are we
            if message[0] == "call":
                calls.put(message)
            elif message[0] == "stop":
                with guard:
                    control = controls.get(message[1])
                    if control is None:
                        stops[message[1]] = message[2]
                if control is not None:
                    control.request_stop(message[2])
            elif message[0] == "exit":
                calls.put(None)
                return

    threading.Thread(target=read, daemon=True, name="jobboard-worker-reader").start()
    send(("ready", os.getpid()))
    while True:
        message = calls.get()
        if message is None:
            return
        _, call_id, kind, payload = message
        send(("done", call_id, *_child_call(send, guard, controls, stops, call_id, kind,
                                             payload)))


def _child_call(send: Any, guard: threading.Lock, controls: dict[int, CallControl],
                stops: dict[int, str], call_id: int, kind: str,
                payload: bytes) -> tuple[bool, bytes]:
    try:
        task, *args = pickle.loads(payload)
    except BaseException as exc:  # noqa: BLE001
        return False, _pack_error(EngineError(
            f"the task could not be unpickled in the worker process "
            f"({type(exc).__name__}: {exc}); is its module importable there?"))
    send(("started", call_id))
    control = CallControl(task.name, _PipeObserver(send, call_id))
    with guard:
        controls[call_id] = control
        reason = stops.pop(call_id, None)
    if reason is not None:
        control.request_stop(reason)
    try:
        with running(control):
            if kind == "execute":
                result = call_execute(task, *args)
            else:
                result = call_revert(task, *args)
    except BaseException as exc:  # noqa: BLE001 - SystemExit & co. fail the task only
        return False, _pack_error(exc)
    finally:
        with guard:
            controls.pop(call_id, None)
    try:
        return True, pickle.dumps(result, protocol=_PROTOCOL)
    except Exception as exc:  # noqa: BLE001
        return False, _pack_error(NotPicklable(task.name, "result",
                                               f"{type(exc).__name__}: {exc}"))


def _pack_error(exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps((exc, text), protocol=_PROTOCOL)
        pickle.loads(blob)                      # some exceptions do not come back
        return blob
    except Exception:  # noqa: BLE001
        klass = type(exc)
        stand_in = RemoteTaskError(f"{klass.__module__}.{klass.__qualname__}", str(exc))
        return pickle.dumps((stand_in, text), protocol=_PROTOCOL)
