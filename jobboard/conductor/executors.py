"""Where a conductor's jobs run their tasks.

Threads: a pool per job (``task_width`` threads), so a task that ignores a
stop request strands only its own job's pool. A pool that ends its job idle
(no call left running) serves a later job, so a job does not start and end
threads of its own; one with a straggler is shut down. Processes: one pool of worker
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
        self._idle: list[ThreadExecutor] = []     # thread pools between jobs
        self._closed = False
        self._lock = threading.Lock()

    def acquire(self) -> Executor:
        if self.kind == "thread":
            with self._lock:
                if self._idle:
                    return self._idle.pop()
            return ThreadExecutor(self.task_width)
        with self._lock:
            if self._shared is None:
                from jobboard.engine import ProcessExecutor
                self._shared = ProcessExecutor(self.concurrency * self.task_width)
            return self._shared

    def release(self, executor: Executor) -> None:
        if executor is self._shared:
            return
        if isinstance(executor, ThreadExecutor) and executor.idle:
            with self._lock:
                if not self._closed and len(self._idle) < self.concurrency:
                    self._idle.append(executor)
                    return
        executor.shutdown(wait=False)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            shared, self._shared = self._shared, None
            idle, self._idle = self._idle, []
        for executor in [*idle, *([shared] if shared is not None else [])]:
            executor.shutdown(wait=False)
