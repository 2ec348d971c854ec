"""Board benchmark: posts/s and claim+consume/s at a given backlog, with claim
latency percentiles, on a local ZooKeeper with fsync on.

    python -m bench.board                      # backlogs 1,000 and 100,000
    python -m bench.board --backlog 1000 --json out.json

For each backlog: fill a fresh board (batched posts, rate reported), time
synchronous posts while an idle conductor watches the board, then claim and
consume jobs one at a time (latency per claim) and with consumes pipelined
through a thread pool (as a conductor does), and finally claim with half of
the jobs held by another conductor.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench._common import latency_summary
from jobboard.board import Board, Claimer
from jobboard.testing.zookeeper import ZooKeeperServer

FACTORY = "jobboard.testing.flows:noop"
MEASURED = 1000
SYNC_POSTS = 500


def fill(board: Board, count: int) -> float:
    """Post ``count`` jobs in batches; returns posts/s."""
    started = time.perf_counter()
    for start in range(0, count, 5000):
        board.post_many([{"factory": FACTORY} for _ in range(min(5000, count - start))])
    return count / (time.perf_counter() - started)


def sync_posts(board: Board, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        board.post(FACTORY)
    return count / (time.perf_counter() - started)


def claim_consume_sequential(board: Board, count: int, owner: str = "bench-seq"
                             ) -> dict[str, Any]:
    """Claim + consume one at a time, timing each claim; stops early when the
    board runs dry. Claims made, p50/p99 in ms, claim+consume/s."""
    claimer = Claimer(board, owner).start()
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        job = claimer.claim_next()
        latencies.append(time.perf_counter() - t0)
        if job is None:
            break
        board.consume(job, owner, {})
    elapsed = time.perf_counter() - started
    claimer.stop()
    return {**latency_summary(latencies), "jobs_per_s": round(len(latencies) / elapsed, 1)}


def claim_consume_pipelined(board: Board, count: int, owner: str = "bench-pipe",
                            workers: int = 16) -> dict[str, float]:
    """As a conductor with ``workers`` slots does: claim a batch for the free
    slots, consume each in its own thread. Stops early when the board runs dry."""
    claimer = Claimer(board, owner).start()
    free = threading.Semaphore(workers)
    started = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(workers) as pool:
        futures = []
        while done < count:
            free.acquire()
            slots = 1
            while slots < workers and free.acquire(blocking=False):
                slots += 1
            jobs = claimer.claim_batch(min(slots, count - done))
            for _ in range(slots - len(jobs)):
                free.release()
            if not jobs:
                break
            for job in jobs:
                future = pool.submit(board.consume, job, owner, {})
                future.add_done_callback(lambda _f: free.release())
                futures.append(future)
            done += len(jobs)
        for future in futures:
            future.result()
    elapsed = time.perf_counter() - started
    claimer.stop()
    return {"jobs": done, "jobs_per_s": round(done / elapsed, 1)}


def claim_with_half_held(board: Board, other: Board, count: int) -> dict[str, Any]:
    """Another conductor holds half of the next jobs; time our claims."""
    holder = Claimer(other, "holder").start()
    for _ in range(count):
        holder.claim_next()
    result = claim_consume_sequential(board, count, "bench-half")
    holder.stop()
    return result


def raw_kazoo(address: str, count: int = 300) -> dict[str, int]:
    """The machine's yardstick: plain kazoo creates, sync and pipelined (the
    disk's fsync latency bounds every figure above)."""
    from jobboard.zkhandler import bounded_client

    client = bounded_client(address)
    client.start(timeout=30)
    path = client.create("/bench-raw", b"", makepath=True)
    try:
        started = time.perf_counter()
        for _ in range(count):
            client.create(f"{path}/n-", b"x" * 300, sequence=True)
        sync = count / (time.perf_counter() - started)
        started = time.perf_counter()
        pending = [client.create_async(f"{path}/p-", b"x" * 300, sequence=True)
                   for _ in range(count * 4)]
        for result in pending:
            result.get(timeout=60)
        pipelined = count * 4 / (time.perf_counter() - started)
    finally:
        client.delete(path, recursive=True)
        client.stop()
        client.close()
    return {"raw_kazoo_sync_creates_per_s": round(sync),
            "raw_kazoo_pipelined_creates_per_s": round(pipelined)}


def run_backlog(address: str, backlog: int) -> dict[str, Any]:
    root = f"/bench-{backlog}-{int(time.time())}"
    with Board.connect(address, root=root) as board, \
            Board.connect(address, root=root) as watcher_board:
        watcher = Claimer(watcher_board, "idle-watcher").start()
        watcher.claim_next()   # plans and sets its watches on an empty board
        fill_rate = fill(board, backlog)
        stop = threading.Event()
        woken = {"count": 0}

        def idle() -> None:   # an idle conductor that only watches (never claims)
            while not stop.is_set():
                if watcher.wait_for_work(0.5):
                    woken["count"] += 1

        thread = threading.Thread(target=idle, daemon=True)
        thread.start()
        post_rate = sync_posts(board, SYNC_POSTS)
        stop.set()
        thread.join(5)
        watcher.stop()
        share = min(MEASURED, (backlog + SYNC_POSTS) // 3)
        sequential = claim_consume_sequential(board, share)
        pipelined = claim_consume_pipelined(board, share)
        half = claim_with_half_held(board, watcher_board, share // 2)
        depth = board.depth()
        board.client.delete(root, recursive=True)
    return {"backlog": backlog, "batched_posts_per_s": round(fill_rate),
            "sync_posts_per_s": round(post_rate),
            "claim_consume_per_s": round(sequential["jobs_per_s"]),
            "claim_consume_pipelined_per_s": round(pipelined["jobs_per_s"]),
            "claim_p50_ms": sequential["p50_ms"], "claim_p99_ms": sequential["p99_ms"],
            "claim_half_held_p50_ms": half["p50_ms"], "claim_half_held_p99_ms": half["p99_ms"],
            "waiting_after": sum(depth["waiting"].values())}


def run(backlogs: tuple[int, ...] = (1000, 100_000), address: str | None = None) -> dict:
    if address:
        yardstick = raw_kazoo(address)
        results = [run_backlog(address, b) for b in backlogs]
    else:
        with ZooKeeperServer(fsync=True, tick_time=500) as zk:
            yardstick = raw_kazoo(zk.address)
            results = [run_backlog(zk.address, b) for b in backlogs]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"board": results, "yardstick": yardstick,
            "bench_process_peak_rss_mb": round(rss_mb, 1)}


def print_table(results: dict) -> None:
    columns = [("backlog", "backlog"), ("batched_posts_per_s", "posts/s batched"),
               ("sync_posts_per_s", "posts/s sync"),
               ("claim_consume_per_s", "claim+consume/s"),
               ("claim_consume_pipelined_per_s", "pipelined/s"),
               ("claim_p50_ms", "claim p50 ms"), ("claim_p99_ms", "claim p99 ms"),
               ("claim_half_held_p50_ms", "half held p50"),
               ("claim_half_held_p99_ms", "half held p99")]
    print(" | ".join(title for _, title in columns))
    for row in results["board"]:
        print(" | ".join(str(row[key]) for key, _ in columns))
    yardstick = results["yardstick"]
    print(f"raw kazoo on this machine: {yardstick['raw_kazoo_sync_creates_per_s']} sync "
          f"creates/s, {yardstick['raw_kazoo_pipelined_creates_per_s']} pipelined")
    print(f"peak RSS of the benchmark process: {results['bench_process_peak_rss_mb']} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, action="append",
                        help="backlog size (repeatable; default 1000 and 100000)")
    parser.add_argument("--zk", help="use this ZooKeeper instead of starting one")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = run(tuple(args.backlog or (1000, 100_000)), args.zk)
    print_table(results)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
