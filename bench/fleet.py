"""Fleet benchmark: whole jobs through K real conductor processes, side by
side with TaskFlow 6.5's nonblocking conductor on the same servers.

    make bench-fleet                                   # the preset cases, a few minutes
    python -m bench.fleet --conductors 2 --concurrency 8 --steps 3 --step-ms 20 \\
        --jobs 1500 --logbook postgresql --json out.json
    python -m bench.fleet --cases [NAME,...] --markdown bench/results/fleet.md

Each case gets a fresh ZooKeeper (:class:`ZooKeeperServer`, fsync on) and a
fresh logbook: a PostgreSQL database made for the run (so that
``pg_stat_database`` counts nobody else), one schema per system, or a SQLite
file per system. What is measured, per system, in this order:

1. the raw floor on those servers: kazoo multi-op transactions/s (sync and
   pipelined) and single-row commits/s (PostgreSQL: 1 and 16 connections;
   SQLite: 1);
2. N jobs (T-step flows whose steps sleep MS ms) are posted **before** the
   conductors start (jobboard: ``Board.post_many``; TaskFlow: its own
   ``post`` with one logbook per job); then K conductor processes start
   (``python -m jobboard conductor`` / a TaskFlow ``nonblocking`` conductor
   with ``max_simultaneous_jobs`` = C);
3. every 250 ms the benchmark samples jobs done, the CPU seconds (``/proc``)
   of the conductors, of the ZooKeeper server and of PostgreSQL's processes,
   how busy the machine is, and ZooKeeper's ``zk_packets_received`` (``mntr``, minus the
   benchmark's own session, from ``cons``), until all N are done or the
   budget is spent; the clock starts at the first claim seen. Sampling
   costs the machine the fleet runs on: at 50 ms it took most of a core
   (four-letter words to ZooKeeper, listings of the queue), so it samples
   at 250 ms and reports its own CPU seconds (``observer_cpu_s``).

Reported: jobs/s over the steady window (from 10 % to 90 % of the jobs
done) and over the whole run (first claim to last job), efficiency = steady
jobs/s over the ideal K x C / (T x MS), CPU seconds per job (the
conductors'; ZooKeeper's and PostgreSQL's, which the two systems' runs pay
alike) and ZooKeeper requests per job over the steady window, the share of
the machine's CPU busy then, logbook transactions per job
(``xact_commit`` from before the conductors start to after they exit:
start-up and shutdown included; TaskFlow's posting, which writes its
logbooks, is before and not counted; SQLite: n/a).

Fails loudly (exit 1, a message) when ZooKeeper or PostgreSQL cannot be
started or reached; a system that cannot finish its jobs within the budget
is reported with how far it got, never with invented numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bench import fleet_probes as probes
from bench._common import memory_mb, spawn, stop
from bench.jobboard_side import conductor_command
from jobboard.board import Board
from jobboard.testing.databases import isolated_database, postgres_base_url
from jobboard.testing.zookeeper import ZooKeeperServer

REPO = Path(__file__).resolve().parent.parent
FACTORY = "bench.fleet_flows:steps"
SAMPLE_INTERVAL = 0.25
TICK_MS = 200
STEADY = (0.10, 0.90)


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    name: str
    conductors: int
    concurrency: int
    steps: int
    step_ms: float
    jobs: int
    logbook: str              # "postgresql" | "sqlite"
    taskflow_jobs: int

    @property
    def ideal_jobs_per_s(self) -> float | None:
        if self.step_ms <= 0:
            return None
        return self.conductors * self.concurrency * 1000.0 / (self.steps * self.step_ms)

    def label(self) -> str:
        step = "no-op" if self.step_ms <= 0 else f"{self.step_ms:g} ms"
        return (f"{self.conductors} conductors x {self.concurrency} slots, "
                f"{self.steps}-step {step} flows, {self.logbook}")


# Enough jobs for a steady window of 15 s or more at today's rates: shorter
# ones were dominated by the start (a leader's first repair sweep of the
# whole board, a cold ZooKeeper).
PRESETS = [
    Case("2x8-noop-pg", 2, 8, 3, 0, 4000, "postgresql", 200),
    Case("2x8-20ms-pg", 2, 8, 3, 20, 3000, "postgresql", 150),
    Case("8x4-20ms-pg", 8, 4, 3, 20, 3000, "postgresql", 150),
    Case("1x1-sqlite-1step", 1, 1, 1, 0, 1000, "sqlite", 60),
]


# -- the systems -------------------------------------------------------------------


class Side(Protocol):
    """What :func:`run_fleet` needs from a system."""

    system: str

    def prepare(self, jobs: int) -> None: ...
    def command(self, name: str) -> list[str]: ...
    def progress(self) -> tuple[int, int]: ...
    def own_sessions(self) -> set[int]: ...
    def outcome(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class JobboardSide:
    """jobboard conductors on board ``root``; the logbook schema is made
    up front so that no conductor spends the window migrating it."""

    system = "jobboard"

    def __init__(self, zk: str, root: str, logbook_url: str, *, steps: int,
                 step_ms: float, concurrency: int) -> None:
        self.zk, self.root, self.logbook_url = zk, root, logbook_url
        self.steps, self.step_ms, self.concurrency = steps, step_ms, concurrency
        self.jobs = 0
        self.board: Board | None = None

    def prepare(self, jobs: int) -> None:
        from jobboard.logbook import Logbook

        with Logbook(self.logbook_url) as logbook:
            logbook.upgrade()
        self.board = Board.connect(self.zk, root=self.root)
        spec = {"factory": FACTORY, "args": {"count": self.steps, "ms": self.step_ms}}
        for start in range(0, jobs, 5000):
            self.board.post_many([dict(spec) for _ in range(min(5000, jobs - start))])
        self.jobs = jobs

    def command(self, name: str) -> list[str]:
        return [*conductor_command(self.zk, self.root, self.logbook_url, name,
                                   concurrency=self.concurrency),
                "--allow", "bench.fleet_flows"]

    def progress(self) -> tuple[int, int]:
        """(jobs done, jobs claimed now) from znode stats: queue buckets
        and the claims directory (no listing of the backlog)."""
        assert self.board is not None
        client, paths = self.board.client, self.board.paths
        waiting = 0
        for bucket in client.get_children(paths.queue):
            stat = client.exists(f"{paths.queue}/{bucket}")
            waiting += stat.numChildren if stat else 0
        claims = client.exists(paths.claims)
        active = claims.numChildren if claims else 0
        return self.jobs - waiting - active, active

    def own_sessions(self) -> set[int]:
        assert self.board is not None
        client_id = self.board.client.client_id
        return {client_id[0]} if client_id else set()

    def outcome(self) -> dict[str, int]:
        assert self.board is not None
        return dict(Counter(job.state.value for job in self.board.jobs()))

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


# -- one run -----------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    done: int
    active: int
    cpu_s: float
    zk_cpu_s: float | None
    pg_cpu_s: float
    jiffies: tuple[int, int]
    zk_packets: int | None
    own_packets: int


def run_fleet(side: Side, case: Case, jobs: int, zk: ZooKeeperServer, db_url: str,
              workdir: Path, budget: float) -> dict[str, Any]:
    """Post ``jobs`` jobs, run ``case.conductors`` conductors until all are
    done or ``budget`` seconds have passed; the figures of :func:`summarize`."""
    side.prepare(jobs)
    xacts_before = probes.pg_xact_commit(db_url) if case.logbook == "postgresql" else None
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                      os.environ.get("PYTHONPATH")]))}
    processes = []
    samples: list[Sample] = []
    ended = "budget"
    peak_rss = 0.0
    observer_cpu = 0.0
    try:
        for n in range(case.conductors):
            name = f"{side.system}-{n}"
            processes.append(spawn(side.command(name), workdir / f"{name}.log", env=env))
        own = side.own_sessions()
        last_cpu = {p.pid: 0.0 for p in processes}
        postgres_seen: dict[int, float] = {}
        zk_pid = zk.process.pid if zk.process is not None else None
        observer_began = time.process_time()
        began = time.monotonic()
        while time.monotonic() - began < budget:
            done, active = side.progress()
            for process in processes:
                value = probes.cpu_seconds(process.pid)
                if value is not None and process.poll() is None:
                    last_cpu[process.pid] = value
            samples.append(Sample(time.monotonic() - began, done, active,
                                  sum(last_cpu.values()),
                                  None if zk_pid is None else probes.cpu_seconds(zk_pid),
                                  probes.postgres_cpu_seconds(postgres_seen),
                                  probes.machine_jiffies(),
                                  probes.zk_packets_received(zk.port),
                                  probes.session_packets(zk.port, own)))
            if done >= jobs:
                ended = "all done"
                break
            if all(p.poll() is not None for p in processes):
                ended = "every conductor exited"
                break
            time.sleep(SAMPLE_INTERVAL)
        peak_rss = max(memory_mb(p.pid)["vm_hwm_mb"] for p in processes)
        observer_cpu = time.process_time() - observer_began
    finally:
        exits = {}
        for process in processes:
            exits[process.pid] = process.poll()
            stop(process, timeout=15)
    xacts_after = probes.pg_xact_commit(db_url) if case.logbook == "postgresql" else None
    outcome = side.outcome()
    side.close()
    result = summarize(samples, jobs, case)
    result.update({"jobs": jobs, "ended": ended, "outcome": outcome,
                   "conductor_peak_rss_mb": peak_rss,
                   "observer_cpu_s": round(observer_cpu, 2),
                   "conductors_exited_early": [code for code in exits.values()
                                               if code is not None]})
    if xacts_before is not None and xacts_after is not None:
        result["logbook_xacts"] = xacts_after - xacts_before
        result["logbook_xacts_per_job"] = round((xacts_after - xacts_before)
                                                / max(1, result["done"]), 2)
    if ended != "all done":
        result["logs"] = {p.name: _tail(p) for p in sorted(workdir.glob(f"{side.system}-*.log"))}
    return result


def summarize(samples: list[Sample], jobs: int, case: Case) -> dict[str, Any]:
    """Rates and per-job costs from the samples (see the module docstring)."""
    if not samples:
        return {"done": 0}
    last = samples[-1]
    first = next((s for s in samples if s.done + s.active > 0), None)
    out: dict[str, Any] = {"done": last.done}
    if first is None:
        return out
    end = next((s for s in samples if s.done >= jobs), last)
    if end.t > first.t:
        out["seconds"] = round(end.t - first.t, 2)
        out["jobs_per_s_overall"] = round(end.done / (end.t - first.t), 1)
    low = next((s for s in samples if s.done >= math.ceil(STEADY[0] * jobs)), None)
    high = next((s for s in samples if s.done >= math.floor(STEADY[1] * jobs)), None)
    if low is None or high is None or high.t <= low.t or high.done <= low.done:
        return out
    done = high.done - low.done
    out["steady_window_s"] = round(high.t - low.t, 2)
    out["jobs_per_s"] = round(done / (high.t - low.t), 1)
    ideal = case.ideal_jobs_per_s
    out["efficiency"] = None if ideal is None else round(out["jobs_per_s"] / ideal, 3)
    out["cpu_s_per_job"] = round((high.cpu_s - low.cpu_s) / done, 4)
    if high.zk_cpu_s is not None and low.zk_cpu_s is not None:
        out["zk_cpu_s_per_job"] = round((high.zk_cpu_s - low.zk_cpu_s) / done, 4)
    if case.logbook == "postgresql":
        out["pg_cpu_s_per_job"] = round((high.pg_cpu_s - low.pg_cpu_s) / done, 4)
    busy, total = (h - l for h, l in zip(high.jiffies, low.jiffies))
    out["machine_busy"] = round(busy / total, 3) if total > 0 else None
    if high.zk_packets is not None and low.zk_packets is not None:
        conductors = (high.zk_packets - low.zk_packets) - (high.own_packets - low.own_packets)
        out["zk_requests_per_job"] = round(conductors / done, 1)
    return out


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- one case ----------------------------------------------------------------------


@contextlib.contextmanager
def logbook_database(backend: str) -> Iterator[str | None]:
    """The PostgreSQL database of the case (its URL), or None for SQLite;
    :func:`isolated_database` then makes one schema in it per system."""
    if backend == "sqlite":
        yield None
        return
    with probes.dedicated_postgres(postgres_base_url()) as url:
        saved = os.environ.get("JOBBOARD_TEST_POSTGRES_URL")
        os.environ["JOBBOARD_TEST_POSTGRES_URL"] = url
        try:
            yield url
        finally:
            if saved is None:
                os.environ.pop("JOBBOARD_TEST_POSTGRES_URL", None)
            else:
                os.environ["JOBBOARD_TEST_POSTGRES_URL"] = saved


def measure_floor(zk: ZooKeeperServer, case: Case, database: str | None) -> dict[str, Any]:
    floor: dict[str, Any] = probes.kazoo_multi_per_s(zk.address)
    if database is not None:
        with isolated_database("postgresql") as url:
            floor["pg_commits_per_s_1"] = round(probes.pg_commits_per_s(url, 1))
            floor["pg_commits_per_s_16"] = round(probes.pg_commits_per_s(url, 16))
    else:
        with tempfile.TemporaryDirectory(prefix="fleet-floor-") as directory:
            floor["sqlite_commits_per_s_1"] = round(
                probes.sqlite_commits_per_s(f"{directory}/floor.db"))
    return floor


def run_case(case: Case, *, taskflow: str | None, budget: float) -> dict[str, Any]:
    """Both systems, one after the other, on one fresh ZooKeeper and database.
    ``taskflow`` is None to run TaskFlow, else the reason it is not run."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-fleet-{case.name}-"))
    result: dict[str, Any] = {"case": asdict(case), "label": case.label(),
                              "ideal_jobs_per_s": case.ideal_jobs_per_s,
                              "workdir": str(workdir)}
    with ZooKeeperServer(fsync=True, tick_time=TICK_MS, max_session_timeout_ms=20_000) as zk, \
            logbook_database(case.logbook) as database:
        result["floor"] = measure_floor(zk, case, database)
        print(f"  floor: {result['floor']}", flush=True)
        with isolated_database(case.logbook) as url:
            side = JobboardSide(zk.address, "/fleet", url, steps=case.steps,
                                step_ms=case.step_ms, concurrency=case.concurrency)
            result["jobboard"] = run_fleet(side, case, case.jobs, zk, database or url,
                                           workdir, budget)
        print(f"  jobboard: {_brief(result['jobboard'])}", flush=True)
        if taskflow is not None:
            result["taskflow"] = {"skipped": taskflow}
        else:
            from bench.fleet_taskflow import TaskFlowSide

            with isolated_database(case.logbook) as url:
                tf_side = TaskFlowSide(zk.address, "/taskflow/fleet", url, steps=case.steps,
                                       step_ms=case.step_ms, concurrency=case.concurrency)
                result["taskflow"] = run_fleet(tf_side, case, case.taskflow_jobs, zk,
                                               database or url, workdir, budget)
            print(f"  taskflow: {_brief(result['taskflow'])}", flush=True)
    return result


def _brief(row: dict[str, Any]) -> str:
    keys = ("jobs_per_s", "jobs_per_s_overall", "efficiency", "cpu_s_per_job",
            "zk_cpu_s_per_job", "pg_cpu_s_per_job", "machine_busy",
            "zk_requests_per_job", "logbook_xacts_per_job", "done", "ended")
    return ", ".join(f"{key}={row.get(key)}" for key in keys)


# -- provenance and output ---------------------------------------------------------


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=20, check=False).stdout.strip()

    changed = git("status", "--porcelain").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "clean": not changed, "changed": changed}


def taskflow_missing() -> str | None:
    """None when TaskFlow can run here, else why not."""
    if importlib.util.find_spec("taskflow") is None:
        return (f"not run: TaskFlow is not importable in {sys.executable} "
                "(`make bench-fleet` runs from .venv-bench, where it is installed)")
    return None


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def system_cells(row: dict[str, Any], case: Case) -> list[str]:
    if "skipped" in row:
        return [row["skipped"]] + [""] * 8
    efficiency = row.get("efficiency")
    cells = [_fmt(row.get("jobs_per_s")), _fmt(row.get("jobs_per_s_overall")),
             "n/a (no-op)" if case.ideal_jobs_per_s is None else (
                 "—" if efficiency is None else f"{efficiency * 100:.1f}%"),
             _fmt(row.get("cpu_s_per_job")),
             f"{_fmt(row.get('zk_cpu_s_per_job'))} / "
             + ("n/a" if case.logbook == "sqlite" else _fmt(row.get("pg_cpu_s_per_job"))),
             "—" if row.get("machine_busy") is None else f"{row['machine_busy'] * 100:.0f}%",
             _fmt(row.get("zk_requests_per_job")),
             "n/a" if case.logbook == "sqlite" else _fmt(row.get("logbook_xacts_per_job")),
             f"{row.get('done', 0)}/{row.get('jobs')} ({row.get('ended')})"]
    return cells


HEADER = ["case", "system", "jobs/s (steady)", "jobs/s (whole run)", "efficiency",
          "CPU s/job", "ZooKeeper / PostgreSQL CPU s/job", "machine busy",
          "ZK requests/job", "logbook xacts/job", "done"]


def markdown(document: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for result in document["results"]:
        case = Case(**result["case"])
        for system in ("jobboard", "taskflow"):
            row = result.get(system, {})
            lines.append("| " + " | ".join([f"{case.label()}, {row.get('jobs', case.jobs)} jobs"
                                            if system == "jobboard" else "",
                                            system, *system_cells(row, case)]) + " |")
    lines += ["", "Raw floor, measured in the same run on the same servers:", ""]
    for result in document["results"]:
        floor = result["floor"]
        db = (f"PostgreSQL {floor.get('pg_commits_per_s_1')} commits/s from 1 connection, "
              f"{floor.get('pg_commits_per_s_16')} from 16"
              if "pg_commits_per_s_1" in floor else
              f"SQLite {floor.get('sqlite_commits_per_s_1')} commits/s")
        lines.append(f"- {result['case']['name']}: kazoo multi-op "
                     f"{floor['kazoo_multi_sync_per_s']} txn/s sync, "
                     f"{floor['kazoo_multi_pipelined_per_s']} pipelined; {db}")
    info, git = document["machine"], document["git"]
    tree = ("clean tree" if git["clean"]
            else f"DIRTY tree: {len(git['changed'])} changed paths")
    lines += ["", (f"Jobs posted before the conductors start; clock from the first claim; "
                   f"steady window = {STEADY[0]:.0%} to {STEADY[1]:.0%} of the jobs done; CPU and "
                   "ZooKeeper requests over that window; logbook transactions from before the "
                   "conductors start to after they exit. Efficiency = steady jobs/s / "
                   "(K x C / (T x MS))."),
              "", (f"Machine: {info['cpu']}, {info['cores']} cores; Linux {info['kernel']}; "
                   f"Python {info['python']}; ZooKeeper fsync on, tickTime {TICK_MS} ms, a "
                   f"fresh server per case; {info['versions']}; {info['date']}; load average "
                   f"{info['load_start']} at start, {info['load_end']} at end."),
              "", f"Command: `{document['command']}` at commit {git['commit'][:12]} ({tree})."]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("kazoo", "sqlalchemy", "psycopg", "taskflow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions,
            "load_start": [round(x, 2) for x in os.getloadavg()]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conductors", type=int, default=2, metavar="K")
    parser.add_argument("--concurrency", type=int, default=8, metavar="C")
    parser.add_argument("--steps", type=int, default=3, metavar="T")
    parser.add_argument("--step-ms", type=float, default=0.0, metavar="MS")
    parser.add_argument("--jobs", type=int, default=2000, metavar="N")
    parser.add_argument("--taskflow-jobs", type=int, default=None, metavar="N",
                        help="jobs for TaskFlow (default: N, at most 300)")
    parser.add_argument("--logbook", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--cases", nargs="?", const="all", default=None,
                        help="run the preset cases (all, or a comma-separated list of: "
                             + ", ".join(c.name for c in PRESETS) + ")")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds each system gets per case [120]")
    parser.add_argument("--no-taskflow", action="store_true", help="skip TaskFlow")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--markdown", metavar="FILE")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="write --markdown even from a tree with uncommitted changes")
    return parser.parse_args(argv)


def chosen_cases(args: argparse.Namespace) -> list[Case]:
    if args.cases:
        names = {c.name for c in PRESETS} if args.cases == "all" else set(args.cases.split(","))
        unknown = names - {c.name for c in PRESETS}
        if unknown:
            raise SystemExit(f"unknown case(s): {', '.join(sorted(unknown))}")
        return [c for c in PRESETS if c.name in names]
    taskflow_jobs = args.taskflow_jobs or min(args.jobs, 300)
    name = (f"{args.conductors}x{args.concurrency}-{args.steps}step-"
            f"{args.step_ms:g}ms-{args.logbook}")
    return [Case(name, args.conductors, args.concurrency, args.steps, args.step_ms,
                 args.jobs, args.logbook, taskflow_jobs)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    git = git_state()
    if args.markdown and not git["clean"] and not args.allow_dirty:
        raise SystemExit(f"refusing to write {args.markdown}: the tree has uncommitted changes "
                         f"({len(git['changed'])} paths); commit them or pass --allow-dirty")
    cases = chosen_cases(args)
    command = shlex.join(["python", "-m", "bench.fleet",
                          *(sys.argv[1:] if argv is None else argv)])
    if os.environ.get("BENCH_FLEET_COMMAND"):   # e.g. "make bench-fleet"
        command = f"{os.environ['BENCH_FLEET_COMMAND']}, which ran: {command}"
    taskflow = "not run: --no-taskflow" if args.no_taskflow else taskflow_missing()
    info = machine()
    results = []
    started = time.monotonic()
    for case in cases:
        print(f"[{time.monotonic() - started:5.0f}s] {case.name}: {case.label()}", flush=True)
        results.append(run_case(case, taskflow=taskflow, budget=args.budget))
    info["load_end"] = [round(x, 2) for x in os.getloadavg()]
    info["total_s"] = round(time.monotonic() - started, 1)
    document = {"command": command, "git": git, "machine": info, "results": results}
    table = markdown(document)
    print()
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(document, indent=1, default=str) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)


if __name__ == "__main__":
    main()
