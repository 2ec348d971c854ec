"""Engine: changed code on resume (``Task.version``, ``on_version_change``)
and tasks added to a flow since the crash, on real SQLite and PostgreSQL
logbooks."""

from __future__ import annotations

import pytest

from flows_for_tests import Crash, Journal, Step, make_engine
from jobboard import flows
from jobboard.engine.journal import AtomDetail
from jobboard.errors import FlowInvalid
from jobboard.events import EventKind, Notifier
from jobboard.states import AtomState, FlowState


def crash_after(task: str) -> Notifier:
    """A listener that dies once ``task`` succeeded (its SUCCESS is saved)."""
    notifier = Notifier()

    def listener(event):
        if event.kind == EventKind.TASK_SUCCEEDED and event.task == task:
            raise Crash(f"after {task}")
    notifier.subscribe(listener)
    return notifier


def first_run(logbook, j: Journal) -> None:
    flow = flows.linear("f", Step("a", j, provides="x"), Step("b", j), Step("c", j))
    with pytest.raises(Crash):
        make_engine(flow, logbook, notifier=crash_after("b")).run()
    atoms = logbook.load_flow("job-1").atoms
    assert {n: (a.state, a.version) for n, a in atoms.items()} == {
        "a": (AtomState.SUCCESS, "1"), "b": (AtomState.SUCCESS, "1"),
        "c": (AtomState.RUNNING, "1")}          # saved with b's SUCCESS, never started


def test_the_version_is_recorded_with_each_atom(logbook):
    class V3(Step):
        version = "3"
    make_engine(flows.linear("f", V3("a", Journal()), Step("b", Journal(), version=7)),
                logbook).run()
    atoms = logbook.load_flow("job-1").atoms
    assert (atoms["a"].version, atoms["b"].version) == ("3", "7")


def test_rerun_runs_a_changed_task_again(logbook):
    j = Journal()
    first_run(logbook, j)
    flow = flows.linear("f", Step("a", j, provides="x", version="2"), Step("b", j),
                        Step("c", j))
    outcome = make_engine(flow, logbook, token=2).run()
    assert outcome.ok and outcome.results == {"x": "a"}
    assert j.entries == ["execute:a", "execute:b", "execute:a", "execute:c"]
    atom = logbook.load_flow("job-1").atoms["a"]
    assert atom.version == "2" and atom.meta["rerun_for_version"] == {"from": "1", "to": "2"}


def test_keep_keeps_the_saved_result(logbook):
    j = Journal()
    first_run(logbook, j)
    flow = flows.linear("f", Step("a", j, provides="x", version="2", on_version_change="keep",
                                  value="new"), Step("b", j), Step("c", j))
    outcome = make_engine(flow, logbook, token=2).run()
    assert outcome.ok and outcome.results == {"x": "a"}       # the saved result
    assert j.entries == ["execute:a", "execute:b", "execute:c"]
    assert logbook.load_flow("job-1").atoms["a"].version == "1"


def test_fail_fails_the_job_with_the_reason_and_runs_nothing(logbook):
    j = Journal()
    first_run(logbook, j)

    class Strict(Step):
        version = "2"
        on_version_change = "fail"
    flow = flows.linear("f", Strict("a", j, provides="x"), Step("b", j), Step("c", j))
    outcome = make_engine(flow, logbook, token=2).run()
    assert outcome.state == FlowState.FAILURE
    assert "'a' is version '2' but its saved result is from version '1'" in \
        outcome.failure.message
    assert j.entries == ["execute:a", "execute:b"]
    detail = logbook.load_flow("job-1")
    assert detail.state == FlowState.FAILURE
    assert "on_version_change='fail'" in detail.meta["error"]
    assert detail.atoms["c"].state == AtomState.RUNNING
    # Finished: a later engine returns the same outcome without running anything.
    again = make_engine(flow, logbook, token=3).run()
    assert again.state == FlowState.FAILURE and j.entries == ["execute:a", "execute:b"]


def test_an_atom_saved_without_a_version_counts_as_version_1(logbook):
    j = Journal()
    logbook.take_over("job-1", 1, "old")
    logbook.save_flow("job-1", "f", FlowState.RUNNING, token=1, atoms=[
        AtomDetail("a", state=AtomState.SUCCESS, result="a", attempts=1)])
    assert logbook.load_flow("job-1").atoms["a"].version is None
    outcome = make_engine(flows.linear("f", Step("a", j, provides="x"), Step("b", j)),
                          logbook, token=2).run()
    assert outcome.ok and j.entries == ["execute:b"]
    j2 = Journal()
    logbook.take_over("job-2", 1, "old")
    logbook.save_flow("job-2", "f", FlowState.RUNNING, token=1, atoms=[
        AtomDetail("a", state=AtomState.SUCCESS, result="a", attempts=1)])
    make_engine(flows.linear("f", Step("a", j2, version="2")), logbook, job_id="job-2",
                token=2).run()
    assert j2.entries == ["execute:a"]


def test_a_task_added_since_the_crash_runs(logbook):
    j = Journal()
    first_run(logbook, j)
    flow = flows.linear("f", Step("a", j, provides="x"), Step("new", j), Step("b", j),
                        Step("c", j), Step("last", j))
    outcome = make_engine(flow, logbook, token=2).run()
    assert outcome.ok
    assert j.entries == ["execute:a", "execute:b", "execute:new", "execute:c", "execute:last"]
    atoms = logbook.load_flow("job-1").atoms
    assert all(a.state == AtomState.SUCCESS for a in atoms.values())
    assert set(atoms) == {"a", "new", "b", "c", "last"}


def test_a_bad_policy_is_refused():
    with pytest.raises(FlowInvalid, match="on_version_change"):
        Step("a", Journal(), on_version_change="maybe")
