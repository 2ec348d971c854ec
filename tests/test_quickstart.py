"""The README's Quick start runs as written: its fenced blocks under
"## Quick start", in order, against a development ZooKeeper that
`jobboard dev zookeeper` starts (on a free port instead of 2181), with the
default logbook under a temporary $XDG_STATE_HOME.

Shell blocks: every command line runs (``pip`` lines are skipped: the
package is installed); a line ending in ``&`` runs in the background until
the end of the test, and is waited for until it says it is up. Python
blocks: one starting with ``# path.py`` is that file; any other runs as a
script.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import jobboard
from jobboard.testing.zookeeper import free_port

pytestmark = pytest.mark.timeout(240)

SOURCE_ROOT = Path(jobboard.__file__).resolve().parent.parent
README = Path(os.environ.get("JOBBOARD_README", SOURCE_ROOT / "README.md"))
DEFAULT_ZK = "127.0.0.1:2181"
# What a background command prints on stderr once it is up.
UP = {"zookeeper": "ZooKeeper serving on", "conductor": "running ("}


def quickstart_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block of the "## Quick start" section."""
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [(lang, body) for lang, body in
            re.findall(r"^```(\w*)\n(.*?)^```", section, flags=re.S | re.M)]


def test_readme_quickstart_has_what_the_test_runs():
    blocks = quickstart_blocks(README.read_text())
    languages = [lang for lang, _ in blocks]
    assert "sh" in languages and "python" in languages
    text = "\n".join(body for _, body in blocks)
    assert "jobboard dev zookeeper" in text and "--wait" in text
    for name in ("Email", "Audit", "attach", "detach"):
        assert re.search(rf"^(class|def) {name}\b", text, flags=re.M), name


def _wait_up(proc: subprocess.Popen, marker: str, seen: list[str]) -> None:
    """Read the process's stderr until ``marker`` (bounded by the test timeout)."""
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"exited before {marker!r}: {''.join(seen)}")


def test_readme_quickstart_runs_as_written(tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBBOARD_")}
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), JOBBOARD_ZK=address,
               PYTHONPATH=str(SOURCE_ROOT))
    background: list[subprocess.Popen] = []
    outputs: list[str] = []
    try:
        for lang, body in quickstart_blocks(README.read_text()):
            if lang == "python":
                first = body.splitlines()[0]
                if re.fullmatch(r"# [\w/]+\.py", first):
                    path = work / first[2:]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    (path.parent / "__init__.py").touch()
                    path.write_text(body)
                    continue
                script = body.replace(DEFAULT_ZK, address)
                done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env,
                                      capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, done.stderr
                outputs.append(done.stdout)
                continue
            if lang != "sh":
                continue
            for line in body.splitlines():
                words = shlex.split(line, comments=True)
                if not words or words[0] == "pip":
                    continue
                extra = {}
                while "=" in words[0]:
                    key, _, value = words.pop(0).partition("=")
                    extra[key] = str((work / value).resolve()) + os.pathsep + env["PYTHONPATH"] \
                        if key == "PYTHONPATH" else value
                in_background = words[-1] == "&"
                words = [w for w in words if w != "&"]
                assert words[0] == "jobboard", line
                command = [sys.executable, "-m", "jobboard", *words[1:]]
                if words[1:3] == ["dev", "zookeeper"]:
                    command += ["--port", str(port)]
                if in_background:
                    proc = subprocess.Popen(command, cwd=work, env={**env, **extra},
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
                    background.append(proc)
                    marker = next(m for key, m in UP.items() if key in words)
                    _wait_up(proc, marker, [])
                else:
                    done = subprocess.run(command, cwd=work, env={**env, **extra},
                                          capture_output=True, text=True, timeout=120)
                    assert done.returncode == 0, (line, done.stdout, done.stderr)
                    outputs.append(done.stdout)
    finally:
        for proc in reversed(background):           # the conductor, then ZooKeeper
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=10)
    assert [proc.returncode for proc in background] == [0] * len(background)

    posted, from_python = outputs
    state_line, *results = posted.splitlines()
    assert re.fullmatch(r"[0-9a-f-]{36} COMPLETE", state_line), posted
    assert '  attachment_id: "attachment-v-1-s-9"' in results
    assert from_python.strip() == "COMPLETE attachment-v-1-s-9"
    assert (tmp_path / "state" / "jobboard" / "logbook.db").exists()
    assert (tmp_path / "state" / "jobboard" / "zookeeper" / "version-2").is_dir()
    assert list(work.glob("*.db")) == []            # nothing relative to the directory
