"""Contract tests of the SQL logbook, run against SQLite, PostgreSQL and MySQL."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, exc as sa_exc, text, update

from driver_log import logged_logbook
import jobboard.logbook as logbook_pkg
from jobboard.errors import (InvalidArgument, LogbookError, LogbookNotFound,
                             LogbookSchemaError, LogbookUnavailable, MalformedData, StaleOwner)
from jobboard.logbook import AtomDetail, Failure, FlowDetail, Logbook, LogBookInfo
from jobboard.logbook._db import VERSION_TABLE, is_transient, translate
from jobboard.logbook.models import Base, LogBookRow
from jobboard.states import AtomState, FlowState

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone.utc)


def _failure(message: str) -> Failure:
    try:
        raise KeyError(message)
    except KeyError as exc:
        return Failure.from_exception(exc)


def _started(book: Logbook, job_id: str = "job-1", token: int = 10) -> None:
    book.take_over(job_id, token, "conductor-a", name="provision")
    book.save_flow(job_id, "provision", FlowState.RUNNING, token=token)


def test_public_api_is_pinned():
    assert sorted(logbook_pkg.__all__) == sorted(
        ["Logbook", "FlowDetail", "AtomDetail", "Failure", "LogBookInfo"])


def test_failure_captures_type_message_traceback():
    failure = _failure("volume-7")
    assert failure.exc_type == "builtins.KeyError"
    assert failure.message == "'volume-7'"
    assert "Traceback (most recent call last)" in failure.traceback
    assert "_failure" in failure.traceback
    assert Failure.from_dict(failure.to_dict()) == failure
    with pytest.raises(MalformedData):
        Failure.from_dict({"message": "no type"})


RESULTS = {
    "none": None, "true": True, "zero": 0, "big": 2**64 - 1, "negative": -2**63,
    "float": 1.5, "text": "ünïcode ✓", "bytes": b"\x00\xff" * 8, "list": [1, "a", None],
    "map": {"nested": {"list": [1, 2.5], "flag": False}},
    "large": b"x" * 300_000,   # beyond MySQL's 64 KiB BLOB
}


def test_round_trip_of_every_field(logbook):
    _started(logbook)
    flow = logbook.save_flow("job-1", "provision", FlowState.REVERTING, token=10,
                             meta={"region": "eu", "n": 3})
    assert flow.state is FlowState.REVERTING and flow.meta == {"region": "eu", "n": 3}
    saved = {}
    for index, (name, value) in enumerate(RESULTS.items()):
        atom = AtomDetail(name=name, kind="retry" if index % 2 else "task",
                          state=AtomState.REVERT_FAILURE, result=value,
                          failure=_failure(f"exec {name}"),
                          revert_failure=_failure(f"revert {name}") if index % 2 else None,
                          attempts=index + 1, meta={"i": index, "tags": ["a", "b"]},
                          started_at=T0, finished_at=T0 + timedelta(seconds=index, microseconds=7))
        logbook.save_atom("job-1", atom, token=10)
        assert atom.updated_at is not None and atom.created_at is not None
        saved[name] = atom

    loaded = logbook.load_flow("job-1")
    assert isinstance(loaded, FlowDetail)
    assert (loaded.job_id, loaded.name, loaded.state) == ("job-1", "provision",
                                                          FlowState.REVERTING)
    assert loaded.meta == {"region": "eu", "n": 3}
    assert loaded.created_at == flow.created_at and loaded.updated_at == flow.updated_at
    assert list(loaded.atoms) == list(RESULTS)
    for name, atom in loaded.atoms.items():
        assert atom == saved[name], name
        assert atom.result == RESULTS[name]
        assert atom.started_at.tzinfo is not None and atom.started_at == T0
        assert isinstance(atom.state, AtomState)
    assert loaded.atoms["bytes"].failure.traceback.startswith("Traceback")
    assert loaded.atoms["map"].revert_failure.message == "'revert map'"


def test_save_atom_upserts_by_name(logbook):
    _started(logbook)
    atom = AtomDetail(name="attach", state=AtomState.RUNNING, attempts=1)
    logbook.save_atom("job-1", atom, token=10)
    created, first_update = atom.created_at, atom.updated_at
    again = AtomDetail(name="attach", state=AtomState.SUCCESS, result="att-1", attempts=1)
    logbook.save_atom("job-1", again, token=10)
    assert again.created_at == created and again.updated_at >= first_update
    atoms = logbook.load_flow("job-1").atoms
    assert list(atoms) == ["attach"]
    assert atoms["attach"].state is AtomState.SUCCESS and atoms["attach"].result == "att-1"
    assert atoms["attach"].created_at == created


def test_save_atoms_inserts_and_updates_in_one_transaction(logbook):
    _started(logbook)
    known = AtomDetail(name="known", state=AtomState.RUNNING)
    logbook.save_atom("job-1", known, token=10)
    known.state, known.result = AtomState.SUCCESS, {"r": 1}
    fresh = [AtomDetail(name=f"new-{i}") for i in range(3)]
    commits, inserts = [], []
    event.listen(logbook._engine, "commit", lambda conn: commits.append(1))

    def count(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)
    event.listen(logbook._engine, "before_cursor_execute", count)
    try:
        logbook.save_atoms("job-1", [known, *fresh, fresh[0]], token=10)   # a repeat counts once
    finally:
        event.remove(logbook._engine, "before_cursor_execute", count)
    assert len(commits) == 1 and len(inserts) == 1          # every new row in one INSERT
    atoms = logbook.load_flow("job-1").atoms
    assert list(atoms) == ["known", "new-0", "new-1", "new-2"]
    assert atoms["known"].state is AtomState.SUCCESS and atoms["known"].result == {"r": 1}
    assert all(a.created_at is not None and a.updated_at is not None for a in fresh)
    logbook.save_atoms("job-1", [], token=10)               # nothing to do, no error


def test_save_atoms_writes_all_or_nothing(logbook):
    _started(logbook)
    a, b = AtomDetail(name="a"), AtomDetail(name="b")
    logbook.save_atoms("job-1", [a, b], token=10)
    a.state, b.state = AtomState.SUCCESS, AtomState.RUNNING
    bad = AtomDetail(name="c", result=object())
    with pytest.raises(MalformedData):
        logbook.save_atoms("job-1", [a, b, bad], token=10)
    logbook.take_over("job-1", 11, "conductor-b")
    with pytest.raises(StaleOwner):
        logbook.save_atoms("job-1", [a, b, AtomDetail(name="d")], token=10)
    atoms = logbook.load_flow("job-1").atoms
    assert list(atoms) == ["a", "b"]
    assert {x.state for x in atoms.values()} == {AtomState.PENDING}


def test_take_over_returns_the_saved_flow_and_none_for_a_new_logbook(logbook):
    """A new logbook has no flow (the upsert says it created the row, and
    nothing is read); taking over a saved one, by the same holder or a newer
    one, returns its flow with its atoms."""
    assert logbook.take_over("job-9", 1, "a", name="n") is None
    logbook.save_flow("job-9", "f", FlowState.RUNNING, token=1, atoms=[AtomDetail(name="t")])
    for token, owner in ((1, "a"), (2, "b")):
        flow = logbook.take_over("job-9", token, owner)
        assert flow is not None and flow.state is FlowState.RUNNING and list(flow.atoms) == ["t"]


@pytest.mark.parametrize("count", [2, 37], ids=["few-atoms", "more-than-one-statement-takes"])
def test_take_over_starts_a_new_flow_in_the_same_transaction(logbook, count):
    """With ``start``, a take-over that finds no flow for the attempt saves
    one with its atoms; one that finds a flow returns it and writes nothing
    else; a stale token writes nothing at all. 37 atoms is more than one
    PostgreSQL statement takes (MAX_ATOMS): the transaction does it."""
    atoms = [AtomDetail(name=f"t{n}", state=AtomState.RUNNING if n == 0 else
                        AtomState.PENDING) for n in range(count)]
    assert logbook.take_over("job-1", 5, "a", name="f", start=FlowState.RUNNING,
                             atoms=atoms) is None
    assert all(atom.created_at is not None for atom in atoms)
    flow = logbook.load_flow("job-1")
    assert flow.name == "f" and flow.state is FlowState.RUNNING
    assert [(n, a.state) for n, a in flow.atoms.items()] == [
        (atom.name, atom.state) for atom in atoms]
    assert logbook.get_logbook("job-1").token == 5

    other = [AtomDetail(name="other")]
    found = logbook.take_over("job-1", 6, "b", name="f", start=FlowState.RUNNING, atoms=other)
    assert found is not None and list(found.atoms) == [atom.name for atom in atoms]
    assert other[0].created_at is None and "other" not in logbook.load_flow("job-1").atoms
    with pytest.raises(StaleOwner):
        logbook.take_over("job-1", 4, "c", name="f", start=FlowState.RUNNING, atoms=other)
    assert (logbook.get_logbook("job-1").owner, list(logbook.load_flow("job-1").atoms)) == (
        "b", [atom.name for atom in atoms])

    # A later attempt starts afresh, with its own flow; the earlier is kept.
    assert logbook.take_over("job-1", 7, "c", name="f", attempt=2, start=FlowState.RUNNING,
                             atoms=[AtomDetail(name="again")]) is None
    assert list(logbook.load_flow("job-1").atoms) == ["again"]
    assert list(logbook.load_flow("job-1", attempt=1).atoms) == [atom.name for atom in atoms]
    with pytest.raises(InvalidArgument):     # a start takes new atoms only
        logbook.take_over("job-2", 1, "a", start=FlowState.RUNNING, atoms=atoms)
    with pytest.raises(InvalidArgument, match="start="):    # atoms without a start
        logbook.take_over("job-2", 1, "a", atoms=[AtomDetail(name="lost")])
    assert logbook.load_flow("job-2") is None


def test_save_flow_updates_in_place(logbook):
    _started(logbook)
    logbook.save_atom("job-1", AtomDetail(name="a"), token=10)
    first = logbook.load_flow("job-1")
    logbook.save_flow("job-1", "provision", FlowState.SUCCESS, token=10, meta={"done": True})
    second = logbook.load_flow("job-1")
    assert second.state is FlowState.SUCCESS and second.meta == {"done": True}
    assert second.created_at == first.created_at
    assert list(second.atoms) == ["a"]


def test_load_flow_absent_and_flow_without_atoms(logbook):
    assert logbook.load_flow("nope") is None
    _started(logbook)
    flow = logbook.load_flow("job-1")
    assert flow.atoms == {} and flow.state is FlowState.RUNNING


def test_writes_need_a_logbook_and_a_flow(logbook):
    with pytest.raises(LogbookNotFound):
        logbook.save_flow("ghost", "f", FlowState.RUNNING, token=1)
    logbook.take_over("job-2", 3, "a")
    with pytest.raises(LogbookError, match="save_flow first"):
        logbook.save_atom("job-2", AtomDetail(name="a"), token=3)
    assert logbook.load_flow("job-2") is None


def test_unencodable_values_are_refused_before_writing(logbook):
    _started(logbook)
    with pytest.raises(MalformedData):
        logbook.save_atom("job-1", AtomDetail(name="a", result=object()), token=10)
    with pytest.raises(MalformedData):
        logbook.save_flow("job-1", "provision", FlowState.SUCCESS, token=10,
                          meta={"when": object()})
    flow = logbook.load_flow("job-1")
    assert flow.atoms == {} and flow.state is FlowState.RUNNING


def test_get_and_list_logbooks(logbook):
    with pytest.raises(LogbookNotFound):
        logbook.get_logbook("nope")
    logbook.take_over("old", 1, "a", name="first")
    _started(logbook, "new", token=2)
    info = logbook.get_logbook("new")
    assert isinstance(info, LogBookInfo)
    assert (info.job_id, info.name, info.owner, info.token, info.flow_state) == \
        ("new", "provision", "conductor-a", 2, FlowState.RUNNING)
    assert info.created_at.tzinfo is not None and info.updated_at >= info.created_at
    assert logbook.get_logbook("old").flow_state is None
    assert [i.job_id for i in logbook.list_logbooks()] == ["new", "old"]
    assert [i.job_id for i in logbook.list_logbooks(limit=1)] == ["new"]
    assert [i.job_id for i in logbook.list_logbooks(limit=5, offset=1)] == ["old"]
    assert logbook.current_token("new") == 2 and logbook.current_token("nope") is None


def test_delete(logbook):
    _started(logbook)
    logbook.save_atom("job-1", AtomDetail(name="a"), token=10)
    _started(logbook, "job-2", token=4)
    assert logbook.delete("job-1") is True
    assert logbook.delete("job-1") is False
    assert logbook.load_flow("job-1") is None
    with pytest.raises(LogbookNotFound):
        logbook.get_logbook("job-1")
    assert logbook.load_flow("job-2") is not None


def test_delete_older_than_keeps_recent(logbook):
    for n in range(4):
        _started(logbook, f"job-{n}", token=n + 1)
        logbook.save_atom(f"job-{n}", AtomDetail(name="a"), token=n + 1)
    old = datetime.now(timezone.utc) - timedelta(days=10)
    with logbook._engine.begin() as conn:
        conn.execute(update(LogBookRow).where(LogBookRow.job_id.in_(["job-0", "job-2"]))
                     .values(updated_at=old))
    assert logbook.delete_older_than(timedelta(days=7)) == 2
    assert sorted(i.job_id for i in logbook.list_logbooks()) == ["job-1", "job-3"]
    assert logbook.load_flow("job-0") is None
    assert list(logbook.load_flow("job-1").atoms) == ["a"]
    assert logbook.delete_older_than(timedelta(days=7)) == 0


def test_every_write_is_an_event(logbook):
    from jobboard.events import EventKind, Notifier

    calls = []
    notifier = Notifier()
    notifier.subscribe(lambda e: calls.append((e.kind, e.job_id, e.details["op"],
                                               e.details["ok"], e.details["fenced"],
                                               e.details["seconds"] >= 0)))
    logbook.notifier = notifier
    _started(logbook)
    logbook.save_atom("job-1", AtomDetail(name="a"), token=10)
    with pytest.raises(StaleOwner):
        logbook.save_atom("job-1", AtomDetail(name="a"), token=9)
    write = EventKind.LOGBOOK_WRITE
    assert calls == [(write, "job-1", "take_over", True, False, True),
                     (write, "job-1", "save_flow", True, False, True),
                     (write, "job-1", "save_atom", True, False, True),
                     (write, "job-1", "save_atom", False, True, True)]
    notifier.subscribe(lambda _e: 1 / 0)     # a broken listener never breaks a write
    logbook.save_atom("job-1", AtomDetail(name="b"), token=10)
    assert "b" in logbook.load_flow("job-1").atoms


# -- migrations --------------------------------------------------------------


def test_upgrade_reaches_the_models(logbook):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    logbook.upgrade()           # idempotent at head
    with logbook._engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        assert context.get_current_revision() == "0003"
        assert compare_metadata(context, Base.metadata) == []


def test_conductors_starting_together_migrate_once(logbook_url):
    """Several processes upgrading a fresh database at once (a fleet's first
    start): the migration lock lets one create the schema, the rest find it
    done; nobody fails on "table already exists"."""
    import threading

    books = [Logbook(logbook_url) for _ in range(4)]
    start, errors = threading.Barrier(len(books)), []

    def upgrade(book: Logbook) -> None:
        start.wait(timeout=10)
        try:
            book.upgrade()
        except Exception as exc:  # noqa: BLE001 - collected and asserted
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(book,)) for book in books]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        books[0].take_over("j", 1, "a")
        assert books[-1].current_token("j") == 1
    finally:
        for book in books:
            book.close()


def test_server_databases_are_not_migrated_implicitly(logbook_url):
    if logbook_url.startswith("sqlite"):
        with Logbook(logbook_url) as book:      # SQLite files migrate themselves
            book.take_over("j", 1, "a")
            assert book.current_token("j") == 1
        return
    with Logbook(logbook_url, retry_attempts=1) as book:
        with pytest.raises(LogbookSchemaError, match="jobboard logbook upgrade"):
            book.take_over("j", 1, "a")
        book.upgrade()
        book.take_over("j", 1, "a")
        assert book.current_token("j") == 1


# -- failures of the database --------------------------------------------------


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://postgres@127.0.0.1:1/test",
    "mysql+pymysql://root@127.0.0.1:1/test",
])
def test_database_down_raises_unavailable_quickly(url):
    options = {"connect_args": {"connect_timeout": 2}}
    with Logbook(url, retry_attempts=3, retry_max_delay=2.0, engine_options=options) as book:
        started = time.monotonic()
        with pytest.raises(LogbookUnavailable, match="127.0.0.1") as caught:
            book.take_over("j", 1, "a")
        assert time.monotonic() - started < 10
        assert caught.value.__cause__ is not None
        assert "sqlalchemy" not in type(caught.value).__module__
        with pytest.raises(LogbookUnavailable):
            book.load_flow("j")


def test_unusable_sqlite_path_is_a_logbook_error(tmp_path):
    with pytest.raises(LogbookError):
        Logbook(f"sqlite:///{tmp_path}/missing/dir/x.db", retry_attempts=2)


def _connection_id(book: Logbook) -> tuple[str, int]:
    dialect = book._engine.dialect.name
    query = "SELECT pg_backend_pid()" if dialect == "postgresql" else "SELECT CONNECTION_ID()"
    with book._engine.connect() as conn:
        return dialect, conn.execute(text(query)).scalar()


@pytest.mark.parametrize("saved_before", [False, True], ids=["new-atom", "saved-atom"])
@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre-ping", "retry"])
def test_dropped_connection_is_retried(logbook_url, pre_ping, saved_before):
    """Also on PostgreSQL's one-statement write (an atom saved before), which
    runs on the driver's connection itself."""
    if logbook_url.startswith("sqlite"):
        pytest.skip("SQLite has no server connection to drop")
    options = {"pool_size": 1, "max_overflow": 0, "pool_pre_ping": pre_ping}
    with Logbook(logbook_url, auto_upgrade=True, engine_options=options) as book:
        _started(book)
        atom = AtomDetail(name="after-drop", result=0)
        if saved_before:
            book.save_atom("job-1", atom, token=10)
        dialect, backend = _connection_id(book)
        with Logbook(logbook_url, auto_upgrade=False) as admin, \
                admin._engine.connect() as conn:
            kill = ("SELECT pg_terminate_backend(:b)" if dialect == "postgresql"
                    else f"KILL {int(backend)}")
            conn.execute(text(kill), {"b": backend})
            conn.commit()
        book.save_atom("job-1", replace(atom, result=1), token=10)
        assert _connection_id(book)[1] != backend
        assert book.load_flow("job-1").atoms["after-drop"].result == 1


def test_a_slow_failed_first_attempt_counts_against_the_retry_bound(tmp_path):
    """No new attempt starts past retry_max_delay from the first one, also
    when the first one (run before any retry policy exists) was slow."""
    calls = []

    def slow_transient_failure() -> None:
        calls.append(1)
        time.sleep(0.6)          # an attempt that used up its driver timeout
        raise sa_exc.OperationalError("UPDATE", {}, Exception("database is locked"))

    with Logbook(f"sqlite:///{tmp_path}/x.db", retry_max_delay=0.5) as book:
        with pytest.raises(LogbookUnavailable):
            book._retrying("save_atom", slow_transient_failure)
    assert len(calls) == 1


def test_is_transient_classifies():
    locked = sa_exc.OperationalError("UPDATE", {}, Exception("database is locked"))
    missing = sa_exc.OperationalError("SELECT", {}, Exception("no such table: logbooks"))
    assert is_transient(locked) and not is_transient(missing)
    assert not is_transient(ValueError("x"))
    assert isinstance(translate(missing, "load_flow", "sqlite:///x.db"), LogbookSchemaError)


def test_postgres_down_stays_transient_and_a_missing_database_does_not():
    """psycopg reports a failed connection without a SQLSTATE: transient,
    unless the server answered that the database or role does not exist."""
    import psycopg
    from sqlalchemy import exc as sa_exc

    def failed(message: str) -> sa_exc.OperationalError:
        return sa_exc.OperationalError("connect", {}, psycopg.OperationalError(message))

    down = failed('connection to server at "127.0.0.1", port 5432 failed: Connection refused')
    starting = failed("FATAL:  the database system is starting up")
    absent = failed('connection to server at "127.0.0.1", port 5432 failed: '
                    'FATAL:  database "nope" does not exist')
    assert is_transient(down) and is_transient(starting) and not is_transient(absent)
    unavailable = translate(down, "take_over", "postgresql+psycopg://u:pw@h/db")
    assert isinstance(unavailable, LogbookUnavailable) and "pw" not in str(unavailable)
    config = translate(absent, "take_over", "postgresql+psycopg://u:pw@h/nope")
    assert type(config) is LogbookError and "cannot use logbook database" in str(config)


def test_postgresql_atom_update_finds_the_atom_by_its_whole_key(logbook):
    """The engine's hot write, planned as a prepared statement's generic plan
    is (what the server keeps once a connection has run it a few times), on a
    nearly empty logbook: the atom is looked up by (flow id, name), never
    found by scanning (the join this replaced read the whole atom table)."""
    if logbook._engine.dialect.name != "postgresql":
        pytest.skip("the statement is PostgreSQL's")
    from sqlalchemy.dialects import postgresql

    from jobboard.logbook.store import _FENCED_UPDATES

    _started(logbook)
    logbook.save_atom("job-1", AtomDetail(name="a"), token=10)
    compiled = _FENCED_UPDATES["postgresql"].compile(
        dialect=postgresql.dialect(paramstyle="numeric_dollar"))
    values = {"j": "'job-1'", "t": "10", "n": "'a'", "v_now": "now()", "v_kind": "'task'",
              "v_state": "'SUCCESS'", "v_result": "NULL", "v_failure": "NULL",
              "v_revert_failure": "NULL", "v_attempts": "1", "v_meta": "NULL",
              "v_version": "'1'", "v_started_at": "NULL", "v_finished_at": "NULL"}
    arguments = ", ".join(values[name] for name in compiled.positiontup)
    with logbook._engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE fenced AS {compiled.string}")
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(
            f"EXPLAIN EXECUTE fenced({arguments})"))
        conn.rollback()
    atom_scans = [line for line in plan.splitlines() if "on atomdetails" in line]
    assert atom_scans and all("Index Scan" in line for line in atom_scans[1:]), plan
    key = plan.split("uq_atomdetails_flow_id", 1)[1]
    assert "flow_id = $" in key.split("\n")[1] and "name" in key.split("\n")[1], plan


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("name", ["update_atoms", "update_flow_and_atoms",
                                  "insert_flow_and_atoms", "take_over_and_start"])
def test_postgresql_one_statement_writes_find_rows_by_their_keys(logbook, name, count):
    """The same for the one-statement writes (``_postgresql``): under a
    generic plan on a nearly empty logbook, no table is scanned and every
    atom saved before is found by its whole key."""
    if logbook._engine.dialect.name != "postgresql":
        pytest.skip("the statement is PostgreSQL's")
    import re

    from jobboard.logbook import _postgresql

    _started(logbook)
    for n in range(count):
        logbook.save_atom("job-1", AtomDetail(name=f"a{n}"), token=10)
    sql = _postgresql.insert_flow_and_atoms(count) if name == "insert_flow_and_atoms" \
        else _postgresql.take_over_and_start(count, True) if name == "take_over_and_start" \
        else _postgresql.update_atoms(count, name == "update_flow_and_atoms")
    params = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
    numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${params.index(m.group(1)) + 1}", sql)
    values = {"j": "'job-1'", "t": "10", "v_now": "now()", "f_name": "'f'",
              "f_state": "'RUNNING'", **{f"n{n}": f"'a{n}'" for n in range(count)}}
    arguments = ", ".join(values.get(p, "NULL") for p in params)
    with logbook._engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE one AS {numbered}".replace("%%", "%"))
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(
            f"EXPLAIN EXECUTE one({arguments})"))
        conn.rollback()
    assert "Seq Scan" not in plan, plan
    if name.startswith("update"):
        lookups = [line for line in plan.splitlines() if "Index Cond: (" in line
                   and "flow_id" in line]
        assert len(lookups) == 2 * count, plan          # every EXISTS and UPDATE
        assert all("name" in line for line in lookups), plan


def test_postgresql_usual_writes_are_one_statement_in_autocommit(logbook_url):
    """A job run's usual writes on PostgreSQL cost one statement each and no
    transaction (one round trip: no BEGIN, no COMMIT)."""
    if not logbook_url.startswith("postgresql"):
        pytest.skip("one-statement writes are PostgreSQL's")
    a, b = AtomDetail(name="a", state=AtomState.RUNNING), AtomDetail(name="b")
    book, log = logged_logbook(logbook_url)
    with book:
        writes = {
            "take-over": lambda: book.take_over("job", 1, "c", name="f"),
            "take-over starting a new flow": lambda: book.take_over(
                "started", 1, "c", name="f", start=FlowState.RUNNING,
                atoms=[AtomDetail(name="a", state=AtomState.RUNNING), AtomDetail(name="b")]),
            "new flow with its atoms": lambda: book.save_flow(
                "job", "f", FlowState.RUNNING, token=1, atoms=[a, b]),
            "atoms saved before": lambda: book.save_atoms(
                "job", [replace(a, state=AtomState.SUCCESS),
                        replace(b, state=AtomState.RUNNING)], token=1),
            "flow and atoms saved before": lambda: book.save_flow(
                "job", "f", FlowState.SUCCESS, token=1,
                atoms=[replace(b, state=AtomState.SUCCESS)]),
            "flow alone": lambda: book.save_flow("job", "f", FlowState.SUCCESS, token=1),
        }
        for what, write in writes.items():
            log.clear()
            write()
            expected = [("INSERT" if what == "take-over" else "WITH", True)]
            assert (log.statements, log.commits) == (expected, 0), what
        log.clear()
        book.take_over("job", 2, "d", name="f")         # resumed: the flow is read after it
        assert log.statements == [("INSERT", True), ("SELECT", True)]
        log.clear()
        resumed = book.take_over("started", 2, "d", name="f", start=FlowState.RUNNING,
                                 atoms=[AtomDetail(name="x")])
        assert log.statements == [("WITH", True), ("SELECT", True)]
        assert list(resumed.atoms) == ["a", "b"]
        flow = book.load_flow("job")
    assert flow.state is FlowState.SUCCESS
    assert [(n, x.state) for n, x in flow.atoms.items()] == [
        ("a", AtomState.SUCCESS), ("b", AtomState.SUCCESS)]


def test_a_write_of_atoms_one_of_which_is_gone_saves_them_all(logbook):
    """An atom row deleted behind the store's back: on PostgreSQL the one-
    statement write updates none of the atoms (all or nothing), and the
    transaction after it inserts the missing one and updates the other."""
    _started(logbook, "job")
    a, b = AtomDetail(name="a"), AtomDetail(name="b")
    logbook.save_atoms("job", [a, b], token=10)
    with logbook._engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM atomdetails WHERE name = 'b'")
    if logbook._one_statement_writes:
        from jobboard.logbook import _postgresql
        from jobboard.logbook.store import _atom_values

        changed = [replace(a, state=AtomState.SUCCESS), replace(b, state=AtomState.RUNNING)]
        params = {"j": "job", "t": 10, "v_now": datetime.now(timezone.utc),
                  **_postgresql.atom_params(["a", "b"], [_atom_values(x) for x in changed])}
        with _postgresql.autocommit(logbook._engine) as driver:
            row = driver.execute(_postgresql.update_atoms(2, False), params).fetchone()
        assert row == (0,)
        assert logbook.load_flow("job").atoms["a"].state is AtomState.PENDING
    logbook.save_atoms("job", [replace(a, state=AtomState.SUCCESS),
                               replace(b, state=AtomState.RUNNING)], token=10)
    atoms = logbook.load_flow("job").atoms
    assert (atoms["a"].state, atoms["b"].state) == (AtomState.SUCCESS, AtomState.RUNNING)
    assert list(atoms) == ["a", "b"]


def test_a_dead_connection_replaces_the_pooled_ones_opened_before_it(logbook_url):
    """Every pooled connection died (a database restart): the first write to
    meet a dead one replaces them all, so its one retry gets a live one."""
    if not logbook_url.startswith("postgresql"):
        pytest.skip("the one-statement writes are PostgreSQL's")
    options = {"pool_size": 2, "max_overflow": 0}
    with Logbook(logbook_url, auto_upgrade=True, retry_attempts=2,
                 engine_options=options) as book:
        _started(book)
        atom = AtomDetail(name="a")
        book.save_atom("job-1", atom, token=10)
        first, second = book._engine.connect(), book._engine.connect()
        pids = [conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                for conn in (first, second)]
        first.close()
        second.close()
        with Logbook(logbook_url, auto_upgrade=False) as admin, \
                admin._engine.connect() as conn:
            for pid in pids:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
            conn.commit()
        book.save_atom("job-1", replace(atom, result=1), token=10)
        assert book.load_flow("job-1").atoms["a"].result == 1


def test_a_flow_of_many_atoms_is_saved_and_updated(logbook):
    """More atoms than one statement takes (PostgreSQL's MAX_ATOMS): the
    same writes, through the transaction."""
    from jobboard.logbook._postgresql import MAX_ATOMS

    logbook.take_over("job", 1, "c")
    atoms = [AtomDetail(name=f"t{n}") for n in range(MAX_ATOMS + 5)]
    logbook.save_flow("job", "f", FlowState.RUNNING, token=1, atoms=atoms)
    for atom in atoms:
        atom.state = AtomState.SUCCESS
    logbook.save_atoms("job", atoms, token=1)
    logbook.save_flow("job", "f", FlowState.SUCCESS, token=1, atoms=atoms[:MAX_ATOMS])
    flow = logbook.load_flow("job")
    assert flow.state is FlowState.SUCCESS
    assert list(flow.atoms) == [atom.name for atom in atoms]
    assert {atom.state for atom in flow.atoms.values()} == {AtomState.SUCCESS}


def test_pool_keeps_a_connection_per_writer(logbook_url):
    """A conductor's slots write at once; each keeps its pooled connection
    (beyond the pool's size every write would open and close one)."""
    import threading

    with Logbook(logbook_url, auto_upgrade=True, pool_size=8) as book:
        for n in range(8):
            _started(book, f"job-{n}")
        opened = []
        event.listen(book._engine, "connect", lambda *_: opened.append(1))
        barrier = threading.Barrier(8, timeout=20)

        def write(n: int) -> None:
            for _ in range(3):
                barrier.wait()
                book.save_atom(f"job-{n}", AtomDetail(name="a"), token=10)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
        assert len(opened) <= 8
        assert all(len(book.load_flow(f"job-{n}").atoms) == 1 for n in range(8))
