"""Fencing: a writer whose token was superseded cannot change the logbook,
including while it races the take-over from another thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from sqlalchemy import event, text

from driver_log import logged_logbook
from jobboard.errors import StaleOwner
from jobboard.logbook import AtomDetail, Logbook
from jobboard.states import AtomState, FlowState

pytestmark = pytest.mark.timeout(60)


def test_stale_token_is_refused(logbook):
    logbook.take_over("job", 5, "old", name="n")
    logbook.save_flow("job", "f", FlowState.RUNNING, token=5)
    logbook.save_atom("job", AtomDetail(name="a", result="old"), token=5)
    logbook.take_over("job", 7, "new")
    assert logbook.get_logbook("job").owner == "new"

    with pytest.raises(StaleOwner) as caught:
        logbook.save_atom("job", AtomDetail(name="a", result="stale"), token=5)
    assert (caught.value.job_id, caught.value.token, caught.value.current) == ("job", 5, 7)
    with pytest.raises(StaleOwner):
        logbook.save_flow("job", "f", FlowState.SUCCESS, token=5)
    with pytest.raises(StaleOwner):      # a token that never took over is refused too
        logbook.save_atom("job", AtomDetail(name="a", result="future"), token=8)
    with pytest.raises(StaleOwner) as older:
        logbook.take_over("job", 6, "older")
    assert older.value.current == 7
    assert logbook.fenced_writes == 4

    flow = logbook.load_flow("job")
    assert flow.state is FlowState.RUNNING and flow.atoms["a"].result == "old"
    info = logbook.get_logbook("job")
    assert (info.owner, info.token, info.name) == ("new", 7, "n")

    logbook.take_over("job", 7, "new")      # the same holder re-entering
    logbook.save_atom("job", AtomDetail(name="a", result="new"), token=7)
    assert logbook.load_flow("job").atoms["a"].result == "new"


def test_every_shape_of_write_is_refused_to_a_stale_token(logbook):
    """Each write PostgreSQL makes in one statement (a new flow with its new
    atoms, atoms saved before, a flow with atoms saved before) is refused
    whole to a superseded token, and leaves nothing behind."""
    logbook.take_over("job", 1, "old")
    logbook.take_over("job", 2, "new")
    with pytest.raises(StaleOwner):
        logbook.save_flow("job", "f", FlowState.RUNNING, token=1, atoms=[AtomDetail(name="a")])
    assert logbook.load_flow("job") is None
    saved = AtomDetail(name="a", state=AtomState.RUNNING)
    logbook.save_flow("job", "f", FlowState.RUNNING, token=2, atoms=[saved])
    logbook.take_over("job", 3, "newest")
    stale = replace(saved, state=AtomState.SUCCESS, result="stale")
    with pytest.raises(StaleOwner):
        logbook.save_atoms("job", [stale], token=2)
    with pytest.raises(StaleOwner):
        logbook.save_flow("job", "f", FlowState.SUCCESS, token=2, atoms=[stale])
    flow = logbook.load_flow("job")
    assert flow.state is FlowState.RUNNING
    assert (flow.atoms["a"].state, flow.atoms["a"].result) == (AtomState.RUNNING, None)


@pytest.mark.parametrize("logbook_url", ["postgresql"], indirect=True)
def test_a_take_over_does_not_return_a_newer_holders_flow(logbook_url, logbook):
    """A newer holder takes over (a new attempt) and finishes between this
    take-over's own statement and its read of the flow (PostgreSQL's two
    statements in autocommit; elsewhere one transaction, whose lock keeps the
    newer holder out): this one is refused, not handed the newer holder's
    finished flow as its own."""
    logbook.take_over("job", 1, "old", name="f")
    logbook.save_flow("job", "f", FlowState.RUNNING, token=1)
    newer = Logbook(logbook_url, auto_upgrade=False)
    taker, log = logged_logbook(logbook_url)

    def newer_holder_meanwhile(statement: str) -> None:
        if statement.lstrip().upper().startswith("SELECT") and log.before is not None:
            log.before = None
            newer.take_over("job", 3, "newer", name="f", attempt=2)
            newer.save_flow("job", "f", FlowState.SUCCESS, token=3)

    log.before = newer_holder_meanwhile
    try:
        with pytest.raises(StaleOwner):
            taker.take_over("job", 2, "taker", name="f")
    finally:
        taker.close()
        newer.close()
    assert log.before is None, "the read after the take-over never came"


def test_no_old_write_lands_after_a_take_over(logbook_url, logbook):
    """Several threads of the old owner write in a loop (so some writes are in
    flight at any moment) while another Logbook takes over with a newer token."""
    logbook.take_over("job", 1, "old")
    logbook.save_flow("job", "f", FlowState.RUNNING, token=1)
    writers = 4
    acked: list[str] = []
    refused: list[StaleOwner] = []
    errors: list[BaseException] = []
    warmed_up = threading.Barrier(writers + 1)

    def old_owner(w: int) -> None:
        try:
            for n in range(100_000):
                name = f"w{w}-{n}"
                logbook.save_atom("job", AtomDetail(name=name, state=AtomState.SUCCESS,
                                                    result=n), token=1)
                acked.append(name)
                if n == 5:
                    warmed_up.wait(30)
        except StaleOwner as exc:
            refused.append(exc)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
            warmed_up.abort()

    threads = [threading.Thread(target=old_owner, args=(w,), daemon=True)
               for w in range(writers)]
    for thread in threads:
        thread.start()
    warmed_up.wait(30)
    with Logbook(logbook_url, auto_upgrade=False) as other:   # the new owner, elsewhere
        other.take_over("job", 2, "new")
        after_take_over = set(other.load_flow("job").atoms)
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    assert len(refused) == writers and all(r.current == 2 for r in refused)

    stored = set(logbook.load_flow("job").atoms)
    assert stored == after_take_over          # nothing of token 1 landed after the take-over
    assert set(acked) == stored               # and nothing acknowledged was lost
    assert len(acked) >= writers * 6


def test_take_over_when_an_older_holder_creates_the_logbook_meanwhile(logbook, logbook_url):
    """An older holder creates the logbook and commits while the newer one
    takes over: just before its upsert (PostgreSQL), or between its UPDATE
    that found no row and its next look (the statements of other databases).
    The newer one must still win."""
    if not logbook_url.startswith("postgresql"):
        pytest.skip("SQLite serializes writers and MySQL's gap lock makes the "
                    "older creator wait: only READ COMMITTED interleaves here")
    older = Logbook(logbook_url)
    newer, log = logged_logbook(logbook_url)
    injected = []

    def create_meanwhile(statement: str) -> None:
        if not injected and statement.lstrip().upper().startswith(
                ("SELECT LOGBOOKS.TOKEN", "INSERT INTO LOGBOOKS")):
            injected.append(True)
            older.take_over("fresh", 7, "owner-7")

    log.before = create_meanwhile
    try:
        newer.take_over("fresh", 8, "owner-8")
    finally:
        newer.close()
        older.close()
    assert injected
    info = logbook.get_logbook("fresh")
    assert (info.token, info.owner) == (8, "owner-8")


def test_concurrent_take_overs_keep_the_highest_token(logbook):
    tokens = list(range(1, 9))
    barrier = threading.Barrier(len(tokens))
    outcomes: dict[int, object] = {}

    def claim(token: int) -> None:
        barrier.wait(10)
        try:
            logbook.take_over("fresh", token, f"owner-{token}")
            outcomes[token] = "ok"
        except StaleOwner as exc:
            outcomes[token] = exc
        except BaseException as exc:  # noqa: BLE001
            outcomes[token] = repr(exc)

    threads = [threading.Thread(target=claim, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(o == "ok" or isinstance(o, StaleOwner) for o in outcomes.values()), outcomes
    assert outcomes[max(tokens)] == "ok"
    info = logbook.get_logbook("fresh")
    assert (info.token, info.owner) == (max(tokens), f"owner-{max(tokens)}")


def _is_atom_write(statement: str) -> bool:
    head = statement.lstrip().upper()
    return head.startswith(("WITH", "UPDATE ATOMDETAILS"))


# The tests below hold one side of the race open and check that the other
# side does NOT get through within a window: there is no event for "still
# blocked", so a bounded wait on the other side's completion is the probe.
_BLOCKED_WINDOW = 1.0


def _in_transactions(*books: Logbook) -> None:
    """Every write as a transaction (SQLite's and MySQL's way; PostgreSQL's
    one-statement writes commit as they return, so nothing is in flight
    between their statement and a commit: the tests after these hold them
    inside the statement instead)."""
    for book in books:
        book._one_statement_writes = False


def test_a_take_over_waits_for_a_fenced_write_in_flight(logbook_url, logbook):
    """The old owner's fenced write has run but not committed: a take-over
    must wait for its commit (the fence's row lock), so the new owner's first
    read after the take-over already sees the write."""
    logbook.take_over("job", 1, "old")
    logbook.save_flow("job", "f", FlowState.RUNNING, token=1)
    atom = AtomDetail(name="a", state=AtomState.RUNNING)
    logbook.save_atom("job", atom, token=1)         # known now: the next save is the hot path
    other = Logbook(logbook_url, auto_upgrade=False)
    _in_transactions(logbook, other)
    taken = threading.Event()
    seen: dict[str, object] = {}
    held = []

    def take_over() -> None:
        other.take_over("job", 2, "new")
        taken.set()
        seen["a"] = other.load_flow("job").atoms["a"].state

    taker = threading.Thread(target=take_over, daemon=True)

    def hold(conn, cursor, statement, *args) -> None:
        if not held and _is_atom_write(statement):
            held.append(True)
            taker.start()
            held.append(taken.wait(_BLOCKED_WINDOW))   # must stay blocked until our commit

    event.listen(logbook._engine, "after_cursor_execute", hold)
    try:
        atom.state = AtomState.SUCCESS
        logbook.save_atom("job", atom, token=1)
    finally:
        event.remove(logbook._engine, "after_cursor_execute", hold)
    taker.join(30)
    other.close()
    assert held == [True, False], "the take-over got through a write in flight"
    assert taken.is_set() and seen["a"] is AtomState.SUCCESS
    with pytest.raises(StaleOwner):
        logbook.save_atom("job", atom, token=1)


def test_a_fenced_write_waiting_on_a_take_over_is_refused(logbook_url, logbook):
    """The reverse: a take-over has updated the logbook row but not committed;
    the old owner's hot-path write waits for it and is then refused (under
    READ COMMITTED the fence re-checks the committed row, token 2)."""
    logbook.take_over("job", 1, "old")
    logbook.save_flow("job", "f", FlowState.RUNNING, token=1)
    atom = AtomDetail(name="a", state=AtomState.RUNNING, result="first")
    logbook.save_atom("job", atom, token=1)
    other = Logbook(logbook_url, auto_upgrade=False)
    _in_transactions(logbook, other)
    outcome: dict[str, object] = {}
    written = threading.Event()
    held = []

    def write() -> None:
        atom.result = "stale"
        try:
            logbook.save_atom("job", atom, token=1)
            outcome["write"] = "landed"
        except StaleOwner as exc:
            outcome["write"] = exc
        finally:
            written.set()

    writer = threading.Thread(target=write, daemon=True)

    def hold(conn, cursor, statement, *args) -> None:
        if not held and statement.lstrip().upper().startswith(
                ("UPDATE LOGBOOKS", "INSERT INTO LOGBOOKS")):      # the take-over
            held.append(True)
            writer.start()
            held.append(written.wait(_BLOCKED_WINDOW))  # must wait for our commit

    event.listen(other._engine, "after_cursor_execute", hold)
    try:
        other.take_over("job", 2, "new")
    finally:
        event.remove(other._engine, "after_cursor_execute", hold)
    writer.join(30)
    after = other.load_flow("job").atoms["a"]
    other.close()
    assert held == [True, False], "the old owner's write got through an open take-over"
    assert isinstance(outcome["write"], StaleOwner), outcome
    assert after.result == "first"


@contextmanager
def _stalled(logbook: Logbook, table: str, when: str) -> Iterator[Callable[[], None]]:
    """Stall a PostgreSQL statement inside itself: a trigger on ``table``
    waits, for a row matching ``when``, on an advisory lock held here (the
    statement has run its earlier parts, such as the fence, and holds their
    locks). Yields a function that waits until a statement is stalled; the
    lock is let go on leaving."""
    holder = logbook._engine.connect()
    holder.execute(text("SELECT pg_advisory_lock(4242)"))
    with logbook._engine.begin() as conn:
        conn.execute(text("CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$ "
                          "BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$"))
        conn.execute(text(f"CREATE TRIGGER stall BEFORE UPDATE ON {table} FOR EACH ROW "
                          f"WHEN ({when}) EXECUTE FUNCTION stall()"))

    def stalled() -> None:
        deadline = time.monotonic() + 10
        while holder.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = "
                                  "'advisory' AND NOT granted")).scalar() == 0:
            assert time.monotonic() < deadline, "no statement reached the trigger"
            time.sleep(0.01)

    try:
        yield stalled
    finally:
        holder.execute(text("SELECT pg_advisory_unlock(4242)"))
        holder.close()
        with logbook._engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER stall ON {table}"))
            conn.execute(text("DROP FUNCTION stall()"))


def _held_off(logbook: Logbook, table: str, when: str, first: threading.Thread,
              second: threading.Thread, done: threading.Event) -> bool:
    """Start ``first`` and stall it inside its statement (:func:`_stalled`),
    then start ``second``: True when ``second`` did not get through
    (``done`` unset) while ``first`` was held. Both are joined."""
    with _stalled(logbook, table, when) as stalled:
        first.start()
        stalled()
        second.start()
        blocked = not done.wait(_BLOCKED_WINDOW)
    first.join(30)
    second.join(30)
    return blocked


@pytest.mark.parametrize("logbook_url", ["postgresql"], indirect=True)
def test_a_take_over_waits_for_a_one_statement_write_in_flight(logbook_url, logbook):
    """PostgreSQL's one-statement atom write, stopped after its fence and
    before its atom UPDATE: a take-over waits for the statement to end (the
    fence's row lock), and its first read sees the write."""
    logbook.take_over("job", 1, "old")
    logbook.save_flow("job", "f", FlowState.RUNNING, token=1)
    atom = AtomDetail(name="a", state=AtomState.RUNNING)
    logbook.save_atom("job", atom, token=1)
    other = Logbook(logbook_url, auto_upgrade=False)
    taken = threading.Event()
    seen: dict[str, object] = {}

    def take_over() -> None:
        other.take_over("job", 2, "new")
        taken.set()
        seen["a"] = other.load_flow("job").atoms["a"].state

    taker = threading.Thread(target=take_over, daemon=True)
    writer = threading.Thread(target=logbook.save_atom, daemon=True,
                              args=("job", replace(atom, state=AtomState.SUCCESS)),
                              kwargs={"token": 1})
    blocked = _held_off(logbook, "atomdetails", "NEW.state = 'SUCCESS'", writer, taker, taken)
    other.close()
    assert blocked, "the take-over got through a write in flight"
    assert taken.is_set() and seen["a"] is AtomState.SUCCESS
    assert logbook.fenced_writes == 0


@pytest.mark.parametrize("logbook_url", ["postgresql"], indirect=True)
def test_a_one_statement_write_waiting_on_a_take_over_is_refused(logbook_url, logbook):
    """The reverse, PostgreSQL's one-statement take-over stopped inside its
    statement with the logbook row locked: the old owner's one-statement
    write waits for it, then is refused."""
    logbook.take_over("job", 1, "old")
    logbook.save_flow("job", "f", FlowState.RUNNING, token=1)
    atom = AtomDetail(name="a", state=AtomState.RUNNING, result="first")
    logbook.save_atom("job", atom, token=1)
    other = Logbook(logbook_url, auto_upgrade=False)
    outcome: dict[str, object] = {}
    written = threading.Event()

    def write() -> None:
        try:
            logbook.save_atom("job", replace(atom, result="stale"), token=1)
            outcome["write"] = "landed"
        except StaleOwner as exc:
            outcome["write"] = exc
        finally:
            written.set()

    taker = threading.Thread(target=other.take_over, args=("job", 2, "new"), daemon=True)
    writer = threading.Thread(target=write, daemon=True)
    blocked = _held_off(logbook, "logbooks", "NEW.token = 2", taker, writer, written)
    after = other.load_flow("job").atoms["a"]
    other.close()
    assert blocked, "the old owner's write got through an open take-over"
    assert isinstance(outcome["write"], StaleOwner), outcome
    assert after.result == "first"


@pytest.mark.parametrize("logbook_url", ["postgresql"], indirect=True)
def test_a_holder_paused_mid_write_does_not_hold_its_successor(logbook, logbook_url):
    """A holder stops inside a write (SIGSTOP, a hung host) with the logbook
    row locked. PostgreSQL ends its idle transaction (the server-side bound
    every logbook connection sets; 1 s here, 15 s by default), so the
    successor takes over; the old holder's next write is refused by the
    fence, on a fresh connection."""

    with logbook._engine.connect() as conn:                  # the defaults, set by us
        assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "15s"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "30s"
    logbook.take_over("paused", 1, "old")
    logbook.save_flow("paused", "f", FlowState.RUNNING, token=1)
    short = logbook_url + "%20-c%20idle_in_transaction_session_timeout%3D1000"
    with Logbook(short) as old:                               # the URL's own wins
        stuck = old._engine.connect()
        stuck.begin()
        stuck.execute(text("UPDATE logbooks SET owner = owner WHERE job_id = 'paused'"))
        logbook.take_over("paused", 2, "successor")        # waits for the server's bound
        assert logbook.current_token("paused") == 2
        with pytest.raises(StaleOwner):
            old.save_flow("paused", "f", FlowState.SUCCESS, token=1)
        stuck.invalidate()
