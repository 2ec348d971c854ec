"""Logbook write throughput: atom-state saves per second, single thread.

Runs ``save_atom`` N times (default 2,000) against a fresh SQLite file and a
fresh PostgreSQL schema (``jobboard.testing.databases``), the way the engine
does: a handful of atoms, each moving PENDING -> RUNNING -> SUCCESS with a
small result; then the same number of task boundaries the way the engine
saves them, one ``save_atoms`` transaction holding a task's SUCCESS and the
next task's RUNNING; then as many take-overs of new logbooks (what a
conductor does first for every job), with the client's CPU time per call. A
backend that cannot be reached is reported, not fatal.

    python -m bench.logbook [--saves N] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from typing import Any

from jobboard.logbook import AtomDetail, Logbook
from jobboard.states import AtomState, FlowState
from jobboard.testing.databases import DatabaseUnavailable, isolated_database

BACKENDS = ("sqlite", "postgresql")
ATOMS = 20
STATES = (AtomState.PENDING, AtomState.RUNNING, AtomState.SUCCESS)


def measure(url: str, saves: int) -> dict[str, Any]:
    """Time ``saves`` save_atom calls on a logbook at ``url``."""
    with Logbook(url, auto_upgrade=True) as book:
        book.take_over("bench-job", 1, "bench", name="bench")
        book.save_flow("bench-job", "bench", FlowState.RUNNING, token=1)
        now = datetime.now(timezone.utc)
        atoms = [AtomDetail(name=f"task-{i}", started_at=now) for i in range(ATOMS)]
        latencies = []
        started = time.perf_counter()
        for n in range(saves):
            atom = atoms[n % ATOMS]
            atom.state = STATES[(n // ATOMS) % len(STATES)]
            atom.attempts = n // (ATOMS * len(STATES)) + 1
            atom.result = {"n": n, "value": "x" * 32}
            t = time.perf_counter()
            book.save_atom("bench-job", atom, token=1)
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
        stored = len(book.load_flow("bench-job").atoms)
        started_pairs = time.perf_counter()
        for n in range(saves):
            done, nxt = atoms[n % ATOMS], atoms[(n + 1) % ATOMS]
            done.state, done.result = AtomState.SUCCESS, {"n": n, "value": "x" * 32}
            nxt.state, nxt.result = AtomState.RUNNING, None
            book.save_atoms("bench-job", [done, nxt], token=1)
        boundaries = saves / (time.perf_counter() - started_pairs)
        cpu, started_takes = time.process_time(), time.perf_counter()
        for n in range(saves):
            book.take_over(f"bench-new-{n}", 1, "bench", name="bench")
        take_overs = saves / (time.perf_counter() - started_takes)
        take_over_cpu = (time.process_time() - cpu) / saves
    latencies.sort()
    return {
        "saves": saves,
        "seconds": round(elapsed, 3),
        "saves_per_second": round(saves / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
        "atoms_stored": stored,
        "boundaries_per_second": round(boundaries, 1),
        "take_overs_per_second": round(take_overs, 1),
        "take_over_cpu_us": round(take_over_cpu * 1e6),
    }


def run(saves: int = 2000, backends: tuple[str, ...] = BACKENDS) -> dict[str, Any]:
    """Benchmark every backend; ``{"logbook_save_atom": {backend: figures}}``."""
    results: dict[str, Any] = {}
    for backend in backends:
        try:
            with isolated_database(backend) as url:
                results[backend] = measure(url, saves)
        except DatabaseUnavailable as exc:
            results[backend] = {"error": str(exc)}
    return {"logbook_save_atom": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    report = run(args.saves)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for backend, figures in report["logbook_save_atom"].items():
        if "error" in figures:
            print(f"{backend:<11} unavailable: {figures['error']}")
            continue
        print(f"{backend:<11} {figures['saves_per_second']:>9,.1f} atom saves/s  "
              f"({figures['saves']} saves in {figures['seconds']} s, "
              f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms); "
              f"{figures['boundaries_per_second']:,.1f} task boundaries/s "
              f"(SUCCESS + next RUNNING in one save_atoms); "
              f"{figures['take_overs_per_second']:,.1f} take-overs of a new logbook/s "
              f"({figures['take_over_cpu_us']} us of client CPU each)")


if __name__ == "__main__":
    main()
