"""Engine: cancellation, fencing (StaleOwner), locks and events."""

from __future__ import annotations

import threading

import pytest

from flows_for_tests import Journal, RecordingLocker, Step, make_engine
from jobboard import Task, flows
from jobboard.engine import ThreadExecutor
from jobboard.errors import FlowInvalid
from jobboard.events import EventKind, Notifier
from jobboard.states import AtomState, FlowState


def on(kind: EventKind, task: str, action) -> Notifier:
    notifier = Notifier()
    notifier.subscribe(lambda e: action() if (e.kind, e.task) == (kind, task) else None)
    return notifier


def test_cancel_between_tasks_leaves_flow_resumable(book):
    j = Journal()

    def flow():
        return flows.linear("f", Step("a", j), Step("b", j), Step("c", j))
    holder = {}
    notifier = on(EventKind.TASK_SUCCEEDED, "a", lambda: holder["engine"].cancel())
    engine = holder["engine"] = make_engine(flow(), book, notifier=notifier)
    outcome = engine.run()
    assert outcome.state == FlowState.CANCELLED and not outcome.fenced
    assert j.entries == ["execute:a"]
    detail = book.load_flow("job-1")
    assert detail.state == FlowState.RUNNING
    assert detail.atoms["a"].state == AtomState.SUCCESS
    assert detail.atoms["b"].state == AtomState.PENDING

    assert make_engine(flow(), book, token=2).run().state == FlowState.SUCCESS
    assert j.entries == ["execute:a", "execute:b", "execute:c"]


def test_cancel_from_another_thread_lets_the_running_task_finish(book):
    j = Journal()
    started, release = threading.Event(), threading.Event()

    class Wait(Task):
        def execute(self):
            started.set()
            assert release.wait(5)
            j.add("execute:wait")
            return "done"

    flow = flows.linear("f", Wait("wait", provides="w"), Step("next", j))
    engine = make_engine(flow, book, executor=ThreadExecutor(width=2))
    result = {}
    runner = threading.Thread(target=lambda: result.update(outcome=engine.run()))
    runner.start()
    assert started.wait(5)
    engine.cancel()
    release.set()
    runner.join(10)
    assert not runner.is_alive()
    outcome = result["outcome"]
    assert outcome.state == FlowState.CANCELLED
    assert outcome.results == {"w": "done"}
    assert j.entries == ["execute:wait"]
    assert book.load_flow("job-1").atoms["wait"].state == AtomState.SUCCESS


def test_cancel_with_revert_undoes_completed_work(book):
    j = Journal()
    holder = {}
    notifier = on(EventKind.TASK_SUCCEEDED, "b", lambda: holder["engine"].cancel(revert=True))
    flow = flows.linear("f", Step("a", j), Step("b", j), Step("c", j))
    engine = holder["engine"] = make_engine(flow, book, notifier=notifier)
    outcome = engine.run()
    assert outcome.state == FlowState.CANCELLED and outcome.reverted
    assert j.entries == ["execute:a", "execute:b", "revert:b", "revert:a"]
    detail = book.load_flow("job-1")
    assert detail.state == FlowState.CANCELLED
    assert detail.atoms["a"].state == AtomState.REVERTED


def test_stale_owner_stops_the_engine_at_once(book):
    j = Journal()

    class Usurped(Task):
        def execute(self):
            # A newer conductor takes the job over while this task runs.
            book.take_over("job-1", 5, "newer")
            j.add("execute:usurped")
            return 1

    events: list = []
    notifier = Notifier()
    notifier.subscribe(events.append)
    flow = flows.linear("f", Step("a", j), Usurped("usurped"), Step("c", j))
    outcome = make_engine(flow, book, notifier=notifier).run()
    assert outcome.state == FlowState.CANCELLED and outcome.fenced
    assert j.entries == ["execute:a", "execute:usurped"]
    detail = book.load_flow("job-1")
    assert detail.state == FlowState.RUNNING
    assert detail.atoms["usurped"].state == AtomState.RUNNING     # its SUCCESS was refused
    assert detail.atoms["c"].state == AtomState.PENDING
    assert events[-1].kind == EventKind.FLOW_CANCELLED and events[-1].details["fenced"]


def test_older_token_is_fenced_before_running_anything(book):
    j = Journal()
    book.take_over("job-1", 9, "newer")
    outcome = make_engine(flows.linear("f", Step("a", j)), book, token=3).run()
    assert outcome.fenced and j.entries == []
    assert book.load_flow("job-1") is None


def test_locks_are_rendered_and_held_around_tasks_and_flows(book):
    locker = RecordingLocker()
    held_during: dict[str, set[str]] = {}

    class Attach(Task):
        def execute(self, volume_id, server_id):
            held_during[self.name] = set(locker.held)
            return f"{volume_id}@{server_id}"

    flow = flows.linear(
        "f", Attach("attach", provides="attachment", locks=["volume/{volume_id}"]),
        flows.linear("inner", Step("s", Journal()), locks=["server/{server_id}/{attachment}"]),
        locks=["region/{region}"])
    outcome = make_engine(flow, book, locker=locker,
                          store={"volume_id": "v1", "server_id": "s1", "region": "r1"}).run()
    assert outcome.ok
    assert held_during["attach"] == {"region/r1", "volume/v1"}
    assert locker.calls == [
        ("enter", ("region/r1",)), ("enter", ("volume/v1",)), ("exit", ("volume/v1",)),
        ("enter", ("server/s1/v1@s1",)),
        ("exit", ("server/s1/v1@s1",)), ("exit", ("region/r1",))]
    assert locker.held == set()


def test_locks_released_when_task_fails_and_during_revert(book):
    locker = RecordingLocker()
    j = Journal()
    flow = flows.linear("f", Step("a", j, locks=["a/{key}"]),
                        Step("b", j, fail=RuntimeError("x"), locks=["b/{key}"]))
    outcome = make_engine(flow, book, locker=locker, store={"key": "k"}).run()
    assert outcome.state == FlowState.REVERTED
    enters = [names for op, names in locker.calls if op == "enter"]
    exits = [names for op, names in locker.calls if op == "exit"]
    assert enters == [("a/k",), ("b/k",), ("b/k",), ("a/k",)]     # execute a, b; revert b, a
    assert sorted(enters) == sorted(exits) and locker.held == set()


def test_locks_released_when_the_engine_crashes(book):
    from flows_for_tests import Crash

    locker = RecordingLocker()
    notifier = Notifier()

    def crash(event):
        if event.kind == EventKind.TASK_SUCCEEDED:
            raise Crash()
    notifier.subscribe(crash)
    flow = flows.linear("f", Step("a", Journal()), locks=["flow/{key}"])
    with pytest.raises(Crash):
        make_engine(flow, book, locker=locker, store={"key": "k"}, notifier=notifier).run()
    assert locker.calls[-1] == ("exit", ("flow/k",)) and locker.held == set()


def test_unfillable_task_lock_fails_the_task(book):
    j = Journal()
    flow = flows.linear("f", Step("a", j, locks=["x/{nope}"]))
    outcome = make_engine(flow, book, locker=RecordingLocker()).run()
    assert outcome.state == FlowState.REVERTED
    assert "nope" in outcome.failure.message and j.entries == []


def test_events_at_every_checkpoint(book):
    events: list = []
    notifier = Notifier()
    notifier.subscribe(lambda e: events.append((e.kind, e.task)))
    j = Journal()
    flow = flows.linear("f", Step("a", j), Step("b", j, fail=ValueError("no")))
    make_engine(flow, book, notifier=notifier).run()
    assert events == [
        (EventKind.FLOW_STARTED, None),
        (EventKind.TASK_STARTED, "a"), (EventKind.TASK_SUCCEEDED, "a"),
        (EventKind.TASK_STARTED, "b"), (EventKind.TASK_FAILED, "b"),
        (EventKind.TASK_REVERTING, "b"), (EventKind.TASK_REVERTED, "b"),
        (EventKind.TASK_REVERTING, "a"), (EventKind.TASK_REVERTED, "a"),
        (EventKind.FLOW_REVERTED, None)]


def test_engine_runs_once(book):
    engine = make_engine(flows.linear("f", Step("a", Journal())), book)
    engine.run()
    with pytest.raises(Exception, match="runs once"):
        engine.run()


def test_flow_invalid_is_an_engine_error():
    from jobboard.errors import EngineError
    assert issubclass(FlowInvalid, EngineError)


def test_gate_is_called_before_each_task_and_cancel_in_it_is_honoured(book):
    j = Journal()
    calls = []
    holder = {}

    def gate():
        calls.append(len(j.entries))
        if len(calls) == 2:
            holder["engine"].cancel()       # e.g. the session was lost while suspended

    flow = flows.linear("f", Step("a", j), Step("b", j), Step("c", j))
    engine = holder["engine"] = make_engine(flow, book, gate=gate)
    outcome = engine.run()
    assert calls == [0, 1]
    assert outcome.state == FlowState.CANCELLED and j.entries == ["execute:a"]
