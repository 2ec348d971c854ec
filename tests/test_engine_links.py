"""Engine: conditional links (``graph.link(a, b, decider=fn)``) on real
SQLite and PostgreSQL logbooks: skipped branches are IGNORE, recorded, and
stay skipped on resume (crash at every checkpoint, and kill -9 mid-branch)."""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from flows_for_tests import Crash, Journal, Step, branches, make_engine, read_lines
from jobboard import flows
from jobboard.errors import FlowInvalid
from jobboard.events import EventKind, Notifier
from jobboard.states import AtomState, FlowState
from test_engine_controllers import run_child


def _graph(j: Journal, answer: bool, depth: str = "all") -> flows.GraphFlow:
    g = flows.graph("g", Step("a", j, value=7, provides="x"), Step("b", j), Step("c", j),
                    Step("d", j), edges=[("b", "c")])
    g.link("a", "b", decider=lambda history: answer and history == {"a": 7}, depth=depth)
    g.link("c", "d")
    return g


def test_a_decider_saying_no_skips_the_branch_and_everything_after_it(logbook):
    j = Journal()
    skipped: list = []
    notifier = Notifier()
    notifier.subscribe(lambda e: skipped.append(e.task)
                       if e.kind == EventKind.TASK_SKIPPED else None)
    outcome = make_engine(_graph(j, False), logbook, notifier=notifier).run()
    assert outcome.state == FlowState.SUCCESS
    assert outcome.results == {"x": 7}
    assert j.entries == ["execute:a"]
    atoms = logbook.load_flow("job-1").atoms
    assert {n: a.state for n, a in atoms.items()} == {
        "a": AtomState.SUCCESS, "b": AtomState.IGNORE, "c": AtomState.IGNORE,
        "d": AtomState.IGNORE}
    assert atoms["b"].meta["ignored_by"] == "a -> b"
    assert sorted(skipped) == ["b", "c", "d"]


def test_a_decider_saying_yes_runs_the_branch_with_the_results_before_it(logbook):
    j = Journal()
    outcome = make_engine(_graph(j, True), logbook).run()
    assert outcome.ok
    assert j.entries == ["execute:a", "execute:b", "execute:c", "execute:d"]


def test_depth_atom_skips_only_the_target(logbook):
    j = Journal()
    outcome = make_engine(_graph(j, False, depth="atom"), logbook).run()
    assert outcome.ok
    assert j.entries == ["execute:a", "execute:c", "execute:d"]
    assert logbook.load_flow("job-1").atoms["b"].state == AtomState.IGNORE


def test_a_skipped_nested_flow_is_ignored_whole_and_not_reverted(logbook):
    j = Journal()
    g = flows.graph("g", Step("a", j), flows.linear("sub", Step("s1", j), Step("s2", j)),
                    Step("z", j, fail=RuntimeError("z broke")))
    g.link("a", "sub", decider=lambda history: False)
    g.link("a", "z")
    outcome = make_engine(g, logbook).run()
    assert outcome.state == FlowState.REVERTED
    assert j.entries == ["execute:a", "execute:z", "revert:z", "revert:a"]
    atoms = logbook.load_flow("job-1").atoms
    assert atoms["s1"].state == atoms["s2"].state == AtomState.IGNORE


def test_a_decider_that_raises_fails_its_branch(logbook):
    j = Journal()
    g = flows.graph("g", Step("a", j), Step("b", j))
    g.link("a", "b", decider=lambda history: 1 / 0)
    outcome = make_engine(g, logbook).run()
    assert outcome.state == FlowState.REVERTED
    assert outcome.failure.exc_type == "builtins.ZeroDivisionError"
    assert j.entries == ["execute:a", "revert:a"]


def test_link_refuses_unknown_names_bad_depths_and_cycles():
    j = Journal()
    g = flows.graph("g", Step("a", j), Step("b", j))
    with pytest.raises(FlowInvalid, match="nope"):
        g.link("a", "nope")
    with pytest.raises(FlowInvalid, match="depth"):
        g.link("a", "b", decider=bool, depth="flow")
    with pytest.raises(FlowInvalid, match="not callable"):
        g.link("a", "b", decider="yes")
    g.link("a", "b")
    with pytest.raises(FlowInvalid, match="cycle"):
        g.link("b", "a")
    assert g.edges == (("a", "b"),)


def test_skipped_tasks_stay_skipped_when_resumed_after_a_crash_at_every_checkpoint(
        logbook, tmp_path, monkeypatch):
    probe = str(tmp_path / "probe")
    kinds: list = []
    notifier = Notifier()
    notifier.subscribe(lambda e: kinds.append(e.kind))
    assert make_engine(branches(probe), logbook, job_id="probe", notifier=notifier).run().ok
    expected = Counter(read_lines(probe))
    assert expected == Counter(["execute:a:-", "execute:b1:-", "execute:b2:-"])
    for k in range(len(kinds)):
        journal = str(tmp_path / f"j{k}")
        job = f"crash-{k}"
        seen: list = []
        crashing = Notifier()

        def crash(event, seen=seen, k=k):
            seen.append(event)
            if len(seen) == k + 1:
                raise Crash(f"at {event.kind} {event.task}")
        crashing.subscribe(crash)
        monkeypatch.delenv("SECOND_RUN", raising=False)
        with pytest.raises(Crash):
            make_engine(branches(journal), logbook, job_id=job, notifier=crashing).run()
        saved = logbook.load_flow(job).atoms
        decided = saved["c1"].state == AtomState.IGNORE
        monkeypatch.setenv("SECOND_RUN", "1")     # the decider would now say yes
        outcome = make_engine(branches(journal), logbook, job_id=job, token=2).run()
        assert outcome.ok, (k, outcome)
        lines = Counter(read_lines(journal))
        if decided:       # recorded before the crash: never asked again
            assert lines == expected, (k, lines)
        else:             # the crash came first: the new answer holds
            assert lines["execute:c1:-"] == 1, (k, lines)
        assert max(lines.values()) == 1, (k, lines)


def test_kill_9_mid_branch_keeps_the_skipped_branch_skipped(logbook, logbook_url, tmp_path):
    journal = str(tmp_path / "journal")
    first = run_child(tmp_path, logbook_url, "killed", 1, "flows_for_tests:branches", journal,
                      {"KILL_AT": "execute:b1:-"})
    assert first.returncode == -signal.SIGKILL, first.stderr
    saved = logbook.load_flow("killed").atoms
    assert saved["b1"].state == AtomState.RUNNING
    assert saved["c1"].state == saved["c2"].state == AtomState.IGNORE
    # The resumed engine's decider would say yes: the recorded IGNORE wins.
    second = run_child(tmp_path, logbook_url, "killed", 2, "flows_for_tests:branches", journal,
                       {"SECOND_RUN": "1"})
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "SUCCESS"
    assert read_lines(journal) == ["execute:a:-", "execute:b1:-", "execute:b1:-",
                                   "execute:b2:-"]
    atoms = logbook.load_flow("killed").atoms
    assert atoms["c1"].state == atoms["c2"].state == AtomState.IGNORE
    assert atoms["b2"].state == AtomState.SUCCESS


def test_a_decider_failing_in_a_dropped_start_leaves_nothing_in_the_resumed_run(logbook):
    """An engine told the job is new prepares a new flow's start, where a
    decider whose link has nothing before it is asked at once. The journal
    holds a flow all the same (b succeeded, c was running): the start is
    dropped, and so is the failure of that decider (it raises only then);
    the run resumes, b stays done and c runs."""
    j = Journal()
    calls: list = []

    def decider(history):
        calls.append(history)
        if len(calls) == 2:
            raise ZeroDivisionError("asked in the dropped start")
        return True

    g = flows.graph("g", flows.linear("nothing"), Step("b", j), Step("c", j))
    g.link("nothing", "b", decider=decider)
    g.link("b", "c")
    dying = Notifier()

    def die_in_c(event) -> None:
        if event.kind == EventKind.TASK_STARTED and event.task == "c":
            raise Crash("died in c")
    dying.subscribe(die_in_c)
    with pytest.raises(Crash):
        make_engine(g, logbook, new=True, notifier=dying).run()
    outcome = make_engine(g, logbook, token=2, new=True).run()
    assert len(calls) == 2                      # the second call raised
    assert outcome.state == FlowState.SUCCESS, outcome.failure
    assert j.entries == ["execute:b", "execute:c"]
