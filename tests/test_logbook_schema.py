"""The logbook's schema: migrating 0001 -> 0002 with data, migrating under a
database lock when processes start together, and ``check()`` telling an
outage from a broken schema from a misconfiguration. Real SQLite,
PostgreSQL and MySQL."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from jobboard import serialization
from jobboard.errors import (LogbookError, LogbookSchemaError, LogbookUnavailable,
                             StaleOwner)
from jobboard.logbook import AtomDetail, Logbook, _db
from jobboard.states import AtomState, FlowState
from jobboard.testing.databases import mysql_base_url, postgres_base_url

pytestmark = pytest.mark.timeout(90)

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def _at_revision(url: str, revision: str) -> None:
    engine = _db.make_engine(url)
    try:
        _db.upgrade(engine, revision)
    finally:
        engine.dispose()


def _execute(url: str, statement: str, **params: object) -> None:
    engine = _db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def _fill_0001(url: str) -> None:
    """A job with a flow and two atoms, as release 0001 wrote them."""
    engine = _db.make_engine(url)
    meta = serialization.dumps({})
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO logbooks (job_id, name, owner, token, created_at, updated_at) "
                "VALUES ('job', 'provision', 'old-conductor', 5, :t, :t)"), {"t": T0})
            conn.execute(text(
                "INSERT INTO flowdetails (job_id, name, state, meta, created_at, updated_at) "
                "VALUES ('job', 'provision', 'FAILURE', :m, :t, :t)"), {"m": meta, "t": T0})
            flow_id = conn.execute(text("SELECT id FROM flowdetails")).scalar_one()
            for name, result in (("attach", "att-1"), ("notify", None)):
                conn.execute(text(
                    "INSERT INTO atomdetails (flow_id, name, kind, state, result, attempts,"
                    " meta, created_at, updated_at) VALUES (:f, :n, 'task', 'SUCCESS', :r, 1,"
                    " :m, :t, :t)"),
                    {"f": flow_id, "n": name, "m": meta, "t": T0,
                     "r": None if result is None else serialization.dumps(result)})
    finally:
        engine.dispose()


# -- migrations --------------------------------------------------------------


def test_upgrade_from_0001_keeps_flows_as_attempt_1(logbook_url):
    _at_revision(logbook_url, "0001")
    _fill_0001(logbook_url)
    with Logbook(logbook_url, auto_upgrade=False, retry_max_delay=2.0) as book:
        with pytest.raises(LogbookSchemaError, match="at revision 0001, this release needs"):
            book.check()
        with pytest.raises(LogbookSchemaError, match="jobboard logbook upgrade"):
            book.take_over("job", 6, "new")               # no attempt column yet
        book.upgrade()
        book.check()
        flow = book.load_flow("job")
        assert (flow.attempt, flow.state, flow.name) == (1, FlowState.FAILURE, "provision")
        assert flow.atoms["attach"].result == "att-1" and list(flow.atoms) == ["attach", "notify"]
        info = book.get_logbook("job")
        assert (info.attempt, info.token, info.flow_state) == (1, 5, FlowState.FAILURE)
        with pytest.raises(StaleOwner):                   # the old token is kept
            book.take_over("job", 4, "older")
        book.take_over("job", 6, "new", attempt=2)
        book.save_flow("job", "provision", FlowState.RUNNING, token=6)
        book.save_atom("job", AtomDetail(name="attach", state=AtomState.RUNNING), token=6)
        assert [f.attempt for f in book.attempts("job")] == [1, 2]
        assert book.load_flow("job", attempt=1).atoms["attach"].result == "att-1"


def test_downgrade_to_0001_keeps_the_current_attempt(logbook_url):
    from alembic import command

    with Logbook(logbook_url, auto_upgrade=True) as book:
        for token, attempt in ((1, 1), (2, 2)):
            book.take_over("job", token, "a", attempt=attempt)
            book.save_flow("job", "f", FlowState.SUCCESS, token=token, meta={"n": attempt})
            book.save_atom("job", AtomDetail(name="a", result=attempt), token=token)
        engine = _db.make_engine(logbook_url)
        try:
            with engine.connect() as conn, _db._sqlite_foreign_keys_off(conn):
                command.downgrade(_db.alembic_config(conn), "0001")
                conn.commit()
            with engine.connect() as conn:
                assert _db.current_revision(conn) == "0001"
                rows = conn.execute(text("SELECT meta FROM flowdetails")).scalars().all()
                assert [serialization.loads(r) for r in rows] == [{"n": 2}]
                assert conn.execute(text("SELECT COUNT(*) FROM atomdetails")).scalar() == 1
        finally:
            engine.dispose()
        book.upgrade()
        assert [(f.attempt, f.atoms["a"].result) for f in book.attempts("job")] == [(1, 2)]


def _open_together_in_threads(url: str, count: int) -> list[BaseException]:
    start, errors, books = threading.Barrier(count), [], []

    def open_one() -> None:
        try:
            start.wait(timeout=20)
            books.append(Logbook(url, auto_upgrade=True))
        except Exception as exc:  # noqa: BLE001 - collected and asserted
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    for book in books:
        book.close()
    return errors


def _assert_at_head(url: str) -> None:
    with Logbook(url, auto_upgrade=False) as book:
        book.check()
        book.take_over("j", 1, "a", attempt=2)
        assert book.get_logbook("j").attempt == 2


def test_threads_opening_a_fresh_database_together_migrate_it_once(logbook_url):
    assert _open_together_in_threads(logbook_url, 6) == []
    _assert_at_head(logbook_url)


OPEN_AND_CHECK = """
import sys
from jobboard.logbook import Logbook
with Logbook(sys.argv[1], auto_upgrade=True) as book:
    book.check()
print("ok")
"""


def test_processes_opening_a_fresh_database_together_migrate_it_once(logbook_url):
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AND_CHECK, logbook_url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 3, outputs
    assert all(out.strip() == "ok" for out, _err in outputs)
    _assert_at_head(logbook_url)


@contextlib.contextmanager
def _migration_lock_held_elsewhere(url: str) -> Iterator[None]:
    engine = _db.make_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SELECT pg_advisory_lock({_db.MIGRATION_LOCK_ID})"))
            else:
                assert conn.execute(text("SELECT GET_LOCK(:n, 1)"),
                                    {"n": _db.MYSQL_LOCK_NAME}).scalar() == 1
            conn.commit()
            yield
            conn.rollback()
    finally:
        engine.dispose()        # closing the session releases its lock


def test_a_migration_lock_held_too_long_is_an_error(logbook_url, monkeypatch):
    if logbook_url.startswith("sqlite"):
        pytest.skip("the SQLite migration lock is a file lock on this machine")
    monkeypatch.setattr(_db, "MIGRATION_LOCK_TIMEOUT", 1)
    with _migration_lock_held_elsewhere(logbook_url):
        started = time.monotonic()
        with pytest.raises(LogbookError, match="migration lock") as caught:
            Logbook(logbook_url, auto_upgrade=True)
        assert time.monotonic() - started < 10
        assert not isinstance(caught.value, LogbookUnavailable)
    with Logbook(logbook_url, auto_upgrade=True) as book:   # released: it proceeds
        book.check()


# -- check(): outage, schema, configuration ------------------------------------


def test_check_passes_on_a_healthy_database(logbook):
    started = time.monotonic()
    for _ in range(5):
        logbook.check()
    assert time.monotonic() - started < 5


def test_check_on_a_database_without_schema(logbook_url):
    with Logbook(logbook_url, auto_upgrade=False) as book:
        with pytest.raises(LogbookSchemaError, match="no logbook schema in") as caught:
            book.check()
        assert caught.value.revision is None and caught.value.head == _db.head_revision()
        assert "jobboard logbook upgrade" in str(caught.value)
        with pytest.raises(LogbookSchemaError):           # ordinary calls say so too
            book.load_flow("job")


def test_check_on_an_old_and_on_a_newer_revision(logbook_url):
    _at_revision(logbook_url, "0001")
    with Logbook(logbook_url, auto_upgrade=False) as book:
        with pytest.raises(LogbookSchemaError) as old:
            book.check()
        assert (old.value.revision, old.value.head) == ("0001", _db.head_revision())
        assert "run `jobboard logbook upgrade`" in str(old.value)
        book.upgrade()
        _execute(logbook_url, f"UPDATE {_db.VERSION_TABLE} SET version_num = '0099'")
        with pytest.raises(LogbookSchemaError, match="newer jobboard release") as newer:
            book.check()
        assert newer.value.revision == "0099"


def test_check_of_a_missing_sqlite_file_does_not_create_it(tmp_path):
    path = tmp_path / "absent.db"
    with Logbook(f"sqlite:///{path}", auto_upgrade=False) as book:
        with pytest.raises(LogbookSchemaError, match="no logbook schema"):
            book.check()
    assert not path.exists()


def _server_url(backend: str, **changes: object) -> str:
    base = postgres_base_url() if backend == "postgresql" else mysql_base_url()
    return make_url(base).set(**changes).render_as_string(hide_password=False)


def _reachable(backend: str) -> None:
    try:
        with Logbook(_server_url(backend), auto_upgrade=False, retry_attempts=1) as book:
            book._engine.connect().close()
    except LogbookError as exc:
        pytest.skip(f"{backend} not reachable: {exc}")


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_check_on_a_database_that_does_not_exist(backend):
    _reachable(backend)
    name = f"absent_{uuid.uuid4().hex[:8]}"
    url = _server_url(backend, database=name, password="s3cret")
    with Logbook(url, auto_upgrade=False, retry_max_delay=30) as book:
        started = time.monotonic()
        with pytest.raises(LogbookError, match=name) as caught:
            book.check()
        with pytest.raises(LogbookError) as call:         # no retries for 30 s either
            book.load_flow("job")
        assert time.monotonic() - started < 5
    for error in (caught.value, call.value):
        assert type(error) is LogbookError, error
        assert "s3cret" not in str(error) and "***" in str(error)
        assert len(str(error).splitlines()) == 1


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_check_with_an_unknown_user(backend):
    _reachable(backend)
    url = _server_url(backend, username=f"nobody_{uuid.uuid4().hex[:6]}")
    with Logbook(url, auto_upgrade=False) as book:
        with pytest.raises(LogbookError) as caught:
            book.check()
    assert type(caught.value) is LogbookError and "nobody_" in str(caught.value)


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_check_where_nothing_listens_is_unavailable_quickly(backend):
    with socket.socket() as probe:          # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = _server_url(backend, port=port)
    with Logbook(url, auto_upgrade=False) as book:
        started = time.monotonic()
        with pytest.raises(LogbookUnavailable, match=f"127.0.0.1:{port}"):
            book.check()
        assert time.monotonic() - started < 3


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """A port whose kernel completes TCP handshakes but where nobody ever
    answers: the client waits for a greeting that never comes."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_check_of_a_server_that_never_answers_is_bounded(backend):
    with _silent_server() as port:
        url = _server_url(backend, port=port)
        with Logbook(url, auto_upgrade=False) as book:
            started = time.monotonic()
            with pytest.raises(LogbookUnavailable):
                book.check()
            elapsed = time.monotonic() - started
    assert elapsed < _db.PROBE_TIMEOUTS.connect + 2


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_calls_to_a_server_that_never_answers_give_up_in_bounded_time(backend):
    """The driver's timeouts bound each attempt, retry_max_delay the retries:
    no call hangs through an outage. (pymysql waits for the server's greeting
    with its read_timeout, 30 s by default; shortened here.)"""
    with _silent_server() as port:
        url = _server_url(backend, port=port)
        connect_args = {"connect_timeout": 2}
        if backend == "mysql":
            connect_args["read_timeout"] = 2
        options = {"connect_args": connect_args}
        with Logbook(url, auto_upgrade=False, retry_max_delay=3.0,
                     engine_options=options) as book:
            started = time.monotonic()
            with pytest.raises(LogbookUnavailable):
                book.take_over("job", 1, "a")
            elapsed = time.monotonic() - started
    assert elapsed < 3.0 + 2 + 1    # retry_max_delay, one attempt's timeout, slack


def test_driver_timeouts_defer_to_the_url():
    pg = _db._connect_args("postgresql+psycopg://u@h/db?connect_timeout=9", _db.DEFAULT_TIMEOUTS)
    assert "connect_timeout" not in pg
    assert pg["tcp_user_timeout"] == 30_000 and pg["keepalives"] == 1
    my = _db._connect_args("mysql+pymysql://u@h/db", _db.PROBE_TIMEOUTS)
    assert (my["connect_timeout"], my["read_timeout"], my["write_timeout"]) == (3, 3, 3)
    assert _db._connect_args("sqlite:///x.db", _db.DEFAULT_TIMEOUTS)["timeout"] == 5.0


def test_database_retry_stops_before_its_total_delay():
    """No attempt starts once its backoff would end past max_delay: the call
    gives up within max_delay plus one attempt."""
    from jobboard.retry import database_retry

    slept: list[float] = []
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    def failing() -> None:
        calls.append(time.monotonic())
        time.sleep(0.2)                       # an attempt that takes a while
        raise ConnectionError("down")

    policy = database_retry(lambda exc: True, attempts=100, max_delay=1.0, sleep=sleep)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        policy(failing)
    elapsed = time.monotonic() - started
    assert 1 < len(calls) < 100
    # the last attempt started in time (its backoff planned to end within
    # max_delay; a sleep may overshoot by a scheduler tick)
    assert calls[-1] - started < 1.0 + 0.1
    assert elapsed < 1.0 + 0.2 + 0.3
