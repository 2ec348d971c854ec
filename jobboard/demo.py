"""``jobboard demo``: a fleet on one machine, a conductor killed mid-flight,
its jobs reclaimed and resumed elsewhere, finished tasks not run again.

Needs nothing but this package and an installed ZooKeeper; everything lives
in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import click

from jobboard.engine import Task, flows
from jobboard.testing.flows import append_line

STEPS = ("reserve-ip", "create-volume", "boot-server", "attach-volume", "notify")
STEP_SECONDS = 0.4


class DemoStep(Task):
    """Pretends to work for a moment and writes down that it ran."""

    def __init__(self, name: str, journal: str) -> None:
        super().__init__(name, provides=f"{name}-id")
        self.journal = journal

    def execute(self, server: str) -> str:
        append_line(self.journal, f"{server} {self.name} {os.getpid()}")
        time.sleep(STEP_SECONDS)
        return f"{self.name}-{server}"


def provision(journal: str) -> flows.Flow:
    """The demo's flow factory (``jobboard.demo:provision``)."""
    return flows.linear("provision", *[DemoStep(name, journal) for name in STEPS])


def _say(message: str, **style) -> None:
    click.secho(message, **style)


def _conductor(name: str, env: dict[str, str], workdir: Path) -> subprocess.Popen:
    log = open(workdir / f"{name}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "jobboard", "conductor", "--name", name, "--allow",
         "jobboard.demo", "--concurrency", "2", "--session-timeout", "2", "--grace", "5"],
        env=env, stdout=log, stderr=subprocess.STDOUT)


def _journal(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        server, step, pid = line.split()
        rows.append((server, step, int(pid)))
    return rows


def run_demo(jobs: int = 6) -> int:
    """Run the demo; returns a process exit code."""
    from jobboard.board import Board
    from jobboard.testing.zookeeper import (ZooKeeperNotInstalled, ZooKeeperServer,
                                            find_classpath)

    try:
        find_classpath()
    except ZooKeeperNotInstalled as exc:
        _say(f"error: {exc}", fg="red", err=True)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="jobboard-demo-"))
    journal = workdir / "journal"
    logbook_url = f"sqlite:///{workdir}/logbook.db"
    _say(f"1. starting a local ZooKeeper and a SQLite logbook in {workdir}", bold=True)
    zk = ZooKeeperServer(data_dir=str(workdir / "zookeeper"), tick_time=200)
    env = {**os.environ, "JOBBOARD_ZK": zk.address, "JOBBOARD_ROOT": "/demo",
           "JOBBOARD_LOGBOOK": logbook_url}
    fleet: dict[str, subprocess.Popen] = {}
    try:
        zk.start()
        with Board.connect(zk.address, root="/demo") as board:
            _say("2. starting two conductors, alpha and beta", bold=True)
            for name in ("alpha", "beta"):
                fleet[name] = _conductor(name, env, workdir)
            _wait(lambda: len(board.conductors()) == 2, 30, "the conductors to register")
            _say(f"3. a producer posts {jobs} jobs of a {len(STEPS)}-task flow: "
                 + " -> ".join(STEPS), bold=True)
            posted = [board.post("jobboard.demo:provision", args={"journal": str(journal)},
                                 store={"server": f"web-{n}"}, name=f"provision web-{n}")
                      for n in range(1, jobs + 1)]
            alpha_pid = fleet["alpha"].pid
            _wait(lambda: sum(1 for _, step, pid in _journal(journal)
                              if pid == alpha_pid and step == STEPS[2]) >= 1,
                  60, "alpha to reach the middle of a flow")
            held = [c for c in board.claims() if c["owner"] == "alpha"]
            fleet["alpha"].send_signal(signal.SIGKILL)
            fleet["alpha"].wait(10)
            _say(f"4. kill -9 alpha while it holds {len(held)} job(s): "
                 + ", ".join(c["job_id"][:8] for c in held), fg="red", bold=True)
            _say("   its claims vanish with its ZooKeeper session (2 s); beta reclaims them")
            started = time.monotonic()
            outcomes = [board.wait(job.uuid, timeout=120) for job in posted]
            _say(f"5. all jobs finished {time.monotonic() - started:.1f}s after the kill",
                 bold=True)
            return _report(board, posted, outcomes, journal, alpha_pid, logbook_url)
    finally:
        for proc in fleet.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in fleet.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        zk.destroy()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def _report(board, posted, outcomes, journal: Path, alpha_pid: int, logbook_url: str) -> int:
    """Per job: who ran it and, for the reclaimed ones, which tasks the resume
    skipped. The flow is linear, so of the tasks alpha started all but the
    last had finished; only that last one (interrupted) may run again."""
    from jobboard.logbook import Logbook

    entries = _journal(journal)
    runs = Counter((server, step) for server, step, _ in entries)
    interrupted_reruns = finished_reruns = 0
    _say("")
    _say(f"{'job':10} {'server':7} {'state':9} {'claims':6}  what happened", bold=True)
    with Logbook(logbook_url) as logbook:
        for job, outcome in zip(posted, outcomes):
            record = board.get(job.uuid)
            server = job.store["server"]
            owners = [h.get("owner") for h in record.history
                      if h["event"] == "claimed" and h.get("owner")]
            by_alpha = [step for srv, step, pid in entries if srv == server and pid == alpha_pid]
            story = f"ran on {' then '.join(owners)}"
            if len(owners) > 1 and by_alpha:
                finished, interrupted = by_alpha[:-1], by_alpha[-1]
                finished_reruns += sum(1 for step in finished if runs[(server, step)] > 1)
                interrupted_reruns += runs[(server, interrupted)] - 1
                story += (f"; resume skipped {', '.join(finished) or 'nothing'}"
                          f", re-ran interrupted {interrupted}")
            detail = logbook.load_flow(job.uuid)
            attempts = sum(a.attempts for a in detail.atoms.values()) if detail else 0
            _say(f"{job.uuid[:8]:10} {server:7} {outcome.state.value:9} {record.claims:<6}  "
                 f"{story} ({attempts} task attempts)")
    complete = sum(1 for o in outcomes if o.ok)
    ok = complete == len(posted) and finished_reruns == 0
    _say("")
    _say(f"{complete}/{len(posted)} jobs COMPLETE; finished tasks run again: "
         f"{finished_reruns}; interrupted tasks run again: {interrupted_reruns}",
         fg="green" if ok else "red", bold=True)
    return 0 if ok else 1


def _wait(predicate, timeout: float, what: str) -> None:
    from jobboard.testing.waiting import wait_until

    if not wait_until(predicate, timeout, 0.05):
        raise click.ClickException(f"timed out waiting for {what}")
