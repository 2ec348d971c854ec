"""Flow factories for the fleet benchmark (:mod:`bench.fleet`), both systems.

``steps(count, ms)`` builds a linear flow of ``count`` tasks, each sleeping
``ms`` milliseconds (``ms == 0``: a no-op that does not even call sleep).
``jobboard`` conductors import it as ``bench.fleet_flows:steps`` (allowed
with ``--allow bench.fleet_flows``); TaskFlow conductors rebuild
``taskflow_steps`` from the factory details saved with each job. The TaskFlow
half exists only where TaskFlow is importable (the benchmark's own
virtualenv); calling it elsewhere raises :class:`RuntimeError`.
"""

from __future__ import annotations

import time
from typing import Any

from jobboard.engine import Task, flows

try:  # TaskFlow lives only in .venv-bench; the jobboard half never needs it.
    from taskflow import task as _tf_task
    from taskflow.patterns import linear_flow as _tf_linear
except ImportError:  # pragma: no cover - depends on the virtualenv
    _tf_task = None
    _tf_linear = None


class Sleep(Task):
    """Sleeps ``ms`` milliseconds (nothing at all when 0)."""

    def __init__(self, name: str, ms: float) -> None:
        super().__init__(name)
        self.ms = ms

    def execute(self) -> None:
        if self.ms > 0:
            time.sleep(self.ms / 1000.0)


def steps(count: int = 3, ms: float = 0.0) -> flows.Flow:
    """``count`` sleeping steps in a line (the jobboard flow factory)."""
    return flows.linear("fleet-steps", *[Sleep(f"step{n}", ms) for n in range(1, count + 1)])


if _tf_task is not None:
    class TaskFlowSleep(_tf_task.Task):
        """The same step for TaskFlow."""

        def __init__(self, name: str, ms: float) -> None:
            super().__init__(name=name)
            self.ms = ms

        def execute(self) -> None:
            if self.ms > 0:
                time.sleep(self.ms / 1000.0)


def taskflow_steps(count: int = 3, ms: float = 0.0) -> Any:
    """``count`` sleeping steps in a TaskFlow linear flow.

    Raises:
        RuntimeError: TaskFlow is not importable in this interpreter.
    """
    if _tf_linear is None:
        raise RuntimeError("TaskFlow is not installed in this interpreter")
    return _tf_linear.Flow("fleet-steps").add(
        *[TaskFlowSleep(f"step{n}", ms) for n in range(1, count + 1)])
