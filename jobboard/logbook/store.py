"""The :class:`Logbook`: fenced, retried reads and writes of the SQL logbook.

Fencing: ``take_over`` records the (token, owner) of a new claim holder with
a conditional UPDATE (``WHERE token IS NULL OR token <= :t``). Every write
(``save_flow``, ``save_atom``, ``save_atoms``) runs the fence, ``UPDATE
logbooks ... WHERE job_id=:j AND token=:t``, in the same transaction as the
write itself: no matching row means a newer holder has taken over and the
write is refused with :class:`~jobboard.errors.StaleOwner`; otherwise the
UPDATE holds the logbook's row lock until commit, so a concurrent take-over
waits for the write and no write of an old token lands after a take-over
returned. Under READ COMMITTED (PostgreSQL, and MySQL's locking reads) a
fence that waited for a take-over's lock re-reads the committed row and
matches nothing; SQLite has one writer at a time.

On PostgreSQL (psycopg) a job run's usual writes are one statement each, run
in autocommit, one round trip (``_postgresql``): the take-over; a new flow
with its new atoms; atoms saved before (``created_at`` known), with or
without their flow; a flow alone. Each does all of its write or nothing,
fence included; one that wrote nothing (a stale token, a row missing) is
followed by the transaction below, which decides.

The transaction's hot path (an atom saved before) is one statement per atom
with the fence folded in: on PostgreSQL a data-modifying CTE (the fence's
UPDATE ... RETURNING attempt) joined by the atom UPDATE; on MySQL a
multi-table UPDATE of the logbook row and the atom; on SQLite the fence and
the UPDATE run in-process, two statements. ``save_atoms`` sends the
statements of several atoms at once (one executemany) and commits once.
Anything else (a new atom, a statement that matched fewer rows than atoms)
takes the full path in the same transaction: the fence, one read of the
flow and of the named atoms, one multi-row INSERT and one UPDATE by id;
that path also tells a stale token, a missing logbook and a missing flow
apart.

Attempts: a job has one flow per attempt (``jobboard retry`` starts the next
one). ``take_over(..., attempt=n)`` moves the logbook forward to attempt
``n`` (never back); ``save_flow`` and the atom writes go to the flow of the
logbook's current attempt, resolved by a subquery inside their own
statement. Earlier attempts are kept: ``attempts()`` lists them all.

How it fails: each public call is one transaction (or one-statement write)
on a pooled connection of its own (thread-safe), retried on transient errors
(``_db.is_transient``) with ``jobboard.retry.database_retry``, every database
wait bounded (see ``_db``); a database that stays down raises
``LogbookUnavailable``, a missing or older schema ``LogbookSchemaError``, any
other database error ``LogbookError``. A call that returned has committed;
the writes are idempotent upserts, so a retry after an ambiguous commit is
harmless. Pooled connections are not pinged before use (no round trip per
checkout): one that died fails its first statement as a disconnect, and the
retry runs on a fresh one. ``check()`` tells those apart in one bounded round
trip, without retries, for readiness probes.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, TypeVar

from sqlalchemy import (Connection, Dialect, Engine, bindparam, case, delete, exc as sa_exc,
                        insert, literal_column, null, select, update)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.pool import NullPool

from jobboard import serialization
from jobboard.errors import (InvalidArgument, JobBoardError, LogbookError, LogbookNotFound,
                             StaleOwner)
from jobboard.events import EventKind, Notifier
from jobboard.logbook import _db, _postgresql
from jobboard.logbook.models import VALUE_COLUMNS, AtomDetailRow, FlowDetailRow, LogBookRow
from jobboard.logbook.records import AtomDetail, Failure, FlowDetail, LogBookInfo
from jobboard.retry import database_retry
from jobboard.states import AtomState, FlowState

__all__ = ["Logbook"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# What a one-statement write returns when it wrote nothing (the transaction runs).
_MISSED: Any = object()

_DELETE_BATCH = 500

# Core tables and connections rather than ORM entities and sessions: the hot
# path (one fenced UPDATE per atom) uses nothing of the ORM's unit of work.
LOGBOOKS = LogBookRow.__table__
FLOWS = FlowDetailRow.__table__
ATOMS = AtomDetailRow.__table__


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime | None) -> datetime | None:
    """Stored timestamps are UTC; SQLite and MySQL return them without a zone."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _current_attempt(job_id: str) -> Any:
    """The logbook's current attempt, as a scalar subquery."""
    return select(LOGBOOKS.c.attempt).where(LOGBOOKS.c.job_id == job_id).scalar_subquery()


def _pack_failure(failure: Failure | None) -> bytes | None:
    return None if failure is None else serialization.dumps(failure.to_dict())


def _unpack_failure(data: bytes | None) -> Failure | None:
    return None if data is None else Failure.from_dict(serialization.loads(data))


class Logbook:
    """The shared SQL logbook of every job's flow and atoms.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://...``,
            ``mysql+pymysql://...``).
        auto_upgrade: migrate the schema to the newest revision on open. ``None``
            means yes for SQLite files and no for database servers (run
            ``jobboard logbook upgrade`` there, or pass True: processes
            opening a server database together migrate it once, under a
            database lock).
        retry_attempts: attempts per call on transient database errors.
        retry_max_delay: seconds after which a call stops retrying.
        engine_options: extra keyword arguments for ``sqlalchemy.create_engine``.
        pool_size: database connections kept open; at least the number of
            threads that write at once (a conductor keeps one per slot and
            two more), else each write beyond them opens a new connection.
            None: SQLAlchemy's default (5).
        notifier: where each write is told as a ``logbook.write`` event (op,
            seconds, ok, fenced); a conductor passes its board's, so the
            metrics time the writes and count the fenced ones.

    Raises:
        LogbookUnavailable: the database cannot be reached (auto upgrade only).
        LogbookError: a bad URL, a failed migration, or the migration lock
            held by another process beyond ``_db.MIGRATION_LOCK_TIMEOUT``.
    """

    def __init__(self, url: str = "sqlite:///jobboard.db", *, auto_upgrade: bool | None = None,
                 retry_attempts: int = 6, retry_max_delay: float = 20.0,
                 engine_options: dict | None = None, pool_size: int | None = None,
                 notifier: Notifier | None = None) -> None:
        self.url = url
        self.notifier = notifier
        self._engine_options = dict(engine_options or {})
        self._probe: Engine | None = None
        self.retry_attempts = retry_attempts
        self.retry_max_delay = retry_max_delay
        #: Writes refused because a newer token had taken over.
        self.fenced_writes = 0
        self._lock = threading.Lock()
        try:
            self._engine = _db.make_engine(url, engine_options, pool_size=pool_size)
        except (sa_exc.SQLAlchemyError, ImportError, ValueError) as exc:
            raise LogbookError(f"cannot use logbook URL {_db.safe_url(url)}: {exc}") from exc
        dialect = self._engine.dialect
        #: PostgreSQL through psycopg: the usual writes are one statement in
        #: autocommit (see ``_postgresql``; its SQL names the tables as is).
        self._one_statement_writes = (
            dialect.name == "postgresql" and dialect.driver == "psycopg"
            and "schema_translate_map" not in self._engine.get_execution_options())
        if auto_upgrade is None:
            auto_upgrade = _db.is_sqlite_file(url)
        if auto_upgrade:
            try:
                self.upgrade()
            except BaseException:
                self._engine.dispose()
                raise

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()
        if self._probe is not None:
            self._probe.dispose()

    def __enter__(self) -> "Logbook":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Logbook({_db.safe_url(self.url)!r})"

    def upgrade(self) -> None:
        """Migrate the schema to the newest alembic revision.

        Raises:
            LogbookUnavailable: the database stayed unreachable.
            LogbookError: the migration failed, or another process held the
                migration lock beyond ``_db.MIGRATION_LOCK_TIMEOUT``.
        """
        engine = self._side_engine(_db.MIGRATE_TIMEOUTS)
        try:
            self._retrying("upgrade", lambda: _db.upgrade(engine))
        finally:
            engine.dispose()

    def check(self) -> None:
        """Readiness probe: verify that the database answers and that its
        schema is at the revision this release needs. One round trip on a
        fresh connection, no retries, every wait bounded by
        ``_db.PROBE_TIMEOUTS`` (about 3 s, also when the host drops packets).

        Raises:
            LogbookUnavailable: the database cannot be reached now (down,
                refusing connections, timed out): worth probing again later.
            LogbookSchemaError: the database answers but has no logbook
                schema, or one at another revision (``revision``, ``head``).
            LogbookError: the database does not exist or refuses the
                credentials: a configuration error, not an outage.
        """
        if self._probe is None:
            self._probe = self._side_engine(_db.PROBE_TIMEOUTS, pool_pre_ping=False)
        probe = self._probe
        try:
            _db.check(probe, self.url)
        except JobBoardError:
            raise
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            raise _db.translate(exc, "check", self.url) from exc

    def _side_engine(self, timeouts: _db.Timeouts, **options: Any) -> Engine:
        """An unpooled engine with other timeouts (migrations, probes), keeping
        the caller's ``connect_args``."""
        options = {"poolclass": NullPool, **options}
        if "connect_args" in self._engine_options:
            options["connect_args"] = self._engine_options["connect_args"]
        try:
            return _db.make_engine(self.url, options, timeouts=timeouts)
        except (sa_exc.SQLAlchemyError, ImportError, ValueError) as exc:
            raise LogbookError(f"cannot use logbook URL {_db.safe_url(self.url)}: {exc}") from exc

    # -- writes --------------------------------------------------------------

    def take_over(self, job_id: str, token: int, owner: str, *, name: str = "",
                  attempt: int = 1, start: FlowState | None = None,
                  atoms: Sequence[AtomDetail] = ()) -> FlowDetail | None:
        """Become the logbook's writer: create it if absent and record
        ``(token, owner)`` unless a newer token already holds it. Returns the
        flow of the current attempt with its atoms (None when it saved none),
        read once the take-over holds: every write of an older holder is in
        it, and none lands after it.

        With ``start``, a current attempt without a flow gets one in that
        state, with ``atoms`` (all new), in the same transaction (as
        :meth:`save_flow` would; it returns None). An attempt with a flow is
        returned as it is, and nothing else is written.

        An ``attempt`` above the logbook's current one moves the logbook to
        it: later writes go to that attempt's flow, which starts empty
        (``load_flow`` returns None until it is saved); the earlier attempts
        are kept. A lower ``attempt`` never moves it back.

        Raises:
            StaleOwner: the logbook's token is newer than ``token``.
            InvalidArgument: ``attempt`` is below 1.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise InvalidArgument(f"attempt must be an integer >= 1, not {attempt!r}",
                                  argument="attempt")

        if start is None and atoms:
            raise InvalidArgument("take_over saves atoms only with the flow it starts "
                                  "(start=)", argument="atoms")
        first = _unique(atoms)
        if any(atom.created_at is not None for atom in first):
            raise InvalidArgument("take_over starts a flow with new atoms only",
                                  argument="atoms")
        state = None if start is None else FlowState(start)
        rows = [_atom_values(atom) for atom in first]
        packed = serialization.dumps({})

        def step(conn: Connection) -> FlowDetail | None:
            if not self._take_over(conn, job_id, token, owner, name, attempt):
                flows = _flows_from_rows(job_id, conn.execute(_CURRENT_FLOW_QUERY,
                                                              {"j": job_id}).all())
                if flows:
                    return flows[0]
            if state is not None:     # nothing saved yet: the flow starts here
                _, created = self._save_flow(conn, job_id, name, state, token, packed, {})
                if first:
                    self._save_atoms(conn, job_id, first, rows, token, new_flow=created)
            return None

        def take_over_in_one(driver: Any) -> Any:
            return self._take_over_in_one(driver, job_id, token, owner, name, attempt)

        def start_in_one(driver: Any) -> Any:
            return self._take_over_and_start_in_one(driver, job_id, token, owner, name,
                                                    attempt, state, packed, first, rows)

        fast = take_over_in_one if state is None \
            else start_in_one if len(first) <= _postgresql.MAX_ATOMS else None
        return self._write("take_over", job_id, token, step, retry_if=_take_over_retryable,
                           fast=fast)

    def save_flow(self, job_id: str, name: str, state: FlowState, *, token: int,
                  meta: dict | None = None, atoms: Sequence[AtomDetail] = ()) -> FlowDetail:
        """Create or update the flow detail of the job's current attempt, and
        save ``atoms`` (as :meth:`save_atoms`) in the same transaction.

        Returns:
            The flow as stored, without its atoms.

        Raises:
            StaleOwner: ``token`` is not the logbook's current token.
            LogbookNotFound: no ``take_over`` created the logbook.
            MalformedData: ``meta``, or an atom's result or meta, is not
                msgpack-native (nothing is written).
        """
        packed = serialization.dumps(meta or {})
        state = FlowState(state)
        unique = _unique(atoms)
        rows = [_atom_values(atom) for atom in unique]

        def step(conn: Connection) -> FlowDetail:
            flow, created = self._save_flow(conn, job_id, name, state, token, packed, meta or {})
            if unique:
                self._save_atoms(conn, job_id, unique, rows, token, new_flow=created)
            return flow

        def in_one(driver: Any) -> Any:
            return self._save_flow_in_one(driver, job_id, name, state, token, packed,
                                          meta or {}, unique, rows)

        one_statement = len(unique) <= _postgresql.MAX_ATOMS \
            and len({atom.created_at is None for atom in unique}) < 2   # all new, or none
        return self._write("save_flow", job_id, token, step,
                           fast=in_one if one_statement else None)

    def save_atom(self, job_id: str, atom: AtomDetail, *, token: int) -> None:
        """Insert or update the atom (by name) in the flow of the job's current
        attempt; sets ``atom.updated_at`` (and ``created_at`` when it was new).

        An atom saved before through this object (``created_at`` known) costs
        one fenced statement and the commit.

        Raises:
            StaleOwner: ``token`` is not the logbook's current token.
            LogbookNotFound: no ``take_over`` created the logbook.
            LogbookError: the job has no flow yet (call ``save_flow`` first).
            MalformedData: the result or meta is not msgpack-native.
        """
        self.save_atoms(job_id, [atom], token=token)

    def save_atoms(self, job_id: str, atoms: Sequence[AtomDetail], *, token: int) -> None:
        """Insert or update several atoms (by name) in one transaction: all of
        them are saved, or none (the engine saves a task's ``SUCCESS`` and the
        next task's ``RUNNING`` together, and every ``PENDING`` row at once).
        Sets each atom's ``updated_at`` (and ``created_at`` when it was new).
        A later atom of the same name in ``atoms`` wins.

        Raises:
            StaleOwner: ``token`` is not the logbook's current token (nothing
                is written).
            LogbookNotFound: no ``take_over`` created the logbook.
            LogbookError: the job has no flow yet (call ``save_flow`` first).
            MalformedData: a result or meta is not msgpack-native (nothing is
                written).
        """
        unique = _unique(atoms)
        if not unique:
            return
        rows = [_atom_values(atom) for atom in unique]

        def in_one(driver: Any) -> Any:
            return self._update_atoms_in_one(driver, job_id, unique, rows, token)

        one_statement = len(unique) <= _postgresql.MAX_ATOMS \
            and all(atom.created_at is not None for atom in unique)
        self._write("save_atom", job_id, token,
                    lambda c: self._save_atoms(c, job_id, unique, rows, token),
                    fast=in_one if one_statement else None)

    def delete(self, job_id: str) -> bool:
        """Remove a job's logbook, every attempt's flow and atoms. Returns
        whether it existed."""
        return self._transaction("delete", lambda c: self._delete_jobs(c, [job_id]) > 0)

    def delete_older_than(self, age: timedelta) -> int:
        """Retention: remove the logbooks not updated for ``age``.

        Returns:
            How many logbooks were removed.
        """
        cutoff = _now() - age

        def batch(conn: Connection) -> int:
            ids = conn.execute(
                select(LogBookRow.job_id).where(LogBookRow.updated_at < cutoff)
                .order_by(LogBookRow.updated_at).limit(_DELETE_BATCH).with_for_update()
            ).scalars().all()
            return self._delete_jobs(conn, list(ids), older_than=cutoff) if ids else 0

        total = 0
        while True:
            removed = self._transaction("delete_older_than", batch)
            total += removed
            if removed < _DELETE_BATCH:
                return total

    # -- reads ---------------------------------------------------------------

    def load_flow(self, job_id: str, attempt: int | None = None) -> FlowDetail | None:
        """The flow of the job's current attempt (or of ``attempt``) with all
        of its atoms (one query), or None when that attempt saved no flow."""
        which = _current_attempt(job_id) if attempt is None else attempt
        query = _FLOW_QUERY.where(FLOWS.c.job_id == job_id, FLOWS.c.attempt == which)
        rows = self._transaction("load_flow", lambda c: c.execute(query).all())
        flows = _flows_from_rows(job_id, rows)
        return flows[0] if flows else None

    def attempts(self, job_id: str) -> list[FlowDetail]:
        """Every attempt's flow with its atoms (one query), oldest first; empty
        when the job has no logbook or saved no flow yet."""
        query = _FLOW_QUERY.where(FLOWS.c.job_id == job_id)
        rows = self._transaction("attempts", lambda c: c.execute(query).all())
        return _flows_from_rows(job_id, rows)

    def get_logbook(self, job_id: str) -> LogBookInfo:
        """The logbook's summary.

        Raises:
            LogbookNotFound: no logbook for ``job_id``.
        """
        query = self._info_query().where(LogBookRow.job_id == job_id)
        rows = self._transaction("get_logbook", lambda c: c.execute(query).all())
        if not rows:
            raise LogbookNotFound(job_id)
        return self._info(rows[0])

    def list_logbooks(self, *, limit: int = 100, offset: int = 0) -> list[LogBookInfo]:
        """Logbook summaries, newest first."""
        query = (self._info_query()
                 .order_by(LogBookRow.created_at.desc(), LogBookRow.job_id)
                 .limit(limit).offset(offset))
        rows = self._transaction("list_logbooks", lambda c: c.execute(query).all())
        return [self._info(row) for row in rows]

    def current_token(self, job_id: str) -> int | None:
        """The token of the logbook's current holder (None: no logbook or holder)."""
        row = self._transaction("current_token", lambda c: _token_row(c, job_id))
        return None if row is None else row[0]

    # -- steps (each runs inside one transaction) ----------------------------

    def _take_over(self, conn: Connection, job_id: str, token: int, owner: str,
                   name: str, attempt: int) -> bool:
        """Create or take the logbook row; True when it was created here
        (known for sure: it has no flow yet)."""
        now = _now()
        params = {"j": job_id, "t": token, "o": owner, "v_now": now, "a": attempt, "n": name}
        upsert = _TAKE_OVER_UPSERTS.get((conn.dialect.name, bool(name)))
        if upsert is not None:   # one statement creates or takes the row, or leaves it
            row = _run(conn, upsert, params).first()
            if row is not None:
                return bool(row[1])
            current = _token_row(conn, job_id)
            raise StaleOwner(job_id, token, None if current is None else current[0])
        take = _TAKE_OVER_NAMED if name else _TAKE_OVER
        while True:
            if conn.execute(take, params).rowcount:
                return False
            current = _token_row(conn, job_id)
            if current is None:
                break
            if current[0] is not None and current[0] > token:
                raise StaleOwner(job_id, token, current[0])
            # An older holder created the row after our UPDATE looked (READ
            # COMMITTED): the UPDATE takes it now.
        # Absent: create it. A racing creator makes this insert fail with a
        # unique violation (an IntegrityError); the retry loop runs the
        # conditional UPDATE again, which then decides.
        conn.execute(insert(LOGBOOKS).values(
            job_id=job_id, name=name, owner=owner, token=token, attempt=attempt,
            created_at=now, updated_at=now))
        return True

    def _fence(self, conn: Connection, job_id: str, token: int, now: datetime) -> None:
        """Check ``token`` is current and lock the logbook row until commit."""
        if not conn.execute(_FENCE, {"j": job_id, "t": token, "v_now": now}).rowcount:
            _refuse(conn, job_id, token)

    def _save_flow(self, conn: Connection, job_id: str, name: str, state: FlowState,
                   token: int, packed_meta: bytes, meta: dict) -> tuple[FlowDetail, int | None]:
        """Fence, then insert or update the current attempt's flow; also gives
        the id of a flow created here (it has no atoms yet), else None."""
        now = _now()
        values = {"f_name": name, "f_state": state.value, "f_meta": packed_meta, "v_now": now}
        upsert = _FLOW_UPSERTS.get(conn.dialect.name)
        if upsert is not None:
            row = _run(conn, upsert, {**values, "j": job_id, "t": token}).first()
            if row is None:
                _refuse(conn, job_id, token)
            flow_id, attempt, created_at, inserted = row
            new_id = flow_id if inserted else None
            created = now if inserted else _utc(created_at)
        else:
            self._fence(conn, job_id, token, now)
            # The fence holds the logbook row's lock: its attempt cannot move now.
            attempt, flow_id, created_at = conn.execute(_CURRENT_FLOW, {"j": job_id}).one()
            new_id = None
            if flow_id is None:
                created = now
                new_id = conn.execute(_FLOW_INSERT, {**values, "j": job_id, "a": attempt}
                                      ).inserted_primary_key[0]
            else:
                created = _utc(created_at)
                conn.execute(_FLOW_UPDATE, {**values, "f_id": flow_id})
        detail = FlowDetail(job_id=job_id, name=name, state=state, meta=dict(meta),
                            created_at=created, updated_at=now, attempt=attempt)
        return detail, new_id

    def _save_atoms(self, conn: Connection, job_id: str, atoms: list[AtomDetail],
                    rows: list[dict[str, Any]], token: int, *,
                    new_flow: int | None = None) -> None:
        """Atoms saved before through this object (``created_at`` known): the
        fenced UPDATE by name, one statement for them all (see
        :func:`_fenced_update`). Otherwise, or when that statement missed any
        of them (a stale token, a row deleted meanwhile): :meth:`_upsert_atoms`,
        which also tells why a write is refused. Both in this one transaction;
        a fenced UPDATE that matched no row wrote nothing but the logbook's
        ``updated_at`` under our own (still current or refused) token.
        ``new_flow``: the id of a flow created in this transaction, under its
        fence: every atom is new, inserted in one statement."""
        now = _now()
        params = [{**row, "j": job_id, "t": token, "n": atom.name, "v_now": now}
                  for atom, row in zip(atoms, rows)]
        if new_flow is not None:
            _run(conn, _ATOM_INSERT, [_new_atom_row(new_flow, atom, values, now)
                                      for atom, values in zip(atoms, params)])
            return
        if all(atom.created_at is not None for atom in atoms):
            if _fenced_update(conn, params) == len(params):
                for atom in atoms:
                    atom.updated_at = now
                return
        self._upsert_atoms(conn, job_id, atoms, params, token, now)

    def _upsert_atoms(self, conn: Connection, job_id: str, atoms: list[AtomDetail],
                      params: list[dict[str, Any]], token: int, now: datetime) -> None:
        """Fence (the row lock serializes this job's writers, so nobody can
        insert the same atom in between), read which atoms exist, then one
        multi-row INSERT for the new ones and one UPDATE (executemany) for the
        others."""
        self._fence(conn, job_id, token, now)
        names = [atom.name for atom in atoms]
        if len(names) <= _NAMES_PER_QUERY:
            found = conn.execute(_FLOW_ATOMS_NAMED, {"j": job_id, "names": names}).all()
        else:
            found = conn.execute(_FLOW_ATOMS_ALL, {"j": job_id}).all()
        if not found:
            raise LogbookError(f"job {job_id} has no flow detail for its current attempt; "
                               "call save_flow first")
        flow_id = found[0][0]
        existing = {row[1]: (row[2], row[3]) for row in found if row[1] is not None}
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for atom, values in zip(atoms, params):
            known = existing.get(atom.name)
            if known is None:
                inserts.append(_new_atom_row(flow_id, atom, values, now))
            else:
                updates.append({**values, "a_id": known[0]})
                atom.created_at = _utc(known[1])
            atom.updated_at = now
        if inserts:
            _run(conn, _ATOM_INSERT, inserts)
        if updates:
            conn.execute(_ATOM_UPDATE_BY_ID, updates)

    # -- one-statement steps (PostgreSQL; see _postgresql) ---------------------
    # Each takes the psycopg connection, in autocommit, and returns _MISSED
    # when it wrote nothing: the transaction then runs and decides.

    def _take_over_in_one(self, driver: Any, job_id: str, token: int, owner: str, name: str,
                          attempt: int) -> Any:
        """The take-over's upsert, then (a logbook that existed) the read of
        its current flow. Once the take-over has committed, an older token's
        write is refused, so the read misses none of them; the read is of
        the logbook held by ``token``, so a newer holder that came meanwhile
        is not mistaken for ours (the transaction then says StaleOwner)."""
        params = {"j": job_id, "t": token, "o": owner, "v_now": _now(), "a": attempt,
                  "n": name}
        dialect = self._engine.dialect
        row = driver.execute(_driver_sql(_TAKE_OVER_UPSERTS["postgresql", bool(name)], dialect),
                             params).fetchone()
        if row is None:
            return _MISSED            # a newer holder: the transaction says which
        if row[1]:
            return None               # created here: nothing saved yet
        return self._held_flow(driver, job_id, token)

    def _held_flow(self, driver: Any, job_id: str, token: int) -> Any:
        """The current attempt's flow of the logbook ``token`` holds (None:
        it has none yet), or _MISSED when ``token`` no longer holds it."""
        rows = driver.execute(_driver_sql(_HELD_FLOW_QUERY, self._engine.dialect),
                              {"j": job_id, "t": token}).fetchall()
        if not rows:
            return _MISSED            # taken over again since
        flows = _flows_from_rows(job_id, [row for row in rows if row[0] is not None])
        return flows[0] if flows else None

    def _take_over_and_start_in_one(self, driver: Any, job_id: str, token: int, owner: str,
                                    name: str, attempt: int, state: FlowState,
                                    packed_meta: bytes, atoms: list[AtomDetail],
                                    rows: list[dict[str, Any]]) -> Any:
        """The take-over's upsert and, when the current attempt has no flow,
        its flow in ``state`` with ``atoms``, in one statement; an attempt
        that has a flow is read as :meth:`_take_over_in_one` does."""
        now = _now()
        params = {"j": job_id, "t": token, "o": owner, "v_now": now, "a": attempt, "n": name,
                  "f_name": name, "f_state": state.value, "f_meta": packed_meta,
                  **_postgresql.atom_params([atom.name for atom in atoms], rows)}
        row = driver.execute(_postgresql.take_over_and_start(len(atoms), bool(name)),
                             params).fetchone()
        if row is None:
            return _MISSED            # a newer holder: the transaction says which
        if row[0] != 1:               # the attempt has a flow: read it
            flow = self._held_flow(driver, job_id, token)
            return _MISSED if flow is None else flow    # None: deleted since
        for atom in atoms:
            atom.created_at = atom.updated_at = now
        return None

    @staticmethod
    def _update_atoms_in_one(driver: Any, job_id: str, atoms: list[AtomDetail],
                             rows: list[dict[str, Any]], token: int) -> Any:
        """Update the (saved before) atoms, all or none."""
        now = _now()
        params = {"j": job_id, "t": token, "v_now": now,
                  **_postgresql.atom_params([atom.name for atom in atoms], rows)}
        row = driver.execute(_postgresql.update_atoms(len(atoms), False), params).fetchone()
        if row is None or row[0] != len(atoms):
            return _MISSED
        for atom in atoms:
            atom.updated_at = now
        return None

    def _save_flow_in_one(self, driver: Any, job_id: str, name: str, state: FlowState,
                          token: int, packed_meta: bytes, meta: dict,
                          atoms: list[AtomDetail], rows: list[dict[str, Any]]) -> Any:
        """Insert a new flow with its new atoms, or update the flow and its
        saved atoms (``atoms`` are all new or all saved before; none: the
        flow's own upsert), all or nothing; the flow as stored."""
        now = _now()
        names = [atom.name for atom in atoms]
        params = {"j": job_id, "t": token, "v_now": now, "f_name": name,
                  "f_state": state.value, "f_meta": packed_meta}
        new = bool(atoms) and atoms[0].created_at is None
        if not atoms:
            row = driver.execute(_driver_sql(_FLOW_UPSERTS["postgresql"], self._engine.dialect),
                                 params).fetchone()
            new = row is not None and row[3]
        else:
            statement = _postgresql.insert_flow_and_atoms(len(atoms)) if new \
                else _postgresql.update_atoms(len(atoms), True)
            row = driver.execute(statement, {**params, **_postgresql.atom_params(names, rows)}
                                 ).fetchone()
        if row is None or (atoms and row[-1] != len(atoms)):
            return _MISSED
        for atom in atoms:
            if new:
                atom.created_at = now
            atom.updated_at = now
        return FlowDetail(job_id=job_id, name=name, state=state, meta=dict(meta),
                          created_at=now if new else _utc(row[2]), updated_at=now,
                          attempt=row[1])

    @staticmethod
    def _delete_jobs(conn: Connection, job_ids: list[str],
                     older_than: datetime | None = None) -> int:
        """Flows and atoms go with their logbook (ON DELETE CASCADE)."""
        query = delete(LOGBOOKS).where(LOGBOOKS.c.job_id.in_(job_ids))
        if older_than is not None:
            query = query.where(LOGBOOKS.c.updated_at < older_than)
        return conn.execute(query).rowcount

    @staticmethod
    def _info_query() -> Any:
        return (select(LogBookRow.job_id, LogBookRow.name, LogBookRow.owner, LogBookRow.token,
                       FlowDetailRow.state, LogBookRow.created_at, LogBookRow.updated_at,
                       LogBookRow.attempt)
                .select_from(LogBookRow)
                .outerjoin(FlowDetailRow, (FlowDetailRow.job_id == LogBookRow.job_id)
                           & (FlowDetailRow.attempt == LogBookRow.attempt)))

    @staticmethod
    def _info(row: Any) -> LogBookInfo:
        return LogBookInfo(job_id=row[0], name=row[1], owner=row[2], token=row[3],
                           flow_state=None if row[4] is None else FlowState(row[4]),
                           created_at=_utc(row[5]), updated_at=_utc(row[6]),
                           attempt=row[7])

    # -- transactions, retries, translation -----------------------------------

    def _transaction(self, op: str, step: Callable[[Connection], T], *,
                     retry_if: Callable[[BaseException], bool] = _db.is_transient,
                     fast: Callable[[Any], T] | None = None) -> T:
        """Run ``step`` in one transaction (committed on return), retried as a
        whole on transient errors. ``fast``, on PostgreSQL: a one-statement
        write (statements each safe alone) to try first, given the psycopg
        connection in autocommit; when it returns _MISSED it wrote nothing,
        and ``step`` runs."""
        if not self._one_statement_writes:
            fast = None

        def attempt() -> T:
            if fast is not None:
                with _postgresql.autocommit(self._engine) as driver:
                    done = fast(driver)
                if done is not _MISSED:
                    return done
            with self._engine.begin() as conn:
                return step(conn)
        return self._retrying(op, attempt, retry_if=retry_if)

    def _retrying(self, op: str, call: Callable[[], T], *,
                  retry_if: Callable[[BaseException], bool] = _db.is_transient) -> T:
        started = time.monotonic()
        try:
            try:
                return call()     # the usual case, without building a retry policy
            except Exception as exc:
                if self.retry_attempts < 2 or not retry_if(exc):
                    raise
                first: Exception | None = exc

            def again() -> T:
                # The policy's first attempt is the one that just failed.
                nonlocal first
                if first is not None:
                    failed, first = first, None
                    raise failed
                return call()
            # Its time counts against the bound as if the policy had run it.
            spent = time.monotonic() - started
            return database_retry(retry_if, attempts=self.retry_attempts,
                                  max_delay=self.retry_max_delay - spent)(again)
        except JobBoardError:
            raise
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            raise _db.translate(exc, op, self.url) from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("alembic", "psycopg", "pymysql", "sqlite3")):
                raise LogbookError(f"logbook {op} failed: {exc}") from exc
            raise

    def _write(self, op: str, job_id: str, token: int, step: Callable[[Connection], T], *,
               retry_if: Callable[[BaseException], bool] = _db.is_transient,
               fast: Callable[[Any], T] | None = None) -> T:
        started = time.perf_counter()
        ok = fenced = False
        try:
            result = self._transaction(op, step, retry_if=retry_if, fast=fast)
            ok = True
            return result
        except StaleOwner:
            fenced = True
            with self._lock:
                self.fenced_writes += 1
            log.warning("fenced %s on job %s: token %s is stale", op, job_id, token)
            raise
        finally:
            if self.notifier is not None:   # the notifier logs a failing listener
                self.notifier.emit(EventKind.LOGBOOK_WRITE, job_id=job_id, details={
                    "op": op, "seconds": time.perf_counter() - started, "ok": ok,
                    "fenced": fenced})


# A flow and its atoms in one query: the outer join yields one row per atom,
# or one row of NULL atom columns for a flow without atoms.
_FLOW_QUERY = (
    select(FLOWS.c.attempt, FLOWS.c.name, FLOWS.c.state, FLOWS.c.meta, FLOWS.c.created_at,
           FLOWS.c.updated_at, ATOMS.c.name, ATOMS.c.kind, ATOMS.c.state, ATOMS.c.result,
           ATOMS.c.failure, ATOMS.c.revert_failure, ATOMS.c.attempts, ATOMS.c.meta,
           ATOMS.c.created_at, ATOMS.c.updated_at, ATOMS.c.started_at, ATOMS.c.finished_at,
           ATOMS.c.version)
    .select_from(FLOWS.outerjoin(ATOMS, ATOMS.c.flow_id == FLOWS.c.id))
    .order_by(FLOWS.c.attempt, ATOMS.c.id))


def _flows_from_rows(job_id: str, rows: Any) -> list[FlowDetail]:
    """FlowDetails (with their atoms, in insertion order) from _FLOW_QUERY rows."""
    flows: dict[int, FlowDetail] = {}
    for row in rows:
        detail = flows.get(row[0])
        if detail is None:
            detail = flows[row[0]] = FlowDetail(
                job_id=job_id, attempt=row[0], name=row[1], state=FlowState(row[2]),
                meta=serialization.loads(row[3]), created_at=_utc(row[4]),
                updated_at=_utc(row[5]))
        if row[6] is None:      # the outer join found no atom
            continue
        detail.atoms[row[6]] = AtomDetail(
            name=row[6], kind=row[7], state=AtomState(row[8]),
            result=None if row[9] is None else serialization.loads(row[9]),
            failure=_unpack_failure(row[10]), revert_failure=_unpack_failure(row[11]),
            attempts=row[12], meta=serialization.loads(row[13]),
            created_at=_utc(row[14]), updated_at=_utc(row[15]),
            started_at=_utc(row[16]), finished_at=_utc(row[17]), version=row[18])
    return list(flows.values())


def _unique(atoms: Sequence[AtomDetail]) -> list[AtomDetail]:
    """The atoms by name, a later one of the same name winning."""
    return list({atom.name: atom for atom in atoms}.values())


def _token_row(conn: Connection, job_id: str) -> Any:
    """The logbook's (token,) row, or None when there is no logbook."""
    return conn.execute(_TOKEN_ROW, {"j": job_id}).first()


_DRIVER_SQL: dict[tuple[int, str, str], str] = {}


def _driver_sql(statement: Any, dialect: Dialect) -> str:
    """A prebuilt statement's SQL for the driver, compiled once
    (``for_executemany``: no implicit RETURNING of an INSERT's new ids)."""
    key = (id(statement), dialect.driver, dialect.paramstyle)
    sql = _DRIVER_SQL.get(key)
    if sql is None:
        sql = _DRIVER_SQL[key] = str(statement.compile(dialect=dialect, for_executemany=True))
    return sql


def _run(conn: Connection, statement: Any, params: Any) -> Any:
    """Execute one of the prebuilt hot-path statements below (module
    constants). On PostgreSQL its SQL is compiled once and handed to the
    driver: SQLAlchemy's own per-call work (the statement's cache key, its
    parameters) cost more than the driver's, and these parameters need no
    conversion there. An engine that renames schemas per execution
    (``schema_translate_map``) goes through SQLAlchemy, which applies it."""
    dialect = conn.dialect
    if dialect.name != "postgresql" or "schema_translate_map" in conn.get_execution_options():
        return conn.execute(statement, params)
    return conn.exec_driver_sql(_driver_sql(statement, dialect), params)


def _refuse(conn: Connection, job_id: str, token: int) -> NoReturn:
    """Why a fenced write matched no logbook row: there is none, or a newer
    token holds it."""
    current = _token_row(conn, job_id)
    if current is None:
        raise LogbookNotFound(job_id)
    raise StaleOwner(job_id, token, current[0])


# -- the atom write statements, built once (SQLAlchemy caches their SQL) --------

# More names than this: read every atom of the flow instead of an IN list.
_NAMES_PER_QUERY = 200


def _atom_values(atom: AtomDetail) -> dict[str, Any]:
    """An atom's columns as ``v_<column>`` parameters (serialized here, before
    any transaction starts, so an unencodable value writes nothing)."""
    return {
        "v_kind": atom.kind,
        "v_state": AtomState(atom.state).value,
        "v_result": serialization.dumps(atom.result),
        "v_failure": _pack_failure(atom.failure),
        "v_revert_failure": _pack_failure(atom.revert_failure),
        "v_attempts": int(atom.attempts),
        "v_meta": serialization.dumps(atom.meta or {}),
        "v_version": None if atom.version is None else str(atom.version),
        "v_started_at": atom.started_at,
        "v_finished_at": atom.finished_at,
    }


def _new_atom_row(flow_id: int, atom: AtomDetail, values: dict[str, Any],
                  now: datetime) -> dict[str, Any]:
    """The INSERT row of a new atom (whose ``created_at`` becomes ``now``)."""
    atom.created_at = atom.updated_at = now
    return {"flow_id": flow_id, "name": atom.name, "created_at": now, "updated_at": now,
            **{col: values[f"v_{col}"] for col in VALUE_COLUMNS}}


def _atom_set() -> dict[Any, Any]:
    values: dict[Any, Any] = {ATOMS.c[col]: bindparam(f"v_{col}", type_=ATOMS.c[col].type)
                              for col in VALUE_COLUMNS}
    values[ATOMS.c.updated_at] = bindparam("v_now", type_=ATOMS.c.updated_at.type)
    return values


def _j() -> Any:
    return bindparam("j", type_=LOGBOOKS.c.job_id.type)


def _attempt_now() -> Any:
    return select(LOGBOOKS.c.attempt).where(LOGBOOKS.c.job_id == _j()).scalar_subquery()


def _flow_atoms(named: bool) -> Any:
    on = ATOMS.c.flow_id == FLOWS.c.id
    if named:
        on = on & ATOMS.c.name.in_(bindparam("names", expanding=True))
    return (select(FLOWS.c.id, ATOMS.c.name, ATOMS.c.id, ATOMS.c.created_at)
            .select_from(FLOWS.outerjoin(ATOMS, on))
            .where(FLOWS.c.job_id == _j(), FLOWS.c.attempt == _attempt_now()))


def _take_over_statement(named: bool) -> Any:
    """The conditional take-over UPDATE (a newer token than ours leaves the
    row alone); the attempt only moves forward."""
    values: dict[Any, Any] = {
        LOGBOOKS.c.token: bindparam("t"), LOGBOOKS.c.owner: bindparam("o"),
        LOGBOOKS.c.updated_at: bindparam("v_now", type_=LOGBOOKS.c.updated_at.type),
        LOGBOOKS.c.attempt: case((LOGBOOKS.c.attempt < bindparam("a"), bindparam("a")),
                                 else_=LOGBOOKS.c.attempt),
    }
    if named:
        values[LOGBOOKS.c.name] = bindparam("n")
    return (update(LOGBOOKS)
            .where(LOGBOOKS.c.job_id == _j(),
                   LOGBOOKS.c.token.is_(None) | (LOGBOOKS.c.token <= bindparam("t")))
            .values(values))


_TAKE_OVER = _take_over_statement(False)
_TAKE_OVER_NAMED = _take_over_statement(True)


def _take_over_upsert(dialect_insert: Any, named: bool, created: Any) -> Any:
    """The take-over as one INSERT ... ON CONFLICT DO UPDATE (PostgreSQL,
    SQLite): a new logbook is created, an older holder's row is taken
    (the attempt only moves forward), a newer holder's row is left alone
    (no row returned: the caller says StaleOwner). It returns the token and
    ``created``: whether the row was inserted (NULL where the database
    cannot tell)."""
    now = bindparam("v_now", type_=LOGBOOKS.c.updated_at.type)
    statement = dialect_insert(LOGBOOKS).values(
        job_id=_j(), name=bindparam("n"), owner=bindparam("o"), token=bindparam("t"),
        attempt=bindparam("a"), created_at=now, updated_at=now)
    new = statement.excluded
    values: dict[str, Any] = {
        "token": new.token, "owner": new.owner, "updated_at": new.updated_at,
        "attempt": case((LOGBOOKS.c.attempt < new.attempt, new.attempt),
                        else_=LOGBOOKS.c.attempt)}
    if named:
        values["name"] = new.name
    return statement.on_conflict_do_update(
        index_elements=[LOGBOOKS.c.job_id], set_=values,
        where=LOGBOOKS.c.token.is_(None) | (LOGBOOKS.c.token <= new.token)
    ).returning(LOGBOOKS.c.token, created)


_TAKE_OVER_UPSERTS: dict[tuple[str, bool], Any] = {
    (dialect, named): _take_over_upsert(dialect_insert, named, created)
    for dialect, dialect_insert, created in (
        # a row inserted by this transaction has no deleting/locking xid yet
        ("postgresql", postgresql_insert, literal_column("xmax = 0")),
        ("sqlite", sqlite_insert, null()))
    for named in (False, True)}
_TOKEN_ROW = select(LOGBOOKS.c.token).where(LOGBOOKS.c.job_id == _j())
# The logbook's current attempt and that attempt's flow (id, created_at), if any.
_CURRENT_FLOW = (
    select(LOGBOOKS.c.attempt, FLOWS.c.id, FLOWS.c.created_at)
    .select_from(LOGBOOKS.outerjoin(FLOWS, (FLOWS.c.job_id == LOGBOOKS.c.job_id)
                                    & (FLOWS.c.attempt == LOGBOOKS.c.attempt)))
    .where(LOGBOOKS.c.job_id == _j()))
_CURRENT_FLOW_QUERY = _FLOW_QUERY.where(FLOWS.c.job_id == _j(),
                                        FLOWS.c.attempt == _attempt_now())
# The same, of the logbook while ``token`` holds it: no row when it does not,
# a row of NULL flow columns when its current attempt has no flow yet.
_HELD_FLOW_QUERY = (
    select(*_FLOW_QUERY.selected_columns).select_from(
        LOGBOOKS.outerjoin(FLOWS, (FLOWS.c.job_id == LOGBOOKS.c.job_id)
                           & (FLOWS.c.attempt == LOGBOOKS.c.attempt))
        .outerjoin(ATOMS, ATOMS.c.flow_id == FLOWS.c.id))
    .where(LOGBOOKS.c.job_id == _j(), LOGBOOKS.c.token == bindparam("t"))
    .order_by(ATOMS.c.id))


def _flow_values() -> dict[Any, Any]:
    return {FLOWS.c.name: bindparam("f_name"), FLOWS.c.state: bindparam("f_state"),
            FLOWS.c.meta: bindparam("f_meta", type_=FLOWS.c.meta.type),
            FLOWS.c.updated_at: bindparam("v_now", type_=FLOWS.c.updated_at.type)}


_FLOW_INSERT = insert(FLOWS).values({
    **_flow_values(), FLOWS.c.job_id: _j(), FLOWS.c.attempt: bindparam("a"),
    FLOWS.c.created_at: bindparam("v_now", type_=FLOWS.c.created_at.type)})
_FLOW_UPDATE = update(FLOWS).where(FLOWS.c.id == bindparam("f_id")).values(_flow_values())


def _postgresql_flow_upsert() -> Any:
    """The fence and the flow's insert-or-update in one statement: the fence
    (the logbook row's UPDATE, locked to the commit) returns the current
    attempt, whose flow is inserted or, when it exists, updated. It returns
    the flow's id, attempt, created_at and whether it was inserted here; no
    row when the fence matched nothing."""
    fence = (update(LOGBOOKS)
             .where(LOGBOOKS.c.job_id == _j(), LOGBOOKS.c.token == bindparam("t"))
             .values(updated_at=bindparam("v_now"))
             .returning(LOGBOOKS.c.attempt)
             .cte("fence"))
    now = bindparam("v_now", type_=FLOWS.c.updated_at.type)
    row = select(_j(), fence.c.attempt, bindparam("f_name", type_=FLOWS.c.name.type),
                 bindparam("f_state", type_=FLOWS.c.state.type),
                 bindparam("f_meta", type_=FLOWS.c.meta.type), now, now)
    statement = postgresql_insert(FLOWS).from_select(
        ["job_id", "attempt", "name", "state", "meta", "created_at", "updated_at"], row)
    new = statement.excluded
    return (statement
            .on_conflict_do_update(
                index_elements=[FLOWS.c.job_id, FLOWS.c.attempt],
                set_={"name": new.name, "state": new.state, "meta": new.meta,
                      "updated_at": new.updated_at})
            .returning(FLOWS.c.id, FLOWS.c.attempt, FLOWS.c.created_at,
                       literal_column("xmax = 0"))
            .add_cte(fence))


# SQLite and MySQL: the fence, the current flow, then its INSERT or UPDATE.
_FLOW_UPSERTS: dict[str, Any] = {"postgresql": _postgresql_flow_upsert()}
_FLOW_ATOMS_NAMED = _flow_atoms(True)
_FLOW_ATOMS_ALL = _flow_atoms(False)
# Every column but the id, by its name (the rows of _new_atom_row).
_ATOM_INSERT = insert(ATOMS).values({column: bindparam(column.key, type_=column.type)
                                     for column in ATOMS.c if column.key != "id"})
_ATOM_UPDATE_BY_ID = update(ATOMS).where(ATOMS.c.id == bindparam("a_id")).values(_atom_set())
_FENCE = (update(LOGBOOKS)
          .where(LOGBOOKS.c.job_id == _j(), LOGBOOKS.c.token == bindparam("t"))
          .values(updated_at=bindparam("v_now")))
# SQLite: the fence and the update, two statements in one transaction (a
# single writer holds the database; both run in-process, no round trip).
_ATOM_UPDATE_BY_NAME = (
    update(ATOMS)
    .where(ATOMS.c.flow_id == select(FLOWS.c.id).where(FLOWS.c.job_id == _j(),
                                                        FLOWS.c.attempt == _attempt_now())
           .scalar_subquery(),
           ATOMS.c.name == bindparam("n"))
    .values(_atom_set()))


def _postgresql_fenced_update() -> Any:
    """One statement: a data-modifying CTE runs the fence (the logbook row's
    UPDATE, whose lock is held to the commit as before) and the atom UPDATE
    finds its flow through what it returned; under READ COMMITTED a take-over
    committed meanwhile makes the fence re-check the new row version and
    match nothing (the flow id is then NULL: no atom matches).

    The flow id is a scalar subquery, not a join, so the atom is always found
    by its whole unique key (flow id, name). As a join, the plan made while
    the tables were nearly empty read the whole atom table; a prepared
    statement keeps its generic plan until the table is analyzed, so the
    scan grew with the table (without autovacuum, for good)."""
    fence = (update(LOGBOOKS)
             .where(LOGBOOKS.c.job_id == _j(), LOGBOOKS.c.token == bindparam("t"))
             .values(updated_at=bindparam("v_now"))
             .returning(LOGBOOKS.c.attempt)
             .cte("fence"))
    flow_id = (select(FLOWS.c.id)
               .where(FLOWS.c.job_id == _j(), FLOWS.c.attempt == fence.c.attempt)
               .scalar_subquery())
    return (update(ATOMS)
            .where(ATOMS.c.flow_id == flow_id, ATOMS.c.name == bindparam("n"))
            .values(_atom_set())
            .add_cte(fence))


def _mysql_fenced_update() -> Any:
    """One multi-table UPDATE: the logbook row (fence, locked to the commit)
    and the atom, joined through the flow of the current attempt."""
    values = _atom_set()
    values[LOGBOOKS.c.updated_at] = bindparam("v_now", type_=LOGBOOKS.c.updated_at.type)
    return (update(ATOMS)
            .where(ATOMS.c.flow_id == FLOWS.c.id, FLOWS.c.job_id == LOGBOOKS.c.job_id,
                   FLOWS.c.attempt == LOGBOOKS.c.attempt, LOGBOOKS.c.job_id == _j(),
                   LOGBOOKS.c.token == bindparam("t"), ATOMS.c.name == bindparam("n"))
            .values(values))


_FENCED_UPDATES: dict[str, Any] = {
    "postgresql": _postgresql_fenced_update(),
    "mysql": _mysql_fenced_update(),
    "mariadb": _mysql_fenced_update(),
}


def _fenced_update(conn: Connection, params: list[dict[str, Any]]) -> int:
    """Update existing atoms by name under the fence; returns how many rows
    matched (0 for all of them when the token is stale)."""
    dialect = conn.dialect.name
    statement = _FENCED_UPDATES.get(dialect)
    if dialect in ("mysql", "mariadb"):
        # The matched-row count of a multi-table UPDATE includes the logbook's.
        return sum(1 for p in params if conn.execute(statement, p).rowcount)
    if statement is None:
        if not conn.execute(_FENCE, params[0]).rowcount:
            return 0
        statement = _ATOM_UPDATE_BY_NAME
    if len(params) == 1 or not conn.dialect.supports_sane_multi_rowcount:
        return sum(_run(conn, statement, p).rowcount for p in params)
    return _run(conn, statement, params).rowcount


def _take_over_retryable(exc: BaseException) -> bool:
    """A unique violation in take_over means a racing creator won: run the
    conditional UPDATE again (in other writes an integrity error is final)."""
    return isinstance(exc, sa_exc.IntegrityError) or _db.is_transient(exc)
