"""User errors of the `jobboard` CLI: one `error:` line on stderr, a non-zero
exit code (2 for usage errors), never a traceback; and credentials that stay
out of `ps`. Real ZooKeeper from the fixtures; processes where the real
process matters (logging, exit codes, the command line others can see)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jobboard
from jobboard.board import _zk
from jobboard.cli import CONNECT_TIMEOUT
from jobboard.errors import ConfigError
from jobboard.testing.zookeeper import free_port

pytestmark = pytest.mark.timeout(120)

SOURCE_ROOT = str(Path(jobboard.__file__).resolve().parent.parent)


def _error_line(stderr: str) -> str:
    """The one non-empty stderr line, which must be an `error:` line."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBBOARD_")}
    env["PYTHONPATH"] = SOURCE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _spawn(args: list[str], cwd: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobboard", *args], cwd=cwd,
                            env=_env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run(args: list[str], cwd: Path, timeout: float = 60, **extra: str):
    return subprocess.run([sys.executable, "-m", "jobboard", *args], cwd=cwd, env=_env(**extra),
                          capture_output=True, text=True, timeout=timeout)


def _auth_file(tmp_path: Path, content: str = "svc:s3cret-pw\n", mode: int = 0o600,
               name: str = "zk-auth") -> Path:
    path = tmp_path / name
    path.write_text(content)
    path.chmod(mode)
    return path


# ---- the connection string -----------------------------------------------------

@pytest.mark.parametrize("hosts, says", [
    ("127.0.0.1:99999", "port 99999"),
    ("127.0.0.1:0", "port 0"),
    ("zk1:", "port (empty)"),
    ("zk1:2181,,zk2:2181", "empty host"),
    ("zk1:2181//double", "chroot"),
    ("zk 1:2181", "is not host:port"),
    ("", "no ZooKeeper address"),
])
def test_bad_connection_strings_are_one_line(cli, hosts, says):
    result = cli("jobs", "--zk", hosts)
    assert result.exit_code == 1
    line = _error_line(result.stderr)
    assert says in line and "--zk" in line and "ValueError" not in line


def test_bad_connection_string_in_the_api_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="host:port"):
        _zk.make_client("127.0.0.1:99999")

    def refuse(*_args, **_options):
        raise ValueError("bad hostname")

    # kazoo's own host parsing is what raises; the client is built through
    # the bounded-call factory when there is one
    monkeypatch.setattr(_zk, "bounded_client" if hasattr(_zk, "bounded_client")
                        else "KazooClient", refuse)
    with pytest.raises(ConfigError, match="bad hostname") as caught:
        _zk.make_client("zk1:2181", auth=("svc", "s3cret-pw"))
    assert isinstance(caught.value.__cause__, ValueError)
    assert "s3cret-pw" not in str(caught.value)


def test_missing_chroot_is_one_line(cli, zk_server):
    result = cli("jobs", "--zk", zk_server.address + "/no-such-chroot-here")
    assert result.exit_code == 1
    assert "chroot /no-such-chroot-here" in _error_line(result.stderr)


def test_refused_connection_fails_soon_with_one_line(tmp_path):
    port = free_port()      # nothing listens there
    started = time.monotonic()
    done = _run(["jobs", "--zk", f"127.0.0.1:{port}"], tmp_path)
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    line = _error_line(done.stderr)        # no kazoo WARNING lines
    assert f"cannot reach ZooKeeper at 127.0.0.1:{port}" in line
    assert "Connection refused" in line
    assert elapsed < CONNECT_TIMEOUT + 10


# ---- usage errors ----------------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["--bogus", "jobs"], "No such option"),
    (["nosuch"], "No such command"),
    (["post"], "Missing argument"),
    (["post", "tests.flows:noop", "--priority", "100000"], "--priority"),
    (["conductor"], "--allow"),
    (["logbook", "prune"], "--older-than"),
    (["conductor", "--allow", "x", "--executor", "fork"], "'fork' is not one of"),
    (["conductor", "--allow", "x", "--task-timeout", "0"], "'0' is not a positive number"),
    (["conductor", "--allow", "x", "--task-timeout", "-5"], "'-5' is not a positive number"),
    (["conductor", "--allow", "x", "--task-timeout", "inf"], "'inf' is not a positive number"),
    (["conductor", "--allow", "x", "--stop-timeout", "nan"], "'nan' is not a positive number"),
    (["conductor", "--allow", "x", "--stop-timeout", "soon"], "'soon' is not a positive"),
])
def test_usage_errors_are_one_line_with_exit_code_2(cli, args, says):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    line = _error_line(result.stderr)
    assert says in line and "--help" in line


def test_bare_group_still_shows_its_help(cli):
    for args in ([], ["logbook"]):
        result = cli(*args)
        assert result.exit_code == 2
        assert "Usage:" in result.output and "error:" not in result.output


# ---- board-level refusals (InvalidArgument from the board) ----------------------

@pytest.mark.parametrize("args, says", [
    (["post", "myapp.flows"], "factory"),          # not package.module:function
    (["post", "myapp.flows:"], "factory"),
    (["show", "garbage"], "garbage"),              # not a job id (nor a prefix of one)
])
def test_bad_arguments_are_one_line(cli, args, says):
    result = cli(*args)
    assert result.exit_code != 0
    assert says in _error_line(result.stderr)


def test_unknown_job_is_one_line(cli):
    result = cli("show", "00000000-0000-0000-0000-000000000000")
    assert result.exit_code == 1
    assert "no job" in _error_line(result.stderr)


# ---- credentials -------------------------------------------------------------------

def test_auth_file_end_to_end(cli, tmp_path):
    secret = _auth_file(tmp_path)
    posted = cli("post", "tests.flows:noop", "--auth-file", str(secret))
    assert posted.exit_code == 0, posted.output
    job_id = posted.stdout.strip()
    listed = cli("jobs", "--json", "--auth-file", str(secret))
    assert listed.exit_code == 0, listed.output
    assert [j["uuid"] for j in json.loads(listed.stdout)["jobs"]] == [job_id]
    assert listed.stderr == ""             # mode 600: no warning
    by_env = cli("jobs", "--json", env_extra={"JOBBOARD_AUTH_FILE": str(secret)})
    assert [j["uuid"] for j in json.loads(by_env.stdout)["jobs"]] == [job_id]
    by_secret_env = cli("jobs", "--json", env_extra={"JOBBOARD_AUTH": "svc:s3cret-pw"})
    assert [j["uuid"] for j in json.loads(by_secret_env.stdout)["jobs"]] == [job_id]

    # without the credentials the board is not readable: one line, no secret
    refused = cli("jobs")
    assert refused.exit_code == 1
    assert "s3cret-pw" not in _error_line(refused.stderr)


def test_auth_precedence_flag_env_config(cli, tmp_path):
    good = _auth_file(tmp_path)
    bad = _auth_file(tmp_path, "svc:wrong\n", name="wrong-auth")
    assert cli("post", "tests.flows:noop", "--auth-file", str(good)).exit_code == 0

    def works(*args: str, env_extra: dict | None = None) -> bool:
        result = cli("jobs", "--json", *args, env_extra=env_extra)
        if result.exit_code != 0:
            _error_line(result.stderr)
        return result.exit_code == 0

    (tmp_path / "jobboard.toml").write_text(f'auth_file = "{bad}"\n')
    assert not works()
    assert works(env_extra={"JOBBOARD_AUTH_FILE": str(good)})        # env > config
    assert works(env_extra={"JOBBOARD_AUTH": "svc:s3cret-pw"})       # env > config
    assert not works("--auth-file", str(bad), env_extra={"JOBBOARD_AUTH_FILE": str(good)})
    assert works("--auth-file", str(good), env_extra={"JOBBOARD_AUTH": "svc:wrong"})  # flag > env
    assert works("--auth", "svc:s3cret-pw", env_extra={"JOBBOARD_AUTH_FILE": str(bad)})
    (tmp_path / "jobboard.toml").write_text(f'[jobs]\nauth_file = "{good}"\n')
    assert works()


@pytest.mark.parametrize("content, says", [
    ("", "one line USER:PASSWORD"),
    ("no-colon-here\n", "one line USER:PASSWORD"),
    (":s3cret-pw\n", "one line USER:PASSWORD"),
    ("svc:s3cret-pw\nsecond:line\n", "one line USER:PASSWORD"),
])
def test_badly_formed_auth_file_is_one_line(cli, tmp_path, content, says):
    path = _auth_file(tmp_path, content)
    result = cli("jobs", "--auth-file", str(path))
    assert result.exit_code == 1
    line = _error_line(result.stderr)
    assert says in line and str(path) in line and "s3cret-pw" not in line


def test_missing_or_unreadable_auth_file_is_one_line(cli, tmp_path):
    missing = cli("jobs", "--auth-file", str(tmp_path / "nope"))
    assert missing.exit_code == 1 and "does not exist" in _error_line(missing.stderr)
    directory = cli("jobs", "--auth-file", str(tmp_path))
    assert directory.exit_code == 1 and "directory" in _error_line(directory.stderr)
    if os.geteuid() != 0:      # root reads anything
        locked = _auth_file(tmp_path, mode=0o000)
        unreadable = cli("jobs", "--auth-file", str(locked))
        assert unreadable.exit_code == 1 and "not readable" in _error_line(unreadable.stderr)


def test_auth_file_readable_by_others_warns_but_works(cli, tmp_path):
    open_file = _auth_file(tmp_path, mode=0o644)
    assert cli("post", "tests.flows:noop", "--auth-file", str(open_file)).exit_code == 0
    result = cli("jobs", "--json", "--auth-file", str(open_file))
    assert result.exit_code == 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "chmod 600" in lines[0] and "s3cret-pw" not in lines[0]
    assert len(json.loads(result.stdout)["jobs"]) == 1


def test_auth_and_auth_file_together_is_a_usage_error(cli, tmp_path):
    path = _auth_file(tmp_path)
    result = cli("jobs", "--auth", "svc:s3cret-pw", "--auth-file", str(path))
    assert result.exit_code == 2
    assert "--auth-file" in _error_line(result.stderr)
    both_env = cli("jobs", env_extra={"JOBBOARD_AUTH": "svc:x", "JOBBOARD_AUTH_FILE": str(path)})
    assert both_env.exit_code == 1 and "unset one" in _error_line(both_env.stderr)


def test_auth_help_says_it_is_visible_in_ps(cli):
    text = " ".join(cli("jobs", "--help").stdout.split())
    assert "--auth-file" in text and "Visible to every user in ps" in text


# ---- the conductor -------------------------------------------------------------------

def _conductor_args(zk_hosts: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["conductor", "--zk", zk_hosts, "--root", "/fleet", "--allow", "jobboard.testing",
            "--logbook", f"sqlite:///{tmp_path}/logbook.db", "--session-timeout", "4",
            *extra]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    proc.communicate(timeout=10)


def test_second_conductor_with_the_same_name_is_one_line(zk_hosts, tmp_path):
    secret = _auth_file(tmp_path)
    first = _spawn(_conductor_args(zk_hosts, tmp_path, "--name", "x",
                                   "--auth-file", str(secret)), tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert first.poll() is None, first.communicate()
            listed = _run(["conductors", "--json", "--zk", zk_hosts, "--root", "/fleet",
                           "--auth-file", str(secret)], tmp_path)
            assert listed.returncode == 0, listed.stderr
            if "x" in [c["name"] for c in json.loads(listed.stdout)["conductors"]]:
                break
            assert time.monotonic() < deadline, "the first conductor never registered"
            time.sleep(0.2)

        # the password is not on the command line others can read (read once
        # the process runs: /proc/PID/cmdline is empty while it is being exec'd)
        cmdline = Path(f"/proc/{first.pid}/cmdline").read_bytes()
        assert b"s3cret-pw" not in cmdline and str(secret).encode() in cmdline

        second = _run(_conductor_args(zk_hosts, tmp_path, "--name", "x",
                                      "--auth-file", str(secret)), tmp_path, timeout=60)
        assert second.returncode == 1
        assert "a conductor named 'x' is already running" in _error_line(second.stderr)
        assert first.poll() is None         # the first one carries on
    finally:
        _stop(first)
    assert first.returncode == 0


def test_bad_conductor_settings_from_the_environment_are_one_line(cli):
    result = cli("conductor", "--allow", "x", env_extra={"JOBBOARD_STOP_TIMEOUT": "0"})
    assert result.exit_code == 2
    line = _error_line(result.stderr)
    assert "--stop-timeout" in line and "JOBBOARD_STOP_TIMEOUT" in line
    result = cli("conductor", "--allow", "x", env_extra={"JOBBOARD_EXECUTOR": "green"})
    assert result.exit_code == 2 and "'green' is not one of" in _error_line(result.stderr)


def _postgres_url(database: str, password: str | None = None) -> str:
    """The test PostgreSQL server's URL naming ``database``; skips (fails
    under CI=true) when the server is not there."""
    from sqlalchemy.engine import make_url

    from jobboard.testing.databases import (DatabaseUnavailable, isolated_database,
                                            postgres_base_url, skip_or_fail)

    try:
        with isolated_database("postgresql"):
            pass
    except DatabaseUnavailable as exc:
        skip_or_fail(exc)
    url = make_url(postgres_base_url()).set(database=database)
    if password is not None:
        url = url.set(password=password)
    return url.render_as_string(hide_password=False)


def _refused(zk_hosts: str, tmp_path: Path, logbook: str) -> tuple[str, float]:
    """Start a conductor on ``logbook``; it must exit 1 with one line."""
    started = time.monotonic()
    done = _run(_conductor_args(zk_hosts, tmp_path, "--logbook", logbook), tmp_path,
                timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    line = _error_line(done.stderr)
    assert line.startswith("error: conductor not started: "), line
    assert "conductor" not in done.stdout
    return line, elapsed


def test_conductor_refuses_a_postgresql_database_that_does_not_exist(zk_hosts, tmp_path):
    url = _postgres_url("jobboard_no_such_database", password="s3cret-pw")
    line, _ = _refused(zk_hosts, tmp_path, url)
    assert "jobboard_no_such_database" in line and "does not exist" in line
    assert "s3cret-pw" not in line and "postgres:***@" in line
    assert "check the database name, user and password in --logbook" in line


def test_conductor_refuses_a_database_port_where_nothing_listens(zk_hosts, tmp_path):
    port = free_port()
    url = f"postgresql+psycopg://jobboard:s3cret-pw@127.0.0.1:{port}/jobboard"
    line, elapsed = _refused(zk_hosts, tmp_path, url)
    assert f"127.0.0.1:{port}" in line and "s3cret-pw" not in line
    assert "check that the database server is up" in line
    assert elapsed < 20     # bounded: a few seconds of retries plus start-up


def test_conductor_refuses_a_sqlite_file_in_a_missing_directory(zk_hosts, tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    line, _ = _refused(zk_hosts, tmp_path, f"sqlite:///{missing}/logbook.db")
    assert f"directory {missing} does not exist" in line
    assert not missing.exists()


def test_conductor_brings_an_empty_postgresql_logbook_up_to_date(zk_hosts, tmp_path):
    from jobboard.logbook import Logbook
    from jobboard.testing.databases import isolated_database

    _postgres_url("probe")      # skips when there is no PostgreSQL
    with isolated_database("postgresql") as url:
        proc = _spawn(_conductor_args(zk_hosts, tmp_path, "--name", "fresh",
                                      "--logbook", url), tmp_path)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.communicate()
                listed = _run(["conductors", "--json", "--zk", zk_hosts, "--root", "/fleet"],
                              tmp_path)
                if "fresh" in [c["name"] for c in json.loads(listed.stdout)["conductors"]]:
                    break
                assert time.monotonic() < deadline, "the conductor never registered"
                time.sleep(0.2)
        finally:
            _stop(proc)
        assert proc.returncode == 0
        with Logbook(url, auto_upgrade=False) as book:
            book.check()        # the schema is current


def test_busy_metrics_port_is_one_line(zk_hosts, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = _run(_conductor_args(zk_hosts, tmp_path, "--metrics-port", str(port)), tmp_path)
    assert done.returncode == 1
    line = _error_line(done.stderr)
    assert f"cannot listen on 0.0.0.0:{port}: address in use" in line
    assert "--metrics-port" in line


def test_busy_exporter_port_is_one_line(cli):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cli("exporter", "--addr", "127.0.0.1", "--port", str(port))
    assert result.exit_code == 1
    assert "address in use; pick another --port" in _error_line(result.stderr)


# ---- the config file -------------------------------------------------------------------

@pytest.mark.parametrize("toml, says", [
    ('zookeeper = "127.0.0.1:2181"\n', "'zookeeper'"),
    ('[conductor]\nconcurency = 8\n', "'conductor.concurency'"),
    ('[conductor]\nconcurrency = "8"\n', "conductor.concurrency must be an integer"),
    ('[conductor]\nconcurrency = 0\n', "conductor.concurrency has a bad value"),
    ('[conductor]\nallow = "myapp"\n', "conductor.allow must be a list"),
    ('[nosuch]\nzk = "a:1"\n', "'[nosuch]'"),
    ('zk = 2181\n', "zk must be a string"),
    ('[jobs]\njson = "yes"\n', "jobs.json must be true/false"),
    ('[jobs]\nstate = "sleepy"\n', "jobs.state has a bad value"),
    ('[logbook.prune]\nolder_than = "a week"\n', "logbook.prune.older_than must be"),
    ('[logbook]\nconcurrency = 3\n', "'logbook.concurrency'"),
])
def test_bad_config_keys_and_types_are_one_line(cli, tmp_path, toml, says):
    (tmp_path / "jobboard.toml").write_text(toml)
    result = cli("jobs")
    assert result.exit_code == 1
    line = _error_line(result.stderr)
    assert says in line and "jobboard.toml" in line


def test_config_file_keys_are_long_option_names(cli, tmp_path):
    (tmp_path / "jobboard.toml").write_text("[jobs]\njson = true\n")
    result = cli("jobs")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["jobs"] == []
