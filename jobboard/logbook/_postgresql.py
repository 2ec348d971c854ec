"""PostgreSQL's one-statement writes: the usual atom and flow writes of a job
run, each a single statement run in autocommit (one round trip, where a
transaction costs three: BEGIN, the statement, COMMIT).

Each statement does all of its write or none of it, so committing it alone
is safe:

- the fence is its first part, as in every write (a data-modifying CTE: the
  logbook row's UPDATE, whose row lock the statement holds to its end); a
  stale token matches no logbook row and the rest writes nothing;
- :func:`update_atoms` writes only when every named atom exists in the
  current attempt's flow (each atom's UPDATE is conditioned on all of them
  being found);
- :func:`insert_flow_and_atoms` inserts the atoms only with the flow it
  inserts, and inserts no flow when the attempt has one
  (``ON CONFLICT DO NOTHING``);
- :func:`take_over_and_start` does the same under the take-over's upsert
  in place of the fence: a newer token's logbook is left alone, and the
  flow and atoms are inserted for the attempt the upsert returns.

A statement that wrote nothing says so (no row, or fewer rows than atoms) and
the store runs its full transaction instead, which also tells a stale token,
a missing logbook and a missing flow apart. All CTEs of one statement see
the same snapshot, and the fence's row lock keeps every other writer of the
job out, so the atoms found are the atoms written.

psycopg prepares a statement after a few runs, and the server then keeps a
generic plan made while the tables were small. So every row a statement
reads is found by equality on a whole unique key with a parameter (the
logbook by job id, the flow by job id and attempt, an atom by flow id and
name), the one shape whose plan stays an index lookup: an update of n atoms
is n such UPDATEs in one statement (its text made once per n), not a join,
which a plan for small tables does by reading the whole atom table.
Parameters are scalars, one per column and atom (psycopg dumps a list
parameter element by element, several times slower).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, exc as sa_exc

from jobboard.logbook.models import VALUE_COLUMNS

__all__ = ["MAX_ATOMS", "atom_params", "autocommit", "insert_flow_and_atoms", "take_over_and_start",
           "update_atoms"]

#: A write of more atoms than this takes the transaction (the statements grow
#: with the count: 11 parameters per atom, one text cached per count).
MAX_ATOMS = 32

# The columns' types without their lengths: an explicit cast to varchar(n)
# would cut a longer value, where the column refuses it.
_TYPES = {"kind": "varchar", "state": "varchar", "result": "bytea", "failure": "bytea",
          "revert_failure": "bytea", "attempts": "integer", "meta": "bytea",
          "version": "varchar", "started_at": "timestamptz", "finished_at": "timestamptz"}

_FENCE = """fence AS (
    UPDATE logbooks SET updated_at = %(v_now)s
    WHERE job_id = %(j)s AND token = %(t)s
    RETURNING attempt)"""

# The current attempt's flow, under the fence.
_FLOW = """flow AS (
    SELECT flowdetails.id FROM flowdetails, fence
    WHERE flowdetails.job_id = %(j)s AND flowdetails.attempt = fence.attempt)"""


@lru_cache(maxsize=2 * MAX_ATOMS)
def update_atoms(count: int, with_flow: bool) -> str:
    """Update ``count`` atoms saved before (parameters of :func:`atom_params`)
    and, ``with_flow``, the current attempt's flow, all or nothing: returns
    the flow's (id, attempt, created_at) with_flow, then the atoms updated
    (``count`` or 0); no row when the fence refused."""
    atom = "atomdetails.flow_id = (SELECT id FROM flow) AND atomdetails.name = %(n{i})s"
    found = " AND ".join(f"EXISTS (SELECT FROM atomdetails WHERE {atom.format(i=i)})"
                         for i in range(count))
    parts = [_FENCE, _FLOW, f"found AS (SELECT {found} AS every)"]
    for i in range(count):
        values = ", ".join(f"{c} = %(v{i}_{c})s" for c in VALUE_COLUMNS)
        parts.append(f"""atom{i} AS (
    UPDATE atomdetails SET {values}, updated_at = %(v_now)s
    WHERE {atom.format(i=i)} AND (SELECT every FROM found)
    RETURNING 1)""")
    updated = " + ".join(f"(SELECT count(*) FROM atom{i})" for i in range(count))
    if not with_flow:
        return f"WITH {', '.join(parts)}\nSELECT {updated} FROM fence"
    parts.append("""updated AS (
    UPDATE flowdetails SET name = %(f_name)s, state = %(f_state)s, meta = %(f_meta)s,
        updated_at = %(v_now)s
    WHERE flowdetails.id = (SELECT id FROM flow) AND (SELECT every FROM found)
    RETURNING id, attempt, created_at)""")
    return f"WITH {', '.join(parts)}\nSELECT id, attempt, created_at, {updated} FROM updated"


def atom_params(names: Sequence[str], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of :func:`update_atoms` and :func:`insert_flow_and_atoms`:
    ``n<i>`` and ``v<i>_<column>`` from the ``v_<column>`` values of each row."""
    params: dict[str, Any] = {}
    for i, (name, row) in enumerate(zip(names, rows)):
        params[f"n{i}"] = name
        for column in VALUE_COLUMNS:
            params[f"v{i}_{column}"] = row[f"v_{column}"]
    return params


def _new_flow_and_atoms(count: int, fence: str) -> str:
    """The CTEs inserting the current attempt's flow (its attempt read from
    the CTE ``fence``) and, with it, ``count`` new atoms in the order given;
    no flow, and so no atom, when the attempt has a flow."""
    rows = ", ".join(
        "(" + ", ".join([str(i), f"%(n{i})s::varchar"]
                        + [f"%(v{i}_{c})s::{_TYPES[c]}" for c in VALUE_COLUMNS]) + ")"
        for i in range(count))
    columns = ", ".join(VALUE_COLUMNS)
    atoms = f"""atoms AS (
    INSERT INTO atomdetails (flow_id, name, {columns}, created_at, updated_at)
    SELECT flow.id, new.name, {", ".join(f"new.{c}" for c in VALUE_COLUMNS)},
        %(v_now)s, %(v_now)s
    FROM flow, (VALUES {rows}) AS new(position, name, {columns})
    ORDER BY new.position
    RETURNING 1)""" if count else "atoms AS (SELECT WHERE false)"
    return f"""{fence},
flow AS (
    INSERT INTO flowdetails (job_id, attempt, name, state, meta, created_at, updated_at)
    SELECT %(j)s, fence.attempt, %(f_name)s, %(f_state)s, %(f_meta)s, %(v_now)s, %(v_now)s
    FROM fence
    ON CONFLICT (job_id, attempt) DO NOTHING
    RETURNING id, attempt),
{atoms}"""


@lru_cache(maxsize=MAX_ATOMS)
def insert_flow_and_atoms(count: int) -> str:
    """Insert the current attempt's flow with ``count`` new atoms (parameters
    of :func:`atom_params`), in the order given; nothing when the attempt
    has a flow: returns the flow's (id, attempt, atoms inserted), or no
    row."""
    return f"""WITH {_new_flow_and_atoms(count, _FENCE)}
SELECT id, attempt, (SELECT count(*) FROM atoms) FROM flow"""


@lru_cache(maxsize=2 * (MAX_ATOMS + 1))
def take_over_and_start(count: int, named: bool) -> str:
    """The take-over's upsert (the logbook created, or taken from an older
    token; the attempt only moves forward; ``named``: the name too) and,
    when the current attempt has no flow, the flow with ``count`` new atoms,
    all in one statement. Returns (flows inserted, atoms inserted), or no
    row when a newer token holds the logbook."""
    name = ", name = excluded.name" if named else ""
    fence = f"""fence AS (
    INSERT INTO logbooks (job_id, name, owner, token, attempt, created_at, updated_at)
    VALUES (%(j)s, %(n)s, %(o)s, %(t)s, %(a)s, %(v_now)s, %(v_now)s)
    ON CONFLICT (job_id) DO UPDATE SET token = excluded.token, owner = excluded.owner,
        updated_at = excluded.updated_at{name},
        attempt = CASE WHEN logbooks.attempt < excluded.attempt THEN excluded.attempt
            ELSE logbooks.attempt END
    WHERE logbooks.token IS NULL OR logbooks.token <= excluded.token
    RETURNING attempt)"""
    return f"""WITH {_new_flow_and_atoms(count, fence)}
SELECT (SELECT count(*) FROM flow), (SELECT count(*) FROM atoms) FROM fence"""


@contextmanager
def autocommit(engine: Engine) -> Iterator[Any]:
    """One of ``engine``'s pooled connections, as the psycopg connection
    itself, in autocommit (psycopg sends no BEGIN and no COMMIT); the
    statements go straight to the driver (SQLAlchemy's own work per
    statement costs about as much as psycopg's). Errors are raised as
    SQLAlchemy's (what the store's retries and translation read); a
    connection that is gone or broke mid-statement leaves the pool."""
    dialect = engine.dialect
    error = dialect.loaded_dbapi.Error
    pooled: Any = None
    try:
        pooled = engine.raw_connection()
        driver = pooled.driver_connection
        driver.autocommit = True
        yield driver
    except error as exc:
        gone = pooled is not None and dialect.is_disconnect(exc, pooled.driver_connection, None)
        if gone:
            # As SQLAlchemy does on a disconnect: this connection and every
            # pooled one opened before it are replaced (the server restarted,
            # say), so a retry does not meet the next dead one.
            engine.pool._invalidate(pooled, exc)
        raise sa_exc.DBAPIError.instance(None, None, exc, error, connection_invalidated=gone,
                                         dialect=dialect) from exc
    finally:
        if pooled is not None:
            if pooled.is_valid:
                try:
                    pooled.driver_connection.autocommit = False
                except error:
                    pooled.invalidate()
            pooled.close()
