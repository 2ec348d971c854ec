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
2-core machine; ``--cases scale,claims`` runs some of the cases, ``--quick``
tiny versions of them (a backlog of 100, a few claims: under a minute).

Every "N waiting" figure ran at exactly N waiting jobs (the sides check it and
record the count; a figure whose recorded count differs says so instead of
showing a number), and "a conductor watching" means a conductor at capacity
on both sides (see :mod:`bench.jobboard_side`).

Provenance: the table names the commit the tool ran from and the command
that ran (``BENCH_COMMAND``, set by the Makefile, plus the actual argument
list); a partial run says which cases it ran. The tool refuses to write a
table (``--markdown``, the README) from a tree with uncommitted changes to
tracked files, or from a commit that does not contain this tool, unless
``--allow-dirty`` is given: the table then says "dirty tree". Only a full
run refreshes the README by default.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
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

# --quick: the same cases at a backlog of 100 with a handful of claims, to
# check the whole pipeline end to end in well under a minute (not figures).
QUICK_PLAN: list[tuple[str, str, list[str], float]] = [
    ("jobboard", "scale", ["scale", "--levels", "100", "--sync-posts", "20",
                           "--batched-posts", "50", "--seq-claims", "20",
                           "--pipelined-claims", "20", "--rss-seconds", "1"], 120),
    ("taskflow", "posts", ["posts", "--budget", "10", "--max", "150",
                           "--levels", "0,100"], 60),
    ("taskflow", "claims-100", ["claims", "--level", "100", "--budget", "20",
                                "--seq-claims", "20"], 60),
    ("jobboard", "half", ["half", "--levels", "100", "--claims", "20"], 60),
    ("taskflow", "half-100", ["half", "--level", "100", "--budget", "20",
                              "--claims", "5"], 60),
    ("jobboard", "e2e", ["e2e", "--n", "10", "--concurrency", "1", "--budget", "30"], 60),
    ("taskflow", "e2e", ["e2e", "--n", "10", "--budget", "30"], 60),
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
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb,
            "kernel": platform.release(), "python": platform.python_version(),
            "zookeeper": zk_version, "zookeeper_config": {
                "fsync": True, "tickTime_ms": TICK_MS, "maxSessionTimeout_ms": MAX_SESSION_MS},
            "database": "SQLite files on the same disk (jobboard logbook; TaskFlow "
                        "SQLAlchemy persistence backend)",
            "versions": versions,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


# -- provenance --------------------------------------------------------------------


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                          timeout=20, check=False)


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The commit checked out in ``repo`` and whether the tree differs from it.

    Returns:
        ``{"commit": full hash or None, "short": 12 digits or None,
        "dirty": bool, "changed": [porcelain lines of changed tracked
        files], "has_tool": whether the commit holds bench/compare.py}``.
    """
    try:
        head = _git(repo, "rev-parse", "--verify", "HEAD")
        status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "short": None, "dirty": True, "changed": [],
                "has_tool": False}
    commit = head.stdout.strip() if head.returncode == 0 else None
    changed = status.stdout.splitlines() if status.returncode == 0 else ["(git status failed)"]
    has_tool = bool(commit) and _git(repo, "cat-file", "-e",
                                     f"{commit}:bench/compare.py").returncode == 0
    return {"commit": commit, "short": commit[:12] if commit else None,
            "dirty": bool(changed), "changed": changed, "has_tool": has_tool}


def refusal(git: dict[str, Any], targets: list[str], allow_dirty: bool) -> str | None:
    """Why a table may not be written to ``targets`` from this tree (None
    when it may): uncommitted changes to tracked files, no commit, or a
    commit without this tool, unless ``allow_dirty``."""
    if not targets or allow_dirty:
        return None
    where = " and ".join(targets)
    if not git.get("commit"):
        return (f"refusing to write {where}: no git commit to name (not a git checkout?); "
                "pass --allow-dirty to write it anyway, marked \"dirty tree\"")
    if git.get("dirty"):
        shown = ", ".join(line[3:] for line in git["changed"][:5])
        more = f" and {len(git['changed']) - 5} more" if len(git["changed"]) > 5 else ""
        return (f"refusing to write {where} from a dirty tree: {len(git['changed'])} "
                f"tracked file(s) differ from commit {git['short']} ({shown}{more}); "
                "commit them, or pass --allow-dirty (the table then says \"dirty tree\")")
    if not git.get("has_tool"):
        return (f"refusing to write {where}: commit {git['short']} does not contain "
                "bench/compare.py, so it is not the code that ran; commit the benchmark, "
                "or pass --allow-dirty")
    return None


def tree_text(git: dict[str, Any]) -> str:
    """``commit 1997a2d4c0ab (clean tree)`` / ``(dirty tree: ...)``."""
    if not git.get("commit"):
        return "no git commit (dirty tree)"
    if git.get("dirty"):
        return f"commit {git['short']} (dirty tree: {len(git['changed'])} changed files)"
    if not git.get("has_tool"):
        return f"commit {git['short']} (dirty tree: bench/compare.py not committed)"
    return f"commit {git['short']} (clean tree)"


def command_text(argv: list[str]) -> str:
    """The command that ran: ``BENCH_COMMAND`` (e.g. ``make bench``, set by
    the Makefile) with the actual argument list, or the argument list alone."""
    ran = shlex.join(["python", "-m", "bench.compare", *argv])
    outer = os.environ.get("BENCH_COMMAND")
    return f"{outer}, which ran: {ran}" if outer else ran


def select_plan(tokens: list[str] | None, quick: bool
                ) -> list[tuple[str, str, list[str], float]]:
    """The cases to run: all of PLAN (or QUICK_PLAN), or those matching a
    token: ``jobboard``/``taskflow``, a case name (``claims-1000``), its
    kind (``claims``), or ``system:name`` / ``system:kind``.

    Raises:
        SystemExit: a token matches no case.
    """
    plan = QUICK_PLAN if quick else PLAN
    if not tokens:
        return list(plan)

    def keys(system: str, name: str) -> set[str]:
        kind = name.split("-")[0]
        return {system, name, kind, f"{system}:{name}", f"{system}:{kind}"}

    unknown = [t for t in tokens if not any(t in keys(s, n) for s, n, _, _ in plan)]
    if unknown:
        names = ", ".join(f"{s}:{n}" for s, n, _, _ in plan)
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; the cases are: {names}")
    return [case for case in plan if any(t in keys(case[0], case[1]) for t in tokens)]


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


def level_problem(measured: Any, expected: int) -> str | None:
    """Text for a figure that did not run at the backlog its label names
    (None when it did): the count read back from the board, recorded by the
    side, must equal the label's."""
    if measured is None:
        return "backlog not recorded"
    if measured != expected:
        return f"ran at {measured:,} waiting, not {expected:,}"
    return None


def _levels(results: dict[str, Any], kind: str, default: tuple[int, ...]) -> list[int]:
    """The backlogs a run measured: jobboard's rows and TaskFlow's case names."""
    found = {row["backlog"] for row in results["jobboard"].get(kind, {}).get("levels", [])}
    tf_kind = "claims" if kind == "scale" else kind
    found |= {int(name.split("-")[1]) for name in results["taskflow"]
              if name.startswith(f"{tf_kind}-") and name.split("-")[1].isdigit()}
    return sorted(found - {0}) or list(default)


def build_rows(results: dict[str, Any], *, partial: bool = False) -> list[dict[str, Any]]:
    """[{figure, taskflow, jobboard, ratio, better}] from the raw results. A
    figure whose side did not record the exact backlog of its label shows why
    instead of a number. ``partial`` drops the rows no case of the run fed."""
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

    def jb_measure(row: dict, key: str, field: str, level: int) -> tuple[Any, str | None]:
        """A jobboard figure of a scale row, or why it has none."""
        measure = row.get(key)
        if not measure:
            return None, None
        problem = level_problem(measure.get("waiting_before"), level)
        return (None, problem) if problem else (measure.get(field), None)

    scale = {row["backlog"]: row for row in jb.get("scale", {}).get("levels", [])}
    levels = _levels(results, "scale", (1000, 10000, 100000))
    posts = tf.get("posts", {})
    curve = posts.get("curve", [])
    reached = posts.get("backlog_reached")

    def tf_post_rate(level: int) -> tuple[Any, str | None]:
        if posts.get("skipped"):
            return None, posts["skipped"]
        if not curve:
            return None, "not run"
        if reached is None or reached < level:
            return None, (f"not reached (stopped at {reached:,} waiting: "
                          f"{posts.get('stopped', 'budget')})")
        window = next((point for point in curve if point[0] == level), None)
        problem = level_problem(posts.get("measured_waiting", {}).get(str(level)), level)
        if window is None or problem:
            return None, problem or f"no window starts at {level:,} waiting"
        return window[1], None

    for level in (0, *levels):
        value, text = tf_post_rate(level)
        row = scale.get(level, {})
        label = "empty board" if level == 0 else f"{level:,} waiting"
        jb_value, jb_text = jb_measure(row, "sync_posts", "per_s", level)
        add(f"posts/s, sync, one client, a conductor watching ({label})", value,
            jb_value, tf_text=text, jb_text=jb_text)
    for level in (0, levels[-1]):
        row = scale.get(level, {})
        label = "empty board" if level == 0 else f"{level:,} waiting"
        jb_value, jb_text = jb_measure(row, "batched_posts", "per_s", level)
        add(f"posts/s, batched ({label})", None, jb_value, tf_text="no batch API",
            jb_text=jb_text)

    for level in levels:
        row = scale.get(level, {})
        claims = tf.get(f"claims-{level}", {})
        seq = claims.get("sequential", {})
        partial_text = _partial(claims, seq, None)
        if seq and partial_text is None:
            partial_text = level_problem(seq.get("waiting_before"), level)
        jb_seq, jb_seq_text = jb_measure(row, "sequential", "jobs_per_s", level)
        add(f"claim+consume/s, one process, sequential ({level:,} waiting)",
            None if partial_text and "budget" not in partial_text else seq.get("jobs_per_s"),
            jb_seq, tf_text=partial_text, jb_text=jb_seq_text)
        jb_pipe, jb_pipe_text = jb_measure(row, "pipelined", "jobs_per_s", level)
        add(f"claim+consume/s, one process, batched claims + 16 consume threads "
            f"({level:,} waiting)", None, jb_pipe, tf_text="no batch claim API",
            jb_text=jb_pipe_text)
        for q in ("p50", "p99"):
            jb_q, jb_q_text = jb_measure(row, "sequential", f"{q}_ms", level)
            tf_q = seq.get(f"{q}_ms") if not partial_text or "budget" in partial_text else None
            add(f"claim latency {q} ({level:,} waiting)", tf_q, jb_q, unit=" ms",
                higher_better=False, jb_text=jb_q_text,
                tf_text=None if tf_q is not None else partial_text)

    half_rows = {row["backlog"]: row for row in jb.get("half", {}).get("levels", [])}
    for level in _levels(results, "half", (1000, 10000)):
        row = half_rows.get(level, {})
        jb_problem = (level_problem(row.get("waiting_before"), level - row.get("held", 0))
                      if row else None)
        case = tf.get(f"half-{level}", {})
        seq = case.get("sequential", {})
        partial_text = _partial(case, seq, None)
        tf_problem = (level_problem(seq.get("waiting_before"), level - case.get("held", 0))
                      if seq else None)
        label = f"{level:,} jobs, the older half held by another conductor"
        for q in ("p50", "p99"):
            value = None if tf_problem else seq.get(f"{q}_ms")
            add(f"claim latency {q} ({label})", value,
                None if jb_problem else row.get(f"{q}_ms"), unit=" ms",
                higher_better=False, jb_text=jb_problem,
                tf_text=tf_problem or (partial_text if value is None else _fmt(value, " ms") + (
                    f" ({seq.get('claims')} claims in {seq.get('budget_s'):g} s)"
                    if not seq.get("finished") else "")))
        add(f"ZooKeeper requests per claim+consume ({label})",
            None if tf_problem else seq.get("zk_requests_per_claim_consume"),
            None if jb_problem else row.get("zk_requests_per_claim_consume"),
            higher_better=False, jb_text=jb_problem,
            tf_text=tf_problem or (None if seq else partial_text))

    jb_e2e = {run["concurrency"]: run for run in jb.get("e2e", {}).get("runs", [])}
    tf_e2e_case = tf.get("e2e", {})
    tf_e2e = (tf_e2e_case.get("runs") or [{}])[0]
    tf_e2e_text = tf_e2e_case.get("skipped") or (None if tf_e2e else "not run")
    add("end to end: one-task flows/s, conductor process + SQLite logbook "
        "(TaskFlow blocking; jobboard concurrency 1)", tf_e2e.get("jobs_per_s"),
        jb_e2e.get(1, {}).get("jobs_per_s"), tf_text=tf_e2e_text)
    add("end to end: same, jobboard concurrency 4", tf_e2e.get("jobs_per_s"),
        jb_e2e.get(4, {}).get("jobs_per_s"), tf_text=tf_e2e_text)

    rss_level = levels[-1]
    jb_rss = jb.get("scale", {}).get("rss", {})
    tf_rss_case = tf.get(f"claims-{rss_level}", {})
    tf_rss = tf_rss_case.get("rss", {})
    tf_rss_text = tf_rss_case.get("skipped") or (None if tf_rss else "not run")
    if tf_rss and level_problem(tf_rss.get("waiting"), rss_level):
        tf_rss_text = level_problem(tf_rss.get("waiting"), rss_level)
    elif tf_rss and not tf_rss.get("connected"):
        tf_rss_text = (f"{_fmt(tf_rss.get('vm_hwm_mb'), ' MB')} (still loading the "
                       f"listing after {tf_rss.get('connect_s')} s; ran no job)")
    elif tf_rss:
        tf_rss_text = (f"{_fmt(tf_rss.get('vm_hwm_mb'), ' MB')} "
                       f"({tf_rss.get('jobs_run')} jobs run in {tf_rss.get('seconds'):g} s)")
    jb_rss_text = None
    if jb_rss and level_problem(jb_rss.get("waiting"), rss_level):
        jb_rss_text = level_problem(jb_rss.get("waiting"), rss_level)
    elif jb_rss:
        jb_rss_text = (f"{_fmt(jb_rss.get('vm_hwm_mb'), ' MB')} ({jb_rss.get('jobs_run')} "
                       f"jobs run in {jb_rss.get('seconds', 0):g} s)")
    add(f"conductor peak RSS (VmHWM), {rss_level:,} waiting",
        tf_rss.get("vm_hwm_mb") if tf_rss_text is None or "MB" in tf_rss_text else None,
        jb_rss.get("vm_hwm_mb") if jb_rss_text is None or "MB" in jb_rss_text else None,
        unit=" MB", higher_better=False, tf_text=tf_rss_text, jb_text=jb_rss_text)

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
            tf_text=text(t) or tf.get("failover", {}).get("skipped"), jb_text=text(j))
    if partial:
        rows = [row for row in rows if row["jobboard_value"] is not None
                or row["taskflow_value"] is not None
                or _says_why(row["jobboard"]) or _says_why(row["taskflow"])]
    return rows


NOT_FED = ("—", "not run", "no batch API", "no batch claim API")


def _says_why(text: str) -> bool:
    """A cell that reports something (a failure, a wrong backlog), not merely
    a case that did not run."""
    return text not in NOT_FED and "not installed" not in text


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
                f"{expected or seq.get('target') or 'the'} claims in the "
                f"{seq.get('budget_s'):g} s budget)")
    if not seq:
        return f"did not finish ({case.get('error', case.get('phase', 'no result'))})"
    return None


def markdown(rows: list[dict[str, Any]], document: dict[str, Any]) -> str:
    info = document["machine"]
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
              f"jobboard {_provenance(document)}; {info['date']}; load average "
              f"{info['load_average_at_start']} at start, {info.get('load_average_at_end')} "
              "at end."),
              "", f"Command: `{document['command']}`"]
    if "git" in document:     # written by this version: the sides check backlogs
        lines[-2:-2] = ["", ("Backlogs: each \"N waiting\" figure started with exactly N "
                             "waiting jobs (drained or refilled before each measurement, "
                             "counted from the board; the counts before and after are in the "
                             "JSON). A conductor watching: on both sides, a conductor at "
                             "capacity, holding one claimed job and its board's watches "
                             "(see bench/jobboard_side.py).")]
    if document.get("partial"):
        lines += ["", f"Partial run: only {document['partial']}; not a full `make bench`."]
    return "\n".join(lines) + "\n"


def _provenance(document: dict[str, Any]) -> str:
    if "git" in document:
        return tree_text(document["git"])
    recorded = document.get("machine", {}).get("jobboard_commit")
    return f"{recorded or 'unknown commit'} (as recorded; tree state not recorded)"


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("(no figures)")
        return
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "latest.json"))
    parser.add_argument("--markdown", default=str(REPO / "bench" / "results" / "latest.md"),
                        help="the table ('' for none)")
    parser.add_argument("--readme", default=None,
                        help="README whose table (between the bench markers) is refreshed "
                             "(default: README.md after a full run, none after a partial one; "
                             "'' for none)")
    parser.add_argument("--cases", action="append", metavar="CASES",
                        help="run only these cases, comma-separated: jobboard, taskflow, a "
                             "kind (scale, posts, claims, half, e2e, failover), a name "
                             "(claims-1000) or system:name (repeatable)")
    parser.add_argument("--only", action="append", help=argparse.SUPPRESS)  # older spelling
    parser.add_argument("--quick", action="store_true",
                        help="tiny cases (a backlog of 100, a few claims): checks the "
                             "pipeline in under a minute; the figures mean nothing")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="write the table from a tree with uncommitted changes "
                             "(it then says \"dirty tree\")")
    parser.add_argument("--rebuild", action="store_true",
                        help="only rebuild the table from the raw results in --json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, *, repo: Path = REPO) -> None:
    """Run the cases and write the results; ``repo`` is the checkout whose
    git state is recorded (and checked before anything runs)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    tokens = [t for group in (args.cases or []) + (args.only or []) for t in group.split(",")
              if t]
    partial = ", ".join(tokens) if tokens else ""
    if args.quick:
        partial = f"the --quick cases{' ' + partial if partial else ''}"
    git = git_state(repo)
    if args.rebuild:
        document = json.loads(Path(args.json).read_text())
        if args.readme is None:
            args.readme = "" if document.get("partial") else str(REPO / "README.md")
        targets = [path for path in (args.markdown, args.readme) if path]
        problem = refusal(git, targets, args.allow_dirty)
        if "git" not in document and targets and not args.allow_dirty:
            problem = (f"refusing to rebuild from {args.json}: it records no git state "
                       "(written by an older bench/compare.py); run the benchmark again, "
                       "or pass --allow-dirty")
        problem = problem or refusal(document.get("git", {}), targets, args.allow_dirty)
        if problem:
            raise SystemExit(problem)
        write(document, build_rows(document["raw"], partial=bool(document.get("partial"))),
              args)
        return
    if args.readme is None:
        args.readme = "" if partial else str(REPO / "README.md")
    targets = [path for path in (args.markdown, args.readme) if path]
    problem = refusal(git, targets, args.allow_dirty)
    if problem:    # before the 20 minutes of running, not after
        raise SystemExit(problem)
    plan = select_plan(tokens, args.quick)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    have_taskflow = importlib.util.find_spec("taskflow") is not None
    workdir = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    info: dict[str, Any] = {}
    results: dict[str, Any] = {"jobboard": {}, "taskflow": {}}
    started = time.monotonic()
    for system, name, arguments, limit in plan:
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
    document = {"machine": machine, "git": git, "command": command_text(argv),
                "partial": partial, "cases": [f"{s}:{n}" for s, n, _, _ in plan],
                "table": [], "raw": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(document, indent=1, default=str) + "\n")
    write(document, build_rows(results, partial=bool(partial)), args)
    print(f"(work files in {workdir})")


def write(document: dict[str, Any], rows: list[dict[str, Any]],
          args: argparse.Namespace) -> None:
    document["table"] = rows
    written = []
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=1, default=str) + "\n")
        written.append(args.json)
    table = markdown(rows, document)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
        written.append(args.markdown)
    if args.readme and update_readme(Path(args.readme), table):
        written.append(args.readme)
    print()
    print_table(rows)
    print(f"\nwritten: {', '.join(written) or 'nothing'}")


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
