"""Engine: retry controllers (Times, ForEach, ParameterizedForEach) on real
SQLite and PostgreSQL logbooks: decisions, history in the logbook, crashes at
every checkpoint of a subflow retry and a kill -9 in the middle of one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from flows_for_tests import (Crash, HostStep, Journal, Step, make_engine, read_lines,
                             retry_hosts)
from jobboard import flows
from jobboard.engine.controllers import (Decision, ForEach, History, ParameterizedForEach,
                                         RetryController, Times)
from jobboard.errors import FlowInvalid
from jobboard.events import EventKind, Notifier
from jobboard.states import AtomState, FlowState

TESTS = Path(__file__).parent


class FailTimes(Step):
    """Fails its first ``failures`` executions."""

    def __init__(self, name: str, journal: Journal, failures: int, **options) -> None:
        super().__init__(name, journal, **options)
        self.failures = failures
        self.calls = 0

    def execute(self, **inputs):
        self.calls += 1
        self.journal.add(f"execute:{self.name}")
        if self.calls <= self.failures:
            raise IOError(f"{self.name} failed (call {self.calls})")
        return self.value


def test_times_reverts_and_reruns_the_subflow_until_it_succeeds(logbook):
    j = Journal()
    flow = flows.linear("f", Step("a", j),
                        flows.linear("sub", Step("b", j), FailTimes("c", j, 2),
                                     retry=Times(3, provides="attempt")),
                        Step("d", j))
    outcome = make_engine(flow, logbook).run()
    assert outcome.state == FlowState.SUCCESS
    assert outcome.results["attempt"] == 3
    assert j.entries == ["execute:a",
                         "execute:b", "execute:c", "revert:c", "revert:b",
                         "execute:b", "execute:c", "revert:c", "revert:b",
                         "execute:b", "execute:c", "execute:d"]
    detail = logbook.load_flow("job-1")
    ctl = detail.atoms["sub:retry"]
    assert (ctl.kind, ctl.state, ctl.attempts, ctl.result) == ("retry", AtomState.SUCCESS, 3, 3)
    history = History.from_list(ctl.meta["history"])
    assert history.values == [1, 2]
    assert [list(a.failures) for a in history] == [["c"], ["c"]]
    assert "c failed (call 2)" in history[1].failures["c"].message
    assert detail.atoms["c"].attempts == 1          # budget reset on each scope attempt
    assert {a.kind for n, a in detail.atoms.items() if n != "sub:retry"} == {"task"}


def test_out_of_attempts_reverts_the_whole_flow(logbook):
    j = Journal()
    flow = flows.linear("f", Step("a", j),
                        flows.linear("sub", FailTimes("b", j, 99), retry=Times(2)))
    outcome = make_engine(flow, logbook).run()
    assert outcome.state == FlowState.REVERTED
    assert "b failed (call 2)" in outcome.failure.message
    assert j.entries == ["execute:a", "execute:b", "revert:b", "execute:b", "revert:b",
                         "revert:a"]
    atoms = logbook.load_flow("job-1").atoms
    assert atoms["sub:retry"].state == AtomState.REVERTED
    assert len(atoms["sub:retry"].meta["history"]) == 2


def test_for_each_hands_each_attempt_the_next_value(logbook, tmp_path):
    journal = str(tmp_path / "journal")
    outcome = make_engine(retry_hosts(journal), logbook).run()
    assert outcome.state == FlowState.SUCCESS
    assert outcome.results["host"] == "h3" and outcome.results["probed"] == "probe@h3"
    assert read_lines(journal) == [
        "execute:prep:-",
        "execute:setup:h1", "execute:probe:h1", "revert:probe:h1", "revert:setup:h1",
        "execute:setup:h2", "execute:probe:h2", "revert:probe:h2", "revert:setup:h2",
        "execute:setup:h3", "execute:probe:h3", "execute:finish:-"]


def test_parameterized_for_each_reads_its_values_from_the_store(logbook, tmp_path):
    journal = str(tmp_path / "journal")
    flow = flows.linear("f", flows.linear(
        "sub", HostStep("probe", journal, good="b"),
        retry=ParameterizedForEach("hosts", provides="host")))
    outcome = make_engine(flow, logbook, store={"hosts": ["a", "b", "c"]}).run()
    assert outcome.ok and outcome.results["host"] == "b"
    assert read_lines(journal) == ["execute:probe:a", "revert:probe:a", "execute:probe:b"]
    with pytest.raises(FlowInvalid, match="hosts"):
        make_engine(flow, logbook, job_id="no-store")      # its input is checked


def test_revert_defers_to_the_enclosing_controller(logbook):
    """Inner out of attempts (REVERT): the outer controller retries its scope,
    inner included, whose attempts start afresh."""
    j = Journal()
    inner = flows.linear("inner", FailTimes("c", j, 1), retry=Times(1))
    outer = flows.linear("outer", Step("b", j), inner, retry=Times(2))
    outcome = make_engine(flows.linear("f", Step("a", j), outer), logbook).run()
    assert outcome.state == FlowState.SUCCESS
    assert j.entries == ["execute:a", "execute:b", "execute:c", "revert:c", "revert:b",
                         "execute:b", "execute:c"]
    atoms = logbook.load_flow("job-1").atoms
    assert len(atoms["outer:retry"].meta["history"]) == 1
    assert atoms["inner:retry"].meta.get("history") is None      # reset with its scope


def test_revert_all_skips_the_enclosing_controllers(logbook):
    j = Journal()
    inner = flows.linear("inner", FailTimes("c", j, 5), retry=Times(1, revert_all=True))
    outer = flows.linear("outer", Step("b", j), inner, retry=Times(3))
    outcome = make_engine(flows.linear("f", Step("a", j), outer), logbook).run()
    assert outcome.state == FlowState.REVERTED
    assert j.count("execute:b") == 1 and j.count("execute:c") == 1
    assert logbook.load_flow("job-1").atoms["outer:retry"].meta.get("history") is None


class Decides(RetryController):
    """Retries while the failure says "retry" (a custom controller)."""

    def on_failure(self, history: History) -> Decision:
        failure = history.last_failures["c"]
        return Decision.RETRY if "retry" in failure.message else Decision.REVERT


def test_a_custom_controller_decides_from_the_failure(logbook):
    j = Journal()

    class Fails(Step):
        calls = 0

        def execute(self, **inputs):
            Fails.calls += 1
            j.add(f"execute:{self.name}")
            if Fails.calls == 1:
                raise IOError("please retry")
            raise IOError("give up")

    flow = flows.linear("f", flows.linear("sub", Fails("c", j), retry=Decides()))
    outcome = make_engine(flow, logbook).run()
    assert outcome.state == FlowState.REVERTED and outcome.failure.message == "give up"
    assert j.entries == ["execute:c", "revert:c", "execute:c", "revert:c"]


def test_task_retry_policies_run_inside_each_scope_attempt(logbook):
    from jobboard import Retry
    j = Journal()
    c = FailTimes("c", j, 3, retry=Retry(2, backoff=0))
    flow = flows.linear("f", flows.linear("sub", c, retry=Times(2)))
    outcome = make_engine(flow, logbook).run()
    assert outcome.ok
    # attempt 1: c fails twice (its own policy), scope retried; attempt 2: fail, ok
    assert j.entries == ["execute:c", "execute:c", "revert:c", "execute:c", "execute:c"]


def test_controllers_are_declared_on_flows_only():
    with pytest.raises(FlowInvalid, match="retry="):
        flows.linear("f", Times(2))
    with pytest.raises(FlowInvalid):
        Times(0)
    with pytest.raises(FlowInvalid):
        ForEach("abc")


def test_an_unordered_scope_waits_for_its_running_tasks_before_reverting(logbook):
    import threading

    from jobboard.engine import ThreadExecutor
    j = Journal()
    bad_failed = threading.Event()

    class Slow(Step):
        def execute(self, **inputs):
            j.add("execute:slow")
            assert bad_failed.wait(10)        # still running when its sibling fails
            j.add("finished:slow")
            return "slow"

    class Bad(FailTimes):
        def execute(self, **inputs):
            try:
                return super().execute(**inputs)
            except IOError:
                bad_failed.set()
                raise

    flow = flows.linear("f", flows.unordered("sub", Slow("slow", j), Bad("bad", j, 1),
                                             retry=Times(2)))
    with ThreadExecutor(width=4) as executor:
        outcome = make_engine(flow, logbook, executor=executor).run()
    assert outcome.ok
    assert j.entries.index("finished:slow") < j.entries.index("revert:slow")
    assert j.count("revert:slow") == 1 and j.count("execute:bad") == 2
    assert j.count("execute:slow") == 2


# -- crashes -----------------------------------------------------------------------


def _events(notifier_kinds: list) -> Notifier:
    notifier = Notifier()
    notifier.subscribe(lambda e: notifier_kinds.append(e.kind))
    return notifier


def test_crash_at_every_checkpoint_of_a_subflow_retry(logbook, tmp_path):
    """A crash after each event (everything it reports is saved), resumed by
    another engine: same journal lines as an uninterrupted run, each once."""
    probe = str(tmp_path / "probe")
    kinds: list = []
    assert make_engine(retry_hosts(probe), logbook, job_id="probe",
                       notifier=_events(kinds)).run().ok
    expected = Counter(read_lines(probe))
    assert EventKind.TASK_RETRYING in kinds
    for k in range(len(kinds)):
        journal = str(tmp_path / f"j{k}")
        job = f"crash-{k}"
        notifier = Notifier()
        seen: list = []

        def crash(event, seen=seen, k=k):
            seen.append(event)
            if len(seen) == k + 1:
                raise Crash(f"at {event.kind} {event.task}")
        notifier.subscribe(crash)
        with pytest.raises(Crash):
            make_engine(retry_hosts(journal), logbook, job_id=job, notifier=notifier).run()
        outcome = make_engine(retry_hosts(journal), logbook, job_id=job, token=2).run()
        assert outcome.state == FlowState.SUCCESS, (k, outcome)
        assert Counter(read_lines(journal)) == expected, (k, read_lines(journal))
        ctl = logbook.load_flow(job).atoms["attempt:retry"]
        assert History.from_list(ctl.meta["history"]).values == ["h1", "h2"], k


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from jobboard.engine import Engine, SerialExecutor, build_flow
    from jobboard.logbook import Logbook

    url, job, token, factory, journal = sys.argv[1:6]
    flow = build_flow(factory, {{"journal": journal}}, ("flows_for_tests",))
    with Logbook(url) as book:
        outcome = Engine(flow, journal=book, job_id=job, token=int(token), owner="child",
                         executor=SerialExecutor()).run()
    print(outcome.state)
""")


def run_child(tmp_path: Path, url: str, job: str, token: int, factory: str, journal: str,
              env: dict[str, str]) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(TESTS)))
    return subprocess.run([sys.executable, str(script), url, job, str(token), factory, journal],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=90)


@pytest.mark.parametrize("kill_at", ["revert:setup:h1", "execute:probe:h2"])
def test_kill_9_in_the_middle_of_a_subflow_retry(logbook, logbook_url, tmp_path, kill_at):
    """kill -9 while the scope is being reverted for its next attempt, or while
    the second attempt runs; another engine resumes: only the killed call runs
    twice, nothing that finished runs again, the attempts go on in order."""
    journal = str(tmp_path / "journal")
    first = run_child(tmp_path, logbook_url, "killed", 1, "flows_for_tests:retry_hosts",
                      journal, {"KILL_AT": kill_at})
    assert first.returncode == -signal.SIGKILL, first.stderr
    saved = logbook.load_flow("killed").atoms
    if kill_at.startswith("revert"):
        assert saved["attempt:retry"].state == AtomState.RETRYING
        assert saved["setup"].state == AtomState.REVERTING
    else:
        assert saved["attempt:retry"].state == AtomState.SUCCESS
        assert saved["attempt:retry"].result == "h2"
        assert saved["probe"].state == AtomState.RUNNING
    second = run_child(tmp_path, logbook_url, "killed", 2, "flows_for_tests:retry_hosts",
                       journal, {})
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "SUCCESS"
    lines = Counter(read_lines(journal))
    expected = Counter([
        "execute:prep:-",
        "execute:setup:h1", "execute:probe:h1", "revert:probe:h1", "revert:setup:h1",
        "execute:setup:h2", "execute:probe:h2", "revert:probe:h2", "revert:setup:h2",
        "execute:setup:h3", "execute:probe:h3", "execute:finish:-"])
    expected[kill_at] += 1             # the call killed mid-way runs again
    assert lines == expected
    detail = logbook.load_flow("killed")
    assert detail.state == FlowState.SUCCESS
    assert History.from_list(detail.atoms["attempt:retry"].meta["history"]).values == \
        ["h1", "h2"]
