"""Engine overhead per task: 100 no-op tasks, linear and unordered.

Each flow runs on a fresh SQLite logbook file with the default
``ThreadExecutor``. Reported per task: the whole run (which includes three
fenced logbook writes per task: PENDING, RUNNING, SUCCESS), the time spent in
logbook writes (from ``Logbook.on_write``) and what is left, the engine's own
overhead (scheduling, argument preparation, events, executor hand-off).

    python -m bench.engine [--tasks N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from jobboard import Task, flows
from jobboard.engine import Engine, SerialExecutor, ThreadExecutor
from jobboard.logbook import Logbook
from jobboard.states import FlowState


class Noop(Task):
    def execute(self) -> None:
        return None


def _flow(kind: str, tasks: int) -> flows.Flow:
    items = [Noop(f"t{i}") for i in range(tasks)]
    return flows.linear("bench", *items) if kind == "linear" else flows.unordered("bench", *items)


def measure(kind: str, tasks: int, executor: str, directory: Path, round_: int) -> dict[str, Any]:
    """One run of a ``tasks``-task ``kind`` flow; times in ms per task."""
    url = f"sqlite:///{directory}/{kind}-{executor}-{round_}.db"
    with Logbook(url) as book:
        spent = {"writes": 0, "seconds": 0.0}

        def on_write(op: str, seconds: float, ok: bool) -> None:
            spent["writes"] += 1
            spent["seconds"] += seconds
        book.on_write = on_write
        runner = ThreadExecutor(width=8) if executor == "threads" else SerialExecutor()
        try:
            engine = Engine(_flow(kind, tasks), logbook=book, job_id=f"bench-{round_}", token=1,
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
    }


def run(tasks: int = 100, rounds: int = 3) -> dict[str, Any]:
    """Median over ``rounds`` of each flow kind and executor (for the main bench)."""
    results: dict[str, Any] = {"tasks": tasks, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="jobboard-bench-") as tmp:
        for kind in ("linear", "unordered"):
            for executor in ("threads", "serial"):
                runs = [measure(kind, tasks, executor, Path(tmp), r) for r in range(rounds)]
                results[f"{kind}/{executor}"] = {
                    key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args.tasks, args.rounds)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"engine overhead, {args.tasks} no-op tasks, SQLite logbook file, "
          f"median of {args.rounds} (ms per task)")
    print(f"{'flow/executor':<20}{'total':>9}{'logbook':>10}{'engine':>9}{'writes':>8}")
    for key, r in results.items():
        if isinstance(r, dict):
            print(f"{key:<20}{r['total_ms_per_task']:>9.3f}{r['logbook_ms_per_task']:>10.3f}"
                  f"{r['engine_ms_per_task']:>9.3f}{r['writes_per_task']:>8.1f}")


if __name__ == "__main__":
    main()
