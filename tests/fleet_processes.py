"""Conductor processes for the system tests (logbook outage, partition, job
model): ``python -m jobboard conductor`` with its own log file, optionally
inside a network namespace (``prefix``), and readings of what it registered
and exported.

(tests/test_conductor.py's ``conductor_process`` derives its log directory
from a SQLite URL and fixes the board root; these tests also run conductors
on PostgreSQL and inside ``ip netns exec``.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Sequence

ALLOW = "jobboard.testing"


class ConductorProcess:
    """One ``jobboard conductor`` process and its log file."""

    def __init__(self, name: str, *, zk: str, root: str, logbook: str, log_dir: Path,
                 extra: Sequence[str] = (), prefix: Sequence[str] = (),
                 session_timeout: float = 2.0, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        environment = {**os.environ, "JOBBOARD_ZK": zk, "JOBBOARD_ROOT": root,
                       "JOBBOARD_LOGBOOK": logbook, **(env or {})}
        command = [*prefix, sys.executable, "-m", "jobboard", "conductor", "--name", name,
                   "--allow", ALLOW, "--session-timeout", str(session_timeout), *extra]
        with open(self.log_path, "a") as log_file:
            self.proc = subprocess.Popen(command, env=environment, stdout=log_file,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        if self.alive:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """kill -9 and reap (bounded)."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGCONT + SIGTERM, then SIGKILL if it has not exited in ``timeout``."""
        if self.alive:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def registration(board: Any, name: str) -> dict[str, Any] | None:
    """The conductor's registration record on the board, None when absent."""
    for record in board.conductors():
        if record.get("name") == name:
            return record
    return None


_SAMPLE = re.compile(r'^(?P<metric>[a-zA-Z_:][\w:]*)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')


def metric_value(port: int, metric: str, labels: dict[str, str],
                 timeout: float = 3.0) -> float | None:
    """One sample scraped from ``http://127.0.0.1:{port}/metrics`` (None when
    absent or the exporter does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=timeout) as response:
            text = response.read().decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match is None or match["metric"] != metric:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match["value"])
    return None
