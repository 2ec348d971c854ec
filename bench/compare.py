"""jobboard and OpenStack TaskFlow side by side, on the same machine, the same
ZooKeeper 3.8 (fsync on) and the same database (SQLite files on one disk).

    make bench                       # sets up .venv-bench, runs this
    .venv-bench/bin/python -m bench.compare --json bench/results/latest.json \\
        --markdown bench/results/latest.md

Each case runs in its own process against a fresh ZooKeeper server (started
by :mod:`jobboard.testing.zookeeper`, same configuration every time), the
two systems' cases interleaved figure by figure. Every case has a budget:
where TaskFlow cannot finish, the case stops (or is killed) at its budget
and the table says how far it got. The whole run takes ~20 minutes on a
2-core machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobboard.testing.zookeeper import ZooKeeperServer, four_letter

REPO = Path(__file__).resolve().parent.parent
TICK_MS = 200
MAX_SESSION_MS = 20_000

# (system, name, arguments, hard limit in seconds). TaskFlow budgets are
# enforced inside the case (soft) and here (hard kill past the deadline).
PLAN: list[tuple[str, str, list[str], float]] = [
    ("jobboard", "scale", ["scale", "--levels", "1000,10000,100000"], 900),
    ("taskflow", "posts", ["posts", "--budget", "120"], 200),
    ("taskflow", "claims-1000", ["claims", "--level", "1000", "--budget", "60"], 150),
    ("taskflow", "claims-10000", ["claims", "--level", "10000", "--budget", "90"], 240),
    ("taskflow", "claims-100000", ["claims", "--level", "100000", "--budget", "60",
                                   "--rss"], 420),
    ("jobboard", "half", ["half", "--levels", "1000,10000", "--claims", "200"], 300),
    ("taskflow", "half-1000", ["half", "--level", "1000", "--budget", "45",
                               "--claims", "20"], 120),
    ("taskflow", "half-10000", ["half", "--level", "10000", "--budget", "60",
                                "--claims", "10"], 200),
    ("jobboard", "e2e", ["e2e", "--n", "200", "--concurrency", "1,4", "--budget", "120"], 400),
    ("taskflow", "e2e", ["e2e", "--n", "200", "--budget", "120"], 300),
    ("jobboard", "failover", ["failover", "--sessions", "4,10"], 240),
    ("taskflow", "failover", ["failover", "--sessions", "4,10"], 240),
]


def machine_info(zk_version: str) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for package in ("kazoo", "taskflow", "sqlalchemy", "msgpack"):
        try:
            from importlib.metadata import version
            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - not installed
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb,
            "kernel": platform.release(), "python": platform.python_version(),
            "zookeeper": zk_version, "zookeeper_config": {
                "fsync": True, "tickTime_ms": TICK_MS, "maxSessionTimeout_ms": MAX_SESSION_MS},
            "database": "SQLite files on the same disk (jobboard logbook; TaskFlow "
                        "SQLAlchemy persistence backend)",
            "versions": versions, "jobboard_commit": commit,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def zookeeper_version(port: int) -> str:
    for line in four_letter(port, "srvr").splitlines():
        if line.startswith("Zookeeper version:"):
            return line.split(":", 1)[1].strip().split(",")[0].split("-$")[0]
    return "unknown"


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_case(system: str, name: str, arguments: list[str], limit: float,
             workdir: Path, info: dict) -> dict[str, Any]:
    """One case in its own process against a fresh ZooKeeper; bounded."""
    out = workdir / f"{system}-{name}.json"
    pids = workdir / f"{system}-{name}.pids"
    log = workdir / f"{system}-{name}.log"
    module = "bench.jobboard_side" if system == "jobboard" else "bench.taskflow_side"
    started = time.monotonic()
    killed = None
    with ZooKeeperServer(fsync=True, tick_time=TICK_MS,
                         max_session_timeout_ms=MAX_SESSION_MS) as zk:
        info.setdefault("zookeeper_version", zookeeper_version(zk.port))
        command = [sys.executable, "-m", module, *arguments, "--zk", zk.address,
                   "--out", str(out)]
        env = {**os.environ, "BENCH_PIDS_FILE": str(pids),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))}
        with open(log, "wb") as handle:
            process = subprocess.Popen(command, cwd=REPO, stdout=handle,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env=env)
        while process.poll() is None:
            time.sleep(0.5)
            elapsed = time.monotonic() - started
            deadline = _read(out).get("deadline_epoch")
            if elapsed > limit:
                killed = f"killed at the case's hard limit ({limit:g} s)"
            elif deadline and time.time() > deadline + 30:
                killed = "killed 30 s past its budget (still inside a TaskFlow call)"
            if killed:
                kill_group(process.pid)
                process.wait(timeout=30)
        if pids.exists():
            for line in pids.read_text().split():
                kill_group(int(line))
    result = _read(out)
    result["wall_s"] = round(time.monotonic() - started, 1)
    if killed:
        result["killed"] = killed
    elif process.returncode:
        result["error"] = _tail(log)
    return result


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the table ---------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        value = round(value, 1) if abs(value) >= 10 else round(value, 2)
    if isinstance(value, (int, float)):
        return f"{value:,}{unit}"
    return str(value)


def build_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """[{figure, taskflow, jobboard, ratio, better}] from the raw results."""
    jb, tf = results["jobboard"], results["taskflow"]
    rows: list[dict[str, Any]] = []

    def add(figure: str, tf_value: Any, jb_value: Any, *, unit: str = "",
            higher_better: bool = True, tf_text: str | None = None,
            jb_text: str | None = None) -> None:
        ratio = None
        if isinstance(tf_value, (int, float)) and isinstance(jb_value, (int, float)) \
                and tf_value:
            ratio = float(f"{jb_value / tf_value:.3g}")
        rows.append({"figure": figure,
                     "taskflow": tf_text if tf_text is not None else _fmt(tf_value, unit),
                     "jobboard": jb_text if jb_text is not None else _fmt(jb_value, unit),
                     "taskflow_value": tf_value, "jobboard_value": jb_value,
                     "ratio": ratio, "better": "higher" if higher_better else "lower"})

    scale = {row["backlog"]: row for row in jb.get("scale", {}).get("levels", [])}
    posts = tf.get("posts", {})
    curve = posts.get("curve", [])
    reached = posts.get("backlog_reached")

    def tf_post_rate(level: int) -> tuple[Any, str | None]:
        if not curve:
            return None, "not run"
        if reached is None or reached < level:
            return None, (f"not reached (stopped at {reached:,} waiting: "
                          f"{posts.get('stopped', 'budget')})")
        window = min(curve, key=lambda point: abs(point[0] - level))
        return window[1], None

    for level in (0, 1000, 10000, 100000):
        value, text = tf_post_rate(level)
        row = scale.get(level, {})
        label = "empty board" if level == 0 else f"{level:,} waiting"
        add(f"posts/s, sync, one client, a conductor watching ({label})", value,
            row.get("sync_posts_per_s"), tf_text=text)
    for level in (0, 100000):
        row = scale.get(level, {})
        label = "empty board" if level == 0 else f"{level:,} waiting"
        add(f"posts/s, batched ({label})", None, row.get("batched_posts_per_s"),
            tf_text="no batch API")

    for level in (1000, 10000, 100000):
        row = scale.get(level, {})
        claims = tf.get(f"claims-{level}", {})
        seq = claims.get("sequential", {})
        partial = _partial(claims, seq, 500)
        add(f"claim+consume/s, one process, sequential ({level:,} waiting)",
            seq.get("jobs_per_s"), row.get("sequential", {}).get("jobs_per_s"),
            tf_text=partial)
        add(f"claim+consume/s, one process, batched claims + 16 consume threads "
            f"({level:,} waiting)", None, row.get("pipelined", {}).get("jobs_per_s"),
            tf_text="no batch claim API")
        for q in ("p50", "p99"):
            add(f"claim latency {q} ({level:,} waiting)", seq.get(f"{q}_ms"),
                row.get("sequential", {}).get(f"{q}_ms"), unit=" ms",
                higher_better=False,
                tf_text=None if seq.get(f"{q}_ms") is not None else partial)

    half_rows = {row["backlog"]: row for row in jb.get("half", {}).get("levels", [])}
    for level in (1000, 10000):
        row = half_rows.get(level, {})
        case = tf.get(f"half-{level}", {})
        seq = case.get("sequential", {})
        partial = _partial(case, seq, None)
        for q in ("p50", "p99"):
            value = seq.get(f"{q}_ms")
            add(f"claim latency {q}, half of the jobs held by another conductor "
                f"({level:,} waiting)", value, row.get(f"{q}_ms"), unit=" ms",
                higher_better=False,
                tf_text=None if value is None else _fmt(value, " ms") + (
                    f" ({seq.get('claims')} claims in {seq.get('budget_s'):g} s)"
                    if not seq.get("finished") else ""))
        add(f"ZooKeeper requests per claim+consume, half held ({level:,} waiting)",
            seq.get("zk_requests_per_claim_consume"),
            row.get("zk_requests_per_claim_consume"), higher_better=False,
            tf_text=None if seq else partial)

    jb_e2e = {run["concurrency"]: run for run in jb.get("e2e", {}).get("runs", [])}
    tf_e2e = (tf.get("e2e", {}).get("runs") or [{}])[0]
    add("end to end: one-task flows/s, conductor process + SQLite logbook "
        "(TaskFlow blocking; jobboard concurrency 1)", tf_e2e.get("jobs_per_s"),
        jb_e2e.get(1, {}).get("jobs_per_s"))
    add("end to end: same, jobboard concurrency 4", tf_e2e.get("jobs_per_s"),
        jb_e2e.get(4, {}).get("jobs_per_s"))

    jb_rss = jb.get("scale", {}).get("rss", {})
    tf_rss = tf.get("claims-100000", {}).get("rss", {})
    tf_rss_text = None
    if tf_rss and not tf_rss.get("connected"):
        tf_rss_text = (f"{_fmt(tf_rss.get('vm_hwm_mb'), ' MB')} (still loading the "
                       f"listing after {tf_rss.get('connect_s')} s; ran no job)")
    elif tf_rss:
        tf_rss_text = (f"{_fmt(tf_rss.get('vm_hwm_mb'), ' MB')} "
                       f"({tf_rss.get('jobs_run')} jobs run in {tf_rss.get('seconds'):g} s)")
    add("conductor peak RSS (VmHWM), 100,000 waiting", tf_rss.get("vm_hwm_mb"),
        jb_rss.get("vm_hwm_mb"), unit=" MB", higher_better=False, tf_text=tf_rss_text,
        jb_text=(f"{_fmt(jb_rss.get('vm_hwm_mb'), ' MB')} ({jb_rss.get('jobs_run')} jobs "
                 f"run in {jb_rss.get('seconds', 0):g} s)") if jb_rss else None)

    jb_fail = {run["session_timeout_s"]: run for run in jb.get("failover", {}).get("runs", [])}
    tf_fail = {run["session_timeout_s"]: run for run in tf.get("failover", {}).get("runs", [])}
    for timeout in (4.0, 10.0):
        j, t = jb_fail.get(timeout, {}), tf_fail.get(timeout, {})

        def text(run: dict) -> str | None:
            if not run:
                return None
            return (f"{_fmt(run.get('resumed_after_s'), ' s')} "
                    f"(step1 ran {run.get('step1_runs')}x)")

        add(f"SIGKILL of the holder -> next task started elsewhere "
            f"(session timeout {timeout:g} s)", t.get("resumed_after_s"),
            j.get("resumed_after_s"), unit=" s", higher_better=False,
            tf_text=text(t), jb_text=text(j))
    return rows


def _partial(case: dict, seq: dict, expected: int | None) -> str | None:
    """Text for a TaskFlow figure that did not finish, else None."""
    if case.get("skipped"):
        return case["skipped"]
    if not case:
        return "not run"
    if case.get("killed") and not seq:
        return f"did not finish ({case.get('phase', 'running')} at its budget)"
    if seq and not seq.get("finished"):
        return (f"{_fmt(seq.get('jobs_per_s'))} ({seq.get('claims')} of "
                f"{expected or 'the'} claims in the {seq.get('budget_s'):g} s budget)")
    if not seq:
        return f"did not finish ({case.get('error', case.get('phase', 'no result'))})"
    return None


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], command: str) -> str:
    lines = ["| figure | TaskFlow 6.5 | jobboard | jobboard / TaskFlow |",
             "| --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['figure']} | {row['taskflow']} | {row['jobboard']} "
                     f"| {_ratio_text(row)} |")
    versions = info.get("versions", {})
    lines += ["", (f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB, "
              f"Linux {info['kernel']}; Python {info['python']}; ZooKeeper "
              f"{info.get('zookeeper_version')} (fsync on, tickTime {TICK_MS} ms), one "
              f"fresh server per case; kazoo {versions.get('kazoo')}, TaskFlow "
              f"{versions.get('taskflow')}, SQLAlchemy {versions.get('sqlalchemy')}; "
              f"jobboard {info.get('jobboard_commit')}; {info['date']}; load average "
              f"{info['load_average_at_start']} at start, {info.get('load_average_at_end')} "
              "at end."), "", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]]) -> None:
    widths = [max(len(r["figure"]) for r in rows), 28, 28]
    print(f"{'figure':<{widths[0]}}  {'TaskFlow 6.5':<{widths[1]}}  "
          f"{'jobboard':<{widths[2]}}  jobboard/TaskFlow")
    for row in rows:
        print(f"{row['figure']:<{widths[0]}}  {row['taskflow']:<{widths[1]}}  "
              f"{row['jobboard']:<{widths[2]}}  {_ratio_text(row)}")


def _ratio_text(row: dict[str, Any]) -> str:
    """``5.04 (higher is better)``; a ratio from a partial TaskFlow figure is
    marked with ``*``."""
    if row["ratio"] is None:
        return ""
    mark = "*" if any(word in row["taskflow"] for word in ("budget", "claims in", "still")) else ""
    return f"{row['ratio']:g}{mark} ({row['better']} is better)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "latest.json"))
    parser.add_argument("--markdown", default=str(REPO / "bench" / "results" / "latest.md"))
    parser.add_argument("--readme", default=str(REPO / "README.md"),
                        help="README whose table (between the bench markers) is refreshed")
    parser.add_argument("--only", action="append",
                        help="run only these cases (system:name, repeatable)")
    parser.add_argument("--rebuild", action="store_true",
                        help="only rebuild the table from the raw results in --json")
    args = parser.parse_args()
    command = "make bench"
    if args.rebuild:
        document = json.loads(Path(args.json).read_text())
        write(document, build_rows(document["raw"]), args)
        return
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    have_taskflow = importlib.util.find_spec("taskflow") is not None
    workdir = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    info: dict[str, Any] = {}
    results: dict[str, Any] = {"jobboard": {}, "taskflow": {}}
    started = time.monotonic()
    for system, name, arguments, limit in PLAN:
        if args.only and f"{system}:{name}" not in args.only:
            continue
        if system == "taskflow" and not have_taskflow:
            results[system][name] = {"skipped": "TaskFlow is not installed in this "
                                                "virtualenv (see `make bench`)"}
            continue
        print(f"[{time.monotonic() - started:6.0f}s] {system} {name} ...", flush=True)
        results[system][name] = run_case(system, name, arguments, limit, workdir, info)
        note = results[system][name].get("killed") or results[system][name].get("error") or ""
        print(f"[{time.monotonic() - started:6.0f}s] {system} {name} done "
              f"({results[system][name]['wall_s']} s) {note}", flush=True)
    machine = machine_info(info.get("zookeeper_version", "unknown"))
    machine["zookeeper_version"] = info.get("zookeeper_version")
    machine["load_average_at_start"] = load_at_start
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["total_s"] = round(time.monotonic() - started, 1)
    document = {"machine": machine, "command": command, "table": [], "raw": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(document, indent=1, default=str) + "\n")
    write(document, build_rows(results), args)
    print(f"(work files in {workdir})")


def write(document: dict[str, Any], rows: list[dict[str, Any]],
          args: argparse.Namespace) -> None:
    document["table"] = rows
    Path(args.json).write_text(json.dumps(document, indent=1, default=str) + "\n")
    table = markdown(rows, document["machine"], document["command"])
    Path(args.markdown).write_text(table)
    written = [args.json, args.markdown]
    if args.readme and update_readme(Path(args.readme), table):
        written.append(args.readme)
    print()
    print_table(rows)
    print(f"\nwritten: {', '.join(written)}")


README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"


def update_readme(path: Path, table: str) -> bool:
    """Put ``table`` between the README's bench markers; False when absent."""
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_BEGIN}\n{table.strip()}\n{README_END}{tail}")
    return True


if __name__ == "__main__":
    main()
