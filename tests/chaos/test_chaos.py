"""The chaos suite (``make chaos``): a fleet of conductor processes on a 3-node
ZooKeeper ensemble and a PostgreSQL logbook runs 500 five-task jobs while
conductors are killed (-9) and restarted, paused past their session timeout,
ZooKeeper members (the leader among them) are restarted, and garbage lands on
the board. At the end every job must be COMPLETE (the one with an unknown
factory FAILED with its reason), none lost, no acknowledged task run again,
no write from a fenced holder accepted (see ``chaos_report``), and no
traceback in any conductor's log.

Knobs (environment): ``CHAOS_JOBS`` (500), ``CHAOS_TASK_MS`` ("40,160":
each task sleeps a random time in this range, so that the work outlasts the
chaos schedule and kills land mid-flow), ``CHAOS_SEED``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from chaos_report import ChaosEvents, collect, traceback_excerpts
from jobboard.board import Board
from jobboard.board.layout import Bucket
from jobboard.errors import BoardUnavailable, PayloadTooLarge, WaitTimeout
from jobboard.logbook import Logbook
from jobboard.states import JobState
from jobboard.testing.chaos_flows import CONDUCTOR_ENV, create_tables
from jobboard.testing.zookeeper import ZooKeeperEnsemble, ZooKeeperStartError, zk_client

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ROOT = "/chaos"
FACTORY = "jobboard.testing.chaos_flows:recorded"
UNKNOWN_FACTORY = "jobboard.testing.chaos_flows:no_such_flow"
ALLOW = "jobboard.testing.chaos_flows"
JOBS = int(os.environ.get("CHAOS_JOBS", "500"))
LATE_JOBS = min(50, JOBS // 10)          # posted one by one while the chaos runs
TASK_MS = tuple(int(v) for v in os.environ.get("CHAOS_TASK_MS", "40,160").split(","))
SEED = int(os.environ.get("CHAOS_SEED", str(random.randrange(1 << 30))))
CONDUCTORS = 3
CONCURRENCY = 4
SESSION_TIMEOUT = 2.0
MAX_CLAIMS = 50
PAUSE_SECONDS = 2.5 * SESSION_TIMEOUT
KILL_EVERY = 3.0
CHAOS_SECONDS = 40.0        # kills until then; ZooKeeper restarts and a pause inside it
ZK_DOWN_SECONDS = 2.0
FINISH_TIMEOUT = 300.0      # all jobs finished after the chaos ends
GARBAGE = ("garbage record", "garbage shard child", "garbage queue entry", "bad bucket")
GARBAGE_SHARD_CHILD = f"{ROOT}/jobs/7f/not-a-job"


class Fleet:
    """Conductor processes in slots; a killed one is restarted in its slot."""

    def __init__(self, zk: str, logbook_url: str, log_dir: Path, events: ChaosEvents,
                 rng: random.Random) -> None:
        self.zk = zk
        self.logbook_url = logbook_url
        self.log_dir = log_dir
        self.events = events
        self.rng = rng
        self.slots: dict[int, tuple[str, subprocess.Popen]] = {}
        self.log_of: dict[str, Path] = {}
        self.log_paths: list[Path] = []
        self.paused: set[int] = set()
        self.lock = threading.RLock()
        self._generation = 0

    def start(self, slot: int, name: str) -> None:
        env = {**os.environ, "JOBBOARD_ZK": self.zk, "JOBBOARD_ROOT": ROOT,
               "JOBBOARD_LOGBOOK": self.logbook_url, CONDUCTOR_ENV: name}
        self._generation += 1
        log_path = self.log_dir / f"{self._generation:03d}-{name}.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobboard", "conductor", "--name", name,
                 "--allow", ALLOW, "--concurrency", str(CONCURRENCY),
                 "--session-timeout", str(SESSION_TIMEOUT), "--grace", "5",
                 # The killer takes a holder every few seconds, far more often
                 # than a fleet loses machines: a job may lose 5 holders in a
                 # row. Dead-lettering is tested on its own (test_lifecycle).
                 "--max-claims", str(MAX_CLAIMS)],
                env=env, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        self.slots[slot] = (name, proc)
        self.log_of[name] = log_path
        self.log_paths.append(log_path)
        self.events.conductors_started += 1

    def kill_and_restart(self) -> None:
        """kill -9 a random running conductor and start a new one in its slot
        (under a new name: the killed one's registration lives on until its
        session expires)."""
        with self.lock:
            candidates = [slot for slot in self.slots if slot not in self.paused]
            if not candidates:
                return
            slot = self.rng.choice(candidates)
            name, proc = self.slots[slot]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            self.events.conductors_killed += 1
            self.start(slot, f"c{slot}-{self._generation + 1}")

    def pause(self, seconds: float, stop: threading.Event) -> None:
        """SIGSTOP a conductor past its session timeout, then SIGCONT it."""
        with self.lock:
            slot = self.rng.choice(sorted(self.slots))
            _, proc = self.slots[slot]
            self.paused.add(slot)
            proc.send_signal(signal.SIGSTOP)
            self.events.pauses += 1
        try:
            stop.wait(seconds)
        finally:
            with self.lock:
                proc.send_signal(signal.SIGCONT)
                self.paused.discard(slot)

    def check_alive(self) -> None:
        """A conductor that exited by itself is a finding: note it, replace it."""
        with self.lock:
            for slot, (name, proc) in list(self.slots.items()):
                if proc.poll() is not None:
                    last = self.log_of[name].read_text(errors="replace").splitlines()[-5:]
                    self.events.unexpected_exits.append(
                        f"{name} exited with {proc.returncode}: " + " | ".join(last))
                    self.start(slot, f"c{slot}-{self._generation + 1}")

    def stop_all(self) -> None:
        with self.lock:
            procs = [proc for _, proc in self.slots.values()]
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)

    def log_texts(self) -> list[str]:
        return [path.read_text(errors="replace") for path in self.log_paths]


class Chaos:
    """The schedule, in threads: kills every few seconds, two ZooKeeper
    restarts (a follower, then the leader) and a pause past the session
    timeout. ``errors`` collects what went wrong inside the schedule itself."""

    def __init__(self, fleet: Fleet, ensemble: ZooKeeperEnsemble, events: ChaosEvents) -> None:
        self.fleet = fleet
        self.ensemble = ensemble
        self.events = events
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._guard, args=(fn,), daemon=True,
                                         name=f"chaos-{fn.__name__}")
                        for fn in (self._killer, self._zookeeper, self._pauser)]

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "chaos threads did not end"

    def _at(self, second: float) -> bool:
        """Sleep until ``second`` into the schedule; False when told to stop."""
        return not self.stop.wait(max(0.0, self.started + second - time.monotonic()))

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def _killer(self) -> None:
        second = 2.0
        while second < CHAOS_SECONDS and self._at(second):
            self.fleet.check_alive()
            self.fleet.kill_and_restart()
            second += KILL_EVERY

    def _zookeeper(self) -> None:
        if self._at(6.0):
            leader = self.ensemble.leader()
            follower = next(m for m in self.ensemble.members if m is not leader)
            self._restart(follower)
        if self._at(22.0):
            self._restart(self.ensemble.leader())
            self.events.leader_restarts += 1

    def _restart(self, member) -> None:
        member.stop()
        self.stop.wait(ZK_DOWN_SECONDS)
        member.start(timeout=60)
        self.events.zookeeper_restarts += 1
        deadline = time.monotonic() + 60
        while True:      # the ensemble serves again once it has a leader
            try:
                self.ensemble.leader()
                return
            except ZooKeeperStartError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _pauser(self) -> None:
        if self._at(13.0):
            self.fleet.pause(PAUSE_SECONDS, self.stop)


def retrying(call, deadline: float):
    """Call ``call`` until it does not raise BoardUnavailable (ZooKeeper
    members restart during the run) or the deadline passes."""
    while True:
        try:
            return call()
        except BoardUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def inject_bad_input(zk_hosts: str, board: Board, events: ChaosEvents) -> dict[str, str]:
    """Garbage znodes under the board, a job with an unknown factory and an
    oversized post. Returns {what: path or job id}."""
    placed: dict[str, str] = {}
    client = zk_client(zk_hosts, timeout=10.0)
    client.start(timeout=30)
    try:
        queue = f"{ROOT}/queue/default"       # the default queue's buckets (layout 3)
        buckets = [b for b in map(Bucket.parse, client.get_children(queue))
                   if b is not None and b.priority == 0]
        bucket = f"{queue}/{max(buckets, key=lambda b: b.number).name}"
        garbage_id = str(uuid.uuid4())
        placed["garbage record"] = f"{ROOT}/jobs/{garbage_id[:2]}/{garbage_id}"
        client.create(placed["garbage record"], os.urandom(64))
        # A queue entry pointing at the garbage record: claimers must skip it.
        client.create(f"{bucket}/{garbage_id}-", b"", sequence=True)
        placed["garbage shard child"] = GARBAGE_SHARD_CHILD
        client.create(placed["garbage shard child"], os.urandom(200))
        placed["garbage queue entry"] = f"{bucket}/not-an-entry-{uuid.uuid4().hex[:8]}"
        client.create(placed["garbage queue entry"], os.urandom(32))
        placed["bad bucket"] = f"{queue}/garbage-bucket"
        client.create(placed["bad bucket"], os.urandom(16))
        client.create(f"{placed['bad bucket']}/{uuid.uuid4()}-0000000001", os.urandom(8))
    finally:
        client.stop()
        client.close()
    events.bad_inputs += list(placed)

    deadline = time.monotonic() + 60
    unknown = retrying(lambda: board.post(UNKNOWN_FACTORY, key="chaos-unknown-factory"),
                       deadline)
    placed["unknown factory"] = unknown.uuid
    events.bad_inputs.append("unknown factory")
    with pytest.raises(PayloadTooLarge) as too_large:
        board.post(FACTORY, args={"db": "x"}, store={"label": "too-big",
                                                     "blob": os.urandom(1_000_000)})
    assert too_large.value.size > too_large.value.limit
    assert "over the board's limit" in str(too_large.value)
    events.bad_inputs.append("oversized post (PayloadTooLarge)")
    return placed


@pytest.mark.timeout(900)
@pytest.mark.parametrize("logbook_url", ["postgresql"], indirect=True)   # tests/conftest.py
def test_fleet_survives_chaos(logbook_url, tmp_path):
    rng = random.Random(SEED)
    print(f"\nchaos seed {SEED} (CHAOS_SEED to repeat the schedule's choices)")
    began = time.monotonic()
    with Logbook(logbook_url, auto_upgrade=True) as logbook:
        create_tables(logbook_url)
        with ZooKeeperEnsemble(3) as ensemble:
            events = ChaosEvents()
            fleet = Fleet(ensemble.address, logbook_url, tmp_path, events, rng)
            chaos = Chaos(fleet, ensemble, events)
            board = Board.connect(ensemble.address, root=ROOT, timeout=30.0,
                                  session_timeout=10.0)
            try:
                report = run_chaos(board, logbook, logbook_url, ensemble, fleet, chaos,
                                   events, rng)
            finally:
                chaos.stop.set()
                fleet.stop_all()
                board.close()
    print(report.render())
    print(f"wall time {time.monotonic() - began:.0f}s; conductor logs in {tmp_path}")

    assert not chaos.errors, f"the chaos schedule failed: {chaos.errors!r}"
    assert report.lost == 0, report.problems
    assert report.jobs_complete == JOBS, report.jobs_states
    assert report.broken_job_state == JobState.FAILED.value
    assert "cannot be loaded" in report.broken_job_reason, report.broken_job_reason
    assert report.acked_reruns == 0, report.problems
    assert report.success_rewrites == 0, report.problems
    assert report.fenced_writes_landed == 0, report.problems
    assert report.stale_results == 0, report.problems
    assert report.same_holder_reruns == 0, report.problems
    assert report.result_missing == report.result_unfinished == 0, report.problems
    assert report.atoms_not_success == 0, report.problems
    assert report.board_result_mismatch == 0, report.problems
    assert report.owner_mismatch == 0, report.problems
    assert report.tokens_unknown == 0, "the chaos flow could not find its engine's token"
    # A traceback through jobboard code is a bug, whatever it is; and no
    # conductor log may hold a traceback at all: one from kazoo's threads can
    # be a watch that died, leaving its conductor deaf to new work.
    assert not report.traceback_sites, f"tracebacks through jobboard code: {report.traceback_sites}"
    assert report.log_counts["tracebacks"] == 0, "tracebacks in conductor logs:\n" + "\n".join(
        traceback_excerpts((path.name, path.read_text(errors="replace"))
                           for path in fleet.log_paths))
    assert not events.unexpected_exits, events.unexpected_exits
    # The chaos happened.
    assert events.conductors_killed >= 8 and events.pauses == 1
    assert events.zookeeper_restarts == 2 and events.leader_restarts == 1
    assert report.reclaims > 0 and report.log_counts["malformed_reported"] > 0
    # The admin's scan names every garbage znode.
    assert report.garbage_unreported == [], report.garbage_unreported


def wait_all(board: Board, jobs: dict[str, str]) -> None:
    """Wait (bounded) for every job to finish; a job still waiting at the
    deadline fails the test with its state."""
    deadline = time.monotonic() + FINISH_TIMEOUT
    for label, job_id in jobs.items():
        try:
            retrying(lambda: board.wait(job_id, timeout=max(0.1, deadline - time.monotonic())),
                     deadline)
        except WaitTimeout:
            job = board.get(job_id)
            pytest.fail(f"{label} ({job_id}) not finished after the chaos: "
                        f"{job.state.value}, held by {job.owner}")


def run_chaos(board: Board, logbook: Logbook, url: str, ensemble: ZooKeeperEnsemble,
              fleet: Fleet, chaos: Chaos, events: ChaosEvents, rng: random.Random):
    args = {"db": url, "min_ms": TASK_MS[0], "max_ms": TASK_MS[1]}
    labels = [f"job-{n:04d}" for n in range(JOBS)]
    early, late = labels[:JOBS - LATE_JOBS], labels[JOBS - LATE_JOBS:]
    posted = board.post_many([{"factory": FACTORY, "args": args, "store": {"label": label}}
                              for label in early])
    jobs = {label: job.uuid for label, job in zip(early, posted)}

    for slot in range(1, CONDUCTORS + 1):
        fleet.start(slot, f"c{slot}")
    chaos.start()

    # The late jobs: posted one by one through the chaos (an idempotency key
    # makes a post retried after a ZooKeeper restart safe).
    deadline = time.monotonic() + CHAOS_SECONDS + 60
    placed: dict[str, str] = {}
    for n, label in enumerate(late):
        if n == len(late) // 2:
            placed = inject_bad_input(ensemble.address, board, events)
        job = retrying(lambda: board.post(FACTORY, args=args, store={"label": label},
                                          key=label), deadline)
        jobs[label] = job.uuid
        chaos.stop.wait(CHAOS_SECONDS * 0.6 / max(1, len(late)))

    if not placed:
        placed = inject_bad_input(ensemble.address, board, events)
    # The schedule runs to its end, then every job must finish in time.
    chaos.join(CHAOS_SECONDS + 120)
    fleet.check_alive()
    wait_all(board, jobs)
    retrying(lambda: board.wait(placed["unknown factory"], timeout=30),
             time.monotonic() + 60)

    malformed = retrying(board.scan_malformed, time.monotonic() + 60)
    fleet.stop_all()
    report = collect(board, logbook, url, jobs, placed["unknown factory"],
                     fleet.log_texts(), events)
    report.garbage_unreported = [
        f"{what}: {placed[what]}" for what in GARBAGE if placed[what] not in malformed]
    return report
