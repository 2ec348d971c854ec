"""Where a conductor's jobs run their tasks.

Threads: a pool per job (``task_width`` threads), so a task that ignores a
stop request strands only its own job's pool. Processes: one pool of worker
processes shared by every job (``concurrency x task_width``), started on
first use, since a worker costs a process start.
"""

from __future__ import annotations

import threading

from jobboard.engine import Executor, ThreadExecutor

KINDS = ("thread", "process")


class Executors:
    """Hands out an executor per job run and takes it back."""

    def __init__(self, kind: str, *, concurrency: int, task_width: int) -> None:
        if kind not in KINDS:
            raise ValueError(f"executor must be one of {', '.join(KINDS)}, not {kind!r}")
        self.kind = kind
        self.concurrency = concurrency
        self.task_width = task_width
        self._shared: Executor | None = None
        self._lock = threading.Lock()

    def acquire(self) -> Executor:
        if self.kind == "thread":
            return ThreadExecutor(self.task_width)
        with self._lock:
            if self._shared is None:
                from jobboard.engine import ProcessExecutor
                self._shared = ProcessExecutor(self.concurrency * self.task_width)
            return self._shared

    def release(self, executor: Executor) -> None:
        if executor is not self._shared:
            executor.shutdown(wait=False)

    def shutdown(self) -> None:
        with self._lock:
            shared, self._shared = self._shared, None
        if shared is not None:
            shared.shutdown(wait=False)
