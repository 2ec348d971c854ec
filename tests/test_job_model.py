"""A stateful test of the job life cycle: hypothesis drives a real ZooKeeper,
a SQLite logbook and two real conductor processes (kept running through the
steps of a run) with every admin action, kills and pauses, and after each
step checks the board against a model of what each job may be.

Rules: post a job (fast, slow, failing or hanging flow); kill -9 a conductor
(a new one takes its slot); SIGSTOP a conductor briefly (below its session
timeout) and SIGCONT it; and on a random job: abandon, transfer (to the
other live conductor), cancel, retry, trash.

The model (per job: its flow, whether a cancel was asked, how many retries
succeeded, whether it was trashed; per run: whether a holder was killed)::

    state       may be seen when                           must hold
    ---------   ----------------------------------------   ---------------------------
    UNCLAIMED   always (waiting, or handed back)           -
    CLAIMED     always                                     its claim node's owner is a
                                                           LIVE registered conductor
                                                           (after a bounded wait: a
                                                           killed holder's session ends)
    COMPLETE    fast, slow or hanging flow                 outcome has results
    FAILED      failing flow                               outcome has a failure/reason
    CANCELLED   a cancel was asked                         outcome has a reason
    DEAD        a holder was killed (deaths >= max-claims) outcome has a reason
    (gone)      only after a trash that succeeded          JobNotFound; else never lost
    attempt     1 + the retries that succeeded             record field ``attempt``

    action     UNCLAIMED  CLAIMED  COMPLETE  FAILED  CANCELLED  DEAD
    abandon    refused    yes      refused   refused refused    refused
    transfer   refused    yes      refused   refused refused    refused
    cancel     yes        asks     no-op     no-op   no-op      no-op
    retry      refused    refused  refused   yes     yes        yes
    trash      yes        refused  yes       yes     yes        yes

Every admin call either returns or raises a ``BoardError`` with a message,
within a bound (never another exception, never a hang). Half the actions
pick a job running at that moment, so the CLAIMED column is exercised too.
Across all steps no task runs on two holders at
once: per (job, task) the journal's runs on different conductor processes
do not overlap by more than the hand-off's stop timeout (a killed process's
unfinished run ends at its kill).

``MALFORMED`` is not reached by these rules (no garbage is written; the
records' own tests cover it).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, Phase, settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from fleet_processes import ConductorProcess, registration
from jobboard.board import Board
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
KINDS = {
    "fast": {"tasks": 3, "ms": 20},
    "slow": {"tasks": 3, "ms": 1000},
    "failing": {"tasks": 3, "ms": 50, "fail_at": "t2"},
    "hanging": {"tasks": 3, "ms": 20, "hang_at": "t2", "hang_seconds": 8.0},
}
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
        self.journal = str(self.dir / "journal")
        self.board = Board.connect(zk_address, root=self.root, session_timeout=10.0)
        self.model: dict[str, ModelJob] = {}
        self.generation = 0
        self.slots: dict[int, ConductorProcess] = {}
        self.retired: list[ConductorProcess] = []
        self.deaths: dict[int, float] = {}      # pid -> when it was killed
        self.killed_any = False
        self.pauses = 0
        self.steps: list[str] = []
        for slot in (1, 2):
            self._start(slot)

    # -- conductors -----------------------------------------------------------------

    def _start(self, slot: int) -> None:
        self.generation += 1
        conductor = ConductorProcess(
            f"c{slot}-{self.generation}", zk=self.zk, root=self.root, logbook=self.logbook,
            log_dir=self.dir, session_timeout=SESSION_TIMEOUT, extra=CONDUCTOR_FLAGS)
        self.slots[slot] = conductor
        # A restart is complete once the new conductor is registered.
        assert wait_until(lambda: not conductor.alive or registration(self.board, conductor.name),
                          REGISTER_WITHIN) and conductor.alive, \
            f"{conductor.name} did not register:\n{conductor.log()[-3000:]}"

    def live_names(self) -> set[str]:
        return {c.name for c in self.slots.values() if c.alive}

    def teardown(self) -> None:
        try:
            for conductor in self.slots.values():
                conductor.stop(timeout=10)
        finally:
            self.board.close()
            for conductor in [*self.retired, *self.slots.values()]:
                LOGS.append((conductor.name, conductor.log()))

    # -- rules: work and faults -------------------------------------------------------

    @rule(target=jobs, kind=st.sampled_from(sorted(KINDS)))
    def post(self, kind: str) -> str:
        label = f"{kind}-{uuid.uuid4().hex[:8]}"
        job = self.board.post(FACTORY, args={"journal": self.journal, "label": label,
                                             **KINDS[kind]})
        self.model[job.uuid] = ModelJob(job.uuid, label, kind)
        STATS[f"post {kind}"] += 1
        self.steps.append(f"post {kind} {label} {job.uuid[:8]}")
        return job.uuid

    @precondition(lambda self: self.model and len(self.deaths) < MAX_KILLS)
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

    @precondition(lambda self: self.model and self.pauses < MAX_PAUSES)
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

    def _pick(self, data: st.DataObject, job_id: str) -> str:
        """The bundle's job, or (half the time) one running now, so that
        the actions on CLAIMED jobs are exercised too."""
        # Always the same draws, whatever the board holds: hypothesis replays
        # a run by its draws and calls a run that draws differently flaky.
        wants_running = data.draw(st.booleans(), label="pick a running job")
        index = data.draw(st.integers(0, 1 << 16), label="which running job")
        if wants_running:
            running = sorted(c["job_id"] for c in self.board.claims()
                             if c["job_id"] in self.model)
            if running:
                return running[index % len(running)]
        return job_id

    @rule(job_id=jobs, data=st.data())
    def abandon(self, job_id: str, data: st.DataObject) -> None:
        job_id = self._pick(data, job_id)

        def call() -> Any:
            holder = self.board.claim_owner(job_id)
            return self.board.abandon(job_id, holder or "nobody")
        bounded(call, f"abandon {job_id}", self.steps)

    @rule(job_id=jobs, data=st.data())
    def transfer(self, job_id: str, data: st.DataObject) -> None:
        job_id = self._pick(data, job_id)

        def call() -> Any:
            holder = self.board.claim_owner(job_id)
            registered = {c["name"] for c in self.board.conductors()}
            others = sorted((self.live_names() & registered) - {holder})
            return self.board.transfer(job_id, holder, others[0] if others else "nobody")
        bounded(call, f"transfer {job_id}", self.steps)

    @rule(job_id=jobs, data=st.data())
    def cancel(self, job_id: str, data: st.DataObject) -> None:
        job_id = self._pick(data, job_id)
        result = bounded(lambda: self.board.cancel(job_id), f"cancel {job_id}", self.steps)
        if result in (JobState.CLAIMED, JobState.CANCELLED):
            self.model[job_id].cancel_asked = True

    @rule(job_id=jobs)
    def retry(self, job_id: str) -> None:
        result = bounded(lambda: self.board.retry(job_id), f"retry {job_id}", self.steps)
        if not isinstance(result, BaseException):
            job = self.model[job_id]
            job.retries += 1
            job.cancel_asked = False

    @rule(job_id=jobs, data=st.data())
    def trash(self, job_id: str, data: st.DataObject) -> None:
        job_id = self._pick(data, job_id)
        result = bounded(lambda: self.board.trash(job_id), f"trash {job_id}", self.steps)
        if not isinstance(result, BaseException):
            self.model[job_id].trashed = True

    # -- invariants ------------------------------------------------------------------------

    def violations(self) -> list[str]:
        found = []
        live = self.live_names()
        registered = {c["name"] for c in self.board.conductors()}
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
            state, outcome = record.state, record.outcome or {}
            where = f"{job.label} ({job.job_id[:8]}) {state.value}"
            if record.attempt != 1 + job.retries:
                found.append(f"{where}: attempt {record.attempt}, expected {1 + job.retries}")
            if state is JobState.CLAIMED:
                owner = self.board.claim_owner(job.job_id)
                if owner not in live or owner not in registered:
                    found.append(f"{where}: held by {owner!r}, not a live registered "
                                 f"conductor (live {sorted(live)}, registered {sorted(registered)})")
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
        overlaps = overlapping_runs(read_runs(self.journal), allowance=OVERLAP_ALLOWANCE,
                                    ends=self.deaths)
        for a, b, seconds in overlaps:
            found.append(f"{a.label} {a.task} ran on pids {a.pid} and {b.pid} at once "
                         f"for {seconds:.2f}s")
        return found

    @invariant()
    def board_matches_the_model(self) -> None:
        started = time.monotonic()
        deadline = started + SETTLE_SECONDS
        while True:
            found = self.violations()
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
            settings=settings(max_examples=3, stateful_step_count=25, deadline=None,
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
