"""The suspend-specific parts of the job model (tests/test_job_model.py):
what each admin action must do to a SUSPENDED job, and the checks on what
the test read of a job (its record's history, the journal's task runs, its
logbook), as pure functions that return what is wrong.

What an admin action does to a SUSPENDED job (jobboard.cli.admin_rules'
table, and the board's own answers; a SUSPENDED job stays so until an
admin moves it, so the answer is deterministic)::

    action     result                       state after
    abandon    refused (NotClaimed)         SUSPENDED, record not rewritten
    transfer   refused (NotClaimed, or      SUSPENDED, record not rewritten
               OwnerNotFound: no target)
    retry      refused (InvalidTransition)  SUSPENDED, record not rewritten
    suspend    SUSPENDED (a no-op)          SUSPENDED, record not rewritten
    cancel     CANCELLED                    CANCELLED (nothing reverted)
    trash      done                         gone
    resume     the job, UNCLAIMED           no longer SUSPENDED (claimable)

How it fails: nothing here raises on a broken board; each check returns
its findings as lines for the test's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from jobboard.board import Job
from jobboard.logbook import Logbook
from jobboard.states import AtomState, JobState
from jobboard.testing.journal_flows import Run

#: action -> (allowed on a SUSPENDED job, the state after; None: gone,
#: "moved": anything but SUSPENDED).
ON_SUSPENDED: dict[str, tuple[bool, Any]] = {
    "abandon": (False, JobState.SUSPENDED),
    "transfer": (False, JobState.SUSPENDED),
    "retry": (False, JobState.SUSPENDED),
    "suspend": (True, JobState.SUSPENDED),
    "cancel": (True, JobState.CANCELLED),
    "trash": (True, None),
    "resume": (True, "moved"),
}
#: What an allowed action returns (a state, or a Job in that state).
RETURNS = {"suspend": JobState.SUSPENDED, "cancel": JobState.CANCELLED,
           "resume": JobState.UNCLAIMED, "trash": None}
#: The only events that may follow "suspended" in a job's history: nothing
#: else (no claim, no put-back) moves a SUSPENDED job.
AFTER_SUSPENDED = frozenset({"resumed", "cancelled"})


def judge_on_suspended(action: str, result: Any, version: int,
                       after: tuple[Job, int] | None) -> list[str]:
    """What is wrong with ``action`` on a job that was SUSPENDED at record
    ``version``: ``result`` is what the call returned (or the BoardError it
    raised), ``after`` the record and version read right after (None: gone)."""
    allowed, expected = ON_SUSPENDED[action]
    refused = isinstance(result, BaseException)
    found = []
    if allowed and refused:
        found.append(f"{action} of a SUSPENDED job refused: {result}")
    elif not allowed and not refused:
        found.append(f"{action} of a SUSPENDED job was not refused: {result!r}")
    elif allowed:
        got = result.state if isinstance(result, Job) else result
        if got != RETURNS[action]:
            found.append(f"{action} of a SUSPENDED job returned {got!r}, "
                         f"expected {RETURNS[action]!r}")
    state = None if after is None else after[0].state
    if expected == "moved":
        if state in (None, JobState.SUSPENDED):
            found.append(f"{action} of a SUSPENDED job left it {state}")
    elif state != expected:
        found.append(f"{action} of a SUSPENDED job left it {state}, expected {expected}")
    elif expected is JobState.SUSPENDED and after is not None and after[1] != version:
        found.append(f"{action} of a SUSPENDED job rewrote its record "
                     f"(version {version} -> {after[1]})")
    return found


def history_problems(job: Job) -> list[str]:
    """A SUSPENDED job must never have been claimed, put back or finished
    by anyone but an admin's resume or cancel: in its history, "suspended"
    is followed only by those; a SUSPENDED record's last event is
    "suspended"."""
    events = [e.get("event") for e in job.history]
    found = [f"history has {after!r} right after 'suspended': {events[-8:]}"
             for before, after in zip(events, events[1:])
             if before == "suspended" and after not in AFTER_SUSPENDED]
    if job.state is JobState.SUSPENDED and events and events[-1] != "suspended":
        found.append(f"SUSPENDED, but its last event is {events[-1]!r}")
    return found


def suspended_spans(job: Job, now: float) -> list[tuple[float, float]]:
    """When the job was SUSPENDED, from its history: (from, until) pairs,
    ``now`` for a span not ended yet."""
    spans = []
    history = list(job.history)
    for i, entry in enumerate(history):
        if entry.get("event") != "suspended":
            continue
        until = history[i + 1]["at"] if i + 1 < len(history) else now
        spans.append((float(entry["at"]), float(until)))
    return spans


def runs_while_suspended(runs: Iterable[Run], spans: list[tuple[float, float]],
                         allowance: float) -> list[Run]:
    """Task runs that started while the job was SUSPENDED, past ``allowance``
    seconds after it was (a holder that lost the job in a hand-off may start
    a task before it learns so; nobody may after)."""
    return [run for run in runs
            if any(start + allowance < run.started < until for start, until in spans)]


@dataclass
class Resume:
    """A resume of a job, and what its logbook held as done then."""

    at: float                         # just before the resume call
    attempt: int
    done: dict[str, str]              # task -> the run whose result the logbook kept
    until: float | None = None        # a retry started a new attempt then


def done_tasks(logbook: Logbook, job_id: str, attempt: int) -> dict[str, str]:
    """The tasks the logbook records as done in ``attempt``, with the run
    (the journal's run id) each result came from."""
    flow = logbook.load_flow(job_id, attempt)
    if flow is None:
        return {}
    return {name: str((atom.result or {}).get("run", ""))
            for name, atom in flow.atoms.items()
            if atom.kind == "task" and atom.state is AtomState.SUCCESS}


def reruns(resume: Resume, runs: Iterable[Run]) -> list[Run]:
    """Runs of a task the logbook had as done at ``resume`` that started
    after it (in the same attempt): the resumed job ran a finished task
    again."""
    return [run for run in runs
            if run.task in resume.done and run.run != resume.done[run.task]
            and run.started > resume.at
            and (resume.until is None or run.started < resume.until)]
