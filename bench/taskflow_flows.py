"""TaskFlow flow factories for the side-by-side benchmark (TaskFlow side only).

The same work as :mod:`jobboard.testing.flows`: a one-task no-op flow, and
five steps that journal each execution (``"<task> <pid>"`` lines, the same
journal format) where one step may hold at a gate file. Imported only from
the benchmark's own virtualenv, where TaskFlow is installed.
"""

from __future__ import annotations

from taskflow import task
from taskflow.patterns import linear_flow

from jobboard.testing.flows import record_run


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
        record_run(self.journal, self.name, self.gate)


def five_steps_flow(journal, hold_at=None, gate=None):
    return linear_flow.Flow("five-steps").add(
        *[Step(f"step{n}", journal, gate if hold_at == f"step{n}" else None)
          for n in range(1, 6)])
