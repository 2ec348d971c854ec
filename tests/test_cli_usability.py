"""The CLI as a new user finds it (issue 15): --json on every command, job id
prefixes, readable results and failures with distinct exit codes, the jobs
listing, the default logbook location, clear start-up messages. Real
ZooKeeper and SQLite; processes where the process matters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import jobboard
from jobboard.board import Board, Claimer
from jobboard.board.lookup import AmbiguousJobId, resolve_job_id
from jobboard.cli import ExitCode, main
from jobboard.errors import InvalidArgument, JobNotFound
from jobboard.states import JobState

pytestmark = pytest.mark.timeout(120)

FACTORY = "tests.flows:noop"
SOURCE_ROOT = str(Path(jobboard.__file__).resolve().parent.parent)
TRACE = ('Traceback (most recent call last):\n  File "myapp/flows.py", line 9, in execute\n'
         '    raise ValueError("disk full")\nValueError: disk full\n')


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBBOARD_")}
    env["PYTHONPATH"] = SOURCE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _spawn(args: list[str], cwd: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobboard", *args], cwd=cwd,
                            env=_env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _read_json_object(stream) -> dict:
    """One indented JSON object from a process's stdout (ends with a '}' line)."""
    lines = []
    for line in stream:
        lines.append(line)
        if line.rstrip() == "}":
            return json.loads("".join(lines))
    raise AssertionError(f"no JSON object on stdout: {''.join(lines)!r}")


def _stop(proc: subprocess.Popen, signum: int = signal.SIGTERM) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=10)


# ---- --json everywhere ------------------------------------------------------------

def _leaves(group: click.Group, path: str = "jobboard"):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _leaves(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def test_every_command_takes_json():
    leaves = dict(_leaves(main))
    assert {"jobboard post", "jobboard transfer", "jobboard exporter",
            "jobboard logbook list", "jobboard dev zookeeper"} <= set(leaves)
    missing = [path for path, command in leaves.items()
               if not any(isinstance(p, click.Option) and "--json" in p.opts
                          for p in command.params)]
    assert missing == []


def test_admin_commands_print_one_json_object(cli, board):
    board.register_conductor("c2", {"pid": 2})
    job = board.claim(board.post(FACTORY), "c1")

    moved = cli("transfer", job.uuid, "--to", "c2", "--json")
    assert moved.exit_code == 0, moved.output
    doc = json.loads(moved.stdout)
    assert (doc["job_id"], doc["action"], doc["holder"], doc["to"]) == \
        (job.uuid, "transfer", "c1", "c2")

    waiting = board.post(FACTORY)
    cancelled = json.loads(cli("cancel", waiting.uuid, "--json").stdout)
    assert (cancelled["previous_state"], cancelled["state"]) == ("UNCLAIMED", "CANCELLED")
    retried = json.loads(cli("retry", waiting.uuid, "--json").stdout)
    assert (retried["state"], retried["attempt"]) == ("UNCLAIMED", 2)
    again = board.claim(waiting.uuid, "c1")
    abandoned = json.loads(cli("abandon", again.uuid, "--json").stdout)
    assert (abandoned["action"], abandoned["state"], abandoned["holder"]) == \
        ("abandon", "UNCLAIMED", "c1")
    trashed = json.loads(cli("trash", waiting.uuid, "--json").stdout)
    assert (trashed["previous_state"], trashed["state"]) == ("UNCLAIMED", "TRASHED")
    with pytest.raises(JobNotFound):
        board.get(waiting.uuid)

    refused = cli("trash", job.uuid, "--json")         # CLAIMED: refused, stdout empty
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: ")


def test_exporter_prints_where_it_serves_as_one_object(zk_hosts, tmp_path):
    proc = _spawn(["exporter", "--zk", zk_hosts, "--root", "/use", "--addr", "127.0.0.1",
                   "--port", "0", "--json"], tmp_path)
    try:
        doc = _read_json_object(proc.stdout)
        assert doc["port"] > 0 and doc["exporter"].endswith(f":{doc['port']}/metrics")
        import urllib.request

        with urllib.request.urlopen(doc["exporter"], timeout=10) as reply:
            assert b"jobboard_" in reply.read()
    finally:
        out, _err = _stop(proc)
    assert proc.returncode == 0 and out.strip() == ""


# ---- job id prefixes ------------------------------------------------------------------

def test_any_unique_prefix_is_a_job_id(cli, board):
    job = board.post(FACTORY)
    short = job.uuid[:8]
    shown = cli("show", short, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["uuid"] == job.uuid
    assert resolve_job_id(board, job.uuid[:13].replace("-", "").upper()) == job.uuid
    assert resolve_job_id(board, job.uuid.upper()) == job.uuid
    cancelled = cli("cancel", short)
    assert cancelled.exit_code == 0 and f"cancelled {job.uuid}" in cancelled.stdout
    missing = cli("show", "ffffffff" if not job.uuid.startswith("ff") else "00000000")
    assert missing.exit_code == 1 and "error: no job" in missing.stderr
    with pytest.raises(InvalidArgument):
        resolve_job_id(board, "not-hex")


def test_an_ambiguous_prefix_says_so_and_lists_candidates(cli, board):
    posted = [board.post(FACTORY).uuid for _ in range(17)]      # 16 hex digits: two share one
    first = {}
    for uuid in posted:
        first.setdefault(uuid[0], []).append(uuid)
    digit, shared = next((d, ids) for d, ids in sorted(first.items()) if len(ids) > 1)
    with pytest.raises(AmbiguousJobId) as caught:
        resolve_job_id(board, digit)
    assert sorted(caught.value.candidates) == sorted(shared)[:5]
    result = cli("show", digit)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith(f"error: job id prefix '{digit}' is ambiguous: it matches "
                           f"{len(shared)} jobs")
    assert all(uuid in line for uuid in sorted(shared)[:5])
    assert "give more characters" in line


def test_logbook_show_takes_a_prefix(tmp_path):
    from jobboard.logbook import Logbook
    from jobboard.states import FlowState

    url = f"sqlite:///{tmp_path}/book.db"
    with Logbook(url) as book:
        for job_id in ("abc12345-0000-4000-8000-000000000001",
                       "abd12345-0000-4000-8000-000000000002"):
            book.take_over(job_id, 1, "c1", name="n")
            book.save_flow(job_id, "n", FlowState.SUCCESS, token=1)
    runner = CliRunner()
    found = runner.invoke(main, ["logbook", "show", "abc1", "--json", "--logbook", url])
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["job_id"] == "abc12345-0000-4000-8000-000000000001"
    both = runner.invoke(main, ["logbook", "show", "ab", "--logbook", url])
    assert both.exit_code == 1 and "is ambiguous" in both.stderr and "abd12345" in both.stderr


# ---- post --wait: results, failures, exit codes ------------------------------------------

def _finished(board: Board, state: str, key: str) -> str:
    """A job posted with idempotency ``key`` and brought to ``state``."""
    job = board.post(FACTORY, key=key)
    if state == "COMPLETE":
        board.consume(board.claim(job, "c1"), "c1", {
            "flow_state": "SUCCESS", "results": {"attachment_id": "att-7", "n": [1, 2]}})
    elif state == "FAILED":
        board.consume(board.claim(job, "c1"), "c1", {
            "flow_state": "FAILURE", "results": {},
            "failure": {"exc_type": "builtins.ValueError", "message": "disk full",
                        "traceback": TRACE}}, state=JobState.FAILED)
    elif state == "CANCELLED":
        board.cancel(job.uuid)
    elif state == "DEAD":
        board.max_claims = 1
        claimer = Claimer(board, "c1")
        board.abandon(claimer.claim_next(), "c1", crashed=True)
        assert claimer.claim_next() is None
    assert board.get(job.uuid).state.value == state
    return job.uuid


@pytest.mark.parametrize("state, code", [("COMPLETE", 0), ("FAILED", 3), ("CANCELLED", 4),
                                         ("DEAD", 5)])
def test_post_wait_exit_codes(cli, board, state, code):
    job_id = _finished(board, state, key=f"k-{state}")
    assert ExitCode[state if state != "COMPLETE" else "OK"] == code
    result = cli("post", FACTORY, "--key", f"k-{state}", "--wait", "--timeout", "10")
    assert result.exit_code == code, result.output
    assert result.stdout.splitlines()[0] == f"{job_id} {state}"
    doc = json.loads(cli("post", FACTORY, "--key", f"k-{state}", "--wait", "--json").stdout)
    assert (doc["job_id"], doc["state"], doc["exit_code"], doc["timed_out"]) == \
        (job_id, state, code, False)


def test_post_wait_prints_results_and_failures_readably(cli, board):
    _finished(board, "COMPLETE", key="ok")
    done = cli("post", FACTORY, "--key", "ok", "--wait").stdout.splitlines()
    assert done[1:] == ['  attachment_id: "att-7"', "  n: [1, 2]"]

    job_id = _finished(board, "FAILED", key="bad")
    failed = cli("post", FACTORY, "--key", "bad", "--wait")
    assert failed.exit_code == ExitCode.FAILED
    lines = failed.stdout.splitlines()
    assert "  failure: builtins.ValueError: disk full" in lines
    assert "    Traceback (most recent call last):" in lines
    assert "    ValueError: disk full" in lines
    assert "\\n" not in failed.stdout and "{'exc_type'" not in failed.stdout

    shown = cli("show", job_id[:8]).stdout
    assert "    failure: builtins.ValueError: disk full" in shown.splitlines()
    assert '          raise ValueError("disk full")' in shown.splitlines()
    assert '      Traceback (most recent call last):' in shown.splitlines()
    assert "{'" not in shown and "\\n" not in shown


def test_post_wait_timeout_has_its_own_exit_code(cli):
    result = cli("post", FACTORY, "--wait", "--timeout", "0.3")
    assert result.exit_code == ExitCode.TIMEOUT == 6
    assert "did not finish within 0.3s (it is UNCLAIMED" in result.stderr
    doc = json.loads(cli("post", FACTORY, "--wait", "--timeout", "0.3", "--json").stdout)
    assert doc["timed_out"] is True and doc["state"] == "UNCLAIMED" and doc["exit_code"] == 6


def test_exit_codes_are_documented_in_help(cli):
    text = " ".join(cli("--help").stdout.split())
    assert "3 FAILED, 4 CANCELLED, 5 DEAD, 6 not finished within --timeout" in text
    post_help = " ".join(cli("post", "--help").stdout.split())
    assert "exits 0 COMPLETE, 3 FAILED, 4 CANCELLED, 5 DEAD, 6" in post_help


# ---- jobs: --limit, --sort, DUE ---------------------------------------------------------

def test_jobs_limit_sort_and_due_column(cli, board):
    first = board.post(FACTORY, priority=1)
    later = board.post(FACTORY, priority=9, delay=3600)
    last = board.post(FACTORY, priority=5)
    oldest = json.loads(cli("jobs", "--sort", "oldest", "--json").stdout)
    assert [j["uuid"] for j in oldest["jobs"]] == [first.uuid, later.uuid, last.uuid]
    newest = json.loads(cli("jobs", "--sort", "newest", "--limit", "2", "--json").stdout)
    assert [j["uuid"] for j in newest["jobs"]] == [last.uuid, later.uuid]
    assert newest["more"] is True and newest["limit"] == 2
    one = cli("jobs", "--state", "UNCLAIMED", "--limit", "1")
    assert one.exit_code == 0 and "more with a larger --limit" in one.stderr
    table = cli("jobs", "--sort", "oldest").stdout.splitlines()
    assert table[0].split()[-2:] == ["AGE", "DUE"]
    rows = {line.split()[0]: line for line in table[2:]}
    assert rows[later.uuid].rstrip().endswith(("in 60.0m", "in 59.9m", "in 1.0h"))
    assert rows[first.uuid].rstrip().endswith("-")


# ---- the default logbook ------------------------------------------------------------------

def test_default_logbook_is_a_fixed_place_and_reading_never_creates_it(tmp_path, monkeypatch):
    from jobboard import config

    monkeypatch.delenv("JOBBOARD_LOGBOOK", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    expected = tmp_path / "state" / "jobboard" / "logbook.db"
    assert config.default_logbook_url() == f"sqlite:///{expected}"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config.default_logbook_url() == \
        f"sqlite:///{tmp_path}/home/.local/state/jobboard/logbook.db"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runner = CliRunner()
    for args in (["logbook", "show", "00000000"], ["logbook", "list"],
                 ["logbook", "prune", "--older-than", "1"]):
        result = runner.invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().startswith(f"error: no logbook at {expected}")
    assert not expected.exists() and not expected.parent.exists()
    assert list(elsewhere.iterdir()) == []

    created = runner.invoke(main, ["logbook", "upgrade"], catch_exceptions=False)
    assert created.exit_code == 0 and f"created the logbook schema in {expected}" in \
        created.stdout
    monkeypatch.chdir(tmp_path)                    # the same logbook from any directory
    listed = runner.invoke(main, ["logbook", "list", "--json"], catch_exceptions=False)
    assert json.loads(listed.stdout)["logbooks"] == []
    help_text = runner.invoke(main, ["logbook", "list", "--help"]).stdout
    assert "$XDG_STATE_HOME/jobboard/logbook.db" in help_text


def test_mysql_url_without_its_driver_says_to_use_pymysql(tmp_path):
    import importlib.util

    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("MySQLdb is installed here: mysql:// works")
    result = CliRunner().invoke(main, ["logbook", "list", "--logbook",
                                       "mysql://jb:s3cret@db.example/jobboard"])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "mysql+pymysql://jb:***@db.example/jobboard" in line and "s3cret" not in line
    assert line.startswith("error: logbook mysql://jb:***@db.example/jobboard needs the "
                           "MySQLdb driver")


def test_logbook_commands_list_only_the_logbook_option():
    for name in ("show", "list", "upgrade", "prune"):
        result = CliRunner().invoke(main, ["logbook", name, "--help"])
        assert "--logbook" in result.stdout and "--json" in result.stdout
        assert "--zk" not in result.stdout and "--auth" not in result.stdout


# ---- starting a conductor: what it says ----------------------------------------------------

def _conductor(zk_hosts: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["conductor", "--zk", zk_hosts, "--root", "/use", "--logbook",
            f"sqlite:///{tmp_path}/logbook.db", *extra]


def test_allow_prefixes_that_import_nothing_are_said_at_start(zk_hosts, tmp_path):
    refused = subprocess.run([sys.executable, "-m", "jobboard",
                              *_conductor(zk_hosts, tmp_path, "--allow", "nosuch.flows")],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: conductor not started: no module nosuch.flows can be imported here, so "
        "every flow factory would be refused; check --allow and that the flows' package "
        "is installed or on PYTHONPATH")

    proc = _spawn(_conductor(zk_hosts, tmp_path, "--allow", "nosuch.flows", "--allow",
                             "jobboard.testing", "--session-timeout", "100", "--json"),
                  tmp_path)
    try:
        doc = _read_json_object(proc.stdout)         # printed once it runs
        assert doc["allow"] == ["nosuch.flows", "jobboard.testing"]
        assert doc["session_timeout"] == 60          # the test server's maxSessionTimeout
    finally:
        _out, err = _stop(proc)
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert any("--allow nosuch.flows: no such module can be imported here" in w
               for w in warnings), err
    assert any("--session-timeout 100 is outside what ZooKeeper" in w and "granted 60s" in w
               for w in warnings), err


def test_refused_connection_is_one_line_at_once(tmp_path):
    from jobboard.testing.zookeeper import free_port

    port = free_port()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "jobboard", "jobs", "--zk",
                           f"127.0.0.1:{port},localhost:{port}"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Connection refused" in lines[0], done.stderr
    assert "jobboard dev zookeeper" in lines[0]
    assert elapsed < 4.0            # no connect timeout waited for


# ---- a development ZooKeeper --------------------------------------------------------------

def test_dev_zookeeper_serves_from_a_state_directory_until_interrupted(tmp_path):
    data = tmp_path / "zk-data"
    proc = _spawn(["dev", "zookeeper", "--port", "0", "--data", str(data), "--json"], tmp_path)
    try:
        doc = _read_json_object(proc.stdout)
        assert doc["address"] == f"127.0.0.1:{doc['port']}" and doc["data_dir"] == str(data)
        with Board.connect(doc["address"], root="/dev") as board:
            posted = board.post(FACTORY).uuid
        busy = subprocess.run([sys.executable, "-m", "jobboard", "dev", "zookeeper",   # taken
                               "--port", str(doc["port"]), "--data", str(tmp_path / "b")],
                              cwd=tmp_path, env=_env(), capture_output=True, text=True,
                              timeout=60)
        assert busy.returncode == 1
        assert busy.stderr.strip() == (
            f"error: cannot listen on 127.0.0.1:{doc['port']}: address in use; pick another "
            "--port (is a ZooKeeper already running there?)")
    finally:
        _out, err = _stop(proc, signal.SIGINT)               # Ctrl-C
    assert proc.returncode == 0 and "ZooKeeper stopped" in err
    assert (data / "version-2").is_dir()                    # kept for the next run

    again = _spawn(["dev", "zookeeper", "--port", "0", "--data", str(data), "--json"], tmp_path)
    try:
        doc = _read_json_object(again.stdout)
        with Board.connect(doc["address"], root="/dev") as board:
            assert board.get(posted).uuid == posted           # the data survived
    finally:
        _stop(again)
    assert again.returncode == 0
