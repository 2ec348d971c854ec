"""Engine: time limits, heartbeats, cooperative cancellation and stopping, on
thread and process executors, against a real SQLite logbook."""

from __future__ import annotations

import threading
import time

import pytest

from executor_flows import (Beats, Cooperative, FileJournal, Hang, HangOnce, HangRevert,
                            RaiseBase, Record, Unpicklable)
from jobboard import Retry, flows
from jobboard.engine import Engine, ThreadExecutor
from jobboard.engine.processes import ProcessExecutor
from jobboard.errors import LogbookUnavailable
from jobboard.events import EventKind, Notifier
from jobboard.states import AtomState, FlowState
from jobboard.testing.waiting import wait_until
from test_executors import gone


@pytest.fixture(scope="module")
def processes():
    executor = ProcessExecutor(2)
    yield executor
    executor.shutdown(wait=False)


@pytest.fixture(params=["thread", "process"])
def executor(request, processes):
    if request.param == "process":
        yield processes
    else:
        threads = ThreadExecutor(2)
        yield threads
        threads.shutdown(wait=False)


def engine_for(flow, book, executor, **options) -> Engine:
    return Engine(flow, journal=book, job_id="job-1", token=1, owner="test",
                  executor=executor, **options)


def recording() -> tuple[Notifier, list]:
    notifier, events = Notifier(), []
    notifier.subscribe(events.append)
    return notifier, events


def run_in_thread(engine: Engine) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target() -> None:
        try:
            box["outcome"] = engine.run()
        except BaseException as exc:   # noqa: BLE001 - the test looks at it
            box["error"] = exc
    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def pid_of(journal: FileJournal, name: str) -> int:
    return int(journal.value("pid").split(":")[1]) if name else 0


# -- time limits ---------------------------------------------------------------------

def test_a_hung_task_times_out_and_the_flow_reverts(book, executor, tmp_path):
    journal = FileJournal(tmp_path)
    seconds = 2.0 if isinstance(executor, ThreadExecutor) else 3600
    flow = flows.linear("f", Record("a", journal),
                        Hang("hang", journal, seconds=seconds, timeout=0.5))
    started = time.monotonic()
    engine = engine_for(flow, book, executor, stop_timeout=0.2)
    outcome = engine.run()
    assert time.monotonic() - started < 5              # ~ the limit, not the sleep
    assert outcome.state == FlowState.REVERTED
    assert outcome.failure.exc_type == "jobboard.errors.TaskTimeout"
    assert "'hang'" in outcome.failure.message and "0.5s" in outcome.failure.message
    assert journal.entries[-2:] == ["revert:hang", "revert:a"]
    atom = book.load_flow("job-1").atoms["hang"]
    assert atom.state == AtomState.REVERTED and "TaskTimeout" in atom.failure.exc_type
    if isinstance(executor, ProcessExecutor):
        assert wait_until(lambda: gone(pid_of(journal, "hang")), 5)   # killed
        assert engine.running_tasks == []
    else:
        assert engine.running_tasks == ["hang"]        # a thread straggles, logged
        assert "finished:hang" not in journal.entries


def test_engine_task_timeout_is_the_default_and_a_task_may_set_its_own(book, processes,
                                                                      tmp_path):
    journal = FileJournal(tmp_path)
    flow = flows.linear("f", Hang("patient", journal, seconds=0.8, timeout=20),
                        Hang("default", journal, seconds=3600))
    outcome = engine_for(flow, book, processes, task_timeout=0.4).run()
    assert outcome.state == FlowState.REVERTED
    assert "'default'" in outcome.failure.message and "0.4s" in outcome.failure.message
    assert "finished:patient" in journal.entries


def test_a_timed_out_attempt_is_retried_by_its_policy(book, processes, tmp_path):
    journal = FileJournal(tmp_path)
    notifier, events = recording()
    flow = flows.linear("f", HangOnce("once", journal, provides="out", timeout=0.5,
                                      retry=Retry(3, backoff=0, jitter=False)))
    outcome = engine_for(flow, book, processes, notifier=notifier).run()
    assert outcome.ok and outcome.results == {"out": "attempt 2"}
    retrying = [e for e in events if e.kind == EventKind.TASK_RETRYING]
    assert len(retrying) == 1 and "TaskTimeout" in retrying[0].details["failure"]
    assert book.load_flow("job-1").atoms["once"].attempts == 2


def test_a_hung_revert_times_out_and_fails_the_flow(book, processes, tmp_path):
    journal = FileJournal(tmp_path)
    flow = flows.linear("f", HangRevert("undo", journal, timeout=0.5),
                        Hang("hang", journal, timeout=0.3))
    outcome = engine_for(flow, book, processes).run()
    assert outcome.state == FlowState.FAILURE
    atom = book.load_flow("job-1").atoms["undo"]
    assert atom.state == AtomState.REVERT_FAILURE
    assert "revert exceeded its time limit" in atom.revert_failure.message


# -- heartbeats ----------------------------------------------------------------------

def test_heartbeats_are_saved_rate_limited_and_emitted(book, executor, tmp_path):
    journal = FileJournal(tmp_path)
    notifier, events = recording()
    seen: list = []
    notifier.subscribe(lambda e: seen.append(dict(book.load_flow("job-1").atoms["b"].meta))
                       if e.kind == EventKind.TASK_HEARTBEAT else None)
    flow = flows.linear("f", Beats("b", journal, count=25, pause=0.04))
    outcome = engine_for(flow, book, executor, notifier=notifier,
                         heartbeat_interval=0.3).run()
    assert outcome.ok
    beats = [e for e in events if e.kind == EventKind.TASK_HEARTBEAT]
    assert 2 <= len(beats) <= 6                 # ~1 s of beats every 40 ms, one per 0.3 s
    progress = [e.details["progress"] for e in beats]
    assert progress == sorted(progress) and progress[0] > 0
    assert len(beats[0].details["note"]) == 200 and beats[0].details["note"].startswith("step")
    assert [m["progress"] for m in seen] == progress           # saved before emitted
    assert all(m["heartbeat_at"] > 0 for m in seen)
    meta = book.load_flow("job-1").atoms["b"].meta
    assert "progress" not in meta and "note" not in meta and "heartbeat_at" in meta


# -- cancellation and stopping -------------------------------------------------------

def test_a_cooperative_task_sees_the_cancel_and_heartbeat_raises(book, executor, tmp_path):
    journal = FileJournal(tmp_path)
    flow = flows.linear("f", Cooperative("coop", journal), Record("next", journal))
    engine = engine_for(flow, book, executor, stop_timeout=10)
    thread, box = run_in_thread(engine)
    assert journal.wait_for("started:coop", 30)
    assert engine.running_tasks == ["coop"]
    started = time.monotonic()
    engine.cancel()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5
    outcome = box["outcome"]
    assert outcome.state == FlowState.CANCELLED and not outcome.reverted
    assert "cancelled:coop:True" in journal.entries
    assert "heartbeat-raised:coop:TaskInterrupted" in journal.entries
    assert "execute:next" not in journal.entries
    assert book.load_flow("job-1").atoms["coop"].state == AtomState.RUNNING   # resumable
    assert engine.running_tasks == []


def test_admin_cancel_kills_a_hung_process_task_and_reverts_it(book, processes, tmp_path):
    journal = FileJournal(tmp_path)
    flow = flows.linear("f", Record("a", journal), Hang("hang", journal))
    engine = engine_for(flow, book, processes, stop_timeout=0.5)
    thread, box = run_in_thread(engine)
    assert journal.wait_for("started:hang", 30)
    pid = pid_of(journal, "hang")
    engine.cancel(revert=True)
    thread.join(10)
    assert not thread.is_alive()
    outcome = box["outcome"]
    assert outcome.state == FlowState.CANCELLED and outcome.reverted
    assert wait_until(lambda: gone(pid), 5)
    assert journal.entries[-2:] == ["revert:hang", "revert:a"]
    detail = book.load_flow("job-1")
    assert detail.state == FlowState.CANCELLED
    assert detail.atoms["hang"].state == AtomState.REVERTED
    assert "TaskInterrupted" in detail.atoms["hang"].failure.exc_type


def test_a_claim_lost_cancel_stops_waiting_within_stop_timeout(book, tmp_path):
    journal = FileJournal(tmp_path)
    executor = ThreadExecutor(2)
    flow = flows.linear("f", Hang("hang", journal, seconds=3))
    engine = engine_for(flow, book, executor, stop_timeout=0.3)
    thread, box = run_in_thread(engine)
    assert journal.wait_for("started:hang")
    started = time.monotonic()
    engine.cancel()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 2
    assert box["outcome"].state == FlowState.CANCELLED and not box["outcome"].reverted
    assert engine.running_tasks == ["hang"]                 # the straggling thread
    assert book.load_flow("job-1").atoms["hang"].state == AtomState.RUNNING
    executor.shutdown(wait=False)


def test_a_cancel_during_a_hung_revert_stops_it(book, processes, tmp_path):
    journal = FileJournal(tmp_path)
    flow = flows.linear("f", HangRevert("undo", journal), RaiseBase("boom", "SystemExit"))
    engine = engine_for(flow, book, processes, stop_timeout=0.3)
    thread, box = run_in_thread(engine)
    assert journal.wait_for("reverting:undo", 30)
    pid = pid_of(journal, "undo")
    engine.cancel()
    thread.join(10)
    assert not thread.is_alive()
    assert box["outcome"].state == FlowState.CANCELLED and not box["outcome"].reverted
    assert wait_until(lambda: gone(pid), 5)
    detail = book.load_flow("job-1")
    assert detail.state == FlowState.REVERTING                 # the next owner goes on
    assert detail.atoms["undo"].state == AtomState.REVERTING


class FailingJournal:
    """The real logbook, except that saving a heartbeat of task ``fail_on``
    raises LogbookUnavailable (the database going away mid-run), once
    ``before`` is in the journal."""

    def __init__(self, book, fail_on: str, journal: FileJournal, before: str) -> None:
        self._book = book
        self._fail_on = fail_on
        self._journal = journal
        self._before = before

    def __getattr__(self, name):
        return getattr(self._book, name)

    def save_atoms(self, job_id, atoms, *, token):
        if any(atom.name == self._fail_on and "progress" in atom.meta for atom in atoms):
            assert self._journal.wait_for(self._before, 30)
            raise LogbookUnavailable("database went away")
        return self._book.save_atoms(job_id, atoms, token=token)


def test_process_workers_are_killed_when_run_raises(book, processes, tmp_path):
    journal = FileJournal(tmp_path)
    engine = Engine(flows.unordered("u", Hang("hang", journal),
                                    Beats("beats", journal, count=1000)),
                    journal=FailingJournal(book, "beats", journal, "started:hang"),
                    job_id="job-1", token=1, executor=processes, stop_timeout=0.3)
    with pytest.raises(LogbookUnavailable):
        engine.run()
    assert "done:beats" not in journal.entries        # stopped (cooperatively), not finished
    assert wait_until(lambda: gone(pid_of(journal, "hang")), 5)
    assert wait_until(lambda: engine.running_tasks == [], 5)


# -- tasks that misbehave --------------------------------------------------------------

@pytest.mark.parametrize("error", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_a_base_exception_fails_the_task_and_the_engine_goes_on(book, executor, error):
    outcome = engine_for(flows.linear("f", RaiseBase("raiser", error)), book, executor).run()
    assert outcome.state == FlowState.REVERTED
    assert outcome.failure.exc_type == f"builtins.{error}"


def test_a_task_that_cannot_be_pickled_fails_with_the_reason(book, processes):
    outcome = engine_for(flows.linear("f", Unpicklable("lockholder")), book, processes).run()
    assert outcome.state == FlowState.FAILURE          # its revert could not run either
    assert outcome.failure.exc_type == "jobboard.errors.NotPicklable"
    assert "cannot be pickled" in outcome.failure.message


def test_one_process_executor_serves_two_engines_at_once(tmp_path, processes):
    from jobboard.logbook import Logbook

    boxes = []
    with Logbook(f"sqlite:///{tmp_path}/shared.db") as book:
        engines = [Engine(flows.linear("f", Record("a", FileJournal(tmp_path, f"j{i}")),
                                       Record("b", FileJournal(tmp_path, f"j{i}"))),
                          journal=book, job_id=f"job-{i}", token=1, executor=processes)
                   for i in range(2)]
        runs = [run_in_thread(e) for e in engines]
        for thread, box in runs:
            thread.join(60)
            boxes.append(box)
    assert [b["outcome"].state for b in boxes] == [FlowState.SUCCESS] * 2
