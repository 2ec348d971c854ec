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
- :data:`INSERT_FLOW_AND_ATOMS` inserts the atoms only with the flow it
  inserts, and inserts no flow when the attempt has one
  (``ON CONFLICT DO NOTHING``).

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
which a plan for small tables does by reading the whole atom table. The new
atoms of a new flow are inserted from arrays (``unnest``), which reads no
table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection

from jobboard.logbook.models import VALUE_COLUMNS

__all__ = ["INSERT_FLOW_AND_ATOMS", "atom_arrays", "atom_params", "autocommit",
           "update_atoms"]

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


@lru_cache(maxsize=None)
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
    """The parameters of :func:`update_atoms`: ``n<i>`` and ``v<i>_<column>``
    from the ``v_<column>`` values of each row."""
    params: dict[str, Any] = {}
    for i, (name, row) in enumerate(zip(names, rows)):
        params[f"n{i}"] = name
        for column in VALUE_COLUMNS:
            params[f"v{i}_{column}"] = row[f"v_{column}"]
    return params


_NEW = "new AS (SELECT * FROM unnest(%(names)s::varchar[], {arrays}) WITH ORDINALITY " \
       "AS new(name, {columns}, position))".format(
           arrays=", ".join(f"%(a_{c})s::{_TYPES[c]}[]" for c in VALUE_COLUMNS),
           columns=", ".join(VALUE_COLUMNS))

#: Insert the current attempt's flow with its (new) atoms, in the order
#: given (parameters of :func:`atom_arrays`); nothing when the attempt has a
#: flow: returns the flow's (id, attempt, atoms inserted), or no row.
INSERT_FLOW_AND_ATOMS = f"""WITH {_FENCE},
{_NEW},
flow AS (
    INSERT INTO flowdetails (job_id, attempt, name, state, meta, created_at, updated_at)
    SELECT %(j)s, fence.attempt, %(f_name)s, %(f_state)s, %(f_meta)s, %(v_now)s, %(v_now)s
    FROM fence
    ON CONFLICT (job_id, attempt) DO NOTHING
    RETURNING id, attempt),
atoms AS (
    INSERT INTO atomdetails (flow_id, name, {", ".join(VALUE_COLUMNS)}, created_at, updated_at)
    SELECT flow.id, new.name, {", ".join(f"new.{c}" for c in VALUE_COLUMNS)},
        %(v_now)s, %(v_now)s
    FROM flow, new ORDER BY new.position
    RETURNING 1)
SELECT id, attempt, (SELECT count(*) FROM atoms) FROM flow"""


def atom_arrays(names: Sequence[str], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of :data:`INSERT_FLOW_AND_ATOMS`: ``names``, and
    ``a_<column>`` from the ``v_<column>`` values of each row, one array per
    column."""
    arrays: dict[str, Any] = {"names": list(names)}
    for column in VALUE_COLUMNS:
        key = f"v_{column}"
        arrays[f"a_{column}"] = [row[key] for row in rows]
    return arrays


@contextmanager
def autocommit(conn: Connection) -> Iterator[None]:
    """Run ``conn``'s statements in autocommit (psycopg sends no BEGIN and
    no COMMIT), then end SQLAlchemy's transaction (no round trip: the driver
    has none open) and give the connection back in its usual mode."""
    driver = conn.connection.driver_connection
    driver.autocommit = True
    try:
        yield
        conn.commit()
    finally:
        try:
            driver.autocommit = False
        except Exception:     # a connection that broke mid-statement: not reused
            conn.invalidate()
