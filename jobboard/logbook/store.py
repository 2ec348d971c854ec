"""The :class:`Logbook`: fenced, retried reads and writes of the SQL logbook.

Fencing: ``take_over`` records the (token, owner) of a new claim holder with
a conditional UPDATE (``WHERE token IS NULL OR token <= :t``). Every write
(``save_flow``, ``save_atom``) first runs ``UPDATE logbooks ... WHERE
job_id=:j AND token=:t`` in the same transaction as the write itself: a zero
row count means a newer holder has taken over and the write is refused with
:class:`~jobboard.errors.StaleOwner`; otherwise the UPDATE holds the
logbook's row lock until commit, so a concurrent take-over waits for the
write and no write of an old token lands after a take-over returned.

Attempts: a job has one flow per attempt (``jobboard retry`` starts the next
one). ``take_over(..., attempt=n)`` moves the logbook forward to attempt
``n`` (never back); ``save_flow`` and ``save_atom`` write to the flow of the
logbook's current attempt, resolved by a subquery inside their own
transaction, so the hot path stays two statements (the fence UPDATE and the
atom UPDATE). Earlier attempts are kept: ``attempts()`` lists them all.

How it fails: each public call is one transaction on a pooled connection of
its own (thread-safe), retried on transient errors (``_db.is_transient``) with
``jobboard.retry.database_retry``, every database wait bounded (see ``_db``);
a database that stays down raises ``LogbookUnavailable``, a missing or older
schema ``LogbookSchemaError``, any other database error ``LogbookError``. A
call that returned has committed; the writes are idempotent upserts, so a
retry after an ambiguous commit is harmless. ``check()`` tells those apart in
one bounded round trip, without retries, for readiness probes.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

from sqlalchemy import Connection, Engine, case, delete, exc as sa_exc, insert, select, update
from sqlalchemy.pool import NullPool

from jobboard import serialization
from jobboard.errors import (InvalidArgument, JobBoardError, LogbookError, LogbookNotFound,
                             StaleOwner)
from jobboard.logbook import _db
from jobboard.logbook.models import AtomDetailRow, FlowDetailRow, LogBookRow
from jobboard.logbook.records import AtomDetail, Failure, FlowDetail, LogBookInfo
from jobboard.retry import database_retry
from jobboard.states import AtomState, FlowState

__all__ = ["Logbook"]

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteHook = Callable[[str, float, bool], None]

_DELETE_BATCH = 500

# Core tables and connections rather than ORM entities and sessions: the hot
# path (two UPDATEs per save_atom) uses nothing of the ORM's unit of work.
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

    Raises:
        LogbookUnavailable: the database cannot be reached (auto upgrade only).
        LogbookError: a bad URL, a failed migration, or the migration lock
            held by another process beyond ``_db.MIGRATION_LOCK_TIMEOUT``.
    """

    def __init__(self, url: str = "sqlite:///jobboard.db", *, auto_upgrade: bool | None = None,
                 retry_attempts: int = 6, retry_max_delay: float = 20.0,
                 engine_options: dict | None = None) -> None:
        self.url = url
        self._engine_options = dict(engine_options or {})
        self._probe: Engine | None = None
        self.retry_attempts = retry_attempts
        self.retry_max_delay = retry_max_delay
        #: Writes refused because a newer token had taken over.
        self.fenced_writes = 0
        #: Called after each write as ``on_write(op, seconds, ok)``.
        self.on_write: WriteHook | None = None
        self._lock = threading.Lock()
        try:
            self._engine = _db.make_engine(url, engine_options)
        except (sa_exc.SQLAlchemyError, ImportError, ValueError) as exc:
            raise LogbookError(f"cannot use logbook URL {_db.safe_url(url)}: {exc}") from exc
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
                  attempt: int = 1) -> None:
        """Become the logbook's writer: create it if absent and record
        ``(token, owner)`` unless a newer token already holds it.

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
        self._write("take_over", job_id, token,
                    lambda s: self._take_over(s, job_id, token, owner, name, attempt),
                    retry_if=_take_over_retryable)

    def save_flow(self, job_id: str, name: str, state: FlowState, *, token: int,
                  meta: dict | None = None) -> FlowDetail:
        """Create or update the flow detail of the job's current attempt (its
        atoms are not touched).

        Returns:
            The flow as stored, without its atoms.

        Raises:
            StaleOwner: ``token`` is not the logbook's current token.
            LogbookNotFound: no ``take_over`` created the logbook.
            MalformedData: ``meta`` is not msgpack-native.
        """
        packed = serialization.dumps(meta or {})
        state = FlowState(state)
        return self._write("save_flow", job_id, token,
                           lambda s: self._save_flow(s, job_id, name, state, token, packed,
                                                     meta or {}))

    def save_atom(self, job_id: str, atom: AtomDetail, *, token: int) -> None:
        """Insert or update the atom (by name) in the flow of the job's current
        attempt; sets ``atom.updated_at`` (and ``created_at`` when it was new).

        Raises:
            StaleOwner: ``token`` is not the logbook's current token.
            LogbookNotFound: no ``take_over`` created the logbook.
            LogbookError: the job has no flow yet (call ``save_flow`` first).
            MalformedData: the result or meta is not msgpack-native.
        """
        values = {
            "kind": atom.kind,
            "state": AtomState(atom.state).value,
            "result": serialization.dumps(atom.result),
            "failure": _pack_failure(atom.failure),
            "revert_failure": _pack_failure(atom.revert_failure),
            "attempts": int(atom.attempts),
            "meta": serialization.dumps(atom.meta or {}),
            "started_at": atom.started_at,
            "finished_at": atom.finished_at,
        }
        self._write("save_atom", job_id, token,
                    lambda s: self._save_atom(s, job_id, atom, token, values))

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
                   name: str, attempt: int) -> None:
        now = _now()
        values: dict[str, Any] = {
            "token": token, "owner": owner, "updated_at": now,
            # Forward only: a holder of an older attempt never moves it back.
            "attempt": case((LOGBOOKS.c.attempt < attempt, attempt), else_=LOGBOOKS.c.attempt),
        }
        if name:
            values["name"] = name
        take = (update(LOGBOOKS)
                .where(LOGBOOKS.c.job_id == job_id,
                       LOGBOOKS.c.token.is_(None) | (LOGBOOKS.c.token <= token))
                .values(**values))
        while True:
            if conn.execute(take).rowcount:
                return
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

    def _fence(self, conn: Connection, job_id: str, token: int, now: datetime) -> None:
        """Check ``token`` is current and lock the logbook row until commit."""
        fenced = conn.execute(
            update(LOGBOOKS).where(LOGBOOKS.c.job_id == job_id, LOGBOOKS.c.token == token)
            .values(updated_at=now)).rowcount
        if fenced:
            return
        current = _token_row(conn, job_id)
        if current is None:
            raise LogbookNotFound(job_id)
        raise StaleOwner(job_id, token, current[0])

    def _save_flow(self, conn: Connection, job_id: str, name: str, state: FlowState,
                   token: int, packed_meta: bytes, meta: dict) -> FlowDetail:
        now = _now()
        self._fence(conn, job_id, token, now)
        # The fence holds the logbook row's lock: its attempt cannot move now.
        attempt, flow_id, created_at = conn.execute(
            select(LOGBOOKS.c.attempt, FLOWS.c.id, FLOWS.c.created_at)
            .select_from(LOGBOOKS.outerjoin(FLOWS, (FLOWS.c.job_id == LOGBOOKS.c.job_id)
                                            & (FLOWS.c.attempt == LOGBOOKS.c.attempt)))
            .where(LOGBOOKS.c.job_id == job_id)).one()
        if flow_id is None:
            created = now
            conn.execute(insert(FLOWS).values(
                job_id=job_id, attempt=attempt, name=name, state=state.value,
                meta=packed_meta, created_at=now, updated_at=now))
        else:
            created = _utc(created_at)
            conn.execute(update(FLOWS).where(FLOWS.c.id == flow_id).values(
                name=name, state=state.value, meta=packed_meta, updated_at=now))
        return FlowDetail(job_id=job_id, name=name, state=state, meta=dict(meta),
                          created_at=created, updated_at=now, attempt=attempt)

    def _save_atom(self, conn: Connection, job_id: str, atom: AtomDetail, token: int,
                   values: dict[str, Any]) -> None:
        """Fence, then one statement for an atom saved before through this
        object (``created_at`` known); otherwise one read of the flow and the
        atom, then an insert or an update."""
        now = _now()
        self._fence(conn, job_id, token, now)
        current = (FLOWS.c.job_id == job_id) & (FLOWS.c.attempt == _current_attempt(job_id))
        if atom.created_at is not None:
            flow_id = select(FLOWS.c.id).where(current).scalar_subquery()
            if conn.execute(
                    update(ATOMS).where(ATOMS.c.flow_id == flow_id, ATOMS.c.name == atom.name)
                    .values(updated_at=now, **values)).rowcount:
                atom.updated_at = now
                return
        # The logbook row lock taken by _fence serializes writers of this job,
        # so nobody can insert the same atom in between.
        found = conn.execute(
            select(FLOWS.c.id, ATOMS.c.id, ATOMS.c.created_at)
            .select_from(FLOWS.outerjoin(ATOMS, (ATOMS.c.flow_id == FLOWS.c.id)
                                         & (ATOMS.c.name == atom.name)))
            .where(current)).first()
        if found is None:
            raise LogbookError(f"job {job_id} has no flow detail for its current attempt; "
                               "call save_flow first")
        flow_id, atom_id, created_at = found
        if atom_id is None:
            conn.execute(insert(ATOMS).values(
                flow_id=flow_id, name=atom.name, created_at=now, updated_at=now, **values))
            atom.created_at = now
        else:
            conn.execute(update(ATOMS).where(ATOMS.c.id == atom_id)
                            .values(updated_at=now, **values))
            atom.created_at = _utc(created_at)
        atom.updated_at = now

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
                     retry_if: Callable[[BaseException], bool] = _db.is_transient) -> T:
        """Run ``step`` in one transaction (committed on return), retried as a
        whole on transient errors."""
        def attempt() -> T:
            with self._engine.begin() as conn:
                return step(conn)
        return self._retrying(op, attempt, retry_if=retry_if)

    def _retrying(self, op: str, call: Callable[[], T], *,
                  retry_if: Callable[[BaseException], bool] = _db.is_transient) -> T:
        policy = database_retry(retry_if, attempts=self.retry_attempts,
                                max_delay=self.retry_max_delay)
        try:
            return policy(call)
        except JobBoardError:
            raise
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            raise _db.translate(exc, op, self.url) from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("alembic", "psycopg", "pymysql", "sqlite3")):
                raise LogbookError(f"logbook {op} failed: {exc}") from exc
            raise

    def _write(self, op: str, job_id: str, token: int, step: Callable[[Connection], T], *,
               retry_if: Callable[[BaseException], bool] = _db.is_transient) -> T:
        started = time.perf_counter()
        ok = False
        try:
            result = self._transaction(op, step, retry_if=retry_if)
            ok = True
            return result
        except StaleOwner:
            with self._lock:
                self.fenced_writes += 1
            log.warning("fenced %s on job %s: token %s is stale", op, job_id, token)
            raise
        finally:
            hook = self.on_write
            if hook is not None:
                try:
                    hook(op, time.perf_counter() - started, ok)
                except Exception:  # noqa: BLE001 - metrics must never break a write
                    log.exception("logbook on_write hook failed")


# A flow and its atoms in one query: the outer join yields one row per atom,
# or one row of NULL atom columns for a flow without atoms.
_FLOW_QUERY = (
    select(FLOWS.c.attempt, FLOWS.c.name, FLOWS.c.state, FLOWS.c.meta, FLOWS.c.created_at,
           FLOWS.c.updated_at, ATOMS.c.name, ATOMS.c.kind, ATOMS.c.state, ATOMS.c.result,
           ATOMS.c.failure, ATOMS.c.revert_failure, ATOMS.c.attempts, ATOMS.c.meta,
           ATOMS.c.created_at, ATOMS.c.updated_at, ATOMS.c.started_at, ATOMS.c.finished_at)
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
            started_at=_utc(row[16]), finished_at=_utc(row[17]))
    return list(flows.values())


def _token_row(conn: Connection, job_id: str) -> Any:
    """The logbook's (token,) row, or None when there is no logbook."""
    return conn.execute(select(LOGBOOKS.c.token).where(LOGBOOKS.c.job_id == job_id)).first()


def _take_over_retryable(exc: BaseException) -> bool:
    """A unique violation in take_over means a racing creator won: run the
    conditional UPDATE again (in other writes an integrity error is final)."""
    return isinstance(exc, sa_exc.IntegrityError) or _db.is_transient(exc)
