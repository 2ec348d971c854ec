"""Engine: reverting after a failure, and retry policies."""

from __future__ import annotations

import pytest

from flows_for_tests import Flaky, Journal, Step, make_engine
from jobboard import Retry, Task, flows
from jobboard.engine import ThreadExecutor
from jobboard.events import EventKind, Notifier
from jobboard.states import AtomState, FlowState


def test_failure_in_the_middle_reverts_in_reverse_order(book):
    j = Journal()
    flow = flows.linear("f", Step("a", j), Step("b", j), Step("c", j, fail=ValueError("c broke")),
                        Step("d", j))
    outcome = make_engine(flow, book).run()
    assert outcome.state == FlowState.REVERTED
    assert outcome.failure.exc_type == "builtins.ValueError"
    assert outcome.failure.message == "c broke" and "Traceback" in outcome.failure.traceback
    assert j.entries == ["execute:a", "execute:b", "execute:c",
                         "revert:c", "revert:b", "revert:a"]
    detail = book.load_flow("job-1")
    assert detail.state == FlowState.REVERTED
    states = {n: a.state for n, a in detail.atoms.items()}
    assert states == {"a": AtomState.REVERTED, "b": AtomState.REVERTED,
                      "c": AtomState.REVERTED, "d": AtomState.PENDING}
    assert detail.atoms["c"].failure.message == "c broke"


def test_revert_respects_graph_with_parallel_branches(book):
    j = Journal()
    flow = flows.linear(
        "f", Step("root", j),
        flows.unordered("u", Step("x1", j), Step("x2", j), Step("x3", j)),
        Step("boom", j, fail=RuntimeError("no")))
    outcome = make_engine(flow, book, executor=ThreadExecutor(width=3)).run()
    assert outcome.state == FlowState.REVERTED
    reverts = j.of("revert")
    assert reverts[0] == "boom" and reverts[-1] == "root"
    assert set(reverts[1:4]) == {"x1", "x2", "x3"}
    # Reverse order of completion among the parallel ones.
    executes = [n for n in j.of("execute") if n.startswith("x")]
    assert reverts[1:4] == list(reversed(executes)) or set(executes) == set(reverts[1:4])


def test_running_siblings_finish_before_revert(book):
    """A failure stops new starts; a sibling already running completes and is reverted."""
    j = Journal()
    import threading
    release = threading.Event()

    class Slow(Task):
        def execute(self):
            assert release.wait(5)
            j.add("execute:slow")

        def revert(self, **kw):
            j.add("revert:slow")

    class Fails(Task):
        def execute(self):
            release.set()
            raise IOError("fast failure")

    flow = flows.linear("f", flows.unordered("u", Slow("slow"), Fails("fails")), Step("after", j))
    outcome = make_engine(flow, book, executor=ThreadExecutor(width=2)).run()
    assert outcome.state == FlowState.REVERTED
    assert "execute:after" not in j.entries
    assert j.count("revert:slow") == 1


def test_revert_gets_result_and_failure(book):
    got = {}

    class Make(Task):
        def execute(self, size):
            return {"id": "vol-1", "size": size}

        def revert(self, size, result, failure):
            got.update(size=size, result=result, failure=failure)

    class Boom(Task):
        def execute(self):
            raise KeyError("k")

    flow = flows.linear("f", Make("make"), Boom("boom"))
    make_engine(flow, book, store={"size": 3}).run()
    assert got == {"size": 3, "result": {"id": "vol-1", "size": 3}, "failure": None}


def test_failing_revert_leaves_flow_failed(book):
    j = Journal()
    flow = flows.linear("f", Step("a", j), Step("b", j, revert_fail=OSError("stuck")),
                        Step("c", j, fail=ValueError("c broke")))
    outcome = make_engine(flow, book).run()
    assert outcome.state == FlowState.FAILURE
    assert outcome.failure.message == "c broke"
    assert "revert:a" not in j.entries          # b could not be undone: stop there
    detail = book.load_flow("job-1")
    assert detail.state == FlowState.FAILURE
    assert detail.atoms["b"].state == AtomState.REVERT_FAILURE
    assert detail.atoms["b"].revert_failure.message == "stuck"
    assert detail.atoms["a"].state == AtomState.SUCCESS


# -- retries --------------------------------------------------------------------

def test_retry_until_success_records_attempts(book):
    sleeps: list[float] = []
    states_seen: list[AtomState] = []
    notifier = Notifier()

    def on_retry(event):
        if event.kind == EventKind.TASK_RETRYING:
            states_seen.append(book.load_flow("job-1").atoms["flaky"].state)
    notifier.subscribe(on_retry)

    policy = Retry(attempts=3, backoff=0.5, max_delay=10, jitter=False, on=(IOError,),
                   sleep=sleeps.append)
    flaky = Flaky("flaky", failures=2, retry=policy, provides="r")
    outcome = make_engine(flows.linear("f", flaky), book, notifier=notifier).run()
    assert outcome.state == FlowState.SUCCESS and outcome.results == {"r": "ok"}
    assert flaky.calls == 3
    assert sleeps == pytest.approx([0.5, 1.0], abs=0.05)
    assert states_seen == [AtomState.RETRYING, AtomState.RETRYING]
    atom = book.load_flow("job-1").atoms["flaky"]
    assert atom.attempts == 3 and atom.state == AtomState.SUCCESS and atom.failure is None


def test_retry_time_limit_counts_from_the_first_attempt(book):
    """A ``stop_after_delay`` limit runs from the task's first attempt, not
    from when the policy (and the flow) was built: a flow's later tasks get
    their whole allowance."""
    import time

    import tenacity

    policy = Retry(attempts=100, backoff=0, stop=tenacity.stop_after_delay(0.5),
                   sleep=lambda s: None)
    flaky = Flaky("flaky", failures=3, retry=policy)
    flow = flows.linear("f", flaky)
    time.sleep(0.6)     # the flow was built a while before this task runs
    outcome = make_engine(flow, book).run()
    assert outcome.state == FlowState.SUCCESS and flaky.calls == 4
    assert "first_attempt_at" in book.load_flow("job-1").atoms["flaky"].meta


def test_retry_gives_up_after_attempts(book):
    flaky = Flaky("flaky", failures=10, retry=Retry(attempts=3, backoff=0, sleep=lambda s: None))
    outcome = make_engine(flows.linear("f", flaky), book).run()
    assert outcome.state == FlowState.REVERTED
    assert flaky.calls == 3
    assert book.load_flow("job-1").atoms["flaky"].attempts == 3


def test_retry_only_on_listed_errors(book):
    flaky = Flaky("flaky", failures=1, error=ValueError,
                  retry=Retry(attempts=5, backoff=0, on=(IOError,), sleep=lambda s: None))
    outcome = make_engine(flows.linear("f", flaky), book).run()
    assert outcome.state == FlowState.REVERTED and flaky.calls == 1


def test_flow_retry_applies_unless_task_has_its_own(book):
    quiet = dict(backoff=0, sleep=lambda s: None)
    inherits = Flaky("inherits", failures=2)
    own = Flaky("own", failures=1, retry=Retry(attempts=1, **quiet))
    flow = flows.linear("f", inherits, flows.linear("inner", own), retry=Retry(attempts=3, **quiet))
    outcome = make_engine(flow, book).run()
    assert inherits.calls == 3
    assert own.calls == 1 and outcome.state == FlowState.REVERTED


def test_retry_delays_grow_and_are_bounded():
    r = Retry(attempts=10, backoff=1.0, max_delay=5.0, jitter=False)
    assert [r.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = Retry(attempts=3, backoff=1.0, max_delay=100, jitter=True)
    assert 1.0 <= jittered.delay(1) <= 2.0
    assert r.should_retry(IOError(), 9) and not r.should_retry(IOError(), 10)
