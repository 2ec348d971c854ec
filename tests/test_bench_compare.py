"""The side-by-side benchmark's honesty (bench/compare.py and its two sides):
tables come from a clean commit that holds the tool, name the command that
ran, every "N waiting" figure ran at exactly N waiting jobs, and the
watching conductor really watches. Real ZooKeeper, real processes, real git
(in a temporary repository: /work/main's own git state is only read)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bench import compare, jobboard_side
from bench._common import stop
from jobboard.board import Board
from jobboard.testing.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=bench-test", "-c", "user.email=t@example.org",
                           *args], cwd=repo, check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A throwaway git repository with one commit holding bench/compare.py."""
    path = tmp_path / "repo"
    (path / "bench").mkdir(parents=True)
    (path / "bench" / "compare.py").write_text("# the tool\n")
    (path / "README.md").write_text("readme\n")
    _git(path, "init", "-q")
    _git(path, "add", ".")
    _git(path, "commit", "-q", "-m", "first")
    return path


# -- provenance ----------------------------------------------------------------------


def test_a_clean_tree_names_an_existing_commit(repo):
    (repo / "scratch.txt").write_text("untracked files do not make the tree dirty\n")
    git = compare.git_state(repo)
    assert git["commit"] == _git(repo, "rev-parse", "HEAD")
    assert not git["dirty"] and git["has_tool"]
    assert compare.refusal(git, ["latest.md"], allow_dirty=False) is None
    assert compare.tree_text(git) == f"commit {git['short']} (clean tree)"
    _git(repo, "cat-file", "-e", git["short"])      # the short hash resolves too


def test_a_dirty_tree_is_refused_before_anything_runs(repo, tmp_path):
    (repo / "README.md").write_text("edited, not committed\n")
    out_json, out_md = tmp_path / "out.json", tmp_path / "out.md"
    with pytest.raises(SystemExit) as refused:
        compare.main(["--quick", "--cases", "scale", "--json", str(out_json),
                      "--markdown", str(out_md)], repo=repo)
    message = str(refused.value.code)
    assert "dirty tree" in message and "--allow-dirty" in message and "README.md" in message
    assert not out_json.exists() and not out_md.exists()

    git = compare.git_state(repo)
    assert git["dirty"]
    assert compare.refusal(git, ["out.md"], allow_dirty=True) is None
    assert "dirty tree" in compare.tree_text(git)
    assert compare.refusal(git, [], allow_dirty=False) is None   # JSON alone is fine


def test_a_commit_without_the_tool_is_refused(repo):
    _git(repo, "rm", "-q", "bench/compare.py")
    _git(repo, "commit", "-q", "-m", "no tool")
    git = compare.git_state(repo)
    assert not git["dirty"] and not git["has_tool"]
    assert "does not contain bench/compare.py" in compare.refusal(git, ["x.md"], False)
    assert "dirty tree" in compare.tree_text(git)


def test_the_recorded_command_is_the_one_that_ran(monkeypatch):
    monkeypatch.delenv("BENCH_COMMAND", raising=False)
    assert compare.command_text(["--cases", "scale"]) == "python -m bench.compare --cases scale"
    monkeypatch.setenv("BENCH_COMMAND", "make bench")
    assert (compare.command_text(["--json", "a b.json"])
            == "make bench, which ran: python -m bench.compare --json 'a b.json'")


def test_case_selection():
    names = lambda plan: [f"{s}:{n}" for s, n, _, _ in plan]  # noqa: E731
    assert names(compare.select_plan(None, quick=False)) == names(compare.PLAN)
    assert names(compare.select_plan(["scale"], quick=False)) == ["jobboard:scale"]
    assert names(compare.select_plan(["claims"], quick=False)) == [
        "taskflow:claims-1000", "taskflow:claims-10000", "taskflow:claims-100000"]
    assert names(compare.select_plan(["taskflow:half-1000", "jobboard:e2e"], quick=False)) == [
        "taskflow:half-1000", "jobboard:e2e"]
    with pytest.raises(SystemExit, match="unknown case"):
        compare.select_plan(["scales"], quick=False)


# -- backlogs --------------------------------------------------------------------------


def test_the_backlog_is_set_exactly_up_and_down(board):
    assert jobboard_side.set_level(board, 30)["posted"] == 30
    assert jobboard_side.waiting(board) == 30
    board.post_many([{"factory": jobboard_side.FACTORY} for _ in range(25)])
    assert jobboard_side.set_level(board, 20)["drained"] == 35
    assert jobboard_side.waiting(board) == 20
    measured = jobboard_side.at_level(board, 12, lambda: {"posted": len(board.post_many(
        [{"factory": jobboard_side.FACTORY} for _ in range(5)]))})
    assert measured == {"posted": 5, "waiting_before": 12, "waiting_after": 17}


def _results(waiting_before: int) -> dict:
    measure = {"per_s": 500.0, "jobs_per_s": 100.0, "p50_ms": 3.0, "p99_ms": 9.0,
               "waiting_before": waiting_before}
    row = {"backlog": 1000, "sync_posts": measure, "batched_posts": measure,
           "sequential": measure, "pipelined": measure}
    return {"jobboard": {"scale": {"levels": [row]}}, "taskflow": {}}


def test_a_figure_that_ran_at_another_backlog_shows_no_number():
    right = {r["figure"]: r for r in compare.build_rows(_results(1000), partial=True)}
    wrong = {r["figure"]: r for r in compare.build_rows(_results(2300), partial=True)}
    figure = "claim latency p99 (1,000 waiting)"
    assert right[figure]["jobboard"] == "9.0 ms" and right[figure]["jobboard_value"] == 9.0
    assert wrong[figure]["jobboard"] == "ran at 2,300 waiting, not 1,000"
    assert wrong[figure]["jobboard_value"] is None
    posts = "posts/s, sync, one client, a conductor watching (1,000 waiting)"
    assert wrong[posts]["jobboard"] == "ran at 2,300 waiting, not 1,000"
    unrecorded = _results(1000)
    del unrecorded["jobboard"]["scale"]["levels"][0]["sequential"]["waiting_before"]
    rows = {r["figure"]: r for r in compare.build_rows(unrecorded, partial=True)}
    assert rows[figure]["jobboard"] == "backlog not recorded"


# -- watching ----------------------------------------------------------------------


def test_the_watcher_holds_a_claim_and_keeps_the_queue_watched(zk_server, tmp_path):
    """ZooKeeper's ``wchc`` lists data watches only, and the claimer's are
    child watches: so the watch is shown working. A new queue bucket (a post
    at another priority) wakes the watcher; the old watcher, which never
    claimed, set no watch on the queue and slept through it."""
    root = f"/watch-{uuid.uuid4().hex[:8]}"
    with Board.connect(zk_server.address, root=root) as board:
        process, seen = jobboard_side.start_watcher(zk_server.address, root, tmp_path, board)
        ready = next(tmp_path.glob("watch-ready-*[0-9]"))

        def wakes() -> int:
            return json.loads(ready.read_text())["wakes"]

        try:
            assert board.claim_owner(seen["held"]) == jobboard_side.WATCHER
            assert jobboard_side.waiting(board) == 0      # it took the only job
            assert seen["session_id"] and seen["wakes"] == 0
            board.post(jobboard_side.FACTORY, priority=5)
            assert wait_until(lambda: wakes() >= 1, 10.0), "the queue watch did not fire"
            assert board.claim_owner(seen["held"]) == jobboard_side.WATCHER
            assert jobboard_side.waiting(board) == 1      # woken, at capacity: no claim
        finally:
            stop(process)
        assert process.returncode == 0
        assert board.claim_owner(seen["held"]) is None    # given back on SIGTERM
        assert jobboard_side.waiting(board) == 2


# -- a tiny run, end to end ------------------------------------------------------------


def _bench_python() -> tuple[str, bool]:
    """.venv-bench's interpreter when it has TaskFlow, else ours (TaskFlow's
    side is then skipped)."""
    candidate = REPO / ".venv-bench" / "bin" / "python"
    if candidate.exists() and subprocess.run(
            [str(candidate), "-c", "import taskflow, jobboard"], capture_output=True,
            timeout=60, check=False).returncode == 0:
        return str(candidate), True
    return sys.executable, importlib.util.find_spec("taskflow") is not None


def test_a_quick_partial_run_end_to_end(tmp_path):
    python, have_taskflow = _bench_python()
    readme_before = (REPO / "README.md").read_bytes()
    out_json, out_md = tmp_path / "quick.json", tmp_path / "quick.md"
    cases = "scale,claims,posts" if have_taskflow else "scale"
    args = ["--quick", "--cases", cases, "--allow-dirty", "--json", str(out_json),
            "--markdown", str(out_md)]
    env = {**os.environ, "BENCH_COMMAND": "make bench-quick-test"}
    done = subprocess.run([python, "-m", "bench.compare", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    document = json.loads(out_json.read_text())
    table = out_md.read_text()

    # Provenance: the command that ran, the commit it ran from, partial.
    assert document["command"] == ("make bench-quick-test, which ran: python -m "
                                   f"bench.compare {' '.join(args)}")
    assert f"Command: `{document['command']}`" in table
    git = compare.git_state(REPO)
    assert document["git"]["commit"] == git["commit"]
    subprocess.run(["git", "cat-file", "-e", git["commit"]], cwd=REPO, check=True,
                   timeout=30)
    # (others may edit the checkout meanwhile: the count of changed files is
    # the run's own, as recorded)
    assert f"jobboard {compare.tree_text(document['git'])}" in table
    assert f"jobboard commit {git['short']} (" in table
    assert ("dirty tree" in table) == document["git"]["dirty"]
    assert "Partial run: only the --quick cases" in table
    assert (REPO / "README.md").read_bytes() == readme_before   # partial: README untouched

    # Backlogs: every measurement started at its label's count.
    scale = document["raw"]["jobboard"]["scale"]
    assert [row["backlog"] for row in scale["levels"]] == [0, 100]
    for row in scale["levels"]:
        keys = ["sync_posts", "batched_posts"] + (["sequential", "pipelined"]
                                                  if row["backlog"] else [])
        for key in keys:
            assert row[key]["waiting_before"] == row["backlog"], (key, row)
        assert row["watcher"]["held"]
    assert scale["rss"]["waiting"] == 100
    figures = {row["figure"]: row for row in document["table"]}
    assert isinstance(figures["claim latency p50 (100 waiting)"]["jobboard_value"], float)
    if have_taskflow:
        claims = document["raw"]["taskflow"]["claims-100"]["sequential"]
        assert claims["waiting_before"] == 100
        posts = document["raw"]["taskflow"]["posts"]
        assert posts["measured_waiting"] == {"0": 0, "100": 100}
        assert [point[0] for point in posts["curve"]][:2] == [0, 100]
        assert isinstance(figures["claim latency p50 (100 waiting)"]["taskflow_value"], float)
