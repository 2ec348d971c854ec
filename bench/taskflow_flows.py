"""TaskFlow flow factories for the side-by-side benchmark (TaskFlow side only).

The same work as :mod:`jobboard.testing.flows`: a one-task no-op flow, and
five steps that journal each execution (``"<task> <pid>"`` lines, the same
journal format) where one step may hold at a gate file. Imported only from
the benchmark's own virtualenv, where TaskFlow is installed.
"""

from __future__ import annotations

import os
import time

from taskflow import task
from taskflow.patterns import linear_flow

from jobboard.testing.flows import HOLD_LIMIT, append_line


class Noop(task.Task):
    def execute(self):
        return None


def noop_flow():
    return linear_flow.Flow("noop").add(Noop("noop"))


class Step(task.Task):
    def __init__(self, name, journal, gate=None):
        super().__init__(name=name)
        self.journal = journal
        self.gate = gate

    def execute(self):
        append_line(self.journal, f"{self.name} {os.getpid()}")
        if self.gate:
            append_line(self.journal, f"{self.name}-holding {os.getpid()}")
            deadline = time.monotonic() + HOLD_LIMIT
            while not os.path.exists(self.gate) and time.monotonic() < deadline:
                time.sleep(0.02)


def five_steps_flow(journal, hold_at=None, gate=None):
    return linear_flow.Flow("five-steps").add(
        *[Step(f"step{n}", journal, gate if hold_at == f"step{n}" else None)
          for n in range(1, 6)])
