"""The jobboard half of the side-by-side benchmark (see :mod:`bench.compare`).

Each case runs in its own process against a ZooKeeper given by ``--zk`` and
writes its figures, as they come, to ``--out``:

    python -m bench.jobboard_side scale --zk 127.0.0.1:2181 --out s.json
    python -m bench.jobboard_side half|e2e|failover --zk ... --out ...

Backlogs: every measurement labelled "N waiting" starts with exactly N jobs
waiting. Before each one the board is filled (``post_many``) or drained
(claim + consume) to that count, the count is read back from the board and
the case fails if it is not N; the count read back before and after the
measurement is recorded next to it (a measurement moves it by the jobs it
posts or claims).

"Watching" means the same on both sides: a conductor at capacity. It has
claimed one job and holds it (capacity 1, so it takes nothing more), and it
keeps every watch a conductor keeps while it cannot take another job, so it
would claim the moment a slot freed. Here that is the ``watch`` helper
process: a started :class:`~jobboard.board.Claimer` (child watches on the
conductors, the claim set and the delayed index) whose claim went through the
queue, so the plan set its watch on the queue's bucket list (and on any empty
bucket that outranks the one it worked); like ``Conductor._loop`` at
capacity, it does not claim again, so a watch that fires wakes it and nothing
more. On TaskFlow's side (:mod:`bench.taskflow_side`) it is a connected
``ZookeeperJobBoard`` that claimed one job and holds its lock: the board keeps
its children watch on the jobs directory and re-lists on every change, busy or
idle.
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import threading
import time
from pathlib import Path
from subprocess import Popen
from typing import Callable

from bench._common import (
    PYTHON,
    Results,
    failover_row,
    kill_holder_and_time_resume,
    memory_mb,
    spawn,
    stop,
)
from bench.board import FACTORY, claim_consume_pipelined, claim_consume_sequential, sync_posts
from jobboard.board import Board, Claimer
from jobboard.testing.waiting import wait_until
from jobboard.testing.zookeeper import four_letter

SYNC_POSTS = 300
BATCHED_POSTS = 2000
SEQ_CLAIMS = 500
PIPELINED_CLAIMS = 1000
WORKERS = 16
RSS_SECONDS = 30.0
WATCHER = "watcher"


class LevelError(RuntimeError):
    """The board did not hold the backlog a measurement is labelled with."""


def zk_requests(address: str) -> int:
    """Requests the server has received so far (4lw ``mntr``)."""
    port = int(address.rsplit(":", 1)[1])
    for line in four_letter(port, "mntr").splitlines():
        if line.startswith("zk_packets_received"):
            return int(line.split()[1])
    return 0


def waiting(board: Board) -> int:
    return sum(board.depth()["waiting"].values())


def set_level(board: Board, level: int, chunk: int = 5000) -> dict:
    """Post (``post_many``) or drain (claim + consume, oldest first) until
    exactly ``level`` jobs wait.

    Raises:
        LevelError: the board does not hold ``level`` waiting jobs afterwards.
    """
    now = waiting(board)
    done = {"posted": 0, "drained": 0}
    started = time.perf_counter()
    if now < level:
        while done["posted"] < level - now:
            count = min(chunk, level - now - done["posted"])
            board.post_many([{"factory": FACTORY} for _ in range(count)])
            done["posted"] += count
    elif now > level:
        done["drained"] = claim_consume_pipelined(board, now - level, "bench-drain",
                                                  workers=WORKERS)["jobs"]
    elapsed = time.perf_counter() - started
    got = waiting(board)
    if got != level:
        raise LevelError(f"wanted {level} waiting jobs, the board holds {got}")
    moved = done["posted"] or done["drained"]
    return {**done, "per_s": round(moved / elapsed) if moved else None}


def at_level(board: Board, level: int, measure: Callable[[], dict]) -> dict:
    """Set the backlog to exactly ``level``, then measure; the waiting count
    read back before and after is recorded with the figures."""
    set_level(board, level)
    before = waiting(board)
    result = measure()
    return {**result, "waiting_before": before, "waiting_after": waiting(board)}


def start_watcher(zk: str, root: str, workdir: Path, board: Board) -> tuple[Popen, dict]:
    """Start the ``watch`` helper (a conductor at capacity, see the module
    docstring) and wait until it holds its job; posts the job when none
    waits. Returns the process and what it reported (its session id, the job
    it holds)."""
    if not waiting(board):
        board.post(FACTORY)
    ready = workdir / f"watch-ready-{time.monotonic_ns()}"
    process = spawn([PYTHON, "-m", "bench.jobboard_side", "watch", "--zk", zk,
                     "--root", root, "--ready", str(ready)], workdir / "watch.log")
    if not wait_until(ready.exists, 60, 0.02):
        stop(process)
        raise RuntimeError("the watcher process did not start")
    return process, json.loads(ready.read_text())


def conductor_command(zk: str, root: str, logbook: str, name: str, *,
                      concurrency: int = 4, session_timeout: float = 10.0) -> list[str]:
    return [PYTHON, "-m", "jobboard", "conductor", "--zk", zk, "--root", root,
            "--logbook", logbook, "--allow", "jobboard.testing", "--name", name,
            "--concurrency", str(concurrency), "--session-timeout", str(session_timeout),
            "--grace", "0"]


def registered(board: Board, name: str) -> bool:
    return any(c["name"] == name for c in board.conductors())


def wait_registered(board: Board, name: str, process: Popen,
                    timeout: float = 60.0) -> None:
    """Wait until the conductor process ``name`` has registered.

    Raises:
        RuntimeError: it exited first, or did not register within ``timeout``.
    """
    if not wait_until(lambda: registered(board, name) or process.poll() is not None,
                      timeout, 0.05) or process.poll() is not None:
        raise RuntimeError(f"conductor {name} did not register (exit code "
                           f"{process.poll()}; see its log)")


# -- cases --------------------------------------------------------------------------


def case_watch(args: argparse.Namespace) -> None:
    """A conductor at capacity 1 (see the module docstring): claim one job
    through the queue, hold it, keep the claimer's watches; give the job back
    on SIGTERM. Reports its session id, the job and how often a watch woke it
    in the ``--ready`` file (rewritten on every wake)."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    board = Board.connect(args.zk, root=args.root)
    claimer = Claimer(board, WATCHER).start()
    held = None
    while held is None and not stopping.is_set():
        held = claimer.claim_next()
        if held is None:
            claimer.wait_for_work(0.5)
    claimer.wait_for_work(0)     # what woke it before it held its job
    report = {"session_id": board.session_id, "held": held and held.uuid, "wakes": 0}

    def write() -> None:
        tmp = Path(f"{args.ready}.tmp")
        tmp.write_text(json.dumps(report))
        tmp.replace(args.ready)

    write()
    # At capacity, as Conductor._loop: a watch that fires wakes the claimer
    # and nothing claims until a slot frees (waiting on the claimer's event
    # costs no ZooKeeper request; it only lets the wakes be counted).
    while not stopping.is_set():
        if claimer.wait_for_work(0.5) and not stopping.is_set():
            report["wakes"] += 1
            write()
    if held is not None:
        board.abandon(held, WATCHER)
    claimer.stop()
    board.close()


def case_scale(args: argparse.Namespace, out: Results) -> None:
    """At each backlog (exactly, see the module docstring): posts/s (sync,
    batched) while a conductor watches, then claim latency and
    claim+consume/s; conductor RSS at the largest."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-jb-"))
    root = "/bench-scale"
    levels = [int(x) for x in args.levels.split(",")]
    rows = []
    with Board.connect(args.zk, root=root) as board:
        for level in [0, *levels]:
            row: dict = {"backlog": level}
            watcher, seen = start_watcher(args.zk, root, workdir, board)
            row["watcher"] = seen
            try:
                row["sync_posts"] = at_level(board, level, lambda: {
                    "posts": args.sync_posts,
                    "per_s": round(sync_posts(board, args.sync_posts), 1)})
                row["batched_posts"] = at_level(board, level, lambda: {
                    "posts": args.batched_posts,
                    "per_s": batched_posts(board, args.batched_posts)})
            finally:
                stop(watcher)
            if level:
                # At most half the backlog, so the claims run near the label.
                count = max(1, min(args.seq_claims, level // 2))
                row["sequential"] = at_level(
                    board, level, lambda: claim_consume_sequential(board, count))
                count = max(1, min(args.pipelined_claims, level // 2))
                row["pipelined"] = at_level(
                    board, level, lambda: claim_consume_pipelined(board, count,
                                                                  workers=WORKERS))
            rows.append(row)
            out.set("levels", rows)
        set_level(board, levels[-1])
        out.set("rss", conductor_rss(args.zk, root, workdir, board, args.rss_seconds))


def batched_posts(board: Board, count: int) -> int:
    started = time.perf_counter()
    board.post_many([{"factory": FACTORY} for _ in range(count)])
    return round(count / (time.perf_counter() - started))


def conductor_rss(zk: str, root: str, workdir: Path, board: Board, seconds: float) -> dict:
    """Peak RSS (VmHWM) of a conductor process claiming and running jobs from
    the board (its backlog set by the caller), after ``seconds``."""
    before = waiting(board)
    logbook = f"sqlite:///{workdir}/rss-logbook.db"
    process = spawn(conductor_command(zk, root, logbook, "rss-conductor"),
                    workdir / "rss-conductor.log")
    try:
        wait_registered(board, "rss-conductor", process)
        time.sleep(seconds)     # the measurement is "RSS after this long"
        memory = memory_mb(process.pid)
    finally:
        stop(process, timeout=20)
    done = before - waiting(board)
    return {"waiting": before, "seconds": seconds, "jobs_run": done, **memory}


def case_half(args: argparse.Namespace, out: Results) -> None:
    """Claim latency on a board of exactly ``level`` jobs whose older half
    another conductor holds (so half of them wait)."""
    rows = []
    for level in (int(x) for x in args.levels.split(",")):
        root = f"/bench-half-{level}"
        with Board.connect(args.zk, root=root) as board, \
                Board.connect(args.zk, root=root) as other:
            set_level(board, level)
            holder = Claimer(other, "holder").start()
            held = 0
            while held < level // 2:
                held += len(holder.claim_batch(min(64, level // 2 - held)))
            before_waiting = waiting(board)
            if before_waiting != level - held:
                raise LevelError(f"{level} jobs with {held} held should leave "
                                 f"{level - held} waiting, not {before_waiting}")
            count = max(1, min(args.claims, level // 2))
            before = zk_requests(args.zk)
            result = claim_consume_sequential(board, count, "bench-half")
            used = zk_requests(args.zk) - before
            result["zk_requests_per_claim_consume"] = round(used / max(1, result["claims"]), 1)
            rows.append({"backlog": level, "held": held, "waiting_before": before_waiting,
                         "waiting_after": waiting(board), **result})
            out.set("levels", rows)
            holder.stop()


def case_e2e(args: argparse.Namespace, out: Results) -> None:
    """A conductor process runs ``n`` one-task no-op flows with a SQLite
    logbook; time from its registration to the last job consumed."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-jb-e2e-"))
    rows = []
    for concurrency in (int(x) for x in args.concurrency.split(",")):
        root = f"/bench-e2e-{concurrency}"
        logbook = f"sqlite:///{workdir}/logbook-{concurrency}.db"
        with Board.connect(args.zk, root=root) as board:
            jobs = board.post_many([{"factory": FACTORY} for _ in range(args.n)])
            name = f"e2e-{concurrency}"
            process = spawn(conductor_command(args.zk, root, logbook, name,
                                              concurrency=concurrency),
                            workdir / f"{name}.log")
            try:
                wait_registered(board, name, process)
                started = time.monotonic()

                def finished() -> bool:
                    depth = board.depth()
                    return not sum(depth["waiting"].values()) and not depth["claimed"]

                done = wait_until(finished, args.budget, 0.05)
                elapsed = time.monotonic() - started
            finally:
                stop(process, timeout=20)
            complete = sum(1 for job in board.jobs() if job.state.value == "COMPLETE")
            rows.append({"concurrency": concurrency, "jobs": len(jobs), "complete": complete,
                         "seconds": round(elapsed, 2), "finished": bool(done),
                         "jobs_per_s": round(complete / elapsed, 1)})
            out.set("runs", rows)


def case_failover(args: argparse.Namespace, out: Results) -> None:
    """SIGKILL the conductor holding a job mid-flow (step2 of five); time
    until the other conductor has started step2 again."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-jb-fail-"))
    rows = []
    for timeout in (float(x) for x in args.sessions.split(",")):
        rows.append(failover_once(args.zk, workdir, timeout))
        out.set("runs", rows)


def failover_once(zk: str, workdir: Path, session_timeout: float) -> dict:
    tag = f"{session_timeout:g}"
    root = f"/bench-failover-{tag}"
    journal = str(workdir / f"journal-{tag}")
    gate = str(workdir / f"gate-{tag}")
    logbook = f"sqlite:///{workdir}/logbook-{tag}.db"
    processes = {}
    with Board.connect(zk, root=root) as board:
        try:
            for name in ("fo-a", "fo-b"):
                processes[name] = spawn(conductor_command(zk, root, logbook, name,
                                                          concurrency=1,
                                                          session_timeout=session_timeout),
                                        workdir / f"{name}-{tag}.log")
            for name, process in processes.items():
                wait_registered(board, name, process)
            job = board.post("jobboard.testing.flows:five_steps",
                             args={"journal": journal, "hold_at": "step2", "gate": gate})
            resumed_after = kill_holder_and_time_resume(journal, gate, session_timeout)
            outcome = board.wait(job.uuid, timeout=60)
            return failover_row(session_timeout, resumed_after, journal,
                                outcome.state.value if outcome else None)
        finally:
            for process in processes.values():
                stop(process, timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["watch", "scale", "half", "e2e", "failover"])
    parser.add_argument("--zk", required=True)
    parser.add_argument("--root", default="/bench")
    parser.add_argument("--ready")
    parser.add_argument("--out")
    parser.add_argument("--levels", default="1000,10000,100000")
    parser.add_argument("--claims", type=int, default=200, help="claims of the half case")
    parser.add_argument("--sync-posts", type=int, default=SYNC_POSTS)
    parser.add_argument("--batched-posts", type=int, default=BATCHED_POSTS)
    parser.add_argument("--seq-claims", type=int, default=SEQ_CLAIMS)
    parser.add_argument("--pipelined-claims", type=int, default=PIPELINED_CLAIMS)
    parser.add_argument("--rss-seconds", type=float, default=RSS_SECONDS)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--sessions", default="4,10")
    args = parser.parse_args()
    if args.case == "watch":
        case_watch(args)
        return
    out = Results(args.out)
    out.set("status", "running")
    {"scale": case_scale, "half": case_half, "e2e": case_e2e,
     "failover": case_failover}[args.case](args, out)
    out.set("status", "done")


if __name__ == "__main__":
    main()
