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
    assert [i["job_id"] for i in json.loads(listed.output)] == ["job-1"]
    assert _run(["upgrade"], logbook_url).exit_code == 0
    kept = _run(["prune", "--older-than", "1"], logbook_url)
    assert kept.exit_code == 0 and "removed 0" in kept.output
    pruned = _run(["prune", "--older-than", "0"], logbook_url)
    assert pruned.exit_code == 0 and "removed 1" in pruned.output
    assert "(none)" in _run(["list"], logbook_url).output
