"""What one repair sweep costs a conductor on a big board: memory and time.

    python -m bench.sweep_memory [--jobs 100000]

Starts a fresh ZooKeeper, posts N waiting jobs, then runs one sweep
(``board.repair.sweep(fix=False)``, what the elected conductor runs every
``--fsck-interval``) in a fresh process, so posting does not raise its peak.
Prints one JSON line: the process's RSS after connecting, its peak RSS
(``getrusage``) and the difference, the sweep's wall time and its findings.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time

ROOT = "/sweep"
POST_BATCH = 2000


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def sweep_once(hosts: str) -> dict:
    from jobboard.board import Board

    with Board.connect(hosts, root=ROOT, timeout=30) as board:
        gc.collect()
        base_kb = _rss_kb()
        started = time.monotonic()
        findings = board.repair.sweep(fix=False)
        seconds = time.monotonic() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"findings": len(findings), "seconds": round(seconds, 1),
            "base_rss_mb": round(base_kb / 1024, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
            "sweep_rss_mb": round((peak_kb - base_kb) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--sweep-only", metavar="HOSTS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sweep_only:
        print(json.dumps(sweep_once(args.sweep_only)))
        return

    from jobboard.board import Board
    from jobboard.testing.zookeeper import ZooKeeperServer

    with ZooKeeperServer() as server:
        with Board.connect(server.address, root=ROOT, timeout=30) as board:
            for start in range(0, args.jobs, POST_BATCH):
                board.post_many([{"factory": "jobboard.testing.flows:noop", "store": {"n": n}}
                                 for n in range(start, min(args.jobs, start + POST_BATCH))])
        measured = subprocess.run(
            [sys.executable, "-m", "bench.sweep_memory", "--sweep-only", server.address],
            check=True, capture_output=True, text=True, timeout=1800)
    result = {"jobs": args.jobs, **json.loads(measured.stdout.splitlines()[-1])}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
