"""Executors on their own: the process executor's workers, deaths, pickling,
interrupts and sharing; BaseException from a task on every executor."""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import CancelledError
from contextlib import contextmanager

import pytest

from executor_flows import (SIGKILL, Echo, Exit, FileJournal, Hang, Noop, Pid, RaiseBase,
                            ReturnsUnpicklable, Unpicklable, Wait)
from flows_for_tests import Journal, RecordingLocker, Step, make_engine
from jobboard.engine import SerialExecutor, Task, ThreadExecutor, flows
from jobboard.engine.locking import LockedTask
from jobboard.engine.processes import ProcessExecutor
from jobboard.errors import (InvalidArgument, LockTimeout, NotPicklable, TaskInterrupted,
                             WorkerDied)
from jobboard.states import FlowState
from jobboard.testing.waiting import wait_until


@pytest.fixture(scope="module")
def processes():
    executor = ProcessExecutor(2)
    yield executor
    executor.shutdown(wait=False)


def gone(pid: int) -> bool:
    """The process is gone (or a zombie: killed, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_process_executor_runs_tasks_in_other_processes(processes):
    result = processes.execute(Echo("echo"), {"value": [1, "two"]}).result(30)
    assert result["value"] == [1, "two"]
    assert result["pid"] != os.getpid() and result["pid"] in processes.pids


def test_a_worker_that_exits_fails_only_its_task_and_is_replaced(processes, tmp_path):
    journal = FileJournal(tmp_path)
    other = processes.execute(Wait("wait", journal), {})
    assert journal.wait_for("started:wait", 30)
    died = processes.execute(Exit("exit", code=3), {})
    error = died.exception(30)
    assert isinstance(error, WorkerDied) and error.exitcode == 3
    assert "worker process exited with code 3" in str(error)
    killed = processes.execute(Exit("sigkill", signum=SIGKILL), {}).exception(30)
    assert isinstance(killed, WorkerDied) and "exited with code -9" in str(killed)
    assert not other.done()                   # the other worker never noticed
    (tmp_path / "go").touch()
    assert other.result(30) == "released"
    assert processes.execute(Noop("after"), {}).result(30) is None


def test_kill_interrupts_only_that_worker(tmp_path):
    with ProcessExecutor(2) as executor:
        journal = FileJournal(tmp_path)
        hung = executor.execute(Hang("hung", journal), {})
        assert journal.wait_for("started:hung", 30)
        pid = int(journal.value("pid").split(":")[1])
        assert executor.pid_of(hung) == pid
        other = executor.execute(Echo("echo"), {"value": 1})
        assert other.result(30)["value"] == 1
        assert executor.interrupt(hung, kill=True)
        error = hung.exception(10)
        assert isinstance(error, TaskInterrupted) and "killed" in str(error)
        assert wait_until(lambda: gone(pid), 5)
        assert not executor.interrupt(hung)   # finished: nothing to interrupt


def test_interrupting_a_queued_call_cancels_it(tmp_path):
    with ProcessExecutor(1) as executor:
        journal = FileJournal(tmp_path)
        first = executor.execute(Wait("first", journal), {})
        queued = executor.execute(Noop("queued"), {})
        assert journal.wait_for("started:first", 30)
        assert executor.interrupt(queued)
        with pytest.raises(CancelledError):
            queued.result(1)
        (tmp_path / "go").touch()
        assert first.result(30) == "released"


@pytest.mark.parametrize("task, what", [(Unpicklable("lockholder"), "task object"),
                                        (Echo("echo"), "arguments")])
def test_what_cannot_be_pickled_fails_the_task_saying_so(processes, task, what):
    arguments = {"value": threading.Lock()} if what == "arguments" else {}
    error = processes.execute(task, arguments).exception(10)
    assert isinstance(error, NotPicklable) and error.what == what
    assert "cannot be pickled" in str(error) and task.name in str(error)


def test_a_result_that_cannot_be_pickled_fails_the_task(processes):
    error = processes.execute(ReturnsUnpicklable("lock"), {}).exception(30)
    assert isinstance(error, NotPicklable) and error.what == "result"


@pytest.mark.parametrize("kind", ["serial", "thread", "process"])
@pytest.mark.parametrize("error", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_base_exceptions_fail_the_task_only(processes, kind, error):
    executor = {"serial": SerialExecutor(), "thread": ThreadExecutor(1),
                "process": processes}[kind]
    failed = executor.execute(RaiseBase("raiser", error), {}).exception(30)
    assert type(failed).__name__ == error
    reverted = executor.revert(RaiseBase("raiser", error, in_revert=True), {}, None,
                               {}).exception(30)
    assert type(reverted).__name__ == error
    assert executor.execute(Noop("after"), {}).result(30) is None   # still serving


def test_heartbeat_and_cancelled_cross_the_process_boundary(processes, tmp_path):
    from executor_flows import Cooperative

    beats: list = []

    class Observer:
        def started(self):
            beats.append("started")

        def heartbeat(self, progress, note):
            beats.append((progress, note))

    journal = FileJournal(tmp_path)
    future = processes.execute(Cooperative("coop", journal), {}, observer=Observer())
    assert journal.wait_for("started:coop", 30)
    assert wait_until(lambda: beats == ["started"], 5)
    processes.interrupt(future)
    error = future.exception(10)
    assert isinstance(error, TaskInterrupted)
    assert "cancelled:coop:True" in journal.entries
    assert "heartbeat-raised:coop:TaskInterrupted" in journal.entries


def test_thread_kill_replaces_the_thread_and_leaves_a_straggler(tmp_path):
    executor = ThreadExecutor(1)
    journal = FileJournal(tmp_path)
    hung = executor.execute(Hang("hung", journal, seconds=1.0), {})
    assert journal.wait_for("started:hung")
    executor.interrupt(hung, kill=True)
    assert executor.stragglers == 1
    assert executor.execute(Noop("next"), {}).result(0.5) is None   # width is kept
    assert hung.result(5) == "woke"                               # ends on its own
    assert wait_until(lambda: executor.stragglers == 0, 5)
    executor.shutdown()


def test_a_conductors_idle_thread_pool_serves_the_next_job_and_a_stranded_one_does_not(
        tmp_path):
    from jobboard.conductor.executors import Executors

    executors = Executors("thread", concurrency=2, task_width=1)
    first = executors.acquire()
    assert first.execute(Noop("a"), {}).result(5) is None
    assert wait_until(lambda: first.idle, 5)
    executors.release(first)
    assert executors.acquire() is first                  # no new threads for the next job
    journal = FileJournal(tmp_path)
    hung = first.execute(Hang("hung", journal, seconds=1.0), {})
    assert journal.wait_for("started:hung")
    first.interrupt(hung, kill=True)
    executors.release(first)                             # a straggler: not handed out again
    second = executors.acquire()
    assert second is not first and not first.idle
    assert hung.result(5) == "woke"
    executors.release(second)
    executors.shutdown()
    assert not second.idle                               # shut down with the conductor
    executors.release(executors.acquire())               # a job ending after the stop
    assert executors.acquire() is not second


class _Gate(Task):
    """Says it started, then waits for the test's go (at most 10 s)."""

    def __init__(self, name: str, go: threading.Event) -> None:
        super().__init__(name)
        self.go = go
        self.started = threading.Event()

    def execute(self) -> str:
        self.started.set()
        self.go.wait(10)
        return self.name


def test_a_thread_pool_keeps_its_width_across_jobs_after_a_queue_and_a_kill():
    """More calls than threads (one queued) must not leave the pool counting
    a thread as idle that it does not have: the next job's kill then starts
    no replacement, and its next call waits behind a hung one."""
    executor = ThreadExecutor(2)
    go = threading.Event()
    first = [_Gate(f"a{n}", go) for n in range(3)]
    futures = [executor.execute(task, {}) for task in first]
    assert first[0].started.wait(5) and first[1].started.wait(5)
    go.set()
    assert [f.result(5) for f in futures] == ["a0", "a1", "a2"]
    assert wait_until(lambda: executor.idle, 5)
    hold = threading.Event()
    hung = [_Gate(f"h{n}", hold) for n in range(2)]
    running = [executor.execute(task, {}) for task in hung]
    assert all(task.started.wait(5) for task in hung)
    executor.interrupt(running[0], kill=True)
    assert executor.execute(Noop("next"), {}).result(5) is None   # the width is kept
    hold.set()
    assert [f.result(5) for f in running] == ["h0", "h1"]
    executor.shutdown()


def test_process_task_locks_are_held_by_the_parent_while_it_runs(processes, tmp_path):
    locker = RecordingLocker()
    journal = FileJournal(tmp_path)
    future = processes.execute(LockedTask(Wait("wait", journal), locker, ["volume/v1"]), {})
    assert journal.wait_for("started:wait", 30)
    assert locker.held == {"volume/v1"}
    (tmp_path / "go").touch()
    assert future.result(30) == "released"
    assert wait_until(lambda: locker.calls[-1:] == [("exit", ("volume/v1",))], 5)
    assert locker.held == set()


def test_one_process_executor_shared_by_concurrent_callers(processes):
    results: list = []

    def caller(tag: str) -> None:
        futures = [processes.execute(Echo(f"{tag}{i}"), {"value": f"{tag}{i}"})
                   for i in range(5)]
        results.extend(f.result(30)["value"] for f in futures)

    threads = [threading.Thread(target=caller, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == sorted(f"{t}{i}" for t in "ab" for i in range(5))


def test_shutdown_without_wait_kills_running_workers(tmp_path):
    executor = ProcessExecutor(1)
    journal = FileJournal(tmp_path)
    hung = executor.execute(Hang("hung", journal), {})
    assert journal.wait_for("started:hung", 30)
    pid = int(journal.value("pid").split(":")[1])
    started = time.monotonic()
    executor.shutdown(wait=False)
    assert isinstance(hung.exception(10), TaskInterrupted)
    assert wait_until(lambda: gone(pid), 5) and time.monotonic() - started < 10


def test_heartbeat_outside_a_call_is_a_no_op_and_bad_values_are_refused():
    task = Noop("idle")
    task.heartbeat(progress=5, note=object())     # no call: nothing checked, nothing sent
    assert task.cancelled is False

    class Bad(Noop):
        def execute(self):
            self.heartbeat(progress=1.5)

    error = SerialExecutor().execute(Bad("bad"), {}).exception()
    assert isinstance(error, InvalidArgument) and "0..1" in str(error)


def test_a_kill_never_lands_on_the_next_call_of_the_same_worker():
    """Race: interrupt(kill) of a call that is just finishing must not kill the
    worker once it runs the next call. Before the check-and-kill was atomic
    with the slot's switch, about 1 in 20 of the innocent calls here died."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)              # interleave the two threads finely
    executor = ProcessExecutor(1, start_method="forkserver")   # cheap respawns
    try:
        executor.execute(Noop("warm"), {}).result(30)
        outcomes: list = []
        for i in range(100):
            finishing = executor.execute(Echo(f"a{i}"), {"value": i})
            innocent = executor.execute(Echo(f"b{i}"), {"value": i})
            assert wait_until(lambda: finishing.running() or finishing.done(), 30)
            executor.interrupt(finishing, kill=True)
            error = innocent.exception(30)
            outcomes.append(type(error).__name__ if error else innocent.result()["value"])
            finishing.exception(30)          # its own outcome: a result or TaskInterrupted
        assert outcomes == list(range(100))
    finally:
        sys.setswitchinterval(switch)
        executor.shutdown(wait=False)


def test_a_kill_while_the_worker_starts_stops_the_call_before_it_is_sent(tmp_path):
    """interrupt(kill=True) while the slot spawns its worker (no slot on the
    call yet) is remembered: the task is never sent, fails TaskInterrupted,
    and the fresh worker is kept. It used to be sent and only asked politely,
    so this task (which ignores that) ran on."""
    with ProcessExecutor(1) as executor:    # no worker yet: the first call spawns one
        journal = FileJournal(tmp_path)
        hung = executor.execute(Hang("hung", journal), {})
        assert wait_until(lambda: hung.running() or hung.done(), 10, interval=0.001)
        assert executor.interrupt(hung, kill=True)
        error = hung.exception(30)
        assert isinstance(error, TaskInterrupted)
        assert "before it started" in str(error) and "killed" in str(error)
        pid = executor.execute(Pid("pid"), {}).result(30)   # the worker it spawned serves on
        assert executor.pids == [pid]
        assert "started:hung" not in journal.entries


def test_a_task_lock_timeout_fails_the_call_with_it_and_keeps_the_worker(board):
    """The locker's own error (here a real ZooKeeper LockTimeout) is the call's
    outcome, not a generic EngineError, and the idle worker is not killed."""
    from jobboard.locks import Locks

    holder = Locks(board.client, root="/locks", identifier="holder")
    contender = Locks(board.client, root="/locks", identifier="contender")

    @contextmanager
    def locker(names):                       # as the conductor's: takes them when entered
        with contender.acquire_all(list(names), timeout=0.2) as group:
            yield group

    with ProcessExecutor(1) as executor:
        pid = executor.execute(Pid("warm"), {}).result(30)
        with holder.mutex("volume/v1", timeout=5):
            error = executor.execute(LockedTask(Pid("locked"), locker, ["volume/v1"]),
                                     {}).exception(30)
        assert type(error) is LockTimeout and error.name == "volume/v1"
        assert executor.pids == [pid]
        assert executor.execute(LockedTask(Pid("free"), locker, ["volume/v1"]),
                                {}).result(30) == pid


class _OldStyleExecutor(SerialExecutor):
    """An executor from before observers: ``execute`` takes no ``observer``."""

    def execute(self, task, arguments):
        return super().execute(task, arguments)


class _UnhashableCall:
    """A callable object that cannot be hashed (it defines ``__eq__``)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __eq__(self, other) -> bool:
        return isinstance(other, _UnhashableCall) and other.inner == self.inner

    def __call__(self, task, arguments, *, observer=None):
        return self.inner(task, arguments, observer=observer)


@pytest.mark.parametrize("kind", ["old-style", "unhashable execute"])
def test_the_engine_runs_tasks_on_any_executors_execute(book, kind):
    """Whether ``execute`` takes ``observer=`` is read once per method; an
    executor from before observers, or whose ``execute`` is a callable object
    that cannot be hashed, still runs every task."""
    executor = _OldStyleExecutor() if kind == "old-style" else SerialExecutor()
    if kind == "unhashable execute":
        executor.execute = _UnhashableCall(executor.execute)
    journal = Journal()
    flow = flows.linear("f", Step("a", journal), Step("b", journal))
    for job in ("job-1", "job-2"):
        assert make_engine(flow, book, job_id=job, executor=executor).run().state \
            is FlowState.SUCCESS
    assert journal.count("execute:a") == 2 and journal.count("execute:b") == 2
