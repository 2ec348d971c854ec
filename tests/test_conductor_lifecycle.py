"""What admins, slow tasks and broken dependencies do to jobs on real
conductors (real ZooKeeper, a real SQLite logbook, real worker processes):
retry as a new attempt, cancel and transfer of a running task as a hand-off,
time limits, BaseException in tasks, and a logbook that loses its schema."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from jobboard.conductor import Conductor
from jobboard.errors import LogbookError
from jobboard.logbook import Logbook
from jobboard.states import FlowState, JobState
from jobboard.testing.lifecycle_flows import read_events
from test_conductor import board, fleet, logbook_url, wait_until  # noqa: F401  (fixtures)

GATED = "jobboard.testing.lifecycle_flows:gated"
EXITS = "jobboard.testing.lifecycle_flows:exits"
FIVE = "jobboard.testing.flows:five_steps"


def started(journal: str, task: str) -> list[tuple[int, float]]:
    return [(pid, at) for event, name, pid, at in read_events(journal)
            if event == "start" and name == task]


def intervals(journal: str, task: str) -> list[tuple[int, float, float]]:
    """(pid, start, end) per run of ``task``; a run with no end lasts forever."""
    runs: dict[int, list[float]] = {}
    for event, name, pid, at in read_events(journal):
        if name == task:
            runs.setdefault(pid, []).append(at)
    return [(pid, times[0], times[1] if len(times) > 1 else float("inf"))
            for pid, times in runs.items()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancel_then_retry_runs_the_flow_again_as_a_new_attempt(board, fleet, tmp_path,
                                                                 logbook_url):
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    fleet.start("c1")
    job = board.post(GATED, args={"journal": journal, "gate": gate})
    wait_until(lambda: started(journal, "wait"), what="the gated task to start")
    board.cancel(job.uuid)
    cancelled = board.wait(job.uuid, timeout=30)
    assert cancelled.state is JobState.CANCELLED
    assert any(e[0] == "interrupted" for e in read_events(journal)), \
        "the running task was not asked to stop"
    open(gate, "w").close()
    retried = board.retry(job.uuid)
    assert retried.attempt == 2
    outcome = board.wait(job.uuid, timeout=30)
    assert outcome.state is JobState.COMPLETE, outcome
    assert board.claims() == []
    with Logbook(logbook_url) as logbook:
        attempts = logbook.attempts(job.uuid)
    assert [(a.attempt, a.state) for a in attempts] == [(1, FlowState.CANCELLED),
                                                        (2, FlowState.SUCCESS)]
    assert len(started(journal, "before")) == 2, "the new attempt ran from the start"


def test_retry_of_a_failed_job_runs_its_tasks_again(board, fleet, tmp_path):
    journal = str(tmp_path / "journal")
    fleet.start("c1")
    job = board.post(FIVE, args={"journal": journal, "fail_at": "step2"})
    assert board.wait(job.uuid, timeout=30).state is JobState.FAILED
    board.retry(job.uuid)
    assert board.wait(job.uuid, timeout=30).state is JobState.FAILED
    from jobboard.testing.flows import read_journal
    ran = read_journal(journal)
    assert ran.count("step1") == 2 and ran.count("step2") == 2, ran


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_task_past_its_time_limit_fails_and_frees_the_slot(board, fleet, tmp_path,
                                                             executor):
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    fleet.start("c1", concurrency=1, executor=executor, task_timeout=1.0, stop_timeout=1.0)
    hung = board.post(GATED, args={"journal": journal, "gate": gate, "cooperative": False})
    after = board.post(FIVE, args={"journal": str(tmp_path / "five")})
    failed = board.wait(hung.uuid, timeout=30)
    assert failed.state is JobState.FAILED
    assert "time limit" in str(failed.failure), failed.failure
    assert board.wait(after.uuid, timeout=30).ok, "the slot was not freed"
    if executor == "process":
        (pid, _), = started(journal, "wait")
        wait_until(lambda: not pid_alive(pid), timeout=10, what="the worker to be killed")


def test_transfer_hands_a_running_task_over(board, fleet, tmp_path):
    """The old holder's worker is killed; the new holder starts the task only
    after it stopped: never two copies of one task at once."""
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    fleet.start("c1", executor="process", stop_timeout=2.0)
    job = board.post(GATED, args={"journal": journal, "gate": gate, "cooperative": False})
    wait_until(lambda: started(journal, "wait"), what="the task to start on c1")
    assert board.claim_owner(job.uuid) == "c1"
    fleet.start("c2", executor="process", stop_timeout=2.0)
    wait_until(lambda: any(c["name"] == "c2" for c in board.conductors()), what="c2")
    board.transfer(job.uuid, "c1", "c2")
    wait_until(lambda: len(started(journal, "wait")) == 2, what="the task to start on c2")
    (old_pid, _), (new_pid, new_start) = started(journal, "wait")
    assert not pid_alive(old_pid), "the old holder's worker still runs the task"
    open(gate, "w").close()
    assert board.wait(job.uuid, timeout=30).ok
    assert board.get(job.uuid).owner == "c2" or board.get(job.uuid).history[-1]["owner"] == "c2"


def test_a_job_given_back_to_the_same_conductor_waits_for_its_old_run(board, fleet,
                                                                      tmp_path):
    """An admin's abandon with one conductor: it claims the job again at once,
    while its old run's task (ignoring the stop request) still runs."""
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    conductor = fleet.start("c1", stop_timeout=2.0)
    job = board.post(GATED, args={"journal": journal, "gate": gate, "cooperative": False})
    wait_until(lambda: started(journal, "wait"), what="the task to start")
    board.abandon(job.uuid, "c1")
    abandoned_at = time.time()
    wait_until(lambda: len(started(journal, "wait")) == 2, what="the task to start again")
    assert started(journal, "wait")[1][1] >= abandoned_at + 1.5, \
        "the second run started while the first one's task still ran"
    # the old run ends; the new one stays counted (it used to be dropped)
    wait_until(lambda: conductor.in_flight == 1, what="the old run to end")
    assert board.claim_owner(job.uuid) == "c1"
    open(gate, "w").close()
    assert board.wait(job.uuid, timeout=30).ok
    wait_until(lambda: conductor.in_flight == 0, what="the new run to end")


def test_a_job_waiting_for_a_busy_flow_lock_is_not_counted(board, fleet, tmp_path):
    from jobboard.locks import Locks

    board.max_claims = 2
    locks = Locks(board.client, root=board.paths.locks, identifier="admin")
    journal = str(tmp_path / "journal")
    with locks.mutex("busy", timeout=5):
        fleet.start("c1", lock_timeout=0.3)
        job = board.post("jobboard.testing.lifecycle_flows:locked",
                         args={"journal": journal, "lock": "busy"})
        wait_until(lambda: board.get(job.uuid).claims >= 4, what="a few tries")
        assert board.get(job.uuid).deaths == 0
    assert board.wait(job.uuid, timeout=30).ok


def test_a_factory_that_hangs_fails_its_job_and_frees_the_slot(board, fleet, tmp_path):
    fleet.start("c1", concurrency=1, factory_timeout=1.0)
    hung = board.post("jobboard.testing.lifecycle_flows:hangs")
    after = board.post(FIVE, args={"journal": str(tmp_path / "five")})
    failed = board.wait(hung.uuid, timeout=30)
    assert failed.state is JobState.FAILED and "did not return within 1s" in failed.reason
    assert board.wait(after.uuid, timeout=30).ok


def test_a_cooperative_task_stops_when_its_job_is_transferred(board, fleet, tmp_path):
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    fleet.start("c1", stop_timeout=30.0)
    job = board.post(GATED, args={"journal": journal, "gate": gate})
    wait_until(lambda: started(journal, "wait"), what="the task to start on c1")
    fleet.start("c2", stop_timeout=30.0)
    wait_until(lambda: any(c["name"] == "c2" for c in board.conductors()), what="c2")
    board.transfer(job.uuid, "c1", "c2")
    wait_until(lambda: len(started(journal, "wait")) == 2, what="the task to start on c2")
    events = read_events(journal)
    interrupted = [at for event, name, _, at in events if event == "interrupted"]
    second_start = [at for event, name, _, at in events
                    if event == "start" and name == "wait"][1]
    assert interrupted and interrupted[0] <= second_start, events
    open(gate, "w").close()
    assert board.wait(job.uuid, timeout=30).ok


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_base_exceptions_in_a_task_fail_the_job_and_the_conductor_stays(board, fleet,
                                                                         tmp_path, kind,
                                                                         executor):
    conductor = fleet.start("c1", executor=executor)
    job = board.post(EXITS, args={"kind": kind})
    outcome = board.wait(job.uuid, timeout=30)
    assert outcome.state is JobState.FAILED and kind in str(outcome.failure)
    assert board.wait(board.post(FIVE, args={"journal": str(tmp_path / "j")}).uuid,
                      timeout=30).ok
    assert not conductor.wait(0), "the conductor stopped"


def test_a_lost_schema_makes_the_conductor_wait_not_the_jobs_die(board, fleet, tmp_path,
                                                                 logbook_url):
    fleet.start("c1")
    assert board.wait(board.post(FIVE, args={"journal": str(tmp_path / "j0")}).uuid,
                      timeout=30).ok
    database = logbook_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        for table in ("atomdetails", "flowdetails", "logbooks", "logbook_alembic_version"):
            db.execute(f"DROP TABLE {table}")
    jobs = [board.post(FIVE, args={"journal": str(tmp_path / f"j{n}")}) for n in range(10)]
    info = wait_until(lambda: next((c for c in board.conductors()
                                    if c["name"] == "c1" and not c.get("ready", True)), None),
                      what="c1 to report NOT READY")
    assert "logbook" in info["reason"] and info["not_ready_since"]
    assert {board.get(j.uuid).state for j in jobs} <= {JobState.UNCLAIMED, JobState.CLAIMED}
    with Logbook(logbook_url, auto_upgrade=True):
        pass                              # an admin runs `jobboard logbook upgrade`
    for job in jobs:
        assert board.wait(job.uuid, timeout=60).ok
    assert all(board.get(j.uuid).deaths == 0 for j in jobs)
    wait_until(lambda: all(c.get("ready", True) for c in board.conductors()),
               what="c1 to be READY again")


def test_a_conductor_refuses_to_start_on_a_logbook_it_cannot_use(board, tmp_path):
    logbook = Logbook(f"sqlite:///{tmp_path}/empty.db", auto_upgrade=False)
    conductor = Conductor(board, logbook, name="c1")
    with pytest.raises(LogbookError, match="schema"):
        conductor.run()
    assert board.conductors() == []
