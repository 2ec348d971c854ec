"""The console without a browser: paging and filters on a real board, the
JSON API and its actions, HTTP access and CSRF, live events from real
ZooKeeper watches, and the command's refusals."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("starlette")
import httpx  # noqa: E402

with warnings.catch_warnings():   # starlette 1.x suggests httpx2 for its TestClient
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from jobboard.cli.admin_rules import Action, refusal  # noqa: E402
from jobboard.errors import ConfigError  # noqa: E402
from jobboard.states import JobState  # noqa: E402
from jobboard.web.access import Access, AccessKeys, check_bind  # noqa: E402
from jobboard.web.app import create_app  # noqa: E402
from jobboard.web.listing import JobFilter, list_jobs, state_counts  # noqa: E402

NOOP = "jobboard.testing.flows:noop"
REPO = Path(__file__).resolve().parent.parent


class Reads:
    """Counts what the console asks ZooKeeper for: records read and
    children listed (the real client still answers every call)."""

    def __init__(self, board) -> None:
        self.records = 0
        self.listings = 0
        read_many, get_children = board.records.read_many, board.client.get_children

        def counted_read_many(ids):
            self.records += len(ids)
            return read_many(ids)

        def counted_get_children(*args, **kwargs):
            self.listings += 1
            return get_children(*args, **kwargs)

        board.records.read_many = counted_read_many
        board.client.get_children = counted_get_children

    def reset(self) -> None:
        self.records = self.listings = 0


@pytest.fixture
def logbook_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/logbook.db"


def csrf_of(client: TestClient, path: str = "/jobs") -> str:
    page = client.get(path)
    assert page.status_code == 200
    marker = 'name="csrf-token" content="'
    return page.text.split(marker, 1)[1].split('"', 1)[0]


# -- listing ------------------------------------------------------------------------------

def test_a_page_of_waiting_jobs_reads_only_its_records_whatever_the_backlog(board):
    board.bucket_size = 50            # 1,000 jobs: 20 buckets, as 100,000 would make 100
    posted = board.post_many([{"factory": NOOP, "name": f"job-{n}", "priority": 5 * (n % 2)}
                              for n in range(1000)])
    reads = Reads(board)
    claim_order = list(board.index.waiting_ids())
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        reads.reset()
        page = list_jobs(board, JobFilter(state=JobState.UNCLAIMED), cursor=cursor, limit=25)
        pages += 1
        assert reads.records <= 25, "a page read records it does not show"
        assert reads.listings <= 5, "a page listed more than the buckets it walks"
        seen += [job.uuid for job in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 41      # 40 full pages, then one that finds the end
    assert seen == claim_order and len(set(seen)) == len(posted)
    assert {j.priority for j in list_jobs(board, JobFilter(state=JobState.UNCLAIMED),
                                          limit=25).jobs} == {5}, "higher priority first"

    reads.reset()
    low = list_jobs(board, JobFilter(state=JobState.UNCLAIMED, priority=0), limit=10)
    assert [j.priority for j in low.jobs] == [0] * 10 and reads.records == 10


def test_filters_match_fields_and_a_search_stops_at_its_budget(board):
    jobs = [board.post(NOOP, name=f"alpha-{n}", priority=n, queue="gpu" if n == 1
                       else "default") for n in range(3)]
    other = board.post("jobboard.testing.flows:needs_args", name="Beta", args={"region": "x"})
    board.cancel(jobs[2].uuid)

    def uuids(**fields) -> set[str]:
        return {j.uuid for j in list_jobs(board, JobFilter(**fields)).jobs}

    assert uuids() == {j.uuid for j in jobs} | {other.uuid}
    assert uuids(text="ALPHA") == {j.uuid for j in jobs}
    assert uuids(text=other.uuid[:8]) == {other.uuid}
    assert uuids(factory="needs_args") == {other.uuid}
    assert uuids(queue="gpu") == {jobs[1].uuid}
    assert uuids(state=JobState.CANCELLED) == {jobs[2].uuid}
    assert uuids(state=JobState.UNCLAIMED, priority=1) == {jobs[1].uuid}
    assert uuids(min_age=3600) == set() and len(uuids(max_age=3600)) == 4
    narrow = list_jobs(board, JobFilter(text="no such name"), budget=2)
    assert narrow.partial and narrow.scanned == 2 and narrow.next_cursor is not None
    rest = list_jobs(board, JobFilter(text="no such name"), cursor=narrow.next_cursor, budget=2)
    assert rest.scanned == 2 and not rest.jobs

    assert JobFilter.from_query({"state": "failed", "priority": "3", "q": " x "}) == \
        JobFilter(state=JobState.FAILED, priority=3, text="x")
    with pytest.raises(Exception, match="not a job state"):
        JobFilter.from_query({"state": "sleeping"})


def test_counts_come_from_stats(board):
    for n in range(4):
        board.post(NOOP, name=f"n{n}", priority=n % 2)
    board.post(NOOP, name="later", delay=600)
    counts = state_counts(board)
    assert (counts["total"], counts["UNCLAIMED"], counts["delayed"], counts["CLAIMED"],
            counts["FINISHED"]) == (5, 5, 1, 0, 0)
    assert counts["waiting_by_priority"] == {"0": 2, "1": 2}
    job = next(iter(board.jobs(JobState.UNCLAIMED)))
    board.claim(job, "me")
    board.trash(board.post(NOOP, name="gone").uuid)
    counts = state_counts(board)
    assert (counts["total"], counts["CLAIMED"]) == (5, 1)
    assert counts["UNCLAIMED"] + counts["CLAIMED"] + counts["DEAD"] + counts["FINISHED"] == 5


# -- the API and its actions ------------------------------------------------------------------

def test_api_serves_jobs_and_refuses_actions_by_the_cli_table(board, logbook_url, tmp_path):
    waiting = board.post(NOOP, name="waiting")
    doomed = board.post(NOOP, name="doomed")
    with TestClient(create_app(board, logbook_url, live=False)) as client:
        listed = client.get("/api/jobs", params={"q": "waiting"}).json()
        assert [j["uuid"] for j in listed["jobs"]] == [waiting.uuid]
        assert set(listed["jobs"][0]) >= set(waiting.to_dict()) | {"queue"}

        one = client.get(f"/api/jobs/{waiting.uuid[:8]}").json()
        assert one["uuid"] == waiting.uuid and one["holder"] is None
        assert one["logbook"] == {"attempts": [], "error": None}
        assert not (tmp_path / "logbook.db").exists(), "a read created the logbook"
        assert one["actions"]["cancel"] is None
        assert one["actions"]["retry"] == refusal(Action.RETRY, waiting)

        assert client.get("/api/jobs/0000").status_code == 404
        assert client.get("/api/jobs/not-a-job").status_code == 400
        assert client.get("/api/jobs", params={"state": "nope"}).status_code == 400

        assert client.post(f"/api/jobs/{waiting.uuid}/cancel").status_code == 403, \
            "an action without the page's CSRF token was done"
        token = csrf_of(client)
        headers = {"X-CSRF-Token": token}
        retried = client.post(f"/api/jobs/{waiting.uuid}/retry", headers=headers)
        assert retried.status_code == 409
        assert retried.json()["error"] == refusal(Action.RETRY, waiting)
        cancelled = client.post(f"/api/jobs/{waiting.uuid}/cancel", headers=headers)
        assert cancelled.status_code == 200, cancelled.text
        assert board.get(waiting.uuid).state is JobState.CANCELLED
        moved = client.post(f"/api/jobs/{doomed.uuid}/transfer", json={"to": "nobody"},
                            headers=headers)
        assert moved.status_code == 409 and "not claimed" in moved.json()["error"]
        trashed = client.post(f"/api/jobs/{doomed.uuid[:10]}/trash", headers=headers)
        assert trashed.status_code == 200 and "trashed" in trashed.json()["message"]
        assert client.get(f"/api/jobs/{doomed.uuid}").status_code == 404
        assert client.post(f"/api/jobs/{waiting.uuid}/explode", headers=headers).status_code \
            == 404
        foreign = client.post(f"/api/jobs/{waiting.uuid}/trash",
                              headers={**headers, "Origin": "http://evil.example"})
        assert foreign.status_code == 403 and board.get(waiting.uuid)

    with TestClient(create_app(board, logbook_url, read_only=True, live=False)) as client:
        token = csrf_of(client)
        refused = client.post(f"/api/jobs/{waiting.uuid}/trash", headers={"X-CSRF-Token": token})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
        assert '<meta name="read-only" content="yes">' in client.get("/claims").text
        assert board.get(waiting.uuid).state is JobState.CANCELLED


def test_claims_and_conductors_documents(board, logbook_url):
    job = board.post(NOOP, name="held")
    board.claim(job, "worker-1")
    board.register_conductor("worker-1", {"host": "h", "pid": 7, "concurrency": 2,
                                          "jobs": [job.uuid], "ready": False,
                                          "reason": "logbook down", "not_ready_since": 1.0})
    with TestClient(create_app(board, logbook_url, live=False)) as client:
        claims = client.get("/api/claims").json()
        assert [(c["job_id"], c["owner"], c["name"]) for c in claims["claims"]] == \
            [(job.uuid, "worker-1", "held")]
        assert claims["claims"][0]["task"] is None and claims["logbook_error"] is None
        (conductor,) = client.get("/api/conductors").json()["conductors"]
        assert conductor["slots_in_use"] == 1 and conductor["ready"] is False
        assert conductor["reason"] == "logbook down"
        assert client.get("/api").json()["endpoints"]


# -- access --------------------------------------------------------------------------------------

def test_access_file_and_binding(tmp_path):
    path = tmp_path / "access"
    path.write_text("# tokens and logins\ntok-1\n\nadmin:pa:ss\n")
    access = Access.read(path)
    assert access.tokens == {"tok-1"} and access.logins == {"admin": "pa:ss"}
    assert access.check_authorization("Bearer tok-1")
    assert access.check_authorization("Basic " + base64.b64encode(b"admin:pa:ss").decode())
    assert not access.check_authorization("Basic " + base64.b64encode(b"admin:no").decode())
    assert not access.check_authorization("Bearer tok-2")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no credential"):
        Access.read(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        Access.read(tmp_path / "missing")
    check_bind("127.0.0.1", None)
    check_bind("localhost", None)
    check_bind("0.0.0.0", access)
    with pytest.raises(ConfigError, match="without --access-file"):
        check_bind("0.0.0.0", None)


def test_http_access_by_token_cookie_or_basic_auth_and_csrf(board, logbook_url):
    access = Access(frozenset({"tok-1"}), {"admin": "secret"})
    job = board.post(NOOP, name="guarded")
    app = create_app(board, logbook_url, access=access, keys=AccessKeys(b"k" * 32), live=False)
    with TestClient(app) as client:
        denied = client.get("/api/jobs")
        assert denied.status_code == 401 and "basic" in denied.headers["www-authenticate"].lower()
        assert client.get("/jobs", headers={"Accept": "text/html"}).status_code == 401
        assert client.get("/static/console.js").status_code == 200
        assert client.get("/api/jobs", headers={"Authorization": "Bearer tok-1"}).status_code \
            == 200
        basic = "Basic " + base64.b64encode(b"admin:secret").decode()
        assert client.get("/api/jobs", headers={"Authorization": basic}).status_code == 200
        assert client.get("/login", params={"token": "wrong"}).status_code == 401
        signed_in = client.get("/login", params={"token": "tok-1"}, follow_redirects=False)
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/jobs"
        assert client.get("/api/jobs").status_code == 200, "the login cookie was not accepted"
        # a browser signed in by cookie still needs the page's CSRF token to act
        assert client.post(f"/api/jobs/{job.uuid}/cancel").status_code == 403
        token = csrf_of(client)
        assert client.post(f"/api/jobs/{job.uuid}/cancel",
                           headers={"X-CSRF-Token": token}).status_code == 200
    with TestClient(app) as script:
        # a script sending its credentials on each request has no cookie to forge
        done = script.post(f"/api/jobs/{job.uuid}/trash",
                           headers={"Authorization": "Bearer tok-1"})
        assert done.status_code == 200, done.text


def test_the_command_refuses_an_open_console_on_a_public_address(tmp_path):
    env = {**os.environ, "JOBBOARD_ZK": "127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-m", "jobboard.web", "--host", "0.0.0.0",
                           "--port", "0"], env=env, capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 1
    assert done.stderr.startswith("error: refusing to serve the console on 0.0.0.0 without "
                                  "--access-file"), done.stderr
    assert "Traceback" not in done.stderr


# -- live events ---------------------------------------------------------------------------------

class Served:
    """The app on uvicorn in a thread, on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def _next_change(lines, deadline: float) -> set[str]:
    for line in lines:
        if line.startswith("data: "):
            return set(json.loads(line[len("data: "):])["topics"])
        assert time.monotonic() < deadline, "no change event in time"
    raise AssertionError("the event stream ended")


def test_events_name_what_changed_within_a_second_or_two(board, logbook_url):
    job = board.post(NOOP, name="watched")
    served = Served(create_app(board, logbook_url))
    try:
        with httpx.Client(timeout=httpx.Timeout(10.0)) as client, \
                client.stream("GET", f"{served.url}/api/events",
                              params={"job": job.uuid}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            started = time.monotonic()
            board.cancel(job.uuid)
            topics = _next_change(lines, started + 5)
            while f"job:{job.uuid}" not in topics:
                topics = _next_change(lines, started + 5)
            assert time.monotonic() - started < 2.0
            started = time.monotonic()
            board.post(NOOP, name="new")
            topics = _next_change(lines, started + 5)
            while "queue" not in topics:
                topics = _next_change(lines, started + 5)
            assert time.monotonic() - started < 2.0
            board.claim(next(iter(board.jobs(JobState.UNCLAIMED))), "someone")
            topics = _next_change(lines, time.monotonic() + 5)
            while "claims" not in topics:
                topics = _next_change(lines, time.monotonic() + 5)
    finally:
        served.stop()
