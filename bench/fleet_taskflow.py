"""The TaskFlow 6.5 half of the fleet benchmark (see :mod:`bench.fleet`).

Imported only where TaskFlow is installed (``.venv-bench``). Two parts:

- :class:`TaskFlowSide`, used by :func:`bench.fleet.run_fleet`: posts the
  jobs (one logbook per job with its flow factory details, then
  ``ZookeeperJobBoard.post``, as :mod:`bench.taskflow_side` does), tells how
  many are done by listing the board, and builds the conductor command;
- ``python -m bench.fleet_taskflow conductor ...``: one TaskFlow
  ``nonblocking`` conductor (``max_simultaneous_jobs`` = the concurrency)
  with a SQLAlchemy persistence backend on the given URL. SIGTERM stops it.

A TaskFlow conductor consumes a job when its flow finished and abandons it
otherwise; "done" is a job znode gone from the board.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from typing import Any

from taskflow.conductors import backends as conductor_backends
from taskflow.persistence import backends as persistence_backends

from bench import fleet_flows
from bench._common import PYTHON
from bench.taskflow_side import connect_board, job_children, post_flow_job
from jobboard.zkhandler import bounded_client

POST_TIMEOUT = 300.0


def open_persistence(url: str) -> Any:
    """TaskFlow's SQLAlchemy persistence on ``url``, its schema upgraded."""
    backend = persistence_backends.fetch({"connection": url})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend


class TaskFlowSide:
    """TaskFlow conductors on ``path`` of the ZooKeeper at ``zk``."""

    system = "taskflow"

    def __init__(self, zk: str, path: str, db_url: str, *, steps: int, step_ms: float,
                 concurrency: int) -> None:
        self.zk, self.path, self.db_url = zk, path, db_url
        self.steps, self.step_ms, self.concurrency = steps, step_ms, concurrency
        self.jobs = 0
        self.client = bounded_client(zk)

    def prepare(self, jobs: int) -> None:
        """Post ``jobs`` jobs (each its own logbook), then close the poster."""
        persistence = open_persistence(self.db_url)
        board = connect_board("poster", self.zk, self.path, persistence)
        try:
            for n in range(jobs):
                post_flow_job(board, persistence, f"fleet-{n}", fleet_flows.taskflow_steps,
                              {"count": self.steps, "ms": self.step_ms})
        finally:
            board.close()
            persistence.close()
        self.jobs = jobs
        self.client.start(timeout=30)

    def command(self, name: str) -> list[str]:
        return [PYTHON, "-m", "bench.fleet_taskflow", "conductor", "--zk", self.zk,
                "--path", self.path, "--db", self.db_url, "--name", name,
                "--concurrency", str(self.concurrency)]

    def progress(self) -> tuple[int, int]:
        """(jobs done, jobs claimed now), from one listing of the board."""
        children = self.client.get_children(self.path)
        locks = sum(1 for child in children if child.endswith(".lock"))
        waiting = sum(1 for child in children
                      if child.startswith("job") and not child.endswith(".lock"))
        return self.jobs - waiting, locks

    def own_sessions(self) -> set[int]:
        return {self.client.client_id[0]} if self.client.client_id else set()

    def outcome(self) -> dict[str, int]:
        left = len(job_children(self.client, self.path))
        return {"consumed": self.jobs - left, "left on the board": left}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop()
            self.client.close()


def conductor_main(args: argparse.Namespace) -> None:
    persistence = persistence_backends.fetch({"connection": args.db})
    board = connect_board(args.name, args.zk, args.path, persistence)
    conductor = conductor_backends.fetch("nonblocking", args.name, board,
                                         persistence=persistence,
                                         max_simultaneous_jobs=args.concurrency)
    signal.signal(signal.SIGTERM, lambda *_: conductor.stop())
    try:
        conductor.run()
    finally:
        board.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["conductor"])
    parser.add_argument("--zk", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    conductor_main(parser.parse_args())


if __name__ == "__main__":
    main()
