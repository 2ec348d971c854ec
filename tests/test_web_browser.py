"""The console in a real browser: headless Debian chromium driven by
Playwright, against a real ZooKeeper, a SQLite logbook, two real conductor
processes and ``python -m jobboard.web`` itself.

Walks what an admin does: open the jobs page, filter it, open a job and
read its timeline, transfer a claim and watch it move, cancel a running job
and watch it end -- the last two without reloading the page (the server-sent
events redraw it). A screenshot of each page goes to the test's tmp_path.

Skips when chromium or Playwright is missing, except under CI=true, where
that fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jobboard.board import Board
from jobboard.states import JobState
from fleet_processes import ConductorProcess, registration
from test_conductor import wait_until

CHROMIUM = "/usr/bin/chromium"
GATED = "jobboard.testing.lifecycle_flows:gated"
FIVE = "jobboard.testing.flows:five_steps"
NOOP = "jobboard.testing.flows:noop"
TOKEN = "s3cret-console-token"
ROOT = "/jobboard"
#: Milliseconds a page may take to show a change (live updates: 1-2 s).
SHOWN = 15_000


def _browser_or_skip() -> str:
    """Debian's chromium, when it and Playwright are installed."""
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    missing = None
    if executable is None:
        missing = f"chromium is not installed ({CHROMIUM}): apt-get install chromium"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed: pip install -e '.[test]'"
    if missing is None:
        return executable
    if os.environ.get("CI") == "true":
        pytest.fail(missing)
    pytest.skip(missing)


class Console:
    """``python -m jobboard.web`` on a free port, with a token access file."""

    def __init__(self, tmp_path: Path, zk: str, logbook: str, *extra: str) -> None:
        access = tmp_path / "access"
        access.write_text(f"# console users\n{TOKEN}\n")
        access.chmod(0o600)
        env = {**os.environ, "JOBBOARD_ZK": zk, "JOBBOARD_ROOT": ROOT,
               "JOBBOARD_LOGBOOK": logbook}
        self.log = tmp_path / "console.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobboard.web", "--port", "0", "--access-file",
             str(access), *extra], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, text=True)
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(self.proc.stderr.readline()),
                                  daemon=True)
        reader.start()
        reader.join(30)
        line = first[0] if first else ""
        if "serving the console on " not in line:
            self.stop()
            raise AssertionError(f"the console did not start: {line!r}")
        self.url = line.split("serving the console on ", 1)[1].split()[0].rstrip("/")
        # keep draining stderr into the log, so the console never blocks on it
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        with open(self.log, "a") as out:
            for line in self.proc.stderr:
                out.write(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def fleet_board(zk_hosts):
    with Board.connect(zk_hosts, root=ROOT) as board:
        yield board


@pytest.fixture
def page():
    executable = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.set_default_timeout(SHOWN)
            yield context.new_page()
        finally:
            browser.close()


def test_an_admin_filters_reads_a_timeline_transfers_and_cancels(page, fleet_board, zk_hosts,
                                                                  tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=SHOWN)
    board = fleet_board
    logbook = f"sqlite:///{tmp_path}/logbook.db"
    conductors = [ConductorProcess(name, zk=zk_hosts, root=ROOT, logbook=logbook,
                                   log_dir=tmp_path) for name in ("c1", "c2")]
    console = None
    try:
        journal, gate = str(tmp_path / "journal"), str(tmp_path / "gate")
        failing = board.post(FIVE, name="fails-at-step2",
                             args={"journal": journal, "fail_at": "step2"})
        moving = board.post(GATED, name="held-for-transfer",
                            args={"journal": journal, "gate": gate})
        stopping = board.post(GATED, name="held-for-cancel",
                              args={"journal": journal, "gate": gate})
        for n in range(3):
            board.post(NOOP, name=f"quick-{n}", priority=n)
        console = Console(tmp_path, zk_hosts, logbook)
        wait_until(lambda: all(registration(board, c.name) for c in conductors), 30,
                   "both conductors to register")
        assert board.wait(failing.uuid, timeout=30).state is JobState.FAILED
        wait_until(lambda: {moving.uuid, stopping.uuid} <= {c["job_id"] for c in board.claims()},
                   30, "the gated jobs to be claimed")

        # -- the jobs page, signed in with the token ------------------------------
        page.goto(f"{console.url}/login?token={TOKEN}")
        expect(page).to_have_url(f"{console.url}/jobs")
        rows = page.locator("#jobs tbody tr[data-job]")
        expect(rows).to_have_count(6)
        expect(page.locator("#counts [data-state=CLAIMED] b")).to_have_text("2")
        expect(page.locator("#live")).to_have_text("● live")
        page.screenshot(path=str(tmp_path / "1-jobs.png"), full_page=True)

        # -- filter: the failed jobs --------------------------------------------
        page.select_option("select[name=state]", "FAILED")
        page.click("#filters button[type=submit]")
        expect(page).to_have_url(f"{console.url}/jobs?state=FAILED&q=&factory=&queue="
                                 "&priority=&min_age=&max_age=")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("fails-at-step2")
        expect(rows.first).to_contain_text("FAILED")
        page.screenshot(path=str(tmp_path / "2-jobs-failed.png"), full_page=True)

        # -- one job: its record, history and logbook timeline ----------------------
        rows.first.locator("a").click()
        expect(page).to_have_url(f"{console.url}/jobs/{failing.uuid}")
        timeline = page.locator("#job-timeline")
        expect(timeline.locator("tr[data-task=step1]")).to_contain_text("REVERTED")
        expect(timeline.locator("tr[data-task=step2]")).to_contain_text("REVERTED")
        expect(timeline).to_contain_text("RuntimeError: step2 failed on purpose")
        expect(timeline.locator("pre").first).to_contain_text("Traceback (most recent call last)")
        expect(page.locator("#job-state")).to_contain_text("FAILED")
        expect(page.locator("#job-history")).to_contain_text("claimed")
        expect(page.locator("button[data-action=retry]")).to_be_enabled()
        expect(page.locator("button[data-action=transfer]")).to_be_disabled()
        page.screenshot(path=str(tmp_path / "3-job-timeline.png"), full_page=True)

        # -- transfer a claim and watch it move ------------------------------------
        page.goto(f"{console.url}/claims")
        row = page.locator(f"#claims tr[data-job='{moving.uuid}']")
        expect(row).to_be_visible()
        before = row.locator("td.owner").inner_text()
        after = "c2" if before == "c1" else "c1"
        expect(page.locator(f"#conductors tr[data-conductor={after}]")).to_contain_text("READY")
        page.evaluate("window.notReloaded = true")
        row.locator("button[data-action=transfer]").click()
        expect(page.locator("#confirm-to")).to_have_value(after)
        page.click("#confirm-yes")
        expect(page.locator("#flash")).to_contain_text(f"transferred {moving.uuid}")
        expect(row.locator("td.owner")).to_have_text(after)
        assert page.evaluate("window.notReloaded") is True
        assert board.claim_owner(moving.uuid) == after
        page.screenshot(path=str(tmp_path / "4-claims-transferred.png"), full_page=True)

        # -- cancel a running job and watch it end ---------------------------------
        page.goto(f"{console.url}/jobs/{stopping.uuid}")
        expect(page.locator("#job-state")).to_contain_text("CLAIMED")
        expect(page.locator("#job-timeline tr[data-task=wait]")).to_contain_text("RUNNING")
        page.evaluate("window.notReloaded = true")
        page.click("button[data-action=cancel]")
        expect(page.locator("#confirm-text")).to_contain_text("Cancel job")
        page.click("#confirm-yes")
        expect(page.locator("#flash")).to_contain_text("asked")
        expect(page.locator("#job-state")).to_contain_text("CANCELLED")
        expect(page.locator("#job-timeline .attempt summary").first).to_contain_text("CANCELLED")
        assert page.evaluate("window.notReloaded") is True
        assert board.get(stopping.uuid).state is JobState.CANCELLED
        page.screenshot(path=str(tmp_path / "5-job-cancelled.png"), full_page=True)
    finally:
        if console is not None:
            console.stop()
        for conductor in conductors:
            conductor.stop()
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert shots == ["1-jobs.png", "2-jobs-failed.png", "3-job-timeline.png",
                     "4-claims-transferred.png", "5-job-cancelled.png"]
