"""Suspend and resume (the second table in jobboard.states) on a real
ZooKeeper: a waiting or delayed job at once, a claimed one through its
holder (the Board API, and a real conductor process stopping at a task
boundary), a holder that dies with a request pending, refusals, the repair
sweep, and the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from jobboard.board import Board, Claimer
from jobboard.cli import main
from jobboard.errors import InvalidTransition, NotClaimed
from jobboard.states import JobState
from jobboard.testing.flows import read_journal
from test_conductor import (board as fleet_board, conductor_process, fleet,  # noqa: F401
                            logbook_url, output_of, stop_process, wait_until)

NOOP = "tests.flows:noop"
FIVE = "jobboard.testing.flows:five_steps"


def findings_of(board: Board, job_id: str) -> list[str]:
    return [f.kind for f in board.fsck() if f.job_id == job_id]


def test_a_waiting_job_is_suspended_at_once_and_resumed_ahead(board):
    first, suspended = board.post(NOOP), board.post(NOOP)
    assert board.suspend(suspended.uuid) is JobState.SUSPENDED
    assert board.index.entries_of(board.get(suspended.uuid), 0) == []
    assert suspended.uuid not in list(board.index.waiting_ids()), "its entry was left"
    assert findings_of(board, suspended.uuid) == []
    claimer = Claimer(board, "c1")
    assert claimer.claim_next().uuid == first.uuid
    assert claimer.claim_next() is None, "a suspended job was claimed"
    assert board.suspend(suspended.uuid) is JobState.SUSPENDED     # again: a no-op
    later = board.post(NOOP)
    resumed = board.resume(suspended.uuid)
    assert resumed.state is JobState.UNCLAIMED
    assert [e["event"] for e in resumed.history][-2:] == ["suspended", "resumed"]
    assert claimer.claim_next().uuid == suspended.uuid, "not put back ahead of its priority"
    assert claimer.claim_next().uuid == later.uuid
    assert findings_of(board, suspended.uuid) == []


def test_a_delayed_job_is_suspended_and_waits_for_its_time_after_resume(board):
    job = board.post(NOOP, delay=3600)
    assert len(list(board.index.delayed_entries())) == 1
    assert board.suspend(job.uuid) is JobState.SUSPENDED
    assert list(board.index.delayed_entries()) == []
    assert findings_of(board, job.uuid) == []
    board.resume(job.uuid)
    ((_, entry),) = list(board.index.delayed_entries())
    assert entry.job_id == job.uuid
    assert Claimer(board, "c1").claim_next() is None            # not due yet
    assert findings_of(board, job.uuid) == []


def test_a_claimed_job_is_suspended_by_its_holder(board):
    job = board.post(NOOP)
    held = Claimer(board, "c1").claim_next()
    assert board.suspend(job.uuid) is JobState.CLAIMED
    assert board.suspend_requested(job.uuid)
    assert not board.cancel_requested(job.uuid)
    assert findings_of(board, job.uuid) == []                   # a request for a held job
    suspended = board.suspend_held(held, "c1", working=True)
    assert suspended.state is JobState.SUSPENDED and board.get(job.uuid).owner is None
    assert suspended.history[-1]["owner"] == "c1"
    for path in (board.paths.claim(job.uuid), board.paths.running_marker(job.uuid),
                 board.paths.suspend_request(job.uuid), board.paths.working_marker(job.uuid)):
        assert board.client.exists(path) is None, f"{path} left behind"
    assert findings_of(board, job.uuid) == []
    with pytest.raises(NotClaimed):
        board.suspend_held(job.uuid, "c1")


def test_a_holder_that_dies_with_a_request_pending_leaves_the_job_suspended(board, zk_hosts):
    job = board.post(NOOP)
    holder = Board.connect(zk_hosts, root="/jobboard", session_timeout=4.0)
    try:
        assert Claimer(holder, "c1").claim_next().uuid == job.uuid
        assert board.suspend(job.uuid) is JobState.CLAIMED
    finally:
        holder.close()                                          # its claim vanishes
    wait_until(lambda: board.claim_owner(job.uuid) is None, what="the claim to vanish")
    assert Claimer(board, "c2").claim_next() is None, "the orphan went back to the queue"
    after = board.get(job.uuid)
    assert after.state is JobState.SUSPENDED and after.deaths == 1
    assert not board.suspend_requested(job.uuid)
    assert board.client.exists(board.paths.running_marker(job.uuid)) is None
    assert findings_of(board, job.uuid) == []


def test_a_request_that_outlived_a_put_back_is_honoured(board):
    """The holder gave the job back (say its logbook failed) as the request
    landed: the repair sweep suspends the waiting job rather than drop the
    request."""
    job = board.post(NOOP)
    held = Claimer(board, "c1").claim_next()
    board.suspend(job.uuid)
    board.abandon(held, "c1")
    assert board.get(job.uuid).state is JobState.UNCLAIMED
    found = [f for f in board.fsck(repair=True) if f.job_id == job.uuid]
    assert [(f.kind, f.repaired) for f in found] == [("stray-suspend", True)]
    assert board.get(job.uuid).state is JobState.SUSPENDED
    assert findings_of(board, job.uuid) == []


def test_a_stray_request_of_a_finished_job_is_reported_and_dropped(board):
    job = board.post(NOOP)
    held = Claimer(board, "c1").claim_next()
    board.suspend(job.uuid)
    board.consume(held, "c1", {})                 # finished before it saw the request
    found = [f for f in board.fsck(repair=True) if f.job_id == job.uuid]
    assert [(f.kind, f.repaired) for f in found] == [("stray-suspend", True)]
    assert not board.suspend_requested(job.uuid)
    assert board.get(job.uuid).state is JobState.COMPLETE


def test_refusals_are_one_line(board):
    done = board.post(NOOP)
    board.consume(board.claim(done.uuid, "c1"), "c1", {})
    waiting = board.post(NOOP)
    for call, job_id in ((board.suspend, done.uuid), (board.resume, waiting.uuid),
                         (board.resume, done.uuid)):
        with pytest.raises(InvalidTransition) as raised:
            call(job_id)
        message = str(raised.value)
        assert "\n" not in message and job_id in message
    suspended = board.post(NOOP)
    board.suspend(suspended.uuid)
    with pytest.raises(InvalidTransition, match="only FAILED, CANCELLED or DEAD"):
        board.retry(suspended.uuid)
    assert board.cancel(suspended.uuid) is JobState.CANCELLED


def test_cli_suspend_and_resume_by_prefix_with_json(board, zk_hosts):
    job = board.post(NOOP)
    runner = CliRunner()
    base = ["--zk", zk_hosts, "--root", "/jobboard"]
    result = runner.invoke(main, ["suspend", job.uuid[:8], "--json", *base])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["job_id"], doc["action"], doc["previous_state"], doc["state"]) == \
        (job.uuid, "suspend", "UNCLAIMED", "SUSPENDED")
    result = runner.invoke(main, ["suspend", job.uuid, *base])
    assert result.exit_code == 0 and "already SUSPENDED" in result.stdout
    result = runner.invoke(main, ["retry", job.uuid, *base])
    assert result.exit_code == 1 and f"jobboard resume {job.uuid}" in result.stderr
    result = runner.invoke(main, ["resume", job.uuid[:8], "--json", *base])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["action"], doc["previous_state"], doc["state"]) == \
        ("resume", "SUSPENDED", "UNCLAIMED")
    result = runner.invoke(main, ["resume", job.uuid, *base])
    assert result.exit_code == 1 and result.stdout == ""
    assert "not SUSPENDED" in result.stderr and "\n" not in result.stderr.strip()


def test_a_running_job_is_suspended_at_a_task_boundary_and_resumed(fleet_board, zk_hosts,
                                                                    logbook_url, tmp_path):
    """On real conductor processes: step3 runs when the request comes; the
    holder lets it finish, starts nothing more and records SUSPENDED; the
    other conductor, idle, never claims it; resumed, it runs step4 and step5
    only."""
    board = fleet_board
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    procs = {name: conductor_process(zk_hosts, logbook_url, name) for name in ("c1", "c2")}
    try:
        job = board.post(FIVE, args={"journal": journal, "hold_at": "step3", "gate": gate})
        wait_until(lambda: "step3-holding" in read_journal(journal), what="step3 to hold")
        holder = board.claim_owner(job.uuid)
        assert board.suspend(job.uuid) is JobState.CLAIMED
        wait_until(lambda: "suspend requested" in output_of(procs[holder]),
                   what="the holder to see the request")
        open(gate, "w").close()                       # step3 finishes: the boundary
        wait_until(lambda: board.get(job.uuid).state is JobState.SUSPENDED,
                   what="the job to be suspended")
        assert read_journal(journal) == ["step1", "step2", "step3", "step3-holding"]
        assert board.claims() == [] and findings_of(board, job.uuid) == []
        # Both conductors go on claiming, but not the suspended job.
        others = [board.post(FIVE, args={"journal": str(tmp_path / f"other{n}")})
                  for n in range(4)]
        assert all(board.wait(o.uuid, timeout=30).ok for o in others)
        assert board.get(job.uuid).state is JobState.SUSPENDED
        assert board.get(job.uuid).claims == 1
        board.resume(job.uuid)
        outcome = board.wait(job.uuid, timeout=30)
        assert outcome.ok, outcome
        ran = [line for line in read_journal(journal) if not line.endswith("-holding")]
        assert ran == ["step1", "step2", "step3", "step4", "step5"], ran
        assert findings_of(board, job.uuid) == []
    finally:
        for proc in procs.values():
            stop_process(proc)


def test_a_request_left_on_a_job_given_back_stops_its_next_holder_first(fleet_board, fleet,
                                                                         tmp_path):
    """A request that raced with a put-back: the next holder suspends the job
    before running any task."""
    board = fleet_board
    journal = str(tmp_path / "journal")
    job = board.post(FIVE, args={"journal": journal})
    board.client.create(board.paths.suspend_request(job.uuid), makepath=True)
    fleet.start("c1")
    wait_until(lambda: board.get(job.uuid).state is JobState.SUSPENDED,
               what="the job to be suspended")
    assert read_journal(journal) == [] and not board.suspend_requested(job.uuid)
    board.resume(job.uuid)
    assert board.wait(job.uuid, timeout=30).ok
    assert read_journal(journal) == [f"step{n}" for n in range(1, 6)]


def test_the_console_suspends_and_resumes_by_the_cli_table(board, logbook_url):
    pytest.importorskip("starlette")
    from test_web import TestClient, csrf_of

    from jobboard.cli.admin_rules import Action, refusal
    from jobboard.web.app import create_app

    job = board.post(NOOP)
    with TestClient(create_app(board, logbook_url, live=False)) as client:
        headers = {"X-CSRF-Token": csrf_of(client)}
        doc = client.get(f"/api/jobs/{job.uuid}").json()
        assert doc["actions"]["suspend"] is None
        assert doc["actions"]["resume"] == refusal(Action.RESUME, job)
        done = client.post(f"/api/jobs/{job.uuid}/suspend", headers=headers)
        assert done.status_code == 200 and "suspended" in done.json()["message"]
        assert board.get(job.uuid).state is JobState.SUSPENDED
        refused = client.post(f"/api/jobs/{job.uuid}/retry", headers=headers)
        assert refused.status_code == 409 and "jobboard resume" in refused.json()["error"]
        done = client.post(f"/api/jobs/{job.uuid}/resume", headers=headers)
        assert done.status_code == 200 and "resumed" in done.json()["message"]
        assert board.get(job.uuid).state is JobState.UNCLAIMED
