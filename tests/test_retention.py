"""Retention and the layout upgrade on a real ZooKeeper and a real SQLite
logbook: finished records leave the board through the elected janitor (or
``jobboard prune``) after the logbook kept their outcome, and ``wait``,
``show`` and ``jobs --state`` still answer; idempotency keys expire with
their jobs; DEAD jobs stay; a board of layout 2 is upgraded with nothing
lost."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from board_helpers import after_next_read, markers_of
from jobboard.board import Board, Claimer
from jobboard.board.layout import Bucket, Entry
from jobboard.board.retention import parse_duration
from jobboard.cli import main
from jobboard.conductor.janitor import LogbookArchive
from jobboard.errors import InvalidArgument, JobNotFound
from jobboard.logbook import Logbook
from jobboard.serialization import dumps
from jobboard.states import JobState
from test_conductor import board, fleet, logbook_url, wait_until  # noqa: F401

NOOP = "jobboard.testing.flows:noop"


def gone(board: Board, job_id: str, timeout: float = 30.0) -> None:
    """Wait (on a watch) until the job's record is deleted."""
    deleted = threading.Event()
    path = board.paths.job(job_id)
    if board.client.exists(path, watch=lambda event: deleted.set()) is None:
        return
    assert deleted.wait(timeout), f"job {job_id} was not pruned within {timeout}s"
    assert board.client.exists(path) is None


def cli(logbook_url: str, zk_hosts: str, root: str, *args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False,
                              env={"JOBBOARD_ZK": zk_hosts, "JOBBOARD_ROOT": root,
                                   "JOBBOARD_LOGBOOK": logbook_url})


def test_durations():
    assert [parse_duration(text) for text in ("7d", "12h", "30m", "45s", "0", "1.5h", 3)] == \
        [604800.0, 43200.0, 1800.0, 45.0, 0.0, 5400.0, 3.0]
    for bad in ("", "7x", "-1s", "d", True):
        with pytest.raises(InvalidArgument):
            parse_duration(bad)


def test_the_janitor_prunes_finished_jobs_and_wait_and_show_still_answer(
        board, fleet, logbook_url, zk_hosts):
    fleet.start("c1", keep_finished=1.0)
    job = board.post(NOOP, key="once")
    assert board.wait(job.uuid, timeout=30).state is JobState.COMPLETE
    cancelled = board.post(NOOP, queue="nobody")
    assert board.cancel(cancelled.uuid) is JobState.CANCELLED
    parked = board.post(NOOP, queue="nobody2")
    claimed = Claimer(board, "admin", queues=("nobody2",)).claim_next()
    board.ownership.refuse(claimed, "admin", "parked for the test", max_refusals=1)
    gone(board, job.uuid)
    gone(board, cancelled.uuid)
    # the key expired with its job: the same key posts a new job
    assert board.client.exists(board.paths.key("once")) is None
    again = board.post(NOOP, key="once")
    assert again.uuid != job.uuid
    # DEAD jobs wait for an admin
    assert board.get(parked.uuid).state is JobState.DEAD
    # wait() answers from the logbook, on a board wired to it and on the fleet's
    with Board.connect(zk_hosts, root="/fleet",
                       archive=LogbookArchive(Logbook(logbook_url))) as reader:
        outcome = reader.wait(job.uuid, timeout=5)
    assert outcome.state is JobState.COMPLETE and outcome.results == {}
    with pytest.raises(JobNotFound):
        Board(board.client, root="/fleet").wait(job.uuid, timeout=1)   # no archive
    shown = cli(logbook_url, zk_hosts, "/fleet", "show", job.uuid, "--json")
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.output)
    assert (doc["archived"], doc["state"], doc["factory"], doc["key"]) == \
        (True, "COMPLETE", NOOP, "once")
    listed = cli(logbook_url, zk_hosts, "/fleet", "jobs", "--state", "CANCELLED", "--json")
    assert [d["job_id"] for d in json.loads(listed.output)["archived"]] == [cancelled.uuid]
    waited = cli(logbook_url, zk_hosts, "/fleet", "post", NOOP, "--wait", "--timeout", "30")
    assert waited.exit_code == 0, waited.output


def test_prune_by_hand(board, logbook_url, zk_hosts):
    claimer = Claimer(board, "me", members=lambda: ["me"])
    board.post_many([{"factory": NOOP} for _ in range(5)])
    done = []
    for _ in range(5):
        job = claimer.claim_next()
        done.append(board.consume(job, "me", {"results": {"n": len(done)}}))
    claimer.stop()
    kept = cli(logbook_url, zk_hosts, "/fleet", "prune", "--older-than", "1h", "--json")
    assert json.loads(kept.output)["removed"] == 0
    assert cli(logbook_url, zk_hosts, "/fleet", "prune", "--older-than", "soon").exit_code == 2
    pruned = cli(logbook_url, zk_hosts, "/fleet", "prune", "--older-than", "0", "--json")
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.output)["removed"] == 5
    for job in done:
        with pytest.raises(JobNotFound):
            board.get(job.uuid)
    board.archive = LogbookArchive(Logbook(logbook_url))
    assert [board.wait(job.uuid, timeout=1).results for job in done] == \
        [{"n": n} for n in range(5)]
    for minute in board.client.get_children(board.paths.finished):   # the current one stays
        assert board.client.get_children(f"{board.paths.finished}/{minute}") == []


def unsound(board: Board) -> list[str]:
    """What the repair sweep finds, but the queue entries a direct claim
    leaves for claimers to drop."""
    return [f.kind for f in board.fsck() if f.kind != "stale-entry"]


def test_prune_deletes_requests_and_markers_with_the_record(board):
    """A cancel and a suspend request that outlived the finish they raced
    with, and the markers a broken board left, go in the prune's transaction."""
    requested = board.post(NOOP)
    held = board.claim(requested.uuid, "c1")
    assert board.cancel(requested.uuid) is JobState.CLAIMED
    assert board.suspend(requested.uuid) is JobState.CLAIMED
    board.consume(held, "c1", {})                      # finished before it saw them
    stray = board.post(NOOP)
    board.consume(board.claim(stray.uuid, "c1"), "c1", {}, state=JobState.FAILED)
    for path in (board.paths.claim(stray.uuid), board.paths.running_marker(stray.uuid),
                 board.paths.dead_marker(stray.uuid)):
        board.client.create(path)                      # a broken board's leftovers
    assert (len(markers_of(board, requested.uuid)), len(markers_of(board, stray.uuid))) == (2, 3)
    assert board.prune(0).removed == 2
    assert markers_of(board, requested.uuid) == markers_of(board, stray.uuid) == []
    assert unsound(board) == []


def test_a_request_dropped_while_pruning_costs_one_more_round(board, monkeypatch):
    """A marker read as there but gone before the transaction (the holder
    dropped its request) fails it; the job is pruned on the next round."""
    job = board.post(NOOP, key="k")
    held = board.claim(job.uuid, "c1")
    board.suspend(job.uuid)
    board.consume(held, "c1", {})
    read = board.retention._read_dependents

    def dropped_meanwhile(job):
        answer = read(job)
        monkeypatch.setattr(board.retention, "_read_dependents", read)   # once

        def late() -> list[str]:
            present = answer()
            board.drop_suspend_request(job.uuid)
            return present
        return late

    monkeypatch.setattr(board.retention, "_read_dependents", dropped_meanwhile)
    assert board.prune(0).removed == 1
    assert markers_of(board, job.uuid) == [] and board.client.exists(board.paths.key("k")) is None
    assert unsound(board) == []


def test_a_cancel_racing_the_prune_leaves_no_request(board, monkeypatch):
    """The admin reads the job CLAIMED; before its request lands the holder
    finishes it and the janitor prunes it: no request is made for the job
    that is gone (it used to be, for the repair sweep to find)."""
    job = board.post(NOOP)
    held = board.claim(job.uuid, "c1")

    def finish_and_prune(_job_id: str) -> None:
        board.consume(held, "c1", {})
        assert board.prune(0).removed == 1

    after_next_read(monkeypatch, board, finish_and_prune)
    with pytest.raises(JobNotFound):
        board.cancel(job.uuid)
    assert markers_of(board, job.uuid) == []


def test_the_repair_sweep_deletes_markers_of_a_pruned_job(board):
    """Markers an older release or a crash left after the record went (a
    cancel or suspend request made without the record check, a dead or
    running marker, a claim) are each reported and deleted."""
    job = board.post(NOOP)
    board.consume(board.claim(job.uuid, "c1"), "c1", {})
    assert board.prune(0).removed == 1
    for path in board.paths.markers(job.uuid):
        board.client.create(path)
    found = sorted((f.kind, f.repaired) for f in board.fsck(repair=True)
                   if f.kind != "stale-entry")
    assert found == [("claim-not-running", True), ("dead-marker", True),
                     ("stale-cancel", True), ("stray-suspend", True)]
    assert markers_of(board, job.uuid) == [] and unsound(board) == []


def write_layout_2(board: Board, count: int) -> list[str]:
    """A board as layout 2 left it: entries directly under {root}/queue, no
    finished index, marker 2. Returns the waiting job ids in claim order."""
    client, paths = board.client, board.paths
    ids = []
    for n in range(count):
        job, data = board.posting.prepare(NOOP, priority=5 if n == 2 else 0)
        client.create(paths.job(job.uuid), data)
        number = 0 if n == 3 else 1                    # one put back (restore bucket)
        bucket = f"{paths.queues}/{Bucket(job.priority, number).name}"
        client.create(f"{bucket}/{Entry.prefix(job.uuid, 0)}", b"", sequence=True,
                      makepath=True)
        ids.append(job.uuid)
    finished, data = board.posting.prepare(NOOP)
    finished = finished.with_event("complete", state=JobState.COMPLETE, finished_at=1000.0,
                                   outcome={"results": {}})
    client.create(paths.job(finished.uuid), finished.encode())
    client.delete(paths.queue)            # layout 2 had no queue directories
    client.set(paths.layout, dumps({"layout": 2}))
    return [ids[2], ids[3]] + [ids[n] for n in (0, 1, 4)], finished.uuid


def test_upgrade_moves_an_old_layout_board_and_loses_nothing(zk_hosts, logbook_url):
    with Board.connect(zk_hosts, root="/old") as setup:
        order, finished = write_layout_2(setup, 5)
    with Board.connect(zk_hosts, root="/old") as old:
        assert old.layout_version == 2
        assert Claimer(old, "c", members=lambda: ["c"]).claim_next() is None
        assert sorted(j.uuid for j in old.jobs("UNCLAIMED")) == sorted(order)  # still listed
    upgraded = cli(logbook_url, zk_hosts, "/old", "upgrade", "--json")
    assert upgraded.exit_code == 0, upgraded.output
    assert json.loads(upgraded.output) == {"from": 2, "to": 3, "moved": 5, "indexed": 1}
    with Board.connect(zk_hosts, root="/old") as board:
        assert board.layout_version == 3
        assert [n for n in board.client.get_children(board.paths.queues)] == ["default"]
        assert board.fsck() == []
        claimer = Claimer(board, "c", members=lambda: ["c"])
        assert [claimer.claim_next().uuid for _ in order] == order
        assert claimer.claim_next() is None
        claimer.stop()
        # a straggler of an old poster: the repair sweep moves it
        job, data = board.posting.prepare(NOOP)
        board.client.create(board.paths.job(job.uuid), data)
        board.client.create(f"{board.paths.queues}/{Bucket(0, 1).name}/"
                            f"{Entry.prefix(job.uuid, 0)}", b"", sequence=True, makepath=True)
        findings = board.fsck(repair=True)
        assert [(f.kind, f.repaired) for f in findings] == [("old-layout-entry", True)]
        assert Claimer(board, "d", members=lambda: ["d"]).claim_next().uuid == job.uuid
        assert board.prune(0).removed == 1        # the indexed finished job
        with pytest.raises(JobNotFound):
            board.get(finished)


def test_a_conductor_upgrades_the_board_it_starts_on(zk_hosts, fleet):
    with Board.connect(zk_hosts, root="/fleet") as setup:
        order, _ = write_layout_2(setup, 5)
    fleet.start("c1")
    with Board.connect(zk_hosts, root="/fleet") as board:
        for job_id in order:
            assert board.wait(job_id, timeout=30).state is JobState.COMPLETE
    with Board.connect(zk_hosts, root="/fleet") as board:    # set up after the upgrade
        assert board.layout_version == 3
