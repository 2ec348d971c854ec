"""A stateful test of the job life cycle: hypothesis drives a real ZooKeeper,
a SQLite logbook and two real conductor processes (kept running through the
steps of a run) with every admin action, kills and pauses, and after each
step checks the board against a model of what each job may be.

Rules: post a job (fast, slow, failing or hanging flow); kill -9 a conductor
(a new one takes its slot); SIGSTOP a conductor briefly (below its session
timeout) and SIGCONT it; and on a random job: abandon, transfer (to the
other live conductor), cancel, retry, trash, suspend (also of a job posted
just before: delayed, so waiting, or racing its first claim), resume. Each
run starts with three jobs suspended (one waiting, two running), one of
them then resumed.

The model (per job: its flow, whether a cancel was asked, whether a suspend
was asked since the last resume or retry, how many retries succeeded, its
resumes, whether it was trashed; per run: whether a holder was killed)::

    state       may be seen when                           must hold
    ---------   ----------------------------------------   ---------------------------
    UNCLAIMED   always (waiting, or handed back)           no suspend request (its next
                                                           holder honours one at once)
    CLAIMED     always                                     its claim node's owner is a
                                                           LIVE registered conductor
                                                           (after a bounded wait: a
                                                           killed holder's session ends);
                                                           a suspend request is honoured
                                                           within REQUEST_HONOURED_WITHIN
    SUSPENDED   a suspend was asked since the last         no owner, claim, running
                resume or retry (it returned SUSPENDED     marker, queue entry or
                or CLAIMED)                                suspend request
    COMPLETE    fast, slow or hanging flow                 outcome has results
    FAILED      failing flow                               outcome has a failure/reason
    CANCELLED   a cancel was asked                         outcome has a reason
    DEAD        a holder was killed (deaths >= max-claims) outcome has a reason
    (gone)      only after a trash that succeeded          JobNotFound; else never lost
    attempt     1 + the retries that succeeded             record field ``attempt``

    action     UNCLAIMED  CLAIMED  SUSPENDED  COMPLETE  FAILED  CANCELLED  DEAD
    abandon    refused    yes      refused    refused   refused refused    refused
    transfer   refused    yes      refused    refused   refused refused    refused
    cancel     yes        asks     yes        no-op     no-op   no-op      no-op
    retry      refused    refused  refused    refused   yes     yes        yes
    trash      yes        refused  yes        yes       yes     yes        yes
    suspend    yes        asks     no-op      refused   refused refused    refused
    resume     refused    refused  yes        refused   refused refused    refused

Every admin call either returns or raises a ``BoardError`` with a message,
within a bound (never another exception, never a hang). Most actions pick
a job running at that moment or a SUSPENDED one, so the CLAIMED and
SUSPENDED columns are exercised too. A SUSPENDED job stays so until an
admin moves it, so its column is checked exactly, call by call, and
against ``jobboard.cli.admin_rules`` (see tests/job_model_suspend.py).
Across all steps no task runs on two holders at once: per (job, task) the
journal's runs on different conductor processes do not overlap by more than
the hand-off's stop timeout (a killed process's unfinished run ends at its
kill).

Suspend and resume, after every step: a job's history never has a claim (or
anything but ``resumed`` or ``cancelled``) right after ``suspended``; no
task of a job starts while it is SUSPENDED (past the hand-off allowance);
a resumed job runs no task again that its logbook had as done when it was
resumed (until a retry starts a new attempt); a suspend request is only
left on a CLAIMED job (being honoured within REQUEST_HONOURED_WITHIN), or
on a finished job whose holder finished it at most REQUEST_RACE after the
request landed, before it could see it (left to retry, trash and the repair
sweep by design: see ``Ownership.consume``; the conductors here run no
sweep). After the last step every job resumed since its last suspend,
cancel or retry has run to its end.

``MALFORMED`` is not reached by these rules (no garbage is written; the
records' own tests cover it).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, Phase, settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, initialize, invariant,
                                 multiple, precondition, rule, run_state_machine_as_test)

from fleet_processes import ConductorProcess, registration
from job_model_suspend import (Resume, done_tasks, history_problems, judge_on_suspended,
                               ON_SUSPENDED, reruns, runs_while_suspended, suspended_spans)
from jobboard.board import Board, Job
from jobboard.cli.admin_rules import Action, refusal
from jobboard.errors import BoardError, JobNotFound
from jobboard.logbook import Logbook
from jobboard.states import JobState
from jobboard.testing.journal_flows import overlapping_runs, read_runs
from jobboard.testing.waiting import wait_until

pytestmark = [pytest.mark.slow]

FACTORY = "jobboard.testing.journal_flows:journaled"
SESSION_TIMEOUT = 1.5
STOP_TIMEOUT = 2.0
MAX_CLAIMS = 2
MAX_KILLS = 3                  # per run: kills are slow to settle (a session timeout each)
MAX_PAUSES = 5
PAUSE_SECONDS = 0.5            # brief: below the session timeout
REGISTER_WITHIN = 30.0
ADMIN_BOUND = 30.0             # an admin call that takes longer is a hang
SETTLE_SECONDS = SESSION_TIMEOUT + 10.0   # the invariants' bounded wait
OVERLAP_ALLOWANCE = STOP_TIMEOUT + 0.5
STEPS = 25                     # per run
# A suspend request on a CLAIMED job is honoured by then: the holder stops at
# the next task boundary (a slow task lasts 1 s, a hanging one stops when
# asked), a dead holder's job is suspended once its session ends, a
# transferred one by its new holder, each perhaps behind a pause.
REQUEST_HONOURED_WITHIN = 8.0
# A holder may finish a job before it sees a request that landed just
# before (its watch, behind a pause): the request then stays for retry,
# trash and the repair sweep. Landed longer before the finish, the holder
# saw it and must have dropped it.
REQUEST_RACE = PAUSE_SECONDS + 1.0
FINAL_SETTLE_SECONDS = SETTLE_SECONDS + 8.0    # the last check: a hanging task's 8 s too
KINDS = {
    "fast": {"tasks": 3, "ms": 20},
    "slow": {"tasks": 3, "ms": 1000},
    "failing": {"tasks": 3, "ms": 50, "fail_at": "t2"},
    "hanging": {"tasks": 3, "ms": 20, "hang_at": "t2", "hang_seconds": 8.0},
}
# The running jobs each run starts with: a suspend request lands during t1.
SEED_KINDS = {"paced": {"tasks": 3, "ms": 300}}
CONDUCTOR_FLAGS = ["--concurrency", "3", "--max-claims", str(MAX_CLAIMS), "--grace", "0.5",
                   "--fsck-interval", "0", "--stop-timeout", str(STOP_TIMEOUT)]

LOGS: list[tuple[str, str]] = []      # (conductor, log) of every run, checked at the end
STATS: Counter = Counter()            # what the rules did, printed at the end
# The first failure of each run, as seen: hypothesis replays a failing run to
# report it, and against real processes the replay rarely fails the same way
# (it then reports the run as flaky instead of what broke).
FAILURES: list[str] = []


@dataclass
class ModelJob:
    job_id: str
    label: str
    kind: str
    cancel_asked: bool = False
    retries: int = 0
    trashed: bool = False
    suspend_asked: bool = False        # since the last resume or retry
    resumes: list[Resume] = field(default_factory=list)
    runs_to_end: bool = False          # resumed since its last suspend, cancel or retry


def bounded(call: Callable[[], Any], what: str, steps: list[str]) -> Any:
    """Run an admin call; it must return or raise a BoardError with a message
    within ADMIN_BOUND seconds. Returns the result, or the BoardError."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - judged below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(ADMIN_BOUND)
    assert not thread.is_alive(), f"{what} hung for more than {ADMIN_BOUND}s"
    error = box.get("error")
    action = what.split()[0]
    if error is None:
        STATS[f"{action}: done"] += 1
        result = box.get("result")
        shown = (f"{result.state.value} attempt {result.attempt}"
                 if hasattr(result, "attempt") else repr(result))
        steps.append(f"{what}: {shown}")
        return box.get("result")
    assert isinstance(error, BoardError), f"{what} raised {type(error).__name__}: {error!r}"
    assert str(error).strip(), f"{what} raised {type(error).__name__} without a message"
    STATS[f"{action}: {type(error).__name__}"] += 1
    steps.append(f"{what}: {type(error).__name__}")
    return error


class JobModel(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self, zk_address: str, workdir: Path) -> None:
        super().__init__()
        self.dir = workdir / uuid.uuid4().hex[:8]
        self.dir.mkdir()
        self.root = f"/model-{uuid.uuid4().hex[:8]}"
        self.zk = zk_address
        self.logbook = f"sqlite:///{self.dir}/logbook.db"
        with Logbook(self.logbook, auto_upgrade=True):
            pass
        self.reader = Logbook(self.logbook)      # what a resumed job had done
        self.journal = str(self.dir / "journal")
        self.board = Board.connect(zk_address, root=self.root, session_timeout=10.0)
        self.model: dict[str, ModelJob] = {}
        self.generation = 0
        self.slots: dict[int, ConductorProcess] = {}
        self.retired: list[ConductorProcess] = []
        self.deaths: dict[int, float] = {}      # pid -> when it was killed
        self.killed_any = False
        self.pauses = 0
        self.checks = 0                          # invariant checks so far
        self.noted: set[str] = set()             # requests left on finished jobs, counted
        self.steps: list[str] = []
        self._start(1, 2)

    # -- conductors -----------------------------------------------------------------

    def _start(self, *slots: int) -> None:
        """Start a conductor in each slot (side by side); complete once each
        is registered."""
        started = []
        for slot in slots:
            self.generation += 1
            conductor = ConductorProcess(
                f"c{slot}-{self.generation}", zk=self.zk, root=self.root,
                logbook=self.logbook, log_dir=self.dir, session_timeout=SESSION_TIMEOUT,
                extra=CONDUCTOR_FLAGS)
            self.slots[slot] = conductor
            started.append(conductor)
        for conductor in started:
            assert wait_until(lambda: not conductor.alive
                              or registration(self.board, conductor.name),
                              REGISTER_WITHIN) and conductor.alive, \
                f"{conductor.name} did not register:\n{conductor.log()[-3000:]}"

    def live_names(self) -> set[str]:
        return {c.name for c in self.slots.values() if c.alive}

    def teardown(self) -> None:
        try:
            # Both drain at once (one SIGTERM each: a second one is a cold exit).
            for conductor in self.slots.values():
                conductor.signal(signal.SIGCONT)
                conductor.signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for conductor in self.slots.values():
                try:
                    conductor.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    conductor.kill()
        finally:
            self.board.close()
            self.reader.close()
            for conductor in [*self.retired, *self.slots.values()]:
                LOGS.append((conductor.name, conductor.log()))

    # -- rules: work and faults -------------------------------------------------------

    @initialize()
    def suspended_from_the_start(self) -> None:
        """Every run starts with three jobs suspended: one waiting (at once),
        two running (their holders stop at a task boundary, after ``t1``),
        one of which is resumed, so that the actions meet SUSPENDED jobs and
        a resumed job runs to its end whichever rules this run leaves out
        (hypothesis switches some off in each run). They are not in the
        bundle (the actions find them as SUSPENDED or running jobs): with
        jobs in it from the start, hypothesis's first, simplest run would be
        one action over and over on them instead of posts."""
        waiting = self.post("fast", delay=2.0)
        result = self._act("suspend", waiting, lambda: self.board.suspend(waiting))
        if result is not JobState.SUSPENDED:
            self._fail(f"suspend of a job waiting for its time returned {result!r}")
        self.model[waiting].suspend_asked = True
        running = [self.post("paced") for _ in range(2)]
        labels = {self.model[j].label for j in running}
        assert wait_until(lambda: labels <= {r.label for r in read_runs(self.journal)}, 10.0), \
            "the first jobs did not start"
        for job_id in running:
            # CLAIMED (asked), unless the flow ran to its end first.
            if isinstance(self._act("suspend", job_id, lambda: self.board.suspend(job_id)),
                          JobState):
                self.model[job_id].suspend_asked = True
        assert wait_until(lambda: not ({self.board.get(j).state for j in running}
                                       & {JobState.CLAIMED, JobState.UNCLAIMED}), 10.0), \
            "the running jobs were neither suspended nor finished"
        self._resume(running[0])

    @rule(target=jobs, kind=st.sampled_from(sorted(KINDS)))
    def post(self, kind: str, delay: float | None = None) -> str:
        label = f"{kind}-{uuid.uuid4().hex[:8]}"
        job = self.board.post(FACTORY, args={"journal": self.journal, "label": label,
                                             **{**KINDS, **SEED_KINDS}[kind]}, delay=delay)
        self.model[job.uuid] = ModelJob(job.uuid, label, kind)
        STATS[f"post {kind}"] += 1
        self.steps.append(f"post {kind} {label} {job.uuid[:8]}"
                          + (f" delayed {delay}s" if delay else ""))
        return job.uuid

    @precondition(lambda self: self.bundle("jobs") and len(self.deaths) < MAX_KILLS)
    @rule(slot=st.sampled_from([1, 2]))
    def kill_and_restart(self, slot: int) -> None:
        victim = self.slots[slot]
        victim.kill()
        self.deaths[victim.pid] = time.time()
        self.killed_any = True
        STATS["kill -9"] += 1
        self.steps.append(f"kill -9 {victim.name}")
        self.retired.append(victim)
        self._start(slot)

    @precondition(lambda self: self.bundle("jobs") and self.pauses < MAX_PAUSES)
    @rule(slot=st.sampled_from([1, 2]))
    def pause_briefly(self, slot: int) -> None:
        self.pauses += 1
        conductor = self.slots[slot]
        conductor.signal(signal.SIGSTOP)
        STATS["pause"] += 1
        self.steps.append(f"pause {conductor.name}")
        try:
            time.sleep(PAUSE_SECONDS)        # the fault is the pause itself
        finally:
            conductor.signal(signal.SIGCONT)

    # -- rules: admin actions ------------------------------------------------------------

    def _pick(self, data: st.DataObject, job_id: str,
              among: tuple[str, ...] = ("bundle", "running", "suspended")) -> str:
        """The bundle's job, or one running now, or one SUSPENDED now (as
        drawn from ``among``), so that the actions on CLAIMED and SUSPENDED
        jobs are exercised too."""
        # Always the same draws, whatever the board holds: hypothesis replays
        # a run by its draws and calls a run that draws differently flaky.
        which = data.draw(st.sampled_from(among), label="pick a bundle, running or "
                                                        "suspended job")
        index = data.draw(st.integers(0, 1 << 16), label="which one")
        if which == "running":
            found = sorted(c["job_id"] for c in self.board.claims()
                           if c["job_id"] in self.model)
        elif which == "suspended":
            found = sorted(j.uuid for j in self.board.jobs(JobState.SUSPENDED)
                           if j.uuid in self.model)
        else:
            found = []
        return found[index % len(found)] if found else job_id

    def _read(self, job_id: str) -> tuple[Job, int] | None:
        try:
            job, stat = self.board.records.read(job_id)
        except JobNotFound:
            return None
        return job, stat.version

    def _act(self, action: str, job_id: str, call: Callable[[], Any]) -> Any:
        """An admin call through :func:`bounded`; on a job SUSPENDED just
        before, its answer and the state after are checked against the
        table (a SUSPENDED job moves only by an admin: it is exact)."""
        before = self._read(job_id)
        result = bounded(call, f"{action} {job_id}", self.steps)
        if before is None or before[0].state is not JobState.SUSPENDED:
            return result
        record, version = before
        STATS[f"{action} of a SUSPENDED job"] += 1
        found = judge_on_suspended(action, result, version, self._read(job_id))
        allowed = refusal(Action(action), record) is None
        if allowed != ON_SUSPENDED[action][0]:
            found.append(f"jobboard.cli.admin_rules {'allows' if allowed else 'refuses'} "
                         f"{action} of a SUSPENDED job; the board does not")
        if found:
            self._fail(f"{self.model[job_id].label} ({job_id[:8]}): " + "; ".join(found))
        return result

    def _fail(self, message: str) -> None:
        message += f"\nsteps so far: {self.steps}"
        FAILURES.append(message)
        raise AssertionError(message)

    @rule(job_id=jobs, data=st.data())
    def abandon(self, job_id: str, data: st.DataObject) -> None:
        job_id = self._pick(data, job_id)

        def call() -> Any:
            holder = self.board.claim_owner(job_id)
            return self.board.abandon(job_id, holder or "nobody")
        self._act("abandon", job_id, call)

    @rule(job_id=jobs, data=st.data())
    def transfer(self, job_id: str, data: st.DataObject) -> None:
        job_id = self._pick(data, job_id)

        def call() -> Any:
            holder = self.board.claim_owner(job_id)
            registered = {c["name"] for c in self.board.conductors()}
            others = sorted((self.live_names() & registered) - {holder})
            return self.board.transfer(job_id, holder, others[0] if others else "nobody")
        self._act("transfer", job_id, call)

    @rule(job_id=jobs, data=st.data())
    def cancel(self, job_id: str, data: st.DataObject) -> None:
        job_id = self._pick(data, job_id)
        result = self._act("cancel", job_id, lambda: self.board.cancel(job_id))
        if result in (JobState.CLAIMED, JobState.CANCELLED):
            job = self.model[job_id]
            job.cancel_asked = True
            job.runs_to_end = False

    @rule(job_id=jobs, data=st.data())
    def retry(self, job_id: str, data: st.DataObject) -> None:
        job_id = self._pick(data, job_id)
        started = time.time()
        result = self._act("retry", job_id, lambda: self.board.retry(job_id))
        if not isinstance(result, BaseException):
            job = self.model[job_id]
            job.retries += 1
            job.cancel_asked = job.suspend_asked = job.runs_to_end = False
            for resume in job.resumes:           # a new attempt runs every task again
                if resume.until is None:
                    resume.until = started
            if self.board.suspend_requested(job_id):
                self._fail(f"{job.label} ({job_id[:8]}): a suspend request outlived its retry")

    @rule(job_id=jobs, data=st.data())
    def trash(self, job_id: str, data: st.DataObject) -> None:
        job_id = self._pick(data, job_id)
        result = self._act("trash", job_id, lambda: self.board.trash(job_id))
        if not isinstance(result, BaseException):
            self.model[job_id].trashed = True

    @rule(target=jobs, job_id=jobs, data=st.data())
    def suspend(self, job_id: str, data: st.DataObject) -> Any:
        """Suspend a job picked as for the other actions, or one posted just
        now: delayed (so it waits: SUSPENDED at once), or not (the suspend
        races its first claim: SUSPENDED, or a request its first holder
        honours before running anything)."""
        fresh = data.draw(st.sampled_from([None, "delayed", "racing"]), label="post first")
        kind = data.draw(st.sampled_from(sorted(KINDS)), label="its kind")
        if fresh is None:
            job_id = self._pick(data, job_id)
        else:
            job_id = self.post(kind, delay=2.0 if fresh == "delayed" else None)
        result = self._act("suspend", job_id, lambda: self.board.suspend(job_id))
        if isinstance(result, JobState):
            STATS[f"suspend -> {result.value}"] += 1
            job = self.model[job_id]
            job.suspend_asked = True
            job.runs_to_end = False
            if result is JobState.SUSPENDED:
                # Nothing but an admin moves it now: it must read so.
                after = self._read(job_id)
                state = after[0].state if after else None
                if state is not JobState.SUSPENDED:
                    self._fail(f"{job.label} ({job_id[:8]}): suspend returned SUSPENDED, "
                               f"the record says {state}")
            elif fresh == "delayed":
                self._fail(f"{job.label} ({job_id[:8]}): suspend of a job waiting for its "
                           f"time returned {result.value}")
        return multiple() if fresh is None else multiple(job_id)

    @rule(job_id=jobs, data=st.data())
    def resume(self, job_id: str, data: st.DataObject) -> None:
        self._resume(self._pick(data, job_id, among=("suspended", "suspended", "bundle")))

    def _resume(self, job_id: str) -> None:
        before = self._read(job_id)
        suspended = before is not None and before[0].state is JobState.SUSPENDED
        # Nobody runs a SUSPENDED job: what its logbook holds now is final.
        done = done_tasks(self.reader, job_id, before[0].attempt) if suspended else {}
        started = time.time()
        result = self._act("resume", job_id, lambda: self.board.resume(job_id))
        if isinstance(result, Job):
            job = self.model[job_id]
            job.suspend_asked = False
            job.runs_to_end = True
            if suspended:     # else it was suspended between the read and the call
                job.resumes.append(Resume(started, before[0].attempt, done))
                STATS[f"resume after {len(done)} done task(s)"] += 1

    # -- invariants ------------------------------------------------------------------------

    def _requests(self) -> dict[str, float]:
        """The suspend requests on the board: job id -> when it landed."""
        found = {}
        client, paths = self.board.client, self.board.paths
        for job_id in client.get_children(paths.suspend_requests):
            stat = client.exists(paths.suspend_request(job_id))
            if stat is not None:
                found[job_id] = stat.ctime / 1000.0
        return found

    def violations(self, final: bool = False) -> list[str]:
        found = []
        now = time.time()
        live = self.live_names()
        registered = {c["name"] for c in self.board.conductors()}
        requests = self._requests()
        claimed = {c["job_id"] for c in self.board.claims()}
        running = set(self.board.client.get_children(self.board.paths.running))
        waiting = set(self.board.index.waiting_ids())
        runs = read_runs(self.journal)
        records: dict[str, Job] = {}
        for job in self.model.values():
            try:
                record = self.board.get(job.job_id)
            except JobNotFound:
                if not job.trashed:
                    found.append(f"{job.label}: lost (not trashed, gone from the board)")
                continue
            if job.trashed:
                found.append(f"{job.label}: trashed but still on the board ({record.state})")
                continue
            records[job.job_id] = record
            state, outcome = record.state, record.outcome or {}
            where = f"{job.label} ({job.job_id[:8]}) {state.value}"
            if record.attempt != 1 + job.retries:
                found.append(f"{where}: attempt {record.attempt}, expected {1 + job.retries}")
            if state is JobState.CLAIMED:
                owner = self.board.claim_owner(job.job_id)
                if owner not in live or owner not in registered:
                    found.append(f"{where}: held by {owner!r}, not a live registered "
                                 f"conductor (live {sorted(live)}, registered {sorted(registered)})")
            elif state is JobState.SUSPENDED:
                if not job.suspend_asked:
                    found.append(f"{where}: suspended though nobody asked since its last "
                                 "resume or retry")
                held = [what for what, there in (
                    ("an owner", record.owner is not None), ("a claim", job.job_id in claimed),
                    ("a running marker", job.job_id in running),
                    ("a queue entry", job.job_id in waiting),
                    ("a suspend request", job.job_id in requests)) if there]
                if held:
                    found.append(f"{where}: has {', '.join(held)}")
            elif state is JobState.COMPLETE:
                if job.kind == "failing":
                    found.append(f"{where}: a failing flow completed")
                if not isinstance(outcome.get("results"), dict):
                    found.append(f"{where}: no results")
            elif state is JobState.FAILED:
                if job.kind != "failing":
                    found.append(f"{where}: failed: {outcome}")
                if not (outcome.get("failure") or outcome.get("reason")):
                    found.append(f"{where}: failed without a reason")
            elif state is JobState.CANCELLED:
                if not job.cancel_asked:
                    found.append(f"{where}: cancelled though nobody asked")
                if not outcome.get("reason"):
                    found.append(f"{where}: cancelled without a reason")
            elif state is JobState.DEAD:
                if not self.killed_any or record.deaths < MAX_CLAIMS:
                    found.append(f"{where}: dead with {record.deaths} deaths "
                                 f"(kills so far: {len(self.deaths)})")
                if not outcome.get("reason"):
                    found.append(f"{where}: dead without a reason")
            found += [f"{where}: {p}" for p in history_problems(record)]
            own = [r for r in runs if r.label == job.label]
            for run in runs_while_suspended(own, suspended_spans(record, now),
                                            OVERLAP_ALLOWANCE):
                found.append(f"{where}: {run.task} started on pid {run.pid} while SUSPENDED")
            for resume in job.resumes:
                for run in reruns(resume, own):
                    found.append(f"{where}: {run.task} ran again on pid {run.pid} "
                                 f"{run.started - resume.at:.2f}s after a resume, though the "
                                 f"logbook had it done")
            if final and job.runs_to_end and not state.finished:
                found.append(f"{where}: resumed, yet not run to its end")
        found += self._request_violations(requests, records, now)
        overlaps = overlapping_runs(runs, allowance=OVERLAP_ALLOWANCE, ends=self.deaths)
        for a, b, seconds in overlaps:
            found.append(f"{a.label} {a.task} ran on pids {a.pid} and {b.pid} at once "
                         f"for {seconds:.2f}s")
        return found

    def _request_violations(self, requests: dict[str, float], records: dict[str, Job],
                            now: float) -> list[str]:
        """A suspend request stays only on a job its holder is stopping, or
        on one its holder finished before it could see it."""
        found = []
        for job_id, landed in requests.items():
            job, record = self.model.get(job_id), records.get(job_id)
            if job is None or record is None:
                found.append(f"a suspend request for {job_id[:8]}, "
                             f"{'trashed' if job else 'not a job of the model'}")
                continue
            where = f"{job.label} ({job_id[:8]}) {record.state.value}"
            if record.state is JobState.CLAIMED:
                if now - landed > REQUEST_HONOURED_WITHIN:
                    found.append(f"{where}: its suspend request is {now - landed:.1f}s old, "
                                 f"not honoured by {record.owner}")
            elif not record.state.finished:
                found.append(f"{where}: has a suspend request")
            elif record.finished_at is None or record.finished_at - landed > REQUEST_RACE:
                found.append(f"{where}: a suspend request lingers; it landed "
                             f"{(record.finished_at or now) - landed:.2f}s before the job "
                             "finished")
            elif job_id not in self.noted:
                self.noted.add(job_id)
                STATS["suspend request left on a job finished first"] += 1
        return found

    @invariant()
    def board_matches_the_model(self) -> None:
        self.checks += 1
        final = self.checks > STEPS       # after the last step (the first check is before any)
        started = time.monotonic()
        deadline = started + (FINAL_SETTLE_SECONDS if final else SETTLE_SECONDS)
        while True:
            found = self.violations(final)
            if not found:
                STATS["settle seconds (sum)"] += time.monotonic() - started
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        logs = "\n".join(f"--- {c.name}\n{c.log()[-1500:]}"
                         for c in [*self.retired, *self.slots.values()])
        message = ("invariants broken after a bounded wait:\n  " + "\n  ".join(found)
                   + f"\nsteps so far: {self.steps}\n" + logs)
        FAILURES.append(message)
        raise AssertionError(message)


@pytest.mark.timeout(300)
def test_job_life_cycle_model(zk_server, tmp_path):
    LOGS.clear()
    STATS.clear()
    FAILURES.clear()
    try:
        run_state_machine_as_test(
            lambda: JobModel(zk_server.address, tmp_path),
            settings=settings(max_examples=3, stateful_step_count=STEPS, deadline=None,
                              database=None, phases=[Phase.generate],
                              suppress_health_check=list(HealthCheck)))
    except Exception:
        if FAILURES:
            pytest.fail(FAILURES[0], pytrace=False)
        raise
    print("\njob model: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(STATS.items())))
    crashed = [(name, log[log.index("Traceback"):][:2000]) for name, log in LOGS
               if "Traceback" in log]
    assert not crashed, f"conductors logged tracebacks: {crashed[:3]}"
