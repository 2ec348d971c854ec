"""The board commands of the `jobboard` CLI, against a real ZooKeeper."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from jobboard.board import Board
from jobboard.cli import main
from jobboard.states import JobState


@pytest.fixture
def run(zk_hosts, tmp_path):
    runner = CliRunner()
    env = {"JOBBOARD_ZK": zk_hosts, "JOBBOARD_ROOT": "/cli",
           "JOBBOARD_LOGBOOK": f"sqlite:///{tmp_path}/logbook.db"}

    def invoke(*args: str):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def test_post_list_show_trash(run, zk_hosts):
    result = run("post", "tests.flows:noop", "--arg", "n=3", "--arg", "region=eu",
                 "--store", "ids=[1,2]", "--priority", "4", "--key", "k1")
    assert result.exit_code == 0, result.output
    job_id = result.output.strip()
    again = run("post", "tests.flows:noop", "--key", "k1", "--json")
    assert json.loads(again.output)["uuid"] == job_id

    listing = json.loads(run("jobs", "--json").output)
    assert [j["uuid"] for j in listing["jobs"]] == [job_id]
    assert listing["jobs"][0]["args"] == {"n": 3, "region": "eu"}
    assert listing["jobs"][0]["store"] == {"ids": [1, 2]}
    table = run("jobs", "--state", "unclaimed").output
    assert job_id in table and "UNCLAIMED" in table

    shown = json.loads(run("show", job_id, "--json").output)
    assert shown["priority"] == 4 and shown["holder"] is None
    assert "history:" in run("show", job_id).output

    assert run("trash", job_id).exit_code == 0
    gone = run("show", job_id)
    assert gone.exit_code == 1 and f"no job {job_id}" in gone.output
    assert "Traceback" not in gone.output


def test_claims_abandon_transfer_errors(run, zk_hosts):
    with Board.connect(zk_hosts, root="/cli") as board:
        job = board.post("tests.flows:noop")
        board.claim(job, "conductor-a")
        claims = json.loads(run("claims", "--json").output)["claims"]
        assert [(c["job_id"], c["owner"]) for c in claims] == [(job.uuid, "conductor-a")]
        assert "conductor-a" in run("claims").output

        refused = run("transfer", job.uuid, "--to", "nobody")
        assert refused.exit_code == 1
        assert "no live conductor named 'nobody'" in refused.output

        assert run("abandon", job.uuid).exit_code == 0
        assert board.get(job.uuid).state is JobState.UNCLAIMED
        not_held = run("abandon", job.uuid)
        assert not_held.exit_code == 1 and "is not claimed" in not_held.output

        assert run("cancel", job.uuid).exit_code == 0
        assert board.get(job.uuid).state is JobState.CANCELLED
        assert run("retry", job.uuid).exit_code == 0
        assert board.get(job.uuid).state is JobState.UNCLAIMED


def test_user_errors_are_one_line_without_traceback(run):
    bad_id = run("show", "nope")
    assert bad_id.exit_code == 2 and "not a job id" in bad_id.output
    bad_pair = run("post", "tests.flows:noop", "--arg", "novalue")
    assert bad_pair.exit_code == 2 and "is not K=V" in bad_pair.output
    unreachable = CliRunner().invoke(main, ["jobs"], env={"JOBBOARD_ZK": "127.0.0.1:1"},
                                     catch_exceptions=False)
    # kazoo keeps retrying a closed port until the connect timeout
    assert unreachable.exit_code == 1
    assert "cannot reach ZooKeeper at 127.0.0.1:1" in unreachable.output
    assert "Traceback" not in unreachable.output


def test_fsck_finds_repairs_and_lists_quarantined_records(run, zk_hosts):
    with Board.connect(zk_hosts, root="/cli") as board:
        stranded = board.post("tests.flows:noop")
        [bucket] = board.client.get_children(board.paths.queue)
        [entry] = board.client.get_children(f"{board.paths.queue}/{bucket}")
        board.client.delete(f"{board.paths.queue}/{bucket}/{entry}")
        bad = board.post("tests.flows:noop")
        board.client.set(board.paths.job(bad.uuid), b"\xc1not msgpack")

    found = run("fsck", "--json")
    assert found.exit_code == 1
    kinds = {(f["kind"], f["job_id"], f["repaired"]) for f in json.loads(found.output)["findings"]}
    assert kinds == {("unqueued-job", stranded.uuid, False),
                     ("malformed-record", bad.uuid, False)}
    repaired = run("fsck", "--repair")
    assert repaired.exit_code == 0 and "unqueued-job" in repaired.output
    clean = run("fsck")
    assert clean.exit_code == 0 and "the board is consistent" in clean.output

    listed = json.loads(run("jobs", "--state", "MALFORMED", "--json").output)
    assert listed["jobs"] == []
    assert [m["path"] for m in listed["malformed"]] == [f"/cli/jobs/{bad.uuid[:2]}/{bad.uuid}"]
    waiting = json.loads(run("jobs", "--state", "UNCLAIMED", "--json").output)
    assert [j["uuid"] for j in waiting["jobs"]] == [stranded.uuid]
    assert waiting["malformed"] == []
