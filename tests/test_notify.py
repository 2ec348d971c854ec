"""Notifications on a real ZooKeeper: on_finished and wait_many on jobs
finished by a real claim and consume (through connection losses and a new
session), the webhook publisher against a local HTTP receiver (up, down,
hanging), and the log publisher."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kazoo.client import KazooClient
from prometheus_client import CollectorRegistry

import jobboard
from jobboard.board import Board, Claimer
from jobboard.errors import InvalidArgument, JobNotFound
from jobboard.events import EventKind, Notifier
from jobboard.metrics import Metrics
from jobboard.notify import (Backoff, Dispatcher, LogPublisher, WebhookPublisher, document_of,
                             on_finished, verify_signature, wait_many)
from jobboard.notify._dispatch import default_dispatcher
from jobboard.notify.log import logfmt
from jobboard.states import JobState
from jobboard.testing.zookeeper import ZooKeeperServer, free_port

FACTORY = "tests.flows:noop"


def drain(dispatcher: Dispatcher | None = None, timeout: float = 10.0) -> None:
    """Return once every call queued on the dispatcher so far has run."""
    done = threading.Event()
    (dispatcher or default_dispatcher()).submit(done.set)
    assert done.wait(timeout)


def finish(board: Board, owner: str, state: JobState = JobState.COMPLETE, **outcome):
    """Claim the best waiting job and consume it with ``state``."""
    job = Claimer(board, owner).claim_next()
    assert job is not None
    board.consume(job, owner, {"results": outcome} if state is JobState.COMPLETE
                  else {"reason": f"made {state.value}"}, state=state)
    return job


class Recorder:
    """Calls of a callback, with an event per expected count."""

    def __init__(self, expected: int = 1) -> None:
        self.calls: list = []
        self.threads: set[str] = set()
        self.expected = expected
        self.enough = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, value) -> None:
        with self._lock:
            self.calls.append(value)
            self.threads.add(threading.current_thread().name)
            if len(self.calls) >= self.expected:
                self.enough.set()


# -- on_finished -------------------------------------------------------------------

def test_on_finished_is_called_once_with_the_outcome(board):
    job = board.post(FACTORY)
    got = Recorder()
    watch = on_finished(board, job.uuid, got)
    assert watch.active
    # Changes that do not finish the job (a claim) call nothing.
    claimed = Claimer(board, "c1").claim_next()
    assert claimed.uuid == job.uuid
    board.consume(claimed, "c1", {"results": {"answer": 42}})
    assert got.enough.wait(10)
    assert watch.wait(5) and not watch.active
    # Another change of the record (a trash) after the finish: no second call.
    board.trash(job.uuid)
    drain()
    assert len(got.calls) == 1
    outcome = got.calls[0]
    assert outcome.job_id == job.uuid and outcome.state is JobState.COMPLETE
    assert outcome.results == {"answer": 42}
    assert got.threads == {"jobboard-notify"}     # the dispatcher, not a kazoo thread
    assert watch.reads >= 2                        # a watch fired: no polling needed


def test_on_finished_of_a_job_already_finished_calls_at_once(board):
    job = board.post(FACTORY)
    finish(board, "c1", JobState.FAILED)
    got = Recorder()
    on_finished(board, job.uuid, got)
    assert got.enough.wait(10)
    assert got.calls[0].state is JobState.FAILED and got.calls[0].reason == "made FAILED"


def test_on_finished_sees_cancelled_and_dead(board):
    cancelled, dead = board.post(FACTORY), board.post(FACTORY)
    got = Recorder(expected=2)
    for job in (cancelled, dead):
        on_finished(board, job.uuid, got)
    finish(board, "c1", JobState.CANCELLED)
    record, stat = board.records.read(dead.uuid)
    board.dead_letter(record, stat.version, None, "made DEAD")
    assert got.enough.wait(10)
    assert {(o.job_id, o.state) for o in got.calls} == {(cancelled.uuid, JobState.CANCELLED),
                                                        (dead.uuid, JobState.DEAD)}


def test_on_finished_of_a_missing_or_trashed_job_reports_the_error(board):
    errors = Recorder(expected=2)
    got = Recorder()
    on_finished(board, "00000000-0000-4000-8000-000000000000", got, on_error=errors)
    job = board.post(FACTORY)
    on_finished(board, job.uuid, got, on_error=errors)
    board.trash(job.uuid)
    assert errors.enough.wait(10)
    assert all(isinstance(e, JobNotFound) for e in errors.calls)
    assert {e.job_id for e in errors.calls} == {job.uuid, "00000000-0000-4000-8000-000000000000"}
    assert got.calls == []
    with pytest.raises(InvalidArgument):
        on_finished(board, "not-a-job", got)


def test_a_cancelled_watch_calls_nothing(board):
    job = board.post(FACTORY)
    got = Recorder()
    watch = on_finished(board, job.uuid, got)
    watch.cancel()
    assert not watch.active and watch.wait(0)
    finish(board, "c1")
    seen = Recorder()
    on_finished(board, job.uuid, seen)        # a second watch proves the finish was seen
    assert seen.enough.wait(10)
    drain()
    assert got.calls == []


def test_a_slow_callback_does_not_stall_kazoo(board):
    """fn runs on the dispatcher: while it blocks, the client still answers."""
    first, second = board.post(FACTORY), board.post(FACTORY)
    release, entered = threading.Event(), threading.Event()

    def slow(outcome):
        entered.set()
        release.wait(10)

    dispatcher = Dispatcher(name="slow")
    on_finished(board, first.uuid, slow, dispatcher=dispatcher)
    finish(board, "c1")
    try:
        assert entered.wait(10)
        # kazoo's threads are free: a synchronous call and another watch work.
        assert board.get(second.uuid).state is JobState.UNCLAIMED
        got = Recorder()
        on_finished(board, second.uuid, got)
        finish(board, "c1")
        assert got.enough.wait(10)
    finally:
        release.set()
        dispatcher.stop()


# -- wait_many -------------------------------------------------------------------------

def test_wait_many_returns_every_outcome(board, zk_hosts):
    jobs = [board.post(FACTORY) for _ in range(6)]
    states = [JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED] * 2

    def consume_all():
        with Board.connect(zk_hosts, root="/jobboard") as other:
            for state in states:
                finish(other, "c1", state)

    worker = threading.Thread(target=consume_all)
    worker.start()
    outcomes = wait_many(board, [j.uuid for j in jobs] + [jobs[0].uuid], timeout=30)
    worker.join(30)
    assert list(outcomes) == [j.uuid for j in jobs]          # given order, no duplicate
    assert sorted(o.state.value for o in outcomes.values()) == sorted(s.value for s in states)
    assert wait_many(board, [], timeout=1) == {}


def test_wait_many_leaves_out_what_did_not_finish_in_time(board):
    done, waiting = board.post(FACTORY), board.post(FACTORY)
    board.post(FACTORY)
    finish(board, "c1")                 # the oldest: `done`
    started = time.monotonic()
    outcomes = wait_many(board, [done.uuid, waiting.uuid], timeout=0.5)
    assert 0.4 < time.monotonic() - started < 5
    assert list(outcomes) == [done.uuid]


def test_wait_many_raises_for_a_missing_job(board):
    job = board.post(FACTORY)
    with pytest.raises(JobNotFound):
        wait_many(board, [job.uuid, "00000000-0000-4000-8000-000000000000"], timeout=10)


@pytest.fixture
def own_zookeeper():
    """A ZooKeeper server of this test's own, to stop and start."""
    with ZooKeeperServer() as server:
        yield server


def test_waits_survive_a_zookeeper_restart(own_zookeeper):
    """The server goes away while the jobs wait, comes back; the jobs are
    finished by a client connected after the restart, as soon as it can."""
    hosts = own_zookeeper.address
    with Board.connect(hosts, root="/jobboard", session_timeout=30.0) as board:
        jobs = [board.post(FACTORY) for _ in range(3)]
        states: list[str] = []
        board.client.add_listener(states.append)
        got = Recorder()
        on_finished(board, jobs[0].uuid, got)
        result: dict = {}
        waiter = threading.Thread(target=lambda: result.update(
            wait_many(board, [j.uuid for j in jobs], timeout=60)))
        waiter.start()
        own_zookeeper.stop()
        own_zookeeper.start()
        with Board.connect(hosts, root="/jobboard", timeout=30) as other:
            for state in (JobState.COMPLETE, JobState.FAILED, JobState.COMPLETE):
                finish(other, "c1", state)
        waiter.join(60)
        assert not waiter.is_alive()
        assert [result[j.uuid].state for j in jobs] == [JobState.COMPLETE, JobState.FAILED,
                                                        JobState.COMPLETE]
        assert got.enough.wait(30) and got.calls[0].job_id == jobs[0].uuid
        assert "SUSPENDED" in states and states[-1] == "CONNECTED"


def test_waits_survive_a_new_session(board, zk_hosts):
    """The session expires (another client takes it over and closes it): the
    watches are gone with it; the reconnected client reads again and sees
    the job that finished in between."""
    jobs = [board.post(FACTORY) for _ in range(2)]
    got = Recorder()
    watch = on_finished(board, jobs[0].uuid, got)
    lost, connected_again = threading.Event(), threading.Event()

    def on_state(state):
        if state == "LOST":
            lost.set()
        elif state == "CONNECTED" and lost.is_set():
            connected_again.set()

    board.client.add_listener(on_state)
    result: dict = {}
    waiter = threading.Thread(target=lambda: result.update(
        wait_many(board, [j.uuid for j in jobs], timeout=60)))
    waiter.start()
    reads = watch.reads
    with Board.connect(zk_hosts, root="/jobboard") as other:
        thief = KazooClient(hosts=zk_hosts.partition("/")[0], client_id=board.client.client_id)
        thief.start(timeout=10)
        thief.stop()                      # closes the session under the board
        thief.close()
        assert lost.wait(30)
        finish(other, "c1")               # while the board reconnects, or just after
        assert connected_again.wait(30)
        assert got.enough.wait(30)
        finish(other, "c1")
    waiter.join(60)
    assert not waiter.is_alive()
    assert [result[j.uuid].state for j in jobs] == [JobState.COMPLETE] * 2
    assert watch.reads > reads
    board.client.remove_listener(on_state)


# -- the webhook publisher ------------------------------------------------------------

class Receiver:
    """A local HTTP server that records the JSON documents POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.documents: list[dict] = []
        self.bodies: list[bytes] = []
        self.headers: list[dict] = []
        self.status = status
        self.statuses: list[int] = []       # answered in turn before `status`
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.changed:
                    receiver.documents.append(json.loads(body))
                    receiver.bodies.append(body)
                    receiver.headers.append(dict(self.headers))
                    receiver.changed.notify_all()
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.documents) >= count, timeout)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_webhook_gets_each_outcome_once(board, registry):
    board.notifier.subscribe(Metrics(registry).listener)
    jobs = [board.post(FACTORY, name=f"job{n}") for n in range(4)]
    with Receiver() as receiver, WebhookPublisher(receiver.url, notifier=board.notifier,
                                                  backoff=Backoff(first=0.05)) as publisher:
        for state in (JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED):
            finish(board, "c1", state)
        record, stat = board.records.read(jobs[3].uuid)
        board.dead_letter(record, stat.version, None, "too many claims")
        assert receiver.wait_for(4, timeout=20)
    # close() delivered everything queued; nothing else arrives.
    assert len(receiver.documents) == 4
    by_job = {d["job_id"]: d for d in receiver.documents}
    assert {j.uuid: by_job[j.uuid]["state"] for j in jobs} == {
        jobs[0].uuid: "COMPLETE", jobs[1].uuid: "FAILED", jobs[2].uuid: "CANCELLED",
        jobs[3].uuid: "DEAD"}
    assert by_job[jobs[0].uuid]["owner"] == "c1"
    assert by_job[jobs[3].uuid]["reason"] == "too many claims"
    assert {h["X-Jobboard-Delivery"] for h in receiver.headers} == \
        {d["delivery_id"] for d in receiver.documents}
    assert all(h["Content-Type"] == "application/json" for h in receiver.headers)
    # no secret: no signature (and nothing else changes)
    assert not any("X-Jobboard-Signature" in h or "X-Jobboard-Timestamp" in h
                   for h in receiver.headers)
    assert not publisher.signed
    assert publisher.delivered == 4 and publisher.failures == 0 and not publisher.dropped
    assert count(registry, "jobboard_webhook_deliveries_total") == 4
    assert count(registry, "jobboard_webhook_failures_total") == 0


def test_webhook_retries_with_backoff_until_the_receiver_answers(board, registry):
    board.notifier.subscribe(Metrics(registry).listener)
    job = board.post(FACTORY)
    with Receiver(status=503) as receiver, \
            WebhookPublisher(receiver.url, notifier=board.notifier,
                             backoff=Backoff(attempts=10, first=0.05, max_delay=0.2)) as publisher:
        finish(board, "c1")
        assert receiver.wait_for(3, timeout=20)      # refused twice at least
        receiver.status = 204
        with receiver.changed:
            seen = len(receiver.documents)
        assert receiver.wait_for(seen + 1, timeout=20)
        assert publisher.failures >= 2
    ids = {d["delivery_id"] for d in receiver.documents}
    assert len(ids) == 1 and {d["job_id"] for d in receiver.documents} == {job.uuid}
    assert publisher.delivered == 1 and not publisher.dropped
    assert count(registry, "jobboard_webhook_failures_total") == publisher.failures


def test_webhook_drops_what_the_receiver_rejects(board, registry):
    board.notifier.subscribe(Metrics(registry).listener)
    board.post(FACTORY)
    with Receiver(status=400) as receiver, \
            WebhookPublisher(receiver.url, notifier=board.notifier) as publisher:
        finish(board, "c1")
        assert receiver.wait_for(1, timeout=20)
    assert len(receiver.documents) == 1                  # not tried again
    assert publisher.dropped == {"rejected": 1}
    assert count(registry, "jobboard_webhook_dropped_total", reason="rejected") == 1


def hanging_url() -> tuple[socket.socket, str]:
    """A port that accepts connections (the backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


def run_jobs(board: Board, n: int) -> float:
    """Post, claim and consume ``n`` jobs; the seconds it took."""
    board.post_many([{"factory": FACTORY} for _ in range(n)])
    claimer = Claimer(board, "c1")
    started = time.perf_counter()
    for _ in range(n):
        job = claimer.claim_next()
        board.consume(job, "c1", {"results": {}})
    return time.perf_counter() - started


@pytest.mark.parametrize("receiver", ["refusing", "hanging"])
def test_a_receiver_that_is_down_does_not_slow_jobs(board, registry, receiver):
    board.notifier.subscribe(Metrics(registry).listener)
    run_jobs(board, 5)                          # warm up the connection and the shards
    baseline = run_jobs(board, 40)
    sock = None
    if receiver == "hanging":
        sock, url = hanging_url()
    else:
        url = f"http://127.0.0.1:{free_port()}/hook"       # nothing listens
    publisher = WebhookPublisher(url, max_queue=5, timeout=1.0,
                                 backoff=Backoff(attempts=3, first=0.2))
    emit_times: list[float] = []

    def timed(event):
        started = time.perf_counter()
        publisher(event)
        emit_times.append(time.perf_counter() - started)

    publisher.notifier = board.notifier       # reports its failures and drops there
    publisher.start()
    board.notifier.unsubscribe(publisher)     # called through `timed` instead
    board.notifier.subscribe(timed)
    try:
        with_webhook = run_jobs(board, 40)
        depth = publisher.pending
    finally:
        board.notifier.unsubscribe(timed)
        publisher.close(timeout=0.5)
        if sock is not None:
            sock.close()
    # emit() returns at once, and jobs finish at the same pace.
    assert len([t for t in emit_times if t > 0]) == len(emit_times) >= 40
    assert max(emit_times) < 0.05, max(emit_times)
    assert with_webhook < baseline * 2 + 0.5, (with_webhook, baseline)
    # The queue stayed bounded: the oldest were dropped and counted.
    assert depth <= 5
    assert publisher.dropped["queue_full"] >= 40 - 5 - 2
    assert publisher.delivered == 0 and publisher.failures >= 1
    assert count(registry, "jobboard_webhook_dropped_total", reason="queue_full") == \
        publisher.dropped["queue_full"]
    assert count(registry, "jobboard_webhook_failures_total") == publisher.failures
    assert sum(publisher.dropped.values()) == 40       # shutdown dropped the rest


def test_webhook_settings_are_checked():
    for bad in ("ftp://x", "", "localhost:80"):
        with pytest.raises(InvalidArgument):
            WebhookPublisher(bad)
    with pytest.raises(InvalidArgument):
        WebhookPublisher("http://x", max_queue=0)
    with pytest.raises(InvalidArgument):
        Backoff(attempts=0)
    assert list(Backoff(attempts=5, first=1, factor=3, max_delay=10).delays()) == [1, 3, 9, 10]


def test_document_of_an_event():
    notifier = Notifier()
    event = notifier.emit(EventKind.JOB_FAILED, job_id="j", owner="c",
                          details={"state": "CANCELLED", "name": "n", "claimed_at": 1.0})
    document = document_of(event, "d1")
    assert document == {"delivery_id": "d1", "event": "job.failed", "job_id": "j",
                        "state": "CANCELLED", "name": "n", "owner": "c", "at": event.at,
                        "reason": None}
    dead = notifier.emit(EventKind.JOB_DEAD, job_id="j", details={"reason": "r"})
    assert document_of(dead)["state"] == "DEAD" and document_of(dead)["reason"] == "r"


# -- signed webhooks -------------------------------------------------------------------

SECRET = b"whsec-7f3a-not-for-logs"


def test_signed_webhook_verifies_and_retries_are_signed_again(caplog):
    notifier = Notifier()
    events: list = []
    notifier.subscribe(events.append)
    with Receiver() as receiver, caplog.at_level(logging.DEBUG, logger="jobboard"):
        receiver.statuses = [503]            # the first POST fails, the retry is taken
        publisher = WebhookPublisher(receiver.url, notifier=notifier, secret=SECRET,
                                     backoff=Backoff(attempts=2, first=1.0),
                                     # an extra header cannot replace the signature
                                     headers={"X-Jobboard-Signature": "v1=forged"})
        with publisher:
            notifier.emit(EventKind.JOB_COMPLETED, job_id="j1", owner="c1",
                          details={"state": "COMPLETE", "name": "n"})
            assert receiver.wait_for(2, timeout=10)
    assert publisher.signed and publisher.delivered == 1 and publisher.failures == 1
    first, retry = receiver.headers
    body = receiver.bodies[0]
    assert receiver.bodies[1] == body                 # the same document, byte for byte
    assert first["X-Jobboard-Delivery"] == retry["X-Jobboard-Delivery"]
    # a retry 1s later carries a fresh timestamp, and its own valid signature
    assert int(retry["X-Jobboard-Timestamp"]) > int(first["X-Jobboard-Timestamp"])
    for headers in (first, retry):
        timestamp, signature = headers["X-Jobboard-Timestamp"], headers["X-Jobboard-Signature"]
        assert signature.startswith("v1=") and len(signature) == 3 + 64
        assert verify_signature(SECRET, body, timestamp, signature)
        assert verify_signature(SECRET.decode(), body, timestamp, signature)   # str secret
        # forgeries and replays
        assert not verify_signature(b"another-secret", body, timestamp, signature)
        assert not verify_signature(SECRET, body.replace(b'"j1"', b'"j2"'), timestamp,
                                    signature)
        assert not verify_signature(SECRET, body, str(int(timestamp) + 1), signature)
        assert not verify_signature(SECRET, body, timestamp, signature,
                                    now=int(timestamp) + 301)
        assert not verify_signature(SECRET, body, timestamp, signature,
                                    now=int(timestamp) - 301)        # from the future
        assert verify_signature(SECRET, body, timestamp, signature, now=int(timestamp) + 299)
        assert verify_signature(SECRET, body, timestamp, f"v1=00, {signature}")  # rotation
    # the secret is in no log line, event or repr
    assert any("failed" in r.getMessage() for r in caplog.records)
    assert SECRET.decode() not in caplog.text
    assert [e.kind for e in events if e.kind.value.startswith("webhook.")] == [
        EventKind.WEBHOOK_FAILED, EventKind.WEBHOOK_DELIVERED]
    assert not any(SECRET.decode() in repr(e.to_dict()) for e in events)
    assert SECRET.decode() not in repr(publisher) and "signed=True" in repr(publisher)


@pytest.mark.parametrize("timestamp, signature", [
    ("", "v1=00"), ("12x", "v1=00"), ("9" * 400, "v1=00"), ("-5", "v1=00"),
    ("now", ""), (None, None),
])
def test_verify_signature_refuses_malformed_headers(timestamp, signature):
    assert verify_signature(SECRET, b"{}", timestamp, signature) is False


def test_an_empty_secret_is_refused_without_showing_it():
    with pytest.raises(InvalidArgument, match="secret"):
        WebhookPublisher("http://x", secret=b"")
    with pytest.raises(InvalidArgument) as caught:
        WebhookPublisher("http://x", secret="a str secret")        # bytes only
    assert "a str secret" not in str(caught.value)


def _refusal(result, code: int) -> str:
    """The one ``error:`` line of a refused command."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_conductor_refuses_an_unusable_secret_file(cli, tmp_path):
    url = "http://127.0.0.1:9/hook"
    start = ("conductor", "--allow", "jobboard.testing", "--notify-url", url)
    open_file = tmp_path / "open-secret"
    open_file.write_bytes(SECRET)
    open_file.chmod(0o644)
    empty = tmp_path / "empty-secret"
    empty.write_bytes(b"\n")
    empty.chmod(0o600)
    cases = [(tmp_path / "missing", "does not exist"), (open_file, "chmod 600"),
             (empty, "is empty"), (tmp_path, "is a directory, not a file")]
    if os.geteuid() == 0:         # only root may give a file away
        foreign = tmp_path / "foreign-secret"
        foreign.write_bytes(SECRET)
        foreign.chmod(0o600)
        os.chown(foreign, 12345, -1)
        cases.append((foreign, "belongs to another user"))
    for path, says in cases:
        line = _refusal(cli(*start, "--notify-secret-file", str(path)), 1)
        assert says in line and str(path) in line and SECRET.decode() not in line
    # a secret with nothing to sign is a usage error, from the flag or the variable
    private = tmp_path / "secret"
    private.write_bytes(SECRET)
    private.chmod(0o600)
    line = _refusal(cli("conductor", "--allow", "jobboard.testing",
                        "--notify-secret-file", str(private)), 2)
    assert "--notify-secret-file without --notify-url" in line
    line = _refusal(cli("conductor", "--allow", "jobboard.testing",
                        env_extra={"JOBBOARD_NOTIFY_SECRET": SECRET.decode()}), 2)
    assert "JOBBOARD_NOTIFY_SECRET without --notify-url" in line
    assert SECRET.decode() not in line
    line = _refusal(cli(*start, env_extra={"JOBBOARD_NOTIFY_SECRET": SECRET.decode(),
                                           "JOBBOARD_NOTIFY_SECRET_FILE": str(private)}), 1)
    assert "unset one" in line and SECRET.decode() not in line


# -- the log publisher --------------------------------------------------------------------

def test_log_publisher_writes_one_line_per_event_of_interest(board, caplog):
    board.notifier.subscribe(LogPublisher())
    with caplog.at_level(logging.INFO, logger="jobboard.events"):
        job = board.post(FACTORY, name="with space")
        finish(board, "c1", JobState.FAILED)
        board.notifier.emit(EventKind.TASK_STARTED, job_id=job.uuid, task="t")   # not logged
        board.notifier.emit(EventKind.CLAIM_LOST, job_id=job.uuid, owner="c1",
                            details={"reason": "session expired"})
    records = [r for r in caplog.records if r.name == "jobboard.events"]
    lines = [r.getMessage() for r in records]
    assert [line.split()[0] for line in lines] == [
        "event=job.posted", "event=job.claimed", "event=job.failed", "event=claim.lost"]
    assert f'job_id={job.uuid} name="with space"' in lines[0]
    assert "state=FAILED" in lines[2] and records[2].levelno == logging.WARNING
    assert 'reason="session expired"' in lines[3] and records[3].levelno == logging.WARNING
    assert records[0].levelno == logging.INFO
    assert records[2].event["kind"] == "job.failed" and records[2].event["job_id"] == job.uuid


def test_logfmt_quotes_what_needs_it():
    event = Notifier().emit(EventKind.JOB_DEAD, job_id="j",
                            details={"reason": 'a "b"\nc', "n": 1.5, "none": None, "e": ""})
    assert logfmt(event) == 'event=job.dead job_id=j reason="a \\"b\\"\\nc" n=1.5 e=""'


# -- a conductor with --notify-url and --log-events ----------------------------------

def test_a_conductor_posts_each_outcome_once_signed(zk_hosts, tmp_path):
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_bytes(SECRET + b"\n")          # the newline is not part of it
    secret_file.chmod(0o600)
    with Receiver() as receiver:
        env = {**os.environ,
               "PYTHONPATH": str(Path(jobboard.__file__).resolve().parent.parent),
               # the flag outranks the variable: this one must not be used
               "JOBBOARD_NOTIFY_SECRET": "env-secret-not-used"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobboard", "conductor", "--zk", zk_hosts, "--root",
             "/hooked", "--logbook", f"sqlite:///{tmp_path}/logbook.db", "--allow",
             "jobboard.testing", "--notify-url", receiver.url,
             "--notify-secret-file", str(secret_file), "--log-events", "--json"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                                  daemon=True)
        reader.start()
        try:
            text = ""
            while not text.rstrip().endswith("}") or text.count("{") != text.count("}"):
                text += lines.get(timeout=60)        # printed once it runs
            started = json.loads(text)
            assert started["notify_url"] == receiver.url and started["notify_signed"] is True
            with Board.connect(zk_hosts, root="/hooked") as board:
                factory = "jobboard.testing.flows:five_steps"
                ok = [board.post(factory, args={"journal": str(tmp_path / f"{n}.journal")})
                      for n in range(2)]
                bad = board.post(factory, args={"journal": str(tmp_path / "bad.journal"),
                                                "fail_at": "step2"})
                outcomes = board.wait_many([j.uuid for j in [*ok, bad]], timeout=60)
                assert [o.state for o in outcomes.values()] == [
                    JobState.COMPLETE, JobState.COMPLETE, JobState.FAILED]
            assert receiver.wait_for(3, timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    states = {d["job_id"]: d["state"] for d in receiver.documents}
    assert len(receiver.documents) == 3
    assert states == {ok[0].uuid: "COMPLETE", ok[1].uuid: "COMPLETE", bad.uuid: "FAILED"}
    assert all(d["name"] == "five_steps" for d in receiver.documents)
    assert all(verify_signature(SECRET, body, h["X-Jobboard-Timestamp"],
                                h["X-Jobboard-Signature"])
               for body, h in zip(receiver.bodies, receiver.headers))
    for secret in (SECRET.decode(), "env-secret-not-used"):
        assert secret not in text + out and secret not in err
    assert f"event=job.completed job_id={ok[0].uuid}" in err
    assert "event=conductor.started" in err
