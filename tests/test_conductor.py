"""Conductors on a real ZooKeeper and a real SQLite logbook: running, failing,
cancelling and transferring jobs, in-process and as killed/stopped processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jobboard.board import Board
from jobboard.conductor import Conductor
from jobboard.errors import BoardError, BoardUnavailable
from jobboard.logbook import Logbook
from jobboard.states import AtomState, FlowState, JobState
from jobboard.testing.flows import read_journal
from jobboard.testing.waiting import wait_until as poll

FIVE = "jobboard.testing.flows:five_steps"
ALLOW = ("jobboard.testing",)


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll a cross-process condition (a file, a znode) with a deadline."""
    value = poll(predicate, timeout)
    if not value:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value


@pytest.fixture
def logbook_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/logbook.db"


@pytest.fixture
def board(zk_hosts):
    with Board.connect(zk_hosts, root="/fleet") as board:
        yield board


class Fleet:
    """In-process conductors, each with its own ZooKeeper session."""

    def __init__(self, zk_hosts: str, logbook_url: str) -> None:
        self.zk_hosts = zk_hosts
        self.logbook_url = logbook_url
        self.members: list[tuple[Conductor, threading.Thread, Board, Logbook]] = []

    def start(self, name: str, **options) -> Conductor:
        board = Board.connect(self.zk_hosts, root="/fleet", session_timeout=2.0)
        logbook = Logbook(self.logbook_url)
        options.setdefault("allow", ALLOW)
        conductor = Conductor(board, logbook, name=name, **options)
        thread = threading.Thread(target=conductor.run, daemon=True)
        thread.start()
        self.members.append((conductor, thread, board, logbook))
        return conductor

    def stop_all(self) -> None:
        for conductor, thread, board, logbook in self.members:
            conductor.stop(graceful=False)
        for conductor, thread, board, logbook in self.members:
            assert conductor.wait(30), f"{conductor.name} did not stop"
            board.close()
            logbook.close()


@pytest.fixture
def fleet(zk_hosts, logbook_url):
    fleet = Fleet(zk_hosts, logbook_url)
    yield fleet
    fleet.stop_all()


def conductor_process(zk_hosts: str, logbook_url: str, name: str, *extra: str,
                      session_timeout: str = "1") -> subprocess.Popen:
    """A conductor process; its output goes to ``proc.log_path``."""
    env = {**os.environ, "JOBBOARD_ZK": zk_hosts, "JOBBOARD_ROOT": "/fleet",
           "JOBBOARD_LOGBOOK": logbook_url}
    log_path = Path(logbook_url.rsplit("/", 1)[0].removeprefix("sqlite:///")) / f"{name}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobboard", "conductor", "--name", name, "--allow",
             "jobboard.testing", "--session-timeout", session_timeout, *extra],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log_path
    return proc


def output_of(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_runs_jobs_to_completion(board, fleet, tmp_path):
    journal = str(tmp_path / "journal")
    jobs = [board.post(FIVE, args={"journal": journal}) for _ in range(3)]
    fleet.start("c1", concurrency=2)
    for job in jobs:
        outcome = board.wait(job.uuid, timeout=60)
        assert outcome.ok, outcome
        assert outcome.results["step5_done"].startswith("step5 by")
    assert sorted(read_journal(journal)) == sorted(f"step{n}" for n in range(1, 6) for _ in jobs)
    assert board.claims() == []


def test_a_conductor_starting_during_an_outage_waits_instead_of_exiting(
        board, zk_hosts, logbook_url, tmp_path, caplog):
    """ZooKeeper unavailable for a moment as a conductor starts (an election,
    a member restarting: injected here, once at registration and once at
    setting the claimer's watches) costs a retry, not the daemon."""
    own = Board.connect(zk_hosts, root="/fleet", session_timeout=2.0)
    failures = []

    def failing_once(real):
        def call(*args, **kwargs):
            if real not in failures:
                failures.append(real)
                raise BoardUnavailable("ZooKeeper unavailable (ConnectionLoss)")
            return real(*args, **kwargs)
        return call

    own.admin.register_conductor = failing_once(own.admin.register_conductor)
    own.index.ensure_queue = failing_once(own.index.ensure_queue)
    with Logbook(logbook_url) as logbook:
        conductor = Conductor(own, logbook, name="c1", allow=ALLOW)
        thread = threading.Thread(target=conductor.run, daemon=True)
        thread.start()
        try:
            job = board.post(FIVE, args={"journal": str(tmp_path / "journal")})
            assert board.wait(job.uuid, timeout=60).ok
            assert len(failures) == 2 and thread.is_alive()
            assert [c["name"] for c in board.conductors()] == ["c1"]
            assert caplog.text.count("board unavailable while starting") == 2
        finally:
            conductor.stop(graceful=False)
            assert conductor.wait(30)
            own.close()


def test_a_conductor_refused_as_a_duplicate_leaves_the_running_one_registered(
        board, fleet, zk_hosts, logbook_url):
    """The same --name twice: the second is refused at registration and, on
    its way out, does not remove the first one's registration."""
    fleet.start("x")
    wait_until(lambda: board.conductors(), what="the first registration")
    second = Board.connect(zk_hosts, root="/fleet", session_timeout=2.0)
    with Logbook(logbook_url) as logbook:
        with pytest.raises(BoardError, match="already running"):
            Conductor(second, logbook, name="x", allow=ALLOW).run()
    second.close()
    assert [c["name"] for c in board.conductors()] == ["x"]


def test_broken_jobs_fail_once_with_the_reason(board, fleet, tmp_path, logbook_url):
    journal = str(tmp_path / "journal")
    not_allowed = board.post("os:system", args={"command": "true"})
    missing = board.post("jobboard.testing.nowhere:flow")
    raising = board.post("jobboard.testing.flows:broken")
    bad_args = board.post("jobboard.testing.flows:needs_args", args={"wrong": 1})
    good = board.post(FIVE, args={"journal": journal})
    fleet.start("c1", refusal_backoff=0.2)      # the 5 refusals in a second, not 20
    reasons = {}
    for job in (missing, raising, bad_args):
        outcome = board.wait(job.uuid, timeout=60)
        assert outcome.state is JobState.FAILED
        reasons[job.uuid] = outcome.reason
        assert board.get(job.uuid).claims == 1          # not retried
    # Outside --allow: given back for a conductor that may run it, and parked
    # (DEAD, retryable) once the refusals run out; never FAILED.
    parked = board.wait(not_allowed.uuid, timeout=60)
    assert parked.state is JobState.DEAD and "outside its --allow prefixes" in parked.reason
    assert (board.get(not_allowed.uuid).refusals, board.get(not_allowed.uuid).deaths) == (5, 0)
    assert "cannot be loaded" in reasons[missing.uuid]
    assert "this factory is broken" in reasons[raising.uuid]
    assert board.wait(good.uuid, timeout=60).ok          # the conductor went on
    with Logbook(logbook_url) as logbook:
        detail = logbook.load_flow(raising.uuid)
        assert detail.state is FlowState.FAILURE
        assert "this factory is broken" in detail.meta["error"]


def test_failed_task_reverts_and_fails_the_job(board, fleet, tmp_path):
    journal = str(tmp_path / "journal")
    job = board.post(FIVE, args={"journal": journal, "fail_at": "step3"})
    fleet.start("c1")
    outcome = board.wait(job.uuid, timeout=60)
    assert outcome.state is JobState.FAILED
    assert outcome.failure["message"] == "step3 failed on purpose"
    assert read_journal(journal) == ["step1", "step2", "step3", "step3-reverted",
                                     "step2-reverted", "step1-reverted"]


def test_kill_9_mid_flow_resumes_elsewhere_without_rerunning(board, tmp_path, zk_hosts,
                                                             logbook_url, fleet):
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    job = board.post(FIVE, args={"journal": journal, "hold_at": "step3", "gate": gate})
    victim = conductor_process(zk_hosts, logbook_url, "victim")
    try:
        wait_until(lambda: "step3-holding" in read_journal(journal), what="step3 to start")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        Path(gate).touch()
        fleet.start("rescuer")
        outcome = board.wait(job.uuid, timeout=60)
    finally:
        stop_process(victim)
    assert outcome.ok
    ran = read_journal(journal)
    for step in ("step1", "step2", "step4", "step5"):
        assert ran.count(step) == 1, ran       # finished before the kill: not re-run
    assert ran.count("step3") == 2             # interrupted while running: run again
    record = board.get(job.uuid)
    assert record.claims == 2 and [h["event"] for h in record.history].count("reclaimed") == 1
    with Logbook(logbook_url) as logbook:
        atoms = logbook.load_flow(job.uuid).atoms
        assert {a.state for a in atoms.values()} == {AtomState.SUCCESS}
        assert atoms["step3"].attempts == 2 and atoms["step1"].attempts == 1


def test_sigterm_drains_then_abandons(board, tmp_path, zk_hosts, logbook_url):
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    held = board.post(FIVE, args={"journal": journal, "hold_at": "step2", "gate": gate})
    proc = conductor_process(zk_hosts, logbook_url, "draining", "--grace", "0.5",
                             session_timeout="30")
    try:
        wait_until(lambda: "step2-holding" in read_journal(journal), what="step2 to start")
        proc.send_signal(signal.SIGTERM)
        # The grace period ends while step2 holds; once step2 returns the job
        # is abandoned, long before the 30 s session timeout would free it.
        wait_until(lambda: "grace period over" in output_of(proc), what="the grace to end")
        Path(gate).touch()
        assert proc.wait(timeout=20) == 0
    finally:
        stop_process(proc)
    output = output_of(proc)
    record = board.get(held.uuid)
    assert record.state is JobState.UNCLAIMED, output
    assert record.history[-1]["event"] == "abandoned"
    assert read_journal(journal) == ["step1", "step2", "step2-holding"]
    assert "stopping gracefully" in output
    assert board.conductors() == []


def test_stopped_holder_is_fenced_after_its_session_expires(board, tmp_path, zk_hosts,
                                                            logbook_url, fleet):
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    job = board.post(FIVE, args={"journal": journal, "hold_at": "step2", "gate": gate})
    paused = conductor_process(zk_hosts, logbook_url, "paused")
    try:
        wait_until(lambda: "step2-holding" in read_journal(journal), what="step2 to start")
        first_token = board.claims()[0]["token"]
        paused.send_signal(signal.SIGSTOP)
        Path(gate).touch()
        fleet.start("successor")
        outcome = board.wait(job.uuid, timeout=60)
        assert outcome.ok
        with Logbook(logbook_url) as logbook:
            before = logbook.load_flow(job.uuid)
            token_after = logbook.current_token(job.uuid)
        paused.send_signal(signal.SIGCONT)
        # The paused holder wakes up inside step2 and tries to record it: the
        # logbook refuses the write (its token is older) and the engine stops.
        wait_until(lambda: "claim lost" in output_of(paused), what="the old holder to stop")
        paused.send_signal(signal.SIGTERM)
        paused.wait(timeout=30)
    finally:
        stop_process(paused)
    output = output_of(paused)
    assert token_after > first_token
    assert "StaleOwner" in output or "fenced" in output or "claim lost" in output, output
    with Logbook(logbook_url) as logbook:
        after = logbook.load_flow(job.uuid)
        assert logbook.current_token(job.uuid) == token_after
    assert {n: (a.state, a.attempts, a.result) for n, a in after.atoms.items()} == \
        {n: (a.state, a.attempts, a.result) for n, a in before.atoms.items()}
    ran = read_journal(journal)
    assert ran.count("step3") == 1 and ran.count("step1") == 1
    assert board.get(job.uuid).state is JobState.COMPLETE


def test_transfer_to_another_conductor_resumes_there(board, fleet, tmp_path, logbook_url):
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    job = board.post(FIVE, args={"journal": journal, "hold_at": "step2", "gate": gate})
    first = fleet.start("first")
    wait_until(lambda: "step2-holding" in read_journal(journal), what="step2 to start")
    fleet.start("second")
    wait_until(lambda: any(c["name"] == "second" for c in board.conductors()),
               what="second to register")
    board.transfer(job.uuid, "first", "second")
    Path(gate).touch()
    outcome = board.wait(job.uuid, timeout=60)
    assert outcome.ok
    record = board.get(job.uuid)
    assert record.owner == "second" and "transferred" in [h["event"] for h in record.history]
    ran = read_journal(journal)
    assert ran.count("step1") == 1 and ran.count("step5") == 1
    # The first conductor learns of the transfer from its claim watch or its
    # next fenced write; either way it lets the job go.
    wait_until(lambda: first.in_flight == 0, timeout=10, what="first to let go of the job")


def test_cancel_stops_and_reverts_a_running_job(board, fleet, tmp_path):
    journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
    job = board.post(FIVE, args={"journal": journal, "hold_at": "step2", "gate": gate})
    fleet.start("c1")
    wait_until(lambda: "step2-holding" in read_journal(journal), what="step2 to start")
    assert board.cancel(job.uuid) is JobState.CLAIMED
    Path(gate).touch()
    outcome = board.wait(job.uuid, timeout=60)
    assert outcome.state is JobState.CANCELLED
    ran = read_journal(journal)
    assert "step3" not in ran
    assert ran[-2:] == ["step2-reverted", "step1-reverted"]
    assert not board.cancel_requested(job.uuid)


def test_declared_locks_serialize_jobs_across_the_fleet(board, fleet, tmp_path):
    from jobboard.locks._names import MUTEX, lock_path

    gate = str(tmp_path / "gate")
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    a = board.post(FIVE, args={"journal": first, "hold_at": "step1", "gate": gate,
                               "lock": "volume/42"})
    fleet.start("c1")
    wait_until(lambda: "step1-holding" in read_journal(first), what="job A to hold the lock")
    b = board.post(FIVE, args={"journal": second, "lock": "volume/42"})
    fleet.start("c2")
    contenders = lock_path(board.paths.locks, MUTEX, "volume/42")
    wait_until(lambda: len(board.client.get_children(contenders)) == 2,
               what="job B to queue for the lock")
    assert read_journal(second) == []          # B waits while A holds volume/42
    Path(gate).touch()
    assert board.wait(a.uuid, timeout=60).ok and board.wait(b.uuid, timeout=60).ok
    assert read_journal(second).count("step1") == 1
    assert board.client.get_children(contenders) == []   # released on every path


def expire_session(board: Board, zk_hosts: str) -> None:
    """Expire ``board``'s ZooKeeper session from the server's side (a second
    client takes the session over and closes it), and wait until it is LOST."""
    from kazoo.client import KazooState

    from jobboard.testing.zookeeper import zk_client

    lost = threading.Event()
    board.client.add_listener(lambda state: lost.set() if state == KazooState.LOST else None)
    thief = zk_client(zk_hosts, client_id=board.client.client_id)
    thief.start(timeout=10)
    thief.stop()
    thief.close()
    assert lost.wait(20), "the session did not expire"


def test_a_conductor_claims_again_after_its_session_expired(board, fleet, zk_hosts, tmp_path):
    """Every watch the conductor relies on is set again on its new session:
    a job posted after the expiry runs, and so does a delayed one (the
    delayed index's watch)."""
    conductor = fleet.start("c1")
    first = board.post(FIVE, args={"journal": str(tmp_path / "j1")})
    assert board.wait(first.uuid, timeout=60).ok
    expire_session(conductor.board, zk_hosts)
    wait_until(lambda: conductor.session.connected and conductor.board.conductors(),
               timeout=30, what="a new session and registration")
    delayed = board.post(FIVE, args={"journal": str(tmp_path / "j2")}, delay=1.0)
    later = board.post(FIVE, args={"journal": str(tmp_path / "j3")})
    assert board.wait(later.uuid, timeout=30).ok
    assert board.wait(delayed.uuid, timeout=30).ok


def test_a_job_finishing_on_the_board_leaves_its_slot_to_the_next(board, zk_hosts,
                                                                   logbook_url):
    """A slot is a running flow: while one job's consume waits on ZooKeeper,
    the next job's flow runs already, and no more flows than slots run."""
    first, second = (board.post("jobboard.testing.flows:noop") for _ in range(2))
    own = Board.connect(zk_hosts, root="/fleet", session_timeout=2.0)
    release, consumed = threading.Event(), []
    consume = own.consume

    def held_consume(job, *args, **kwargs):
        consumed.append((job.uuid, conductor.busy, conductor.in_flight))
        if len(consumed) == 1:
            assert release.wait(30), "the first consume was never released"
        return consume(job, *args, **kwargs)

    own.consume = held_consume
    conductor = Conductor(own, Logbook(logbook_url), name="one-slot", concurrency=1,
                          allow=ALLOW)
    thread = threading.Thread(target=conductor.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(consumed) == 2, timeout=30,
                   what="the second job's flow to end while the first is consumed")
        assert {uuid for uuid, _, _ in consumed} == {first.uuid, second.uuid}
        # Both jobs held at once, the second's flow over: its slot is free.
        assert consumed[1][1:] == (0, 2)
        release.set()
        for job in (first, second):
            assert board.wait(job.uuid, timeout=30).ok
    finally:
        release.set()
        conductor.stop(graceful=False)
        assert conductor.wait(30)
        own.close()
        conductor.logbook.close()


def test_a_run_whose_claim_check_got_no_answer_asks_again_before_its_next_task(
        board, zk_hosts, logbook_url):
    """The claim watch is set without waiting. When ZooKeeper's answer is
    lost (None), the gate asks again before the next task and sets the watch
    then; an answer that the claim is not ours stops the run."""
    from jobboard.conductor.run import JobRun
    own = Board.connect(zk_hosts, root="/fleet", session_timeout=2.0)
    conductor = Conductor(own, Logbook(logbook_url), name="me", allow=ALLOW)
    try:
        unsure = JobRun(conductor._run_context, own.claim(board.post(FIVE), "me"))
        unsure._on_claim_answer(None)
        unsure._gate()                          # asks, and sets the watch
        assert not unsure.claim_lost.is_set()
        own.abandon(unsure.job, "me")           # the watch the gate set fires
        assert unsure.claim_lost.wait(10)

        gone = JobRun(conductor._run_context, own.claim(board.post(FIVE), "me"))
        gone._on_claim_answer(False)
        assert gone.claim_lost.is_set()
    finally:
        conductor.session.close()
        own.close()
        conductor.logbook.close()
