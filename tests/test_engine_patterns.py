"""Engine: the flow pattern interface (``Flow.links``/``revert_links``), used
by the built-in patterns and by a third-party pattern (``Reversed`` in
flows_for_tests), which also runs under a conductor process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet_processes import ConductorProcess
from flows_for_tests import FileStep, Journal, Reversed, Step, make_engine, read_lines
from jobboard import flows
from jobboard.board import Board
from jobboard.engine import compile_flow
from jobboard.engine.flows import Flow, Link
from jobboard.errors import FlowInvalid
from jobboard.logbook import Logbook
from jobboard.states import AtomState, FlowState

TESTS = Path(__file__).parent


def test_built_in_patterns_order_their_items_through_links():
    j = Journal()
    linear = flows.linear("l", Step("a", j), Step("b", j), Step("c", j))
    assert list(linear.links()) == [Link("a", "b"), Link("b", "c")]
    assert list(flows.unordered("u", Step("a", j), Step("b", j)).links()) == []
    graph = flows.graph("g", Step("p", j, provides="x"), Step("q", j, requires=["x"]),
                        Step("r", j), edges=[("r", "p")])
    assert list(graph.links()) == [Link("p", "q"), Link("r", "p")]
    assert compile_flow(graph).order == ["r", "p", "q"]


def test_a_pattern_without_links_is_refused():
    class Shapeless(Flow):
        pass
    with pytest.raises(FlowInvalid, match="links"):
        Shapeless("s", Step("a", Journal()))


def test_a_link_naming_something_outside_the_flow_is_refused():
    class Wrong(Flow):
        def links(self):
            return [Link("a", "elsewhere")]
    with pytest.raises(FlowInvalid, match="elsewhere"):
        make_engine(Wrong("w", Step("a", Journal())), None)


def test_a_third_party_pattern_runs_and_reverts_through_the_interface(logbook, tmp_path):
    class Boom(FileStep):
        def execute(self) -> str:
            super().execute()
            raise RuntimeError("boom")

    journal = str(tmp_path / "journal")
    flow = flows.linear("f", Reversed("rev", *[FileStep(n, journal) for n in "abc"]),
                        Boom("boom", journal))
    outcome = make_engine(flow, logbook).run()
    assert outcome.state == FlowState.REVERTED
    assert read_lines(journal) == ["execute:c:-", "execute:b:-", "execute:a:-",
                                   "execute:boom:-", "revert:boom:-", "revert:a:-", "revert:b:-", "revert:c:-"]


def test_revert_links_order_reverts_beyond_the_forward_order(logbook):
    class AllAtOnce(Flow):
        """Unordered forward; reverts ``items[0]`` last."""

        def links(self):
            return ()

        def revert_links(self):
            return [(item.name, self.items[0].name) for item in self.items[1:]]

    j = Journal()
    flow = flows.linear("f", AllAtOnce("all", Step("first", j), Step("x", j), Step("y", j)),
                        Step("bad", j, fail=RuntimeError("no")))
    outcome = make_engine(flow, logbook).run()
    assert outcome.state == FlowState.REVERTED
    reverts = j.of("revert")
    assert reverts[0] == "bad" and reverts[-1] == "first"


def test_a_retry_scope_is_linked_as_one_unit():
    """A graph link to a task inside a scope with a controller starts after
    the whole scope (it may be run again)."""
    from jobboard.engine.controllers import Times
    j = Journal()
    g = flows.graph("g", flows.linear("sub", Step("s1", j, provides="v"), Step("s2", j),
                                      retry=Times(2)),
                    Step("user", j, requires=["v"]))
    c = compile_flow(g)
    assert c.preds["user"] == {"s2"}
    assert c.preds["s1"] == {"sub:retry"}


def test_a_third_party_pattern_runs_under_a_conductor(zk_hosts, logbook_url, tmp_path):
    journal = str(tmp_path / "journal")
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    conductor = ConductorProcess("c1", zk=zk_hosts, root="/patterns", logbook=logbook_url,
                                 log_dir=tmp_path, extra=["--allow", "flows_for_tests"],
                                 env=env)
    try:
        with Board.connect(zk_hosts, root="/patterns") as board:
            job = board.post("flows_for_tests:reversed_chain", args={"journal": journal})
            outcome = board.wait(job.uuid, timeout=60)
        assert outcome.ok, (outcome, conductor.log())
        assert outcome.results == {"done": "after"}
    finally:
        conductor.stop()
    assert read_lines(journal) == ["execute:c:-", "execute:b:-", "execute:a:-",
                                   "execute:after:-"]
    with Logbook(logbook_url) as book:
        detail = book.load_flow(job.uuid)
    assert detail.state == FlowState.SUCCESS
    assert {a.state for a in detail.atoms.values()} == {AtomState.SUCCESS}
