"""Engine: ordering of each flow kind, parallelism, data passing, validation,
flow factories."""

from __future__ import annotations

import threading

import pytest

from flows_for_tests import Add, Journal, Step, make_engine
from jobboard import Task, flows, task
from jobboard.engine import Engine, SerialExecutor, ThreadExecutor, build_flow, resolve_factory
from jobboard.errors import FactoryNotAllowed, FactoryNotFound, FlowInvalid
from jobboard.states import AtomState, FlowState


def test_linear_runs_in_order(book):
    j = Journal()
    flow = flows.linear("lin", *[Step(n, j) for n in "abcd"])
    outcome = make_engine(flow, book, executor=ThreadExecutor(width=4)).run()
    assert outcome.state == FlowState.SUCCESS
    assert j.of("execute") == ["a", "b", "c", "d"]
    detail = book.load_flow("job-1")
    assert detail.state == FlowState.SUCCESS
    assert {a.state for a in detail.atoms.values()} == {AtomState.SUCCESS}
    assert all(a.attempts == 1 for a in detail.atoms.values())


def test_unordered_tasks_overlap(book):
    barrier = threading.Barrier(2, timeout=5)

    class Meet(Task):
        def execute(self) -> str:
            barrier.wait()          # BrokenBarrierError unless both run at once
            return self.name

    flow = flows.unordered("par", Meet("m1", provides="r1"), Meet("m2", provides="r2"))
    outcome = make_engine(flow, book, executor=ThreadExecutor(width=2)).run()
    assert outcome.state == FlowState.SUCCESS, outcome.failure
    assert outcome.results == {"r1": "m1", "r2": "m2"}


def test_unordered_runs_serially_with_serial_executor(book):
    barrier = threading.Barrier(2, timeout=0.2)

    class Meet(Task):
        def execute(self) -> None:
            barrier.wait()

    flow = flows.unordered("par", Meet("m1"), Meet("m2"))
    outcome = make_engine(flow, book, executor=SerialExecutor()).run()
    assert outcome.state == FlowState.REVERTED
    assert "BrokenBarrierError" in outcome.failure.exc_type


def test_graph_passes_data_and_orders_by_it(book):
    j = Journal()

    class Mul(Task):
        def execute(self, total: int, factor: int = 10) -> int:
            j.add(f"execute:{self.name}")
            return total * factor

    class Value(Task):
        def __init__(self, name: str, value: int, **kw) -> None:
            super().__init__(name, **kw)
            self.value = value

        def execute(self) -> int:
            j.add(f"execute:{self.name}")
            return self.value

    # Declared consumers first: the data edges must reorder them.
    flow = flows.graph("g", Mul("mul", provides="product"),
                       Add("add", provides="total"),
                       Value("x", 2, provides="x"), Value("y", 3, provides="y"))
    outcome = make_engine(flow, book, executor=ThreadExecutor(width=4)).run()
    assert outcome.state == FlowState.SUCCESS, outcome.failure
    assert outcome.results == {"x": 2, "y": 3, "total": 5, "product": 50}
    order = j.of("execute")
    assert set(order[:2]) == {"x", "y"} and order[2] == "mul"   # Add does not journal


def test_graph_explicit_edges_and_nesting(book):
    j = Journal()
    flow = flows.linear(
        "outer",
        flows.graph("g", Step("late", j), Step("early", j), edges=[("early", "late")]),
        flows.unordered("u", Step("u1", j), Step("u2", j)),
        Step("last", j))
    assert make_engine(flow, book, executor=ThreadExecutor(width=4)).run().ok
    order = j.of("execute")
    assert order[:2] == ["early", "late"]
    assert set(order[2:4]) == {"u1", "u2"} and order[4] == "last"


def test_provides_unpacking_rebind_optional_inject(book):
    class Pair(Task):
        def execute(self):
            return [1, 2]

    class Named(Task):
        def execute(self):
            return {"p": "P", "q": "Q", "extra": 0}

    seen = {}

    class Use(Task):
        def execute(self, first, second, label="none", const=None):
            seen.update(first=first, second=second, label=label, const=const)
            return first + second

    flow = flows.linear("u", Pair("pair", provides=["a", "b"]),
                        Named("named", provides=("p", "q")),
                        Use("use", rebind={"first": "a", "second": "b"}, inject={"const": 7},
                            provides="sum"))
    outcome = make_engine(flow, book, store={"label": "L"}).run()
    assert outcome.ok, outcome.failure
    assert seen == {"first": 1, "second": 2, "label": "L", "const": 7}
    assert outcome.results == {"a": 1, "b": 2, "p": "P", "q": "Q", "sum": 3}


def test_result_not_matching_provides_fails_the_task(book):
    class One(Task):
        def execute(self):
            return 1

    outcome = make_engine(flows.linear("f", One("one", provides=["a", "b"])), book).run()
    assert outcome.state == FlowState.REVERTED
    assert "provides" in outcome.failure.message


def test_task_decorator(book):
    @task(provides="greeting")
    def greet(name: str, punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"

    assert isinstance(greet, Task) and greet.name == "greet"
    assert greet.requires == {"name"}
    flow = flows.linear("f", greet, greet.copy(name="greet2").copy())
    with pytest.raises(FlowInvalid, match="duplicate task name 'greet'"):
        flows.linear("f", greet, greet)
    outcome = make_engine(flows.linear("f", greet), book, store={"name": "bob"}).run()
    assert outcome.results == {"greeting": "hello bob!"}
    assert len(flow) == 2


def test_requires_inferred_from_signature():
    class T(Task):
        def execute(self, a, b, c=1):
            pass

    t = T(rebind={"b": "bee"})
    assert t.name == "T"
    assert t.requirements == {"a": "a", "b": "bee"} and t.optional == {"c": "c"}
    with pytest.raises(FlowInvalid, match="'zzz' is not a parameter"):
        T(rebind={"zzz": "q"})


# -- validation ------------------------------------------------------------------

def test_cycle_rejected_naming_tasks():
    j = Journal()
    with pytest.raises(FlowInvalid, match="cycle: a -> b -> a"):
        flows.graph("g", Step("a", j), Step("b", j), edges=[("a", "b"), ("b", "a")])

    class NeedsY(Task):
        def execute(self, y):
            return 1

    class NeedsX(Task):
        def execute(self, x):
            return 2

    with pytest.raises(FlowInvalid, match="cycle") as err:
        flows.graph("data", NeedsY("p", provides="x"), NeedsX("q", provides="y"))
    assert "p" in str(err.value) and "q" in str(err.value)


def test_missing_input_rejected(book):
    flow = flows.linear("f", Add("add", provides="sum"))
    with pytest.raises(FlowInvalid, match="'add' requires 'y'"):
        Engine(flow, journal=book, job_id="j", token=1, store={"x": 1})
    Engine(flow, journal=book, job_id="j", token=1, store={"x": 1, "y": 2})  # fine


def test_input_from_a_later_task_is_missing():
    j = Journal()
    flow = flows.linear("f", Add("add"), Step("later", j, provides="x"), Step("y", j, provides="y"))
    with pytest.raises(FlowInvalid, match="'add' requires 'x'"):
        from jobboard.engine import compile_flow
        compile_flow(flow, store_keys=())


def test_duplicate_names_anywhere_rejected():
    j = Journal()
    with pytest.raises(FlowInvalid, match="duplicate task name 'a'"):
        flows.linear("f", Step("a", j), flows.unordered("u", Step("b", j),
                                                         flows.linear("deep", Step("a", j))))


def test_unordered_same_provides_rejected():
    j = Journal()
    with pytest.raises(FlowInvalid, match="'a' and 'b' both provide 'x'"):
        flows.unordered("u", Step("a", j, provides="x"), Step("b", j, provides="x"))


def test_graph_edge_to_unknown_task_rejected():
    j = Journal()
    with pytest.raises(FlowInvalid, match="'ghost'"):
        flows.graph("g", Step("a", j), edges=[("a", "ghost")])


# -- factories -------------------------------------------------------------------

def test_factory_allowed_builds_flow():
    from flows_for_tests import JOURNALS

    JOURNALS["f"] = Journal()
    flow = build_flow("flows_for_tests:five_steps", {"journal": "f"}, allowed=("flows_for_tests",))
    assert flow.name == "five" and len(flow) == 5
    assert callable(resolve_factory("flows_for_tests:five_steps", ["flows_for_tests."]))


def test_factory_outside_allowed_prefixes_refused():
    with pytest.raises(FactoryNotAllowed):
        resolve_factory("flows_for_tests:five_steps", allowed=("myapp",))
    # A prefix matches whole dotted components only.
    with pytest.raises(FactoryNotAllowed):
        resolve_factory("flows_for_tests:five_steps", allowed=("flows_for",))
    with pytest.raises(FactoryNotAllowed):
        resolve_factory("os:system", allowed=("flows_for_tests",))


def test_unknown_or_malformed_factory_refused():
    with pytest.raises(FactoryNotFound, match="no module"):
        resolve_factory("flows_for_tests_nope.x:f", allowed=("flows_for_tests_nope",))
    with pytest.raises(FactoryNotFound, match="no attribute"):
        resolve_factory("flows_for_tests:missing", allowed=("flows_for_tests",))
    for bad in ("flows_for_tests", "a:b:c", ":f", "x.:f", ""):
        with pytest.raises(FactoryNotFound):
            resolve_factory(bad, allowed=("flows_for_tests",))


def test_factory_raising_or_returning_junk_is_flow_invalid():
    with pytest.raises(FlowInvalid, match="cannot build") as err:
        build_flow("flows_for_tests:broken_factory", {}, allowed=("flows_for_tests",))
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(FlowInvalid, match="not a flow"):
        build_flow("flows_for_tests:not_a_flow", None, allowed=("flows_for_tests",))
