"""Helpers shared by the side-by-side benchmark (jobboard vs TaskFlow).

Every case runs in its own process (``python -m bench.jobboard_side CASE`` or
``python -m bench.taskflow_side CASE``) and writes its results, as they come,
to a JSON file: when the orchestrator (:mod:`bench.compare`) has to kill a
case that overran its budget, what was measured so far survives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jobboard.testing.waiting import wait_until

# One SQL "database" for both systems: SQLite files on the same disk.
PYTHON = sys.executable


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(latencies: list[float]) -> dict[str, Any]:
    """Seconds in, milliseconds out."""
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {"claims": len(latencies),
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2)}


class Results:
    """A dict written to ``path`` after every update (atomic rename)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.flush()

    def flush(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as handle:
            json.dump(self.data, handle, indent=1, default=str)
        os.replace(tmp, self.path)


class Budget:
    """A deadline: ``left()`` seconds, ``over()``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def over(self) -> bool:
        return self.left() <= 0


def memory_mb(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of a live process, MB."""
    kb = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    kb[key] = int(rest.split()[0])
    except OSError:
        pass
    return {"vm_hwm_mb": round(kb.get("VmHWM", 0) / 1024, 1),
            "vm_rss_mb": round(kb.get("VmRSS", 0) / 1024, 1)}


def spawn(args: list[str], log_path: str | Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen:
    """Start a child in its own process group, output to ``log_path``."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, **(env or {})})
    # The orchestrator ends these (by id) if it has to kill the case itself.
    pids_file = os.environ.get("BENCH_PIDS_FILE")
    if pids_file:
        with open(pids_file, "a") as handle:
            handle.write(f"{process.pid}\n")
    return process


def stop(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL the child's process group (only ours)."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def journal_lines(path: str) -> list[tuple[str, int]]:
    """(task, pid) lines of a :mod:`jobboard.testing.flows` journal."""
    try:
        with open(path, encoding="utf-8") as handle:
            out = []
            for line in handle:
                parts = line.split()
                if len(parts) == 2:
                    out.append((parts[0], int(parts[1])))
            return out
    except FileNotFoundError:
        return []


def kill_holder_and_time_resume(journal: str, gate: str, session_timeout: float
                                ) -> float | None:
    """The failover measurement, the same for both systems: SIGKILL the
    process holding step2 of a five-step journal job, open the gate, and
    return the seconds until another process has started step2 again (None
    when none did within the session timeout + 60 s)."""
    holding = wait_until(lambda: [pid for task, pid in journal_lines(journal)
                                  if task == "step2-holding"], 60, 0.01)
    if not holding:
        raise RuntimeError("no conductor started the job")
    victim = holding[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    Path(gate).write_text("open")

    def resumed() -> int | None:
        for task, pid in journal_lines(journal):
            if task == "step2" and pid != victim:
                return pid
        return None

    survivor = wait_until(resumed, session_timeout + 60, 0.005)
    return time.monotonic() - killed_at if survivor else None


def failover_row(session_timeout: float, resumed_after: float | None, journal: str,
                 final_state: str | None) -> dict[str, Any]:
    return {"session_timeout_s": session_timeout,
            "resumed_after_s": None if resumed_after is None else round(resumed_after, 2),
            "over_session_timeout_s": (None if resumed_after is None
                                       else round(resumed_after - session_timeout, 2)),
            "step1_runs": sum(1 for task, _ in journal_lines(journal) if task == "step1"),
            "final_state": final_state}
