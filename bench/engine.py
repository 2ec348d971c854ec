"""Engine overhead per task: 100 no-op tasks, linear and unordered.

Each flow runs on a fresh logbook (a SQLite file by default, or a fresh
PostgreSQL schema with ``--backend postgresql``). Reported per task: the
whole run, the time spent in logbook writes (from ``Logbook.on_write``) and
what is left, the engine's own overhead (scheduling, argument preparation,
events, executor hand-off); the logbook writes (calls) and the database
transactions (commits) per task, and the statements per task.

    python -m bench.engine [--tasks N] [--rounds R] [--backend sqlite|postgresql] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from sqlalchemy import event

from jobboard import Task, flows
from jobboard.engine import Engine, SerialExecutor, ThreadExecutor
from jobboard.logbook import Logbook
from jobboard.states import FlowState
from jobboard.testing.databases import isolated_database


class Noop(Task):
    def execute(self) -> None:
        return None


def _flow(kind: str, tasks: int) -> flows.Flow:
    items = [Noop(f"t{i}") for i in range(tasks)]
    return flows.linear("bench", *items) if kind == "linear" else flows.unordered("bench", *items)


def measure(kind: str, tasks: int, executor: str, url: str, round_: int) -> dict[str, Any]:
    """One run of a ``tasks``-task ``kind`` flow; times in ms per task."""
    with Logbook(url, auto_upgrade=True) as book:
        spent = {"writes": 0, "seconds": 0.0, "commits": 0, "statements": 0}

        def on_write(op: str, seconds: float, ok: bool) -> None:
            spent["writes"] += 1
            spent["seconds"] += seconds
        book.on_write = on_write

        def on_commit(_conn: Any) -> None:
            spent["commits"] += 1

        def on_statement(*_args: Any) -> None:
            spent["statements"] += 1
        event.listen(book._engine, "commit", on_commit)
        event.listen(book._engine, "before_cursor_execute", on_statement)
        runner = ThreadExecutor(width=8) if executor == "threads" else SerialExecutor()
        try:
            engine = Engine(_flow(kind, tasks), journal=book,
                            job_id=f"bench-{kind}-{executor}-{round_}", token=1,
                            executor=runner, owner="bench")
            started = time.perf_counter()
            outcome = engine.run()
            elapsed = time.perf_counter() - started
        finally:
            runner.shutdown()
        assert outcome.state == FlowState.SUCCESS, outcome
    return {
        "total_ms_per_task": elapsed * 1000 / tasks,
        "logbook_ms_per_task": spent["seconds"] * 1000 / tasks,
        "engine_ms_per_task": (elapsed - spent["seconds"]) * 1000 / tasks,
        "writes_per_task": spent["writes"] / tasks,
        "transactions_per_task": spent["commits"] / tasks,
        "statements_per_task": spent["statements"] / tasks,
    }


def run(tasks: int = 100, rounds: int = 3, backend: str = "sqlite") -> dict[str, Any]:
    """Median over ``rounds`` of each flow kind and executor (for the main bench)."""
    results: dict[str, Any] = {"tasks": tasks, "rounds": rounds, "backend": backend}
    for kind in ("linear", "unordered"):
        for executor in ("threads", "serial"):
            runs = []
            for r in range(rounds):
                with isolated_database(backend) as url:
                    runs.append(measure(kind, tasks, executor, url, r))
            results[f"{kind}/{executor}"] = {
                key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "mysql"),
                        default="sqlite")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args.tasks, args.rounds, args.backend)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"engine overhead, {args.tasks} no-op tasks, {args.backend} logbook, "
          f"median of {args.rounds} (ms per task; writes, transactions, statements per task)")
    print(f"{'flow/executor':<20}{'total':>9}{'logbook':>10}{'engine':>9}{'writes':>8}"
          f"{'txns':>7}{'stmts':>7}")
    for key, r in results.items():
        if isinstance(r, dict):
            print(f"{key:<20}{r['total_ms_per_task']:>9.3f}{r['logbook_ms_per_task']:>10.3f}"
                  f"{r['engine_ms_per_task']:>9.3f}{r['writes_per_task']:>8.2f}"
                  f"{r['transactions_per_task']:>7.2f}{r['statements_per_task']:>7.2f}")


if __name__ == "__main__":
    main()
