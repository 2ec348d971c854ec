"""Engine: resumption after a crash at every checkpoint, and of a revert."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from flows_for_tests import JOURNALS, Crash, Journal, Step, make_engine
from jobboard import flows
from jobboard.engine import SerialExecutor, ThreadExecutor, build_flow
from jobboard.events import EventKind, Notifier
from jobboard.logbook import Logbook
from jobboard.states import AtomState, FlowState

ALLOWED = ("flows_for_tests",)


def crash_at(k: int, kinds: list[str]) -> Notifier:
    """A notifier whose listener dies at the k-th event (0-based)."""
    notifier = Notifier()

    def listener(event):
        kinds.append(event.kind)
        if len(kinds) == k + 1:
            raise Crash(f"crash at event {k}: {event.kind} {event.task}")
    notifier.subscribe(listener)
    return notifier


def count_events(factory: str, book: Logbook, job_id: str, **kw) -> list:
    kinds: list = []
    notifier = Notifier()
    notifier.subscribe(lambda e: kinds.append(e.kind))
    make_engine(build_flow(factory, {"journal": job_id}, ALLOWED), book, job_id=job_id,
                notifier=notifier, **kw).run()
    return kinds


@pytest.mark.parametrize("executor", ["serial", "threads"])
def test_crash_at_every_checkpoint_of_a_linear_flow(book, executor):
    def make_executor():
        return ThreadExecutor(width=2) if executor == "threads" else SerialExecutor()

    JOURNALS["probe"] = Journal()
    total = len(count_events("flows_for_tests:five_steps", book, "probe"))
    assert total == 12          # flow started + 5 x (started, succeeded) + flow succeeded
    for k in range(total):
        job_id = f"crash-{executor}-{k}"
        journal = JOURNALS[job_id] = Journal()
        kinds: list = []
        engine = make_engine(build_flow("flows_for_tests:five_steps", {"journal": job_id}, ALLOWED),
                             book, job_id=job_id, notifier=crash_at(k, kinds),
                             executor=make_executor())
        with pytest.raises(Crash):
            engine.run()
        before = book.load_flow(job_id)
        done = {n for n, a in before.atoms.items() if a.state == AtomState.SUCCESS}

        # Another conductor: flow rebuilt from its factory, newer token.
        skipped: list[str] = []
        notifier = Notifier()
        notifier.subscribe(lambda e: skipped.append(e.task)
                           if e.kind == EventKind.TASK_SKIPPED else None)
        resumed = make_engine(build_flow("flows_for_tests:five_steps", {"journal": job_id},
                                         ALLOWED), book, job_id=job_id, token=2,
                              notifier=notifier)
        outcome = resumed.run()
        assert outcome.state == FlowState.SUCCESS, (k, outcome)
        assert outcome.results == {f"out{i}": f"s{i}" for i in range(5)}
        if before.state != FlowState.SUCCESS:       # a finished flow emits nothing
            assert sorted(skipped) == sorted(done), k
        for i in range(5):
            assert journal.count(f"execute:s{i}") == 1, (k, journal.entries)
        assert book.load_flow(job_id).state == FlowState.SUCCESS


def test_crash_at_every_checkpoint_of_a_revert(book):
    JOURNALS["probe-r"] = Journal()
    kinds = count_events("flows_for_tests:revert_flow", book, "probe-r")
    total = len(kinds)
    assert kinds[-1] == EventKind.FLOW_REVERTED
    first_revert = kinds.index(EventKind.TASK_FAILED)
    for k in range(first_revert, total):
        job_id = f"rcrash-{k}-{uuid.uuid4().hex[:6]}"
        journal = JOURNALS[job_id] = Journal()
        engine = make_engine(build_flow("flows_for_tests:revert_flow", {"journal": job_id},
                                        ALLOWED), book, job_id=job_id, notifier=crash_at(k, []))
        with pytest.raises(Crash):
            engine.run()
        outcome = make_engine(build_flow("flows_for_tests:revert_flow", {"journal": job_id},
                                         ALLOWED), book, job_id=job_id, token=2).run()
        assert outcome.state == FlowState.REVERTED, (k, outcome)
        assert outcome.failure.message == "d broke"
        for name in "abcd":
            assert journal.count(f"execute:{name}") == 1, (k, journal.entries)
            assert journal.count(f"revert:{name}") == 1, (k, journal.entries)
        assert journal.of("revert") == ["d", "c", "b", "a"]
        detail = book.load_flow(job_id)
        assert detail.state == FlowState.REVERTED
        assert {a.state for a in detail.atoms.values()} == {AtomState.REVERTED}


def test_task_gone_from_the_flow_is_ignored_with_a_warning(book, caplog):
    j = Journal()
    old = flows.linear("f", Step("a", j), Step("removed", j), Step("b", j))
    kinds: list = []
    with pytest.raises(Crash):
        make_engine(old, book, notifier=crash_at(4, kinds)).run()   # after 'removed' succeeded
    new = flows.linear("f", Step("a", j), Step("b", j))
    with caplog.at_level(logging.WARNING, logger="jobboard.engine.runner"):
        outcome = make_engine(new, book, token=2).run()
    assert outcome.state == FlowState.SUCCESS
    assert "'removed'" in caplog.text
    assert j.entries == ["execute:a", "execute:removed", "execute:b"]


def test_finished_flow_is_not_run_again(book):
    j = Journal()
    make_engine(flows.linear("f", Step("a", j, provides="x")), book).run()
    outcome = make_engine(flows.linear("f", Step("a", j, provides="x")), book, token=2).run()
    assert outcome.state == FlowState.SUCCESS and outcome.results == {"x": "a"}
    assert j.entries == ["execute:a"]


CHILD = textwrap.dedent("""
    import os, signal, sys
    from jobboard import Task, flows
    from jobboard.engine import Engine, SerialExecutor
    from jobboard.logbook import Logbook

    class Mark(Task):
        def execute(self):
            with open({marks!r}, "a") as f:
                f.write(self.name + "\\n")
            if self.name == {kill_in!r} and os.environ.get("KILL") == "1":
                os.kill(os.getpid(), signal.SIGKILL)
            return self.name

    flow = flows.linear("five", *[Mark(f"s{{i}}", provides=f"o{{i}}") for i in range(5)])
    with Logbook({url!r}) as lb:
        out = Engine(flow, journal=lb, job_id="killed", token=int(sys.argv[1]), owner="child",
                     executor=SerialExecutor()).run()
        print(out.state)
""")


def test_resume_after_sigkill_of_a_subprocess(tmp_path):
    marks = tmp_path / "marks.txt"
    url = f"sqlite:///{tmp_path}/killed.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(marks=str(marks),
                                   kill_in="s2", url=url))
    first = subprocess.run([sys.executable, str(script), "1"], env={**os.environ, "KILL": "1"},
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == -signal.SIGKILL, first.stderr
    second = subprocess.run([sys.executable, str(script), "2"], capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "SUCCESS"
    # s2 was killed mid-execute (RUNNING): it runs again; s0 and s1 do not.
    assert marks.read_text().split() == ["s0", "s1", "s2", "s2", "s3", "s4"]


def test_resume_of_a_retrying_task_runs_it_again(book):
    from flows_for_tests import Flaky
    from jobboard import Retry

    def flow(failures):
        return flows.linear("f", Flaky("flaky", failures, retry=Retry(3, backoff=0),
                                       provides="r"))
    first = flow(1)
    with pytest.raises(Crash):
        make_engine(first, book, notifier=crash_at(2, [])).run()    # at task.retrying
    atom = book.load_flow("job-1").atoms["flaky"]
    assert (atom.state, atom.attempts) == (AtomState.RETRYING, 1)
    second = flow(0)
    outcome = make_engine(second, book, token=2).run()
    calls = [next(f.iter_tasks()).calls for f in (first, second)]
    assert outcome.results == {"r": "ok"} and calls == [1, 1]
    assert book.load_flow("job-1").atoms["flaky"].attempts == 2
