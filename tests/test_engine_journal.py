"""Engine: which logbook writes a run makes, and that batching them keeps
the ordering guarantees (RUNNING saved before a task is handed over, SUCCESS
saved before any dependant starts), on every logbook backend."""

from __future__ import annotations

import threading

import pytest

from driver_log import logged_logbook
from flows_for_tests import Crash, Journal, Step, make_engine
from jobboard import Task, flows
from jobboard.engine import ThreadExecutor
from jobboard.events import EventKind, Notifier
from jobboard.logbook import Logbook
from jobboard.states import AtomState, FlowState
from jobboard.testing.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


class Peek(Task):
    """Reads the logbook through another connection while it executes: what
    a new owner would find at this instant."""

    def __init__(self, name: str, url: str, seen: dict, **options) -> None:
        super().__init__(name, **options)
        self.url, self.seen = url, seen

    def execute(self, **_inputs):
        with Logbook(self.url, auto_upgrade=False) as other:
            atoms = other.load_flow("job-1").atoms
        self.seen[self.name] = {n: a.state for n, a in atoms.items()}
        return self.name


def test_linear_flow_saves_each_boundary_in_one_transaction(logbook_url):
    j = Journal()
    n = 6
    flow = flows.linear("f", *[Step(f"s{i}", j, provides=f"o{i}") for i in range(n)])
    logbook, log = logged_logbook(logbook_url)
    with logbook:
        outcome = make_engine(flow, logbook, new=True).run()
        # take_over with flow RUNNING + PENDING rows + RUNNING s0, n-1 x
        # (SUCCESS + next RUNNING), the last SUCCESS + flow SUCCESS.
        assert log.transactions == n + 1, log.statements
        stored = logbook.load_flow("job-1")
    assert outcome.state is FlowState.SUCCESS
    assert {a.state for a in stored.atoms.values()} == {AtomState.SUCCESS}
    assert [a.attempts for a in stored.atoms.values()] == [1] * n


def test_a_resumed_run_drops_the_start_it_prepared_for_a_new_flow(logbook_url):
    """The engine told the job is new prepares a new flow's start to save it
    with the take-over; the journal holds the flow of a run that died in s1,
    so the take-over
    returns it instead: nothing of that start is saved or run, s0 is not run
    again and s1 runs as its second attempt."""
    j = Journal()
    flow = flows.linear("f", Step("s0", j, provides="o0"), Step("s1", j), Step("s2", j))
    dying = Notifier()

    def die_in_s1(event) -> None:
        if event.kind == EventKind.TASK_STARTED and event.task == "s1":
            j.add("execute:s1")              # as if it had begun
            raise Crash("died in s1")
    dying.subscribe(die_in_s1)
    logbook, log = logged_logbook(logbook_url)
    with logbook:
        with pytest.raises(Crash):
            make_engine(flow, logbook, notifier=dying).run()
        log.clear()
        outcome = make_engine(flow, logbook, token=2, new=True).run()
        # the take-over (returning the flow: on PostgreSQL a second statement
        # in autocommit reads it), flow RUNNING + RUNNING s1, SUCCESS s1 +
        # RUNNING s2, SUCCESS s2 + flow SUCCESS.
        read = 1 if logbook_url.startswith("postgresql") else 0
        assert log.transactions == 4 + read, log.statements
        stored = logbook.load_flow("job-1")
    assert outcome.state is FlowState.SUCCESS
    assert j.count("execute:s0") == 1 and j.count("execute:s1") == 2
    assert {n: (a.state, a.attempts) for n, a in stored.atoms.items()} == {
        "s0": (AtomState.SUCCESS, 1), "s1": (AtomState.SUCCESS, 2),
        "s2": (AtomState.SUCCESS, 1)}


def test_a_task_runs_only_after_its_predecessors_success_is_committed(logbook, logbook_url):
    seen: dict = {}
    flow = flows.graph(
        "g",
        Peek("a", logbook_url, seen, provides="x"),
        Peek("b", logbook_url, seen, provides="y"),
        Peek("c", logbook_url, seen, requires=("x", "y"), provides="z"),
        Peek("d", logbook_url, seen, requires="z"),
    )
    outcome = make_engine(flow, logbook, executor=ThreadExecutor(width=2)).run()
    assert outcome.state is FlowState.SUCCESS
    for name, preds in {"a": "", "b": "", "c": "ab", "d": "c"}.items():
        states = seen[name]
        assert states[name] is AtomState.RUNNING, (name, states)      # saved before handed over
        assert all(states[p] is AtomState.SUCCESS for p in preds), (name, states)
    assert set(seen["a"]) == set("abcd")                 # every PENDING row came with it


def test_succeeded_event_follows_the_save(logbook, logbook_url):
    """A listener of task.succeeded finds the SUCCESS committed."""
    found: list = []

    def listener(ev) -> None:
        if ev.kind == EventKind.TASK_SUCCEEDED:
            with Logbook(logbook_url, auto_upgrade=False) as other:
                found.append((ev.task, other.load_flow("job-1").atoms[ev.task].state))

    notifier = Notifier()
    notifier.subscribe(listener)
    j = Journal()
    flow = flows.linear("f", Step("a", j), Step("b", j))
    assert make_engine(flow, logbook, notifier=notifier).run().ok
    assert found == [("a", AtomState.SUCCESS), ("b", AtomState.SUCCESS)]


def test_a_success_is_saved_before_the_engine_waits(book, tmp_path):
    """A fast task finishing beside a slow one is saved at once, not with the
    slow one's boundary (a crash meanwhile must not run it again)."""
    url = str(book._engine.url)
    release = threading.Event()
    states: dict = {}

    class Slow(Task):
        def execute(self):
            assert release.wait(20)

    class Fast(Task):
        def execute(self):
            return "fast"

    flow = flows.unordered("u", Slow("slow"), Fast("fast"))
    engine = make_engine(flow, book, executor=ThreadExecutor(width=2))
    runner = threading.Thread(target=lambda: states.update(outcome=engine.run()), daemon=True)
    runner.start()
    with Logbook(url, auto_upgrade=False) as other:
        def fast_saved() -> bool:
            detail = other.load_flow("job-1")
            return detail is not None and "fast" in detail.atoms and \
                detail.atoms["fast"].state is AtomState.SUCCESS
        saved = wait_until(fast_saved, timeout=20)
        slow_state = other.load_flow("job-1").atoms["slow"].state
    release.set()
    runner.join(30)
    assert saved and slow_state is AtomState.RUNNING
    assert states["outcome"].ok


def test_a_gate_about_to_block_saves_what_finished_first(logbook):
    """The conductor's gate blocks while ZooKeeper is suspended: it flushes
    first, so a finished task is in the logbook while the engine waits."""
    j = Journal()
    flow = flows.linear("f", Step("s0", j, provides="o0"), Step("s1", j, provides="o1"))
    seen: list[dict] = []
    engine: list = []

    def gate() -> None:
        if j.count("execute:s0"):           # before s1: "suspended", about to block
            engine[0].flush()
            with Logbook(logbook.url, auto_upgrade=False) as other:
                seen.append({n: a.state for n, a in other.load_flow("job-1").atoms.items()})

    engine.append(make_engine(flow, logbook, gate=gate))
    assert engine[0].run().ok
    assert seen and seen[0]["s0"] is AtomState.SUCCESS


def test_a_run_not_told_new_knows_a_finished_flow_before_taking_its_locks(book):
    """A resumed job (the conductor's engine for a job claimed before) takes
    the journal over first: a flow finished already ends there, without
    waiting for its locks (held elsewhere, say). Told new, the engine takes
    the locks before the take-over that finds the flow."""
    j = Journal()
    flow = flows.linear("f", Step("a", j), locks=["shared"])
    taken: list = []

    def busy_locker(names):
        taken.append(list(names))
        raise TimeoutError("held elsewhere")

    assert make_engine(flow, book).run().state is FlowState.SUCCESS
    outcome = make_engine(flow, book, token=2, locker=busy_locker).run()
    assert outcome.state is FlowState.SUCCESS and taken == [] and j.count("execute:a") == 1
    with pytest.raises(TimeoutError):
        make_engine(flow, book, token=3, locker=busy_locker, new=True).run()
    assert taken == [["shared"]]
