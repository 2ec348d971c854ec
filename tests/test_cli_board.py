"""The board commands of the `jobboard` CLI, against a real ZooKeeper."""

from __future__ import annotations

import json

import pytest

from jobboard.board import Board
from jobboard.states import JobState


def test_post_list_show_trash(cli, zk_hosts):
    result = cli("post", "tests.flows:noop", "--arg", "n=3", "--arg", "region=eu",
                 "--store", "ids=[1,2]", "--priority", "4", "--key", "k1")
    assert result.exit_code == 0, result.output
    job_id = result.output.strip()
    again = cli("post", "tests.flows:noop", "--key", "k1", "--json")
    assert json.loads(again.output)["uuid"] == job_id

    listing = json.loads(cli("jobs", "--json").output)
    assert [j["uuid"] for j in listing["jobs"]] == [job_id]
    assert listing["jobs"][0]["args"] == {"n": 3, "region": "eu"}
    assert listing["jobs"][0]["store"] == {"ids": [1, 2]}
    table = cli("jobs", "--state", "unclaimed").output
    assert job_id in table and "UNCLAIMED" in table

    shown = json.loads(cli("show", job_id, "--json").output)
    assert shown["priority"] == 4 and shown["holder"] is None
    assert "history:" in cli("show", job_id).output

    assert cli("trash", job_id).exit_code == 0
    gone = cli("show", job_id)
    assert gone.exit_code == 1 and f"no job {job_id}" in gone.output
    assert "Traceback" not in gone.output


def test_claims_abandon_transfer_errors(cli, zk_hosts):
    with Board.connect(zk_hosts, root="/jobboard") as board:
        job = board.post("tests.flows:noop")
        board.claim(job, "conductor-a")
        claims = json.loads(cli("claims", "--json").output)["claims"]
        assert [(c["job_id"], c["owner"]) for c in claims] == [(job.uuid, "conductor-a")]
        assert "conductor-a" in cli("claims").output

        refused = cli("transfer", job.uuid, "--to", "nobody")
        assert refused.exit_code == 1
        assert "no live conductor named 'nobody'" in refused.output

        assert cli("abandon", job.uuid).exit_code == 0
        assert board.get(job.uuid).state is JobState.UNCLAIMED
        not_held = cli("abandon", job.uuid)
        assert not_held.exit_code == 1 and "is not claimed" in not_held.output

        assert cli("cancel", job.uuid).exit_code == 0
        assert board.get(job.uuid).state is JobState.CANCELLED
        assert cli("retry", job.uuid).exit_code == 0
        assert board.get(job.uuid).state is JobState.UNCLAIMED


def test_user_errors_are_one_line_without_traceback(cli):
    bad_id = cli("show", "nope")
    assert bad_id.exit_code == 2 and "not a job id" in bad_id.output
    bad_pair = cli("post", "tests.flows:noop", "--arg", "novalue")
    assert bad_pair.exit_code == 2 and "is not K=V" in bad_pair.output
    unreachable = cli("jobs", env_extra={"JOBBOARD_ZK": "127.0.0.1:1"})
    # kazoo keeps retrying a closed port until the connect timeout
    assert unreachable.exit_code == 1
    assert "cannot reach ZooKeeper at 127.0.0.1:1" in unreachable.output
    assert "Traceback" not in unreachable.output


def test_fsck_finds_repairs_and_lists_quarantined_records(cli, zk_hosts):
    with Board.connect(zk_hosts, root="/jobboard") as board:
        stranded = board.post("tests.flows:noop")
        [bucket] = board.client.get_children(board.paths.queue)
        [entry] = board.client.get_children(f"{board.paths.queue}/{bucket}")
        board.client.delete(f"{board.paths.queue}/{bucket}/{entry}")
        bad = board.post("tests.flows:noop")
        board.client.set(board.paths.job(bad.uuid), b"\xc1not msgpack")

    found = cli("fsck", "--json")
    assert found.exit_code == 1
    kinds = {(f["kind"], f["job_id"], f["repaired"]) for f in json.loads(found.output)["findings"]}
    assert kinds == {("unqueued-job", stranded.uuid, False),
                     ("malformed-record", bad.uuid, False)}
    repaired = cli("fsck", "--repair")
    assert repaired.exit_code == 0 and "unqueued-job" in repaired.output
    clean = cli("fsck")
    assert clean.exit_code == 0 and "the board is consistent" in clean.output

    listed = json.loads(cli("jobs", "--state", "MALFORMED", "--json").output)
    assert listed["jobs"] == []
    assert [m["path"] for m in listed["malformed"]] == [f"/jobboard/jobs/{bad.uuid[:2]}/{bad.uuid}"]
    waiting = json.loads(cli("jobs", "--state", "UNCLAIMED", "--json").output)
    assert [j["uuid"] for j in waiting["jobs"]] == [stranded.uuid]
    assert waiting["malformed"] == []


# ---- admin commands from every state -------------------------------------------

FACTORY = "tests.flows:noop"
STATES = ["UNCLAIMED", "DELAYED", "CLAIMED", "COMPLETE", "FAILED", "CANCELLED", "DEAD",
          "MALFORMED"]


def _make_state(board: Board, zk_hosts: str, state: str) -> str:
    """A job in ``state``, made through the Board API (a raw kazoo client for
    the malformed record); c1 holds claimed ones, c2 is a live conductor."""
    from kazoo.client import KazooClient

    from jobboard.board import Claimer

    board.register_conductor("c2", {"pid": 2})
    if state == "DELAYED":
        return board.post(FACTORY, delay=3600).uuid
    job = board.post(FACTORY)
    if state in ("CLAIMED", "COMPLETE", "FAILED"):
        board.claim(job, "c1")
        if state != "CLAIMED":
            board.consume(job.uuid, "c1", {"reason": "test"}, state=JobState(state))
    elif state == "CANCELLED":
        board.cancel(job.uuid)
    elif state == "DEAD":
        board.max_claims = 1
        claimer = Claimer(board, "c1")
        board.abandon(claimer.claim_next(), "c1", crashed=True)
        assert claimer.claim_next() is None          # dead-letters it
    elif state == "MALFORMED":
        raw = KazooClient(hosts=zk_hosts)
        raw.start(timeout=15)
        try:
            raw.set(board.paths.job(job.uuid), b"\xc1 not a record")
        finally:
            raw.stop()
            raw.close()
        return job.uuid
    expected = "UNCLAIMED" if state == "DELAYED" else state
    assert board.get(job.uuid).state.value == expected
    return job.uuid


OK = 0
NO = 1
_NOT_CLAIMED = r"job {id} is not claimed \({desc}\); nothing to {action}"
_MALFORMED = (r"job {id} is MALFORMED \(.+\); cannot {action} it: "
              r"`jobboard fsck --repair` moves the record aside")
_NOT_RETRYABLE = r"job {id} is {desc}; only FAILED, CANCELLED or DEAD jobs can be retried"
_DESC = {"DELAYED": r"UNCLAIMED, due in (60m|1h)", "CLAIMED": "CLAIMED by c1"}

# (action, state) -> (exit code, the one line's pattern, state afterwards or None: unchanged)
ADMIN_TABLE = {
    **{("abandon", s): (NO, _NOT_CLAIMED, None) for s in STATES},
    ("abandon", "CLAIMED"): (OK, r"abandoned {id} \(was held by c1\); any conductor may "
                                 "claim it now", "UNCLAIMED"),
    **{("transfer", s): (NO, _NOT_CLAIMED, None) for s in STATES},
    ("transfer", "CLAIMED"): (OK, r"transferred {id} from c1 to c2", "CLAIMED"),
    ("cancel", "UNCLAIMED"): (OK, r"cancelled {id} \(it was waiting\)", "CANCELLED"),
    ("cancel", "DELAYED"): (OK, r"cancelled {id} \(it was waiting\)", "CANCELLED"),
    ("cancel", "CLAIMED"): (OK, r"asked c1 to stop job {id}: it stops at the next task "
                                r"boundary", "CLAIMED"),
    **{("cancel", s): (NO, r"job {id} has finished \({desc}\); nothing to cancel", None)
       for s in ("COMPLETE", "FAILED", "DEAD")},
    ("cancel", "CANCELLED"): (OK, r"job {id} is already CANCELLED; nothing to do", None),
    **{("retry", s): (NO, _NOT_RETRYABLE, None)
       for s in ("UNCLAIMED", "DELAYED", "CLAIMED", "COMPLETE")},
    **{("retry", s): (OK, r"job {id} queued again as attempt 2", "UNCLAIMED")
       for s in ("FAILED", "CANCELLED", "DEAD")},
    **{("trash", s): (OK, r"trashed {id} \(was {desc}\)", "GONE")
       for s in ("UNCLAIMED", "COMPLETE", "FAILED", "CANCELLED", "DEAD")},
    ("trash", "DELAYED"): (OK, r"trashed {id} \(was UNCLAIMED\)", "GONE"),
    ("trash", "CLAIMED"): (NO, r"job {id} is CLAIMED by c1; cancel or abandon it first", None),
    **{(a, "MALFORMED"): (NO, _MALFORMED, None)
       for a in ("abandon", "transfer", "cancel", "retry", "trash")},
}


def test_admin_table_covers_every_action_and_state():
    assert set(ADMIN_TABLE) == {(a, s) for a in ("abandon", "transfer", "cancel", "retry",
                                                 "trash") for s in STATES}


@pytest.mark.parametrize("action, state", sorted(ADMIN_TABLE))
def test_admin_command_from_every_state(cli, zk_hosts, action, state):
    import re

    from jobboard.errors import JobNotFound, MalformedData

    with Board.connect(zk_hosts, root="/jobboard") as board:
        job_id = _make_state(board, zk_hosts, state)
        before = None if state == "MALFORMED" else board.get(job_id)
        extra = ["--to", "c2"] if action == "transfer" else []
        result = cli(action, job_id, *extra)
        code, pattern, after = ADMIN_TABLE[(action, state)]
        line = pattern.format(id=job_id, action=action, desc=_DESC.get(state, state))

        assert "Traceback" not in result.output
        assert result.exit_code == code, result.output
        lines = [x for x in result.output.splitlines() if x.strip()]
        assert len(lines) == 1, result.output
        if code == OK:
            assert result.stderr == ""
            assert re.match(line, lines[0]), lines[0]
        else:
            assert result.stdout == ""
            assert re.match(f"error: {line}", lines[0]), lines[0]
            if state in ("FAILED", "CANCELLED", "DEAD") and action != "retry":
                assert lines[0].endswith(f"; `jobboard retry {job_id}` runs it again")

        if state == "MALFORMED":
            with pytest.raises(MalformedData):
                board.get(job_id)
        elif after == "GONE":
            with pytest.raises(JobNotFound):
                board.get(job_id)
        else:
            now = board.get(job_id)
            assert now.state.value == (after or before.state.value)
            if after is None:
                assert now.history == before.history      # refused: nothing changed
        if (action, state) == ("cancel", "CLAIMED"):
            assert board.cancel_requested(job_id)
        if (action, state) == ("transfer", "CLAIMED"):
            assert board.get(job_id).transfer_to == "c2"
        if action == "retry" and code == OK:
            assert board.get(job_id).attempt == 2


def test_unknown_job_is_one_line_for_every_admin_command(cli):
    missing = "00000000-0000-4000-8000-000000000000"
    for action in ("abandon", "cancel", "retry", "trash"):
        result = cli(action, missing)
        assert result.exit_code == 1
        assert result.output.strip() == f"error: no job {missing} on the board"
    result = cli("transfer", missing, "--to", "c2")
    assert result.exit_code == 1 and "no job" in result.output


def test_transfer_to_a_conductor_that_is_not_live_says_where_to_look(cli, zk_hosts):
    with Board.connect(zk_hosts, root="/jobboard") as board:
        job = board.post(FACTORY)
        board.claim(job, "c1")
        result = cli("transfer", job.uuid, "--to", "nobody")
        assert result.exit_code == 1
        assert result.output.strip() == ("error: no live conductor named 'nobody'; see "
                                         "`jobboard conductors` for the live ones")
        same = cli("transfer", job.uuid, "--to", "c1")
        assert same.exit_code == 1 and "already held by c1" in same.output
        assert board.claim_owner(job.uuid) == "c1"


# ---- attempts and deaths in listings ---------------------------------------------

def test_jobs_and_show_print_attempt_and_deaths(cli, zk_hosts):
    with Board.connect(zk_hosts, root="/jobboard") as board:
        job = board.post(FACTORY)
        board.claim(job, "c1")
        board.consume(job.uuid, "c1", {"reason": "boom"}, state=JobState.FAILED)
        board.retry(job.uuid)
        board.abandon(board.claim(job.uuid, "c1"), "c1", crashed=True)
    table = cli("jobs").output.splitlines()
    header = table[0].split()
    assert header[:6] == ["JOB", "NAME", "STATE", "PRIO", "ATTEMPT", "CLAIMS"]
    row = next(line.split() for line in table if line.startswith(job.uuid))
    assert row[header.index("ATTEMPT")] == "2"
    listed = json.loads(cli("jobs", "--json").output)["jobs"][0]
    assert (listed["attempt"], listed["deaths"]) == (2, 1)
    shown = cli("show", job.uuid).output
    assert "attempt: 2" in shown and "deaths: 1" in shown
    doc = json.loads(cli("show", job.uuid, "--json").output)
    assert (doc["attempt"], doc["deaths"]) == (2, 1)


# ---- conductors: readiness ----------------------------------------------------------

def test_conductors_show_ready_and_not_ready_with_the_reason(cli, zk_hosts):
    import time

    with Board.connect(zk_hosts, root="/jobboard") as board:
        board.register_conductor("old", {"pid": 1})      # a record from before readiness
        board.register_conductor("ok", {"pid": 2, "ready": True, "reason": None,
                                        "not_ready_since": None})
        board.register_conductor("sick", {
            "pid": 3, "ready": False, "not_ready_since": time.time() - 12,
            "reason": "logbook unavailable: connection refused"})
        result = cli("conductors")
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0].split()[:2] == ["NAME", "STATE"] and lines[0].rstrip().endswith("REASON")
        rows = {line.split()[0]: line for line in lines[2:]}
        assert rows["old"].split()[1] == "READY" and rows["old"].rstrip().endswith("-")
        assert rows["ok"].split()[1] == "READY"
        assert "NOT READY" in rows["sick"]
        assert "logbook unavailable: connection refused (for 1" in rows["sick"]

        listed = {c["name"]: c for c in json.loads(cli("conductors", "--json").output)
                  ["conductors"]}
        assert (listed["old"]["ready"], listed["old"]["reason"],
                listed["old"]["not_ready_since"]) == (True, None, None)
        assert listed["sick"]["ready"] is False
        assert listed["sick"]["reason"] == "logbook unavailable: connection refused"
        assert listed["sick"]["not_ready_since"] > 0


# ---- claims: the running task from the logbook --------------------------------------------

def test_claims_show_the_running_task_progress_note_and_heartbeat(cli, zk_hosts, tmp_path):
    import time

    from jobboard.logbook import AtomDetail, Logbook
    from jobboard.states import AtomState, FlowState

    url = f"sqlite:///{tmp_path}/logbook.db"
    with Board.connect(zk_hosts, root="/jobboard") as board:
        busy = board.claim(board.post(FACTORY), "c1")
        idle = board.claim(board.post(FACTORY), "c1")      # claimed, nothing run yet
        token = busy.claim.token
        with Logbook(url, auto_upgrade=True) as book:
            book.take_over(busy.uuid, token, "c1", name="noop")
            book.save_flow(busy.uuid, "noop", FlowState.RUNNING, token=token)
            book.save_atom(busy.uuid, AtomDetail("fetch", state=AtomState.SUCCESS,
                                                 meta={"progress": 1.0}), token=token)
            book.save_atom(busy.uuid, AtomDetail("resize", state=AtomState.RUNNING, meta={
                "progress": 0.4, "note": "image 4 of 10", "heartbeat_at": time.time() - 3}),
                token=token)

        result = cli("claims")
        assert result.exit_code == 0 and result.stderr == "", result.output
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["JOB", "OWNER", "SINCE", "TOKEN", "TASK", "PROGRESS",
                                    "HEARTBEAT", "NOTE"]
        rows = {line.split()[0]: line for line in lines[2:]}
        assert "resize  40%" in rows[busy.uuid] and "image 4 of 10" in rows[busy.uuid]
        assert any(f"{s}s ago" in rows[busy.uuid] for s in (3, 4, 5, 6))
        assert rows[idle.uuid].split()[-4:] == ["-", "-", "-", "-"]

        doc = json.loads(cli("claims", "--json").stdout)
        assert doc["logbook_error"] is None
        by_id = {c["job_id"]: c for c in doc["claims"]}
        assert by_id[busy.uuid]["task"] == "resize"
        assert by_id[busy.uuid]["progress"] == 0.4
        assert by_id[busy.uuid]["note"] == "image 4 of 10"
        assert time.time() - by_id[busy.uuid]["heartbeat_at"] < 60
        assert [t["name"] for t in by_id[busy.uuid]["tasks"]] == ["resize"]
        assert by_id[idle.uuid]["task"] is None and by_id[idle.uuid]["tasks"] == []


def test_claims_are_listed_when_the_logbook_cannot_be_read(cli, zk_hosts):
    import time

    unreachable = "postgresql+psycopg://jb:s3cret@127.0.0.1:1/nothing"
    with Board.connect(zk_hosts, root="/jobboard") as board:
        job = board.claim(board.post(FACTORY), "c1")
        started = time.monotonic()
        result = cli("claims", "--logbook", unreachable)
        assert time.monotonic() - started < 20
        assert result.exit_code == 0, result.output
        warning = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(warning) == 1 and warning[0].startswith("warning: cannot read the logbook")
        assert "s3cret" not in result.stderr
        row = next(line for line in result.stdout.splitlines() if line.startswith(job.uuid))
        assert "c1" in row and row.split()[-4:] == ["?", "?", "?", "?"]
        doc = json.loads(cli("claims", "--json", "--logbook", unreachable).stdout)
        assert [c["job_id"] for c in doc["claims"]] == [job.uuid]
        assert doc["claims"][0]["task"] is None and doc["logbook_error"]
