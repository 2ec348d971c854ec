"""The OpenStack TaskFlow half of the side-by-side benchmark (see
:mod:`bench.compare`). Runs only in the benchmark's own virtualenv
(``.venv-bench``), where ``taskflow[zookeeper,database]`` is installed.

Each case runs in its own process and writes its figures, as they come, to
``--out``; cases that TaskFlow cannot finish stop at their budget and say how
far they got:

    python -m bench.taskflow_side posts|claims|half|e2e|failover --zk ... --out ...

``watch`` and ``conductor`` are helper processes (a conductor at capacity
that watches the board, see below; a ``blocking`` conductor). Only
TaskFlow's public API is used, except where a board is pre-filled: those
jobs are written with TaskFlow's own posting format
(``taskflow.jobs.base.format_posting``) by pipelined kazoo creates, because
``ZookeeperJobBoard.post`` cannot reach 10,000 waiting jobs in bounded time
(that is measured by the ``posts`` case).

Backlogs, as on jobboard's side: a figure labelled "N waiting" starts with
exactly N unclaimed jobs, counted from the board (job znodes less their
``.lock`` claims) and recorded with the figure; the case fails where the
count is not N.

"Watching" means the same on both sides (see :mod:`bench.jobboard_side`): a
conductor at capacity 1. Here the ``watch`` helper is a connected
``ZookeeperJobBoard`` (what every TaskFlow conductor holds: a children watch
on the jobs directory, re-listed on every change, and a read of every new
job) that has claimed one job and holds its lock.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import tempfile
import threading
import time
from pathlib import Path

from kazoo.client import KazooClient
from oslo_serialization import jsonutils
from oslo_utils import uuidutils
from taskflow import engines
from taskflow import exceptions as tf_exc
from taskflow.conductors import backends as conductor_backends
from taskflow.jobs import backends as job_backends
from taskflow.jobs import base as jobs_base
from taskflow.persistence import backends as persistence_backends
from taskflow.persistence import models

from bench import taskflow_flows
from bench._common import (
    PYTHON,
    Budget,
    Results,
    failover_row,
    kill_holder_and_time_resume,
    latency_summary,
    memory_mb,
    spawn,
    stop,
)
from bench.jobboard_side import zk_requests
from jobboard.testing.waiting import wait_until

COLLAPSED_PER_S = 5.0     # stop posting below this rate
SEQ_CLAIMS = 500
RSS_SECONDS = 30.0
LEVELS = "0,1000,10000,100000"   # backlogs where a window of the posts curve starts
WINDOW_POSTS = 100


class LevelError(RuntimeError):
    """The board did not hold the backlog a measurement is labelled with."""


def board_conf(zk: str, path: str, session_timeout: float = 10.0) -> dict:
    return {"board": "zookeeper", "hosts": zk, "path": path, "timeout": session_timeout}


def connect_board(name: str, zk: str, path: str, persistence=None,
                  session_timeout: float = 10.0):
    board = job_backends.fetch(name, board_conf(zk, path, session_timeout),
                               persistence=persistence)
    board.connect()
    return board


def open_persistence(db_path: str):
    backend = persistence_backends.fetch(f"sqlite:///{db_path}")
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend


def job_children(client: KazooClient, path: str) -> list[str]:
    return [c for c in client.get_children(path)
            if c.startswith("job") and not c.endswith(".lock")]


def waiting_jobs(client: KazooClient, path: str) -> int:
    """Jobs on the board that nobody holds (job znodes less ``.lock`` claims)."""
    children = client.get_children(path)
    jobs = {c for c in children if c.startswith("job") and not c.endswith(".lock")}
    return len(jobs - {c[:-len(".lock")] for c in children if c.endswith(".lock")})


def check_level(client: KazooClient, path: str, level: int) -> int:
    """The waiting count, which must be ``level``.

    Raises:
        LevelError: it is not.
    """
    got = waiting_jobs(client, path)
    if got != level:
        raise LevelError(f"wanted {level} waiting jobs at {path}, the board holds {got}")
    return got


def raw_fill(zk: str, path: str, count: int, book=None) -> dict:
    """``count`` jobs in TaskFlow's posting format, pipelined creates."""
    client = KazooClient(hosts=zk)
    client.start(30)
    try:
        client.ensure_path(path)
        started = time.perf_counter()
        for start in range(0, count, 256):
            pending = []
            for _ in range(min(256, count - start)):
                posting = jobs_base.format_posting(uuidutils.generate_uuid(), "noop",
                                                   book=book, details={"store": {}})
                pending.append(client.create_async(
                    f"{path}/job", jsonutils.dump_as_bytes(posting), sequence=True))
            for result in pending:
                result.get(timeout=60)
        elapsed = time.perf_counter() - started
    finally:
        client.stop()
        client.close()
    return {"posted": count, "seconds": round(elapsed, 1), "per_s": round(count / elapsed)}


def start_helper(args: list[str], workdir: Path, name: str, timeout: float = 60):
    ready = workdir / f"{name}-ready"
    process = spawn([PYTHON, "-m", "bench.taskflow_side", *args, "--ready", str(ready)],
                    workdir / f"{name}.log")
    if not wait_until(ready.exists, timeout, 0.02):
        stop(process)
        return None
    return process


def post_flow_job(board, persistence, name: str, factory, kwargs: dict):
    """Post a job a conductor can run: a logbook with one flow detail that
    names the flow factory (``engines.save_factory_details``)."""
    book = models.LogBook(name)
    flow_detail = models.FlowDetail(name, uuidutils.generate_uuid())
    book.add(flow_detail)
    with contextlib.closing(persistence.get_connection()) as conn:
        conn.save_logbook(book)
    engines.save_factory_details(flow_detail, factory, [], kwargs, backend=persistence)
    return board.post(name, book=book, details={"store": {}})


# -- helper processes ---------------------------------------------------------------


def case_watch(args: argparse.Namespace) -> None:
    """A conductor at capacity 1 (see the module docstring): a connected
    board that claimed one job and holds it; the job is given back on
    SIGTERM. Reports the job in the ``--ready`` file."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    board = connect_board("watcher", args.zk, args.path)
    held = None
    deadline = time.monotonic() + 60
    while held is None and not stopping.is_set() and time.monotonic() < deadline:
        for job in board.iterjobs(only_unclaimed=True):
            try:
                board.claim(job, "watcher")
            except (tf_exc.UnclaimableJob, tf_exc.NotFound):
                continue
            held = job
            break
        else:
            stopping.wait(0.05)    # the listing is still arriving
    tmp = Path(f"{args.ready}.tmp")
    tmp.write_text(jsonutils.dumps({"held": held and held.uuid}))
    tmp.replace(args.ready)
    while not stopping.wait(0.5):
        pass
    if held is not None:
        board.abandon(held, "watcher")
    board.close()


def case_conductor(args: argparse.Namespace) -> None:
    """A ``blocking`` conductor with a SQLite persistence backend."""
    persistence = open_persistence(args.db)
    board = connect_board(args.name, args.zk, args.path, persistence, args.session_timeout)
    conductor = conductor_backends.fetch("blocking", args.name, board,
                                         persistence=persistence)
    signal.signal(signal.SIGTERM, lambda *_: conductor.stop())
    Path(args.ready).write_text("ready")
    conductor.run()


# -- cases ----------------------------------------------------------------------------


def case_posts(args: argparse.Namespace, out: Results) -> None:
    """``ZookeeperJobBoard.post`` one at a time while a conductor watches
    (holding one job of its own), until the rate collapses or the budget is
    spent. Windows of WINDOW_POSTS posts; a window starts exactly at each of
    ``--levels``, where the waiting count is read back and checked."""
    levels = [int(x) for x in args.levels.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-tf-"))
    path = "/taskflow/posts"
    budget = Budget(args.budget)
    counter = KazooClient(hosts=args.zk)
    counter.start(30)
    counter.ensure_path(path)
    board = connect_board("poster", args.zk, path)
    board.post("noop", details={"store": {}})      # the watcher's own job
    watcher = start_helper(["watch", "--zk", args.zk, "--path", path], workdir, "watch")
    if watcher is None or not jsonutils.loads((workdir / "watch-ready").read_text())["held"]:
        stop(watcher)
        raise RuntimeError("the TaskFlow watcher did not claim its job")
    curve, measured, posted, stopped = [], {}, 0, "budget"
    try:
        check_level(counter, path, 0)
        while not budget.over() and posted < args.max:
            if posted in levels:
                measured[str(posted)] = check_level(counter, path, posted)
                out.set("measured_waiting", measured)
            next_level = min((level for level in levels if level > posted), default=args.max)
            window_start, start_count = time.perf_counter(), posted
            while (posted - start_count < WINDOW_POSTS and posted < next_level
                   and time.perf_counter() - window_start < 3):
                board.post("noop", details={"store": {}})
                posted += 1
            rate = (posted - start_count) / (time.perf_counter() - window_start)
            curve.append([start_count, round(rate, 1)])
            out.set("curve", curve)
            out.set("backlog_reached", posted)
            if rate < COLLAPSED_PER_S:
                stopped = f"rate under {COLLAPSED_PER_S:g}/s"
                break
        else:
            if posted >= args.max:
                stopped = "reached max"
        out.set("stopped", stopped)
        out.set("seconds", round(args.budget - budget.left(), 1))
    finally:
        stop(watcher)
        board.close()
        counter.stop()
        counter.close()


def sequential_claims(board, count: int, budget: Budget, who: str = "claimer",
                      fresh_pass: bool = False) -> dict:
    """Iterate the board, claim, consume. One pass over the listing serves
    many claims (the ``blocking`` conductor); with ``fresh_pass`` every claim
    starts a new pass from the oldest job (a conductor whose capacity just
    freed one slot: ``max_simultaneous_jobs``)."""
    latencies, conflicts = [], 0
    mark = time.perf_counter()
    started = mark
    while len(latencies) < count and not budget.over():
        found = False
        for job in board.iterjobs(only_unclaimed=True):
            found = True
            try:
                board.claim(job, who)
            except (tf_exc.UnclaimableJob, tf_exc.NotFound):
                conflicts += 1
                continue
            now = time.perf_counter()
            latencies.append(now - mark)
            board.consume(job, who)
            mark = time.perf_counter()
            if fresh_pass or len(latencies) >= count or budget.over():
                break
        if not found:
            time.sleep(0.05)   # the listing is still arriving
    elapsed = time.perf_counter() - started
    return {**latency_summary(latencies), "conflicts": conflicts,
            "jobs_per_s": round(len(latencies) / elapsed, 2) if elapsed else None,
            "finished": len(latencies) >= count, "target": count,
            "budget_s": budget.seconds}


def case_claims(args: argparse.Namespace, out: Results) -> None:
    """Claim + consume latency at one backlog (a fresh board); at the
    largest backlog, first the peak RSS of a blocking conductor on it."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-tf-claims-"))
    level = args.level
    path = f"/taskflow/claims-{level}"
    book = None
    if args.rss:
        persistence = open_persistence(str(workdir / "rss.db"))
        book = models.LogBook("rss")
        flow_detail = models.FlowDetail("rss", uuidutils.generate_uuid())
        book.add(flow_detail)
        with contextlib.closing(persistence.get_connection()) as conn:
            conn.save_logbook(book)
        engines.save_factory_details(flow_detail, taskflow_flows.noop_flow, [], {},
                                     backend=persistence)
    out.set("backlog", level)
    out.set("fill", raw_fill(args.zk, path, level, book=book))
    counter = KazooClient(hosts=args.zk)
    counter.start(30)
    check_level(counter, path, level)
    if args.rss:
        out.set("rss", conductor_rss(args.zk, path, workdir, args.rss_seconds))
        missing = level - waiting_jobs(counter, path)
        if missing > 0:    # what the conductor ran, so that the claims start at the level
            out.set("refill", raw_fill(args.zk, path, missing, book=book))
    out.set("phase", "connecting the claimer's board")
    budget = Budget(args.budget)
    out.set("deadline_epoch", time.time() + args.budget)
    started = time.perf_counter()
    board = connect_board("claimer", args.zk, path)
    out.set("connect_s", round(time.perf_counter() - started, 2))
    out.set("phase", "claiming")
    before = check_level(counter, path, level)
    result = sequential_claims(board, min(args.seq_claims, max(1, level // 2)), budget)
    out.set("sequential", {**result, "waiting_before": before,
                           "waiting_after": waiting_jobs(counter, path)})
    out.set("phase", "done")
    board.close()
    counter.stop()
    counter.close()


def conductor_rss(zk: str, path: str, workdir: Path, seconds: float) -> dict:
    client = KazooClient(hosts=zk)
    client.start(30)
    before = len(job_children(client, path))
    process = spawn([PYTHON, "-m", "bench.taskflow_side", "conductor", "--zk", zk,
                     "--path", path, "--db", str(workdir / "rss.db"), "--name", "rss",
                     "--ready", str(workdir / "rss-ready")], workdir / "rss-conductor.log")
    try:
        started = time.monotonic()
        ready = wait_until((workdir / "rss-ready").exists, 2 * seconds, 0.05)
        ready_after = time.monotonic() - started
        if ready:
            time.sleep(seconds)     # the measurement is "RSS after this long"
        memory = memory_mb(process.pid)
    finally:
        stop(process, timeout=20)
    done = before - len(job_children(client, path))
    client.stop()
    client.close()
    return {"waiting": before, "seconds": seconds, "connected": bool(ready),
            "connect_s": round(ready_after, 1), "jobs_run": done, **memory}


def case_half(args: argparse.Namespace, out: Results) -> None:
    """Claim latency while another conductor holds the older half of the
    jobs (its claims: TaskFlow's ephemeral ``.lock`` znodes, same payload)."""
    level = args.level
    path = f"/taskflow/half-{level}"
    out.set("backlog", level)
    out.set("fill", raw_fill(args.zk, path, level))
    holder = KazooClient(hosts=args.zk)
    holder.start(30)
    try:
        names = sorted(job_children(holder, path))[: level // 2]
        lock = jsonutils.dump_as_bytes({"owner": "holder"})
        for start in range(0, len(names), 256):
            pending = [holder.create_async(f"{path}/{name}.lock", lock, ephemeral=True)
                       for name in names[start:start + 256]]
            for result in pending:
                result.get(timeout=60)
        out.set("held", len(names))
        waiting_before = check_level(holder, path, level - len(names))
        budget = Budget(args.budget)
        out.set("deadline_epoch", time.time() + args.budget)
        board = connect_board("claimer", args.zk, path)
        before = zk_requests(args.zk)
        result = sequential_claims(board, args.claims, budget, fresh_pass=True)
        used = zk_requests(args.zk) - before
        result["zk_requests_per_claim_consume"] = round(used / max(1, result["claims"]), 1)
        out.set("sequential", {**result, "waiting_before": waiting_before,
                               "waiting_after": waiting_jobs(holder, path)})
        board.close()
    finally:
        holder.stop()
        holder.close()


def case_e2e(args: argparse.Namespace, out: Results) -> None:
    """A blocking conductor process runs ``n`` one-task no-op flows (SQLite
    persistence); time from its registration to the last job consumed."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-tf-e2e-"))
    path = "/taskflow/e2e"
    db = str(workdir / "persistence.db")
    persistence = open_persistence(db)
    board = connect_board("poster", args.zk, path, persistence)
    started = time.perf_counter()
    for n in range(args.n):
        post_flow_job(board, persistence, f"noop-{n}", taskflow_flows.noop_flow, {})
    out.set("post_s", round(time.perf_counter() - started, 2))
    client = board._client  # the board's own kazoo client, for counting only
    process = start_helper(["conductor", "--zk", args.zk, "--path", path, "--db", db,
                            "--name", "e2e"], workdir, "e2e-conductor")
    try:
        entities = f"{board.entity_path}/conductor"   # names are "<name>@host:pid"
        wait_until(lambda: client.exists(entities) and any(
            c.startswith("e2e@") for c in client.get_children(entities)), 60, 0.02)
        started = time.monotonic()
        done = wait_until(lambda: not job_children(client, path), args.budget, 0.05)
        elapsed = time.monotonic() - started
        left = len(job_children(client, path))
    finally:
        stop(process, timeout=20)
    complete = args.n - left
    out.set("runs", [{"concurrency": 1, "jobs": args.n, "complete": complete,
                      "seconds": round(elapsed, 2), "finished": bool(done),
                      "jobs_per_s": round(complete / elapsed, 1)}])
    board.close()


def case_failover(args: argparse.Namespace, out: Results) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-tf-fail-"))
    rows = []
    for timeout in (float(x) for x in args.sessions.split(",")):
        rows.append(failover_once(args.zk, workdir, timeout))
        out.set("runs", rows)


def failover_once(zk: str, workdir: Path, session_timeout: float) -> dict:
    """SIGKILL the blocking conductor holding a five-step job at step2; time
    until the other conductor has started step2 again."""
    tag = f"{session_timeout:g}"
    path = f"/taskflow/failover-{tag}"
    journal = str(workdir / f"journal-{tag}")
    gate = str(workdir / f"gate-{tag}")
    db = str(workdir / f"persistence-{tag}.db")
    persistence = open_persistence(db)
    processes = []
    board = connect_board("poster", zk, path, persistence)
    try:
        for name in ("fo-a", "fo-b"):
            process = start_helper(["conductor", "--zk", zk, "--path", path, "--db", db,
                                    "--name", name, "--session-timeout", str(session_timeout)],
                                   workdir, f"{name}-{tag}")
            if process is None:
                raise RuntimeError(f"TaskFlow conductor {name} did not start")
            processes.append(process)
        post_flow_job(board, persistence, "five-steps", taskflow_flows.five_steps_flow,
                      {"journal": journal, "hold_at": "step2", "gate": gate})
        resumed_after = kill_holder_and_time_resume(journal, gate, session_timeout)
        client = board._client
        finished = wait_until(lambda: not job_children(client, path), 60, 0.05)
        return failover_row(session_timeout, resumed_after, journal,
                            "COMPLETE" if finished else "not finished in 60 s")
    finally:
        for process in processes:
            stop(process, timeout=15)
        board.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["watch", "conductor", "posts", "claims", "half",
                                         "e2e", "failover"])
    parser.add_argument("--zk", required=True)
    parser.add_argument("--path", default="/taskflow/jobs")
    parser.add_argument("--ready")
    parser.add_argument("--out")
    parser.add_argument("--db")
    parser.add_argument("--name", default="conductor")
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--max", type=int, default=100_000)
    parser.add_argument("--level", type=int, default=1000)
    parser.add_argument("--rss", action="store_true")
    parser.add_argument("--claims", type=int, default=200, help="claims of the half case")
    parser.add_argument("--seq-claims", type=int, default=SEQ_CLAIMS)
    parser.add_argument("--levels", default=LEVELS, help="posts: where windows start")
    parser.add_argument("--rss-seconds", type=float, default=RSS_SECONDS)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--sessions", default="4,10")
    args = parser.parse_args()
    if args.case == "watch":
        case_watch(args)
        return
    if args.case == "conductor":
        case_conductor(args)
        return
    out = Results(args.out)
    out.set("status", "running")
    {"posts": case_posts, "claims": case_claims, "half": case_half, "e2e": case_e2e,
     "failover": case_failover}[args.case](args, out)
    out.set("status", "done")


if __name__ == "__main__":
    main()
