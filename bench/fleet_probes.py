"""What the fleet benchmark (:mod:`bench.fleet`) reads, and the raw floor.

- CPU seconds of a live process (user + system, all its threads) from
  ``/proc/PID/stat``; ``None`` once the process is gone. PostgreSQL's: the
  sum over the processes of the server on this machine (postmaster,
  backends, WAL writer) seen at any sample, each at its last reading, so a
  backend that starts and exits between two samples is missed (the
  logbook's pool keeps its connections).
- How busy the machine was: the non-idle share of ``/proc/stat``'s jiffies.
- ZooKeeper requests: ``zk_packets_received`` of the ``mntr`` four-letter
  word, and, from ``cons``, the packets sent by given sessions (the
  benchmark's own observer), so that those can be taken out.
- PostgreSQL transactions: ``pg_stat_database.xact_commit`` of one database,
  read from the ``postgres`` maintenance database (the read is not counted in
  the measured one) until it settles, because backends report their counters
  late (at most once a second while busy, at exit, or after 10 s idle).
- The raw floor on the same servers: kazoo multi-op transactions/s, sync and
  pipelined; single-row commits/s to PostgreSQL from 1 and 16 connections,
  or to a SQLite file (WAL, synchronous=FULL, as the logbook opens it).

Every network call is bounded: 4lw replies by their socket timeout,
PostgreSQL by ``connect_timeout`` and ``statement_timeout``, kazoo by
:func:`jobboard.zkhandler.bounded_client`. A missing reading is ``None``,
never a guess.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from jobboard.testing.databases import DatabaseUnavailable
from jobboard.testing.zookeeper import four_letter

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_CONS = re.compile(r"recved=(\d+).*?sid=0x([0-9a-fA-F]+)")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far; None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is the state (field 3 of stat(5)); utime and stime are 14, 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def postgres_cpu_seconds(seen: dict[int, float]) -> float:
    """CPU seconds of PostgreSQL's processes here: ``seen`` (pid -> CPU
    seconds, kept by the caller across calls) is brought up to date with
    every live server process, a process gone keeping its last reading, and
    the sum returned; it only grows."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as handle:
                if handle.read().strip() != "postgres":
                    continue
        except OSError:
            continue
        value = cpu_seconds(int(entry))
        if value is not None:
            seen[int(entry)] = value
    return sum(seen.values())


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU since boot (``/proc/stat``; idle
    and iowait count as not busy)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def zk_packets_received(port: int) -> int | None:
    """``zk_packets_received`` of the server's ``mntr``; None when it does
    not answer."""
    for line in four_letter(port, "mntr", timeout=2.0).splitlines():
        if line.startswith("zk_packets_received"):
            return int(line.split()[1])
    return None


def session_packets(port: int, session_ids: set[int]) -> int:
    """Packets received so far from the connections of ``session_ids``
    (``cons``); 0 for a session the server does not list."""
    total = 0
    for match in _CONS.finditer(four_letter(port, "cons", timeout=2.0)):
        if int(match.group(2), 16) in session_ids:
            total += int(match.group(1))
    return total


# -- PostgreSQL ----------------------------------------------------------------


def _pg_connect(url: str, **extra: Any) -> Any:
    """A psycopg connection (autocommit) to a SQLAlchemy-style URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    params: dict[str, Any] = {"host": parsed.host, "port": parsed.port,
                              "user": parsed.username, "dbname": parsed.database,
                              "connect_timeout": 5, "autocommit": True}
    if parsed.password:
        params["password"] = parsed.password
    options = " ".join(filter(None, [parsed.query.get("options"),
                                     "-c statement_timeout=30000"]))
    params["options"] = options
    params.update(extra)
    return psycopg.connect(**{k: v for k, v in params.items() if v is not None})


@contextlib.contextmanager
def dedicated_postgres(base_url: str) -> Iterator[str]:
    """A fresh database on the server of ``base_url``, dropped afterwards;
    yields its URL. Its own database, so that ``pg_stat_database`` counts
    only the benchmark's transactions (other users of ``base_url``'s
    database do not leak in).

    Raises:
        DatabaseUnavailable: the server cannot be reached or refuses.
    """
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"fleet_{uuid.uuid4().hex[:12]}"
    admin_url = make_url(base_url).set(database="postgres").render_as_string(False)
    try:
        with contextlib.closing(_pg_connect(admin_url)) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"postgresql at {make_url(admin_url)!r}: {reason}") from exc
    try:
        yield make_url(base_url).set(database=name).render_as_string(False)
    finally:
        with contextlib.closing(_pg_connect(admin_url)) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_xact_commit(url: str, *, settle: float = 1.5, timeout: float = 20.0) -> int | None:
    """``xact_commit`` of the database of ``url`` once it has not moved for
    ``settle`` seconds (at most ``timeout``); None when it cannot be read."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin_url = parsed.set(database="postgres", query={}).render_as_string(False)
    deadline = time.monotonic() + timeout
    with contextlib.closing(_pg_connect(admin_url)) as conn:
        last, since = None, time.monotonic()
        while True:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                               (parsed.database,)).fetchone()
            value = None if row is None else int(row[0])
            now = time.monotonic()
            if value != last:
                last, since = value, now
            elif now - since >= settle or now > deadline:
                return value
            time.sleep(0.25)


def pg_commits_per_s(url: str, connections: int, seconds: float = 2.0) -> float:
    """Single-row INSERT commits/s from ``connections`` connections at once,
    into a table of the schema ``url`` selects."""
    table = f"floor_{uuid.uuid4().hex[:8]}"
    with contextlib.closing(_pg_connect(url)) as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v integer)")
    counts = [0] * connections
    start = threading.Barrier(connections + 1, timeout=30)

    def worker(n: int) -> None:
        with contextlib.closing(_pg_connect(url)) as conn:
            start.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                conn.execute(f"INSERT INTO {table} (v) VALUES (%s)", (n,))
                counts[n] += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True)
               for n in range(connections)]
    for thread in threads:
        thread.start()
    start.wait()   # every connection is open: the clock starts
    began = time.monotonic()
    for thread in threads:
        thread.join(seconds + 30)
    elapsed = time.monotonic() - began
    with contextlib.closing(_pg_connect(url)) as conn:
        conn.execute(f"DROP TABLE {table}")
    return sum(counts) / elapsed


def sqlite_commits_per_s(path: str, seconds: float = 2.0) -> float:
    """Single-row INSERT commits/s into a SQLite file (WAL, synchronous=FULL)."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE floor (id INTEGER PRIMARY KEY, v INTEGER)")
        count, began = 0, time.monotonic()
        while time.monotonic() - began < seconds:
            conn.execute("INSERT INTO floor (v) VALUES (?)", (count,))
            count += 1
        rate = count / (time.monotonic() - began)
        conn.execute("DROP TABLE floor")
        return rate
    finally:
        conn.close()


# -- ZooKeeper floor -------------------------------------------------------------


def kazoo_multi_per_s(address: str, sync_count: int = 300, pipelined_count: int = 2000,
                      window: int = 256) -> dict[str, int]:
    """Multi-op transactions/s on the server (each: create two sequential
    nodes, one with a 300-byte payload, and set the parent's data), one at a
    time and pipelined ``window`` at a time."""
    from jobboard.zkhandler import bounded_client

    client = bounded_client(address)
    client.start(timeout=30)
    path = client.create("/bench-floor", b"", makepath=True, sequence=True)
    payload = b"x" * 300

    def txn() -> Any:
        transaction = client.transaction()
        transaction.create(f"{path}/a-", payload, sequence=True)
        transaction.create(f"{path}/b-", b"", sequence=True)
        transaction.set_data(path, b"n")
        return transaction

    try:
        began = time.perf_counter()
        for _ in range(sync_count):
            txn().commit()
        sync = sync_count / (time.perf_counter() - began)
        began = time.perf_counter()
        for start in range(0, pipelined_count, window):
            pending = [txn().commit_async() for _ in range(min(window, pipelined_count - start))]
            for result in pending:
                result.get(timeout=60)
        pipelined = pipelined_count / (time.perf_counter() - began)
    finally:
        client.delete(path, recursive=True)
        client.stop()
        client.close()
    return {"kazoo_multi_sync_per_s": round(sync),
            "kazoo_multi_pipelined_per_s": round(pipelined)}
