"""What a task costs on each executor: threads, and worker processes started
with spawn or forkserver.

Measured per executor: the first no-op task (for processes: starting the
worker, importing what the task needs, running it), the mean of ``--tasks``
no-op tasks on the warm executor, and a worker's resident memory.

    python -m bench.executors [--tasks N] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from jobboard.engine import Executor, ProcessExecutor, Task, ThreadExecutor


class Noop(Task):
    """Defined here, not imported from bench.engine: a worker imports this
    module to unpickle it, and bench.engine would bring SQLAlchemy along."""

    def execute(self) -> None:
        return None


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status
                    if line.startswith("VmRSS")) / 1024


def measure(name: str, executor: Executor, tasks: int) -> dict[str, Any]:
    task = Noop("noop")
    started = time.perf_counter()
    executor.execute(task, {}).result(60)
    first_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    for _ in range(tasks):
        executor.execute(task, {}).result(10)
    warm_ms = (time.perf_counter() - started) * 1000 / tasks
    pids = getattr(executor, "pids", [])
    executor_rss = rss_mb(pids[0]) if pids else None
    executor.shutdown()
    return {"executor": name, "first_task_ms": round(first_ms, 1),
            "warm_task_ms": round(warm_ms, 3),
            "worker_rss_mb": None if executor_rss is None else round(executor_rss, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    rows = [measure("thread", ThreadExecutor(1), options.tasks),
            measure("process (spawn)", ProcessExecutor(1, start_method="spawn"), options.tasks),
            measure("process (forkserver)", ProcessExecutor(1, start_method="forkserver"),
                    options.tasks)]
    if options.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"no-op tasks, one worker, {options.tasks} warm tasks each")
    print(f"{'executor':22} {'first task':>11} {'warm task':>11} {'worker RSS':>11}")
    for row in rows:
        rss = "-" if row["worker_rss_mb"] is None else f"{row['worker_rss_mb']:.0f} MB"
        print(f"{row['executor']:22} {row['first_task_ms']:>8.1f} ms {row['warm_task_ms']:>8.3f} ms "
              f"{rss:>11}")


if __name__ == "__main__":
    main()
