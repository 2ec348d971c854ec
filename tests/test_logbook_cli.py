"""`jobboard logbook ...` against a real logbook database."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from jobboard.cli import main
from jobboard.logbook import AtomDetail, Failure
from jobboard.states import AtomState, FlowState

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture
def filled(logbook):
    logbook.take_over("job-1", 3, "conductor-a", name="provision")
    logbook.save_flow("job-1", "provision", FlowState.FAILURE, token=3)
    logbook.save_atom("job-1", AtomDetail(
        name="attach", state=AtomState.SUCCESS, result={"id": "att-1"}, attempts=1,
        started_at=T0, finished_at=T0 + timedelta(seconds=1.5)), token=3)
    logbook.save_atom("job-1", AtomDetail(
        name="notify", state=AtomState.FAILURE, attempts=3, started_at=T0,
        failure=Failure("builtins.ValueError", "boom", "Traceback (most recent call last):\n"
                        "  ...\nValueError: boom\n")), token=3)
    return logbook


def _run(args, url):
    return CliRunner().invoke(main, ["logbook", *args, "--logbook", url])


def test_show_text(filled, logbook_url):
    result = _run(["show", "job-1"], logbook_url)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "provision" in out and "FAILURE" in out and "conductor-a" in out
    attach = next(line for line in out.splitlines() if line.startswith("attach"))
    assert "SUCCESS" in attach and "1.500s" in attach
    notify = next(line for line in out.splitlines() if line.startswith("notify"))
    assert "FAILURE" in notify and " 3 " in notify and "builtins.ValueError: boom" in notify
    assert "ValueError: boom" in out.split("notify failure:")[1]


def test_show_json(filled, logbook_url):
    result = _run(["show", "job-1", "--json"], logbook_url)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["logbook"]["token"] == 3 and doc["flow"]["state"] == "FAILURE"
    atoms = {a["name"]: a for a in doc["atoms"]}
    assert atoms["attach"]["duration"] == 1.5 and atoms["attach"]["result"] == {"id": "att-1"}
    assert atoms["attach"]["started_at"] == T0.isoformat()
    assert atoms["notify"]["failure"]["exc_type"] == "builtins.ValueError"
    assert atoms["notify"]["attempts"] == 3 and atoms["notify"]["duration"] is None


def test_show_missing_is_one_error_line(filled, logbook_url):
    result = _run(["show", "nope"], logbook_url)
    assert result.exit_code == 1
    assert "no logbook for job nope" in result.output
    assert "Traceback" not in result.output


def test_list_upgrade_and_prune(filled, logbook_url):
    listed = _run(["list", "--json", "--limit", "5"], logbook_url)
    assert listed.exit_code == 0, listed.output
    assert [i["job_id"] for i in json.loads(listed.output)["logbooks"]] == ["job-1"]
    assert _run(["upgrade"], logbook_url).exit_code == 0
    kept = _run(["prune", "--older-than", "1"], logbook_url)
    assert kept.exit_code == 0 and "removed 0" in kept.output
    pruned = _run(["prune", "--older-than", "0"], logbook_url)
    assert pruned.exit_code == 0 and "removed 1" in pruned.output
    assert "(none)" in _run(["list"], logbook_url).output


@pytest.fixture
def retried(filled):
    """job-1's first attempt failed (``filled``); the second one is running."""
    filled.take_over("job-1", 7, "conductor-b", attempt=2)
    filled.save_flow("job-1", "provision", FlowState.RUNNING, token=7)
    filled.save_atom("job-1", AtomDetail(name="attach", state=AtomState.RUNNING,
                                         attempts=1, started_at=T0), token=7)
    return filled


def test_show_lists_every_attempt(retried, logbook_url):
    result = _run(["show", "job-1"], logbook_url)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "attempts: 2 (current 2)" in out
    first, second = out.split("attempt 1: ")[1].split("attempt 2: ")
    assert first.startswith("provision  FAILURE") and "builtins.ValueError: boom" in first
    assert second.startswith("provision  RUNNING") and "notify" not in second
    attach = [line for line in out.splitlines() if line.startswith("attach")]
    assert "SUCCESS" in attach[0] and "RUNNING" in attach[1]


def test_show_json_has_every_attempt_and_the_current_flow(retried, logbook_url):
    result = _run(["show", "job-1", "--json"], logbook_url)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["job_id"] == "job-1" and doc["logbook"]["attempt"] == 2
    assert [a["attempt"] for a in doc["attempts"]] == [1, 2]
    first, second = doc["attempts"]
    assert (first["state"], second["state"]) == ("FAILURE", "RUNNING")
    assert [t["name"] for t in first["tasks"]] == ["attach", "notify"]
    assert first["tasks"][1]["failure"]["message"] == "boom"
    assert [t["state"] for t in second["tasks"]] == ["RUNNING"]
    assert set(first) >= {"attempt", "name", "state", "created_at", "updated_at", "meta",
                          "tasks"}
    # the keys from before attempts were kept describe the current attempt
    assert doc["flow"]["state"] == "RUNNING" and doc["flow"]["attempt"] == 2
    assert [a["name"] for a in doc["atoms"]] == ["attach"]


def test_show_of_a_new_attempt_without_flow(filled, logbook_url):
    filled.take_over("job-1", 9, "conductor-c", attempt=2)
    text = _run(["show", "job-1"], logbook_url).output
    assert "attempts: 1 (current 2)" in text and "attempt 2: (no flow yet)" in text
    doc = json.loads(_run(["show", "job-1", "--json"], logbook_url).output)
    assert doc["flow"] is None and doc["atoms"] == [] and len(doc["attempts"]) == 1


def test_list_shows_the_attempt(retried, logbook_url):
    listed = json.loads(_run(["list", "--json"], logbook_url).output)["logbooks"]
    assert [(i["job_id"], i["attempt"], i["flow_state"]) for i in listed] == \
        [("job-1", 2, "RUNNING")]
    assert "ATTEMPT" in _run(["list"], logbook_url).output


def test_schema_errors_name_the_fix(logbook_url):
    """A server logbook nobody migrated: one line saying what to run, then
    `logbook upgrade` migrates it (on every backend)."""
    from jobboard.cli.logbook_access import sqlite_path

    path = sqlite_path(logbook_url)
    shown = _run(["show", "job-1"], logbook_url)
    if path is None:
        assert shown.exit_code == 1
        assert "run `jobboard logbook upgrade`" in shown.output
        assert "Traceback" not in shown.output
    elif not path.exists():                       # reading never creates one
        assert shown.exit_code == 1 and f"error: no logbook at {path}" in shown.output
        assert not path.exists()
    upgraded = _run(["upgrade"], logbook_url)
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.output.startswith("created the logbook schema in ")
    again = _run(["upgrade", "--json"], logbook_url)
    assert again.exit_code == 0, again.output
    doc = json.loads(again.output)
    assert doc["action"] == "current" and doc["revision"] and "nothing to do" in doc["message"]
    assert "no logbook for job job-1" in _run(["show", "job-1"], logbook_url).output


# -- `jobboard show JOB` mentions the attempts ----------------------------------


def _show(board, zk_hosts: str, logbook_url: str, *args: str):
    return CliRunner().invoke(main, ["show", *args, "--zk", zk_hosts, "--root", "/jobboard",
                                     "--logbook", logbook_url])


def test_board_show_lists_the_attempts(board, zk_hosts, logbook, logbook_url):
    job = board.post("tests.flows:noop")
    for token, attempt, state in ((1, 1, FlowState.FAILURE), (2, 2, FlowState.RUNNING)):
        logbook.take_over(job.uuid, token, "c", attempt=attempt)
        logbook.save_flow(job.uuid, "noop", state, token=token)
    shown = _show(board, zk_hosts, logbook_url, job.uuid)
    assert shown.exit_code == 0, shown.output
    assert "attempts: 2 in the logbook (current 1)" in shown.output   # the board's count
    assert "#1 FAILURE" in shown.output and "#2 RUNNING" in shown.output
    doc = json.loads(_show(board, zk_hosts, logbook_url, job.uuid, "--json").output)
    assert [(a["attempt"], a["state"]) for a in doc["attempts"]] == \
        [(1, "FAILURE"), (2, "RUNNING")]
    assert set(doc["attempts"][0]) >= {"attempt", "state", "created_at", "updated_at"}
    assert "logbook_note" not in doc


@pytest.mark.parametrize("logbook_url", ["sqlite"], indirect=True)
def test_board_show_without_a_readable_logbook(board, zk_hosts, logbook_url, tmp_path):
    import time

    job = board.post("tests.flows:noop")
    fresh = _show(board, zk_hosts, f"sqlite:///{tmp_path}/absent.db", job.uuid)
    assert fresh.exit_code == 0 and "attempts: 0 in the logbook" in fresh.output
    assert not (tmp_path / "absent.db").exists()
    started = time.monotonic()
    down = _show(board, zk_hosts, "postgresql+psycopg://postgres@127.0.0.1:1/x", job.uuid)
    assert time.monotonic() - started < 10
    assert down.exit_code == 0, down.output
    note = [line for line in down.output.splitlines() if "attempts:" in line]
    assert len(note) == 1 and "logbook not read" in note[0] and "127.0.0.1:1" in note[0]
    doc = json.loads(_show(board, zk_hosts, "postgresql+psycopg://postgres@127.0.0.1:1/x",
                           job.uuid, "--json").output)
    assert doc["attempts"] is None and "unavailable" in doc["logbook_note"]
