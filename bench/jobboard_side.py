"""The jobboard half of the side-by-side benchmark (see :mod:`bench.compare`).

Each case runs in its own process against a ZooKeeper given by ``--zk`` and
writes its figures, as they come, to ``--out``:

    python -m bench.jobboard_side scale --zk 127.0.0.1:2181 --out s.json
    python -m bench.jobboard_side half|e2e|failover --zk ... --out ...

``watch`` is the helper process that plays a conductor watching the board.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
import time
from pathlib import Path

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
SEQ_CLAIMS = 500
PIPELINED_CLAIMS = 1000
WORKERS = 16
RSS_SECONDS = 30.0


def zk_requests(address: str) -> int:
    """Requests the server has received so far (4lw ``mntr``)."""
    port = int(address.rsplit(":", 1)[1])
    for line in four_letter(port, "mntr").splitlines():
        if line.startswith("zk_packets_received"):
            return int(line.split()[1])
    return 0


def waiting(board: Board) -> int:
    return sum(board.depth()["waiting"].values())


def fill_to(board: Board, level: int, chunk: int = 5000) -> dict:
    """Post batched (``post_many``) until ``level`` jobs wait; returns the rate."""
    missing = level - waiting(board)
    posted, started = 0, time.perf_counter()
    while posted < missing:
        count = min(chunk, missing - posted)
        board.post_many([{"factory": FACTORY} for _ in range(count)])
        posted += count
    elapsed = time.perf_counter() - started
    return {"posted": posted, "per_s": round(posted / elapsed) if posted else None}


def start_watcher(zk: str, root: str, workdir: Path) -> object:
    ready = workdir / f"watch-ready-{time.monotonic_ns()}"
    process = spawn([PYTHON, "-m", "bench.jobboard_side", "watch", "--zk", zk,
                     "--root", root, "--ready", str(ready)], workdir / "watch.log")
    if not wait_until(ready.exists, 60):
        stop(process)
        raise RuntimeError("the watcher process did not start")
    return process


def conductor_command(zk: str, root: str, logbook: str, name: str, *,
                      concurrency: int = 4, session_timeout: float = 10.0) -> list[str]:
    return [PYTHON, "-m", "jobboard", "conductor", "--zk", zk, "--root", root,
            "--logbook", logbook, "--allow", "jobboard.testing", "--name", name,
            "--concurrency", str(concurrency), "--session-timeout", str(session_timeout),
            "--grace", "0"]


def registered(board: Board, name: str) -> bool:
    return any(c["name"] == name for c in board.conductors())


# -- cases --------------------------------------------------------------------------


def case_watch(args: argparse.Namespace) -> None:
    """A conductor at capacity: connected, its claimer's watches set, not
    claiming. Runs until SIGTERM."""
    board = Board.connect(args.zk, root=args.root)
    claimer = Claimer(board, "watcher").start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    Path(args.ready).write_text("ready")
    while not stopping.is_set():
        claimer.wait_for_work(0.5)
    claimer.stop()
    board.close()


def case_scale(args: argparse.Namespace, out: Results) -> None:
    """Posts/s (sync, batched) while a conductor watches, then claim latency
    and claim+consume/s, at each backlog; conductor RSS at the largest."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-jb-"))
    root = "/bench-scale"
    levels = [int(x) for x in args.levels.split(",")]
    rows = []
    with Board.connect(args.zk, root=root) as board:
        for level in [0, *levels]:
            row: dict = {"backlog": level}
            watcher = start_watcher(args.zk, root, workdir)
            try:
                if level:
                    row["fill"] = fill_to(board, level)
                row["sync_posts_per_s"] = round(sync_posts(board, SYNC_POSTS), 1)
                started = time.perf_counter()
                board.post_many([{"factory": FACTORY} for _ in range(2000)])
                row["batched_posts_per_s"] = round(2000 / (time.perf_counter() - started))
            finally:
                stop(watcher)
            if level:
                fill_to(board, level)
                row["sequential"] = claim_consume_sequential(board, SEQ_CLAIMS)
                fill_to(board, level)
                row["pipelined"] = claim_consume_pipelined(board, PIPELINED_CLAIMS,
                                                           workers=WORKERS)
            rows.append(row)
            out.set("levels", rows)
        biggest = levels[-1]
        fill_to(board, biggest)
        out.set("rss", conductor_rss(args.zk, root, workdir, board, biggest))


def conductor_rss(zk: str, root: str, workdir: Path, board: Board, level: int) -> dict:
    """Peak RSS (VmHWM) of a conductor process claiming and running jobs from
    a board with ``level`` waiting jobs, after RSS_SECONDS."""
    before = waiting(board)
    logbook = f"sqlite:///{workdir}/rss-logbook.db"
    process = spawn(conductor_command(zk, root, logbook, "rss-conductor"),
                    workdir / "rss-conductor.log")
    try:
        wait_until(lambda: registered(board, "rss-conductor"), 60, 0.1)
        time.sleep(RSS_SECONDS)
        memory = memory_mb(process.pid)
    finally:
        stop(process, timeout=20)
    done = before - waiting(board)
    return {"waiting": before, "seconds": RSS_SECONDS, "jobs_run": done, **memory}


def case_half(args: argparse.Namespace, out: Results) -> None:
    """Claim latency while another conductor holds half of the jobs."""
    rows = []
    for level in (int(x) for x in args.levels.split(",")):
        root = f"/bench-half-{level}"
        with Board.connect(args.zk, root=root) as board, \
                Board.connect(args.zk, root=root) as other:
            fill_to(board, level)
            holder = Claimer(other, "holder").start()
            held = 0
            while held < level // 2:
                held += len(holder.claim_batch(min(64, level // 2 - held)))
            count = min(args.claims, level // 2)
            before = zk_requests(args.zk)
            result = claim_consume_sequential(board, count, "bench-half")
            used = zk_requests(args.zk) - before
            result["zk_requests_per_claim_consume"] = round(used / max(1, result["claims"]), 1)
            rows.append({"backlog": level, "held": held, **result})
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
                wait_until(lambda name=name: registered(board, name), 60, 0.05)
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
            for name in processes:
                if not wait_until(lambda name=name: registered(board, name), 60, 0.05):
                    raise RuntimeError(f"conductor {name} did not register")
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
    parser.add_argument("--claims", type=int, default=200)
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
