"""Metrics: events through a real Notifier (the metrics are one listener
among others), the board collector on a real ZooKeeper, and a scrape over
HTTP of a real conductor. Each test has a fresh CollectorRegistry."""

from __future__ import annotations

import threading
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import jobboard
from flows_for_tests import Flaky, Journal, Step, make_engine
from jobboard import Retry, flows
from jobboard.board import Board, Claimer
from jobboard.errors import StaleOwner
from jobboard.events import EventKind, Notifier
from jobboard.logbook import Logbook
from jobboard.metrics import BoardCollector, Metrics, serve
from jobboard.states import FlowState
from jobboard.testing.waiting import wait_until

FACTORY = "tests.flows:noop"

@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry) -> Metrics:
    return Metrics(registry)


@pytest.fixture
def notifier(metrics) -> Notifier:
    n = Notifier()
    n.subscribe(metrics.listener)
    return n


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    """One collection of the registry: unlabelled samples by name, labelled
    ones as ``name{k=v,...}``."""
    out = {}
    for family in registry.collect():
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


# -- events -> counters and histograms ------------------------------------------

def test_job_events_count_and_time(registry, notifier):
    for n in range(3):
        notifier.emit(EventKind.JOB_POSTED, job_id=f"j{n}", details={"name": "x"})
    notifier.emit(EventKind.JOB_CLAIMED, job_id="j0", owner="c1", at=1000.5,
                  details={"posted_at": 1000.0, "priority": 0, "claims": 1})
    notifier.emit(EventKind.JOB_RECLAIMED, job_id="j1", owner="c1", at=1100.0,
                  details={"posted_at": 900.0, "priority": 0, "claims": 2})
    notifier.emit(EventKind.FLOW_STARTED, job_id="j0", flow="provision")
    notifier.emit(EventKind.JOB_COMPLETED, job_id="j0", owner="c1", at=1003.5,
                  details={"claimed_at": 1000.5, "state": "COMPLETE"})
    notifier.emit(EventKind.JOB_FAILED, job_id="j1", owner="c1", at=1200.0,
                  details={"claimed_at": 1100.0, "state": "FAILED"})
    notifier.emit(EventKind.JOB_FAILED, job_id="j2", owner="c1", at=1200.0,
                  details={"claimed_at": 1199.0, "state": "CANCELLED"})
    notifier.emit(EventKind.JOB_ABANDONED, job_id="j3", owner="c1")
    notifier.emit(EventKind.JOB_DEAD, job_id="j4", details={"reason": "too many claims"})
    notifier.emit(EventKind.CLAIM_LOST, job_id="j5", owner="c1")

    assert value(registry, "jobboard_jobs_posted_total") == 3
    assert value(registry, "jobboard_jobs_claimed_total") == 2       # reclaims included
    assert value(registry, "jobboard_jobs_reclaimed_total") == 1
    assert value(registry, "jobboard_jobs_completed_total") == 1
    assert value(registry, "jobboard_jobs_failed_total") == 1
    assert value(registry, "jobboard_jobs_cancelled_total") == 1
    assert value(registry, "jobboard_jobs_abandoned_total") == 1
    assert value(registry, "jobboard_jobs_dead_lettered_total") == 1
    assert value(registry, "jobboard_claims_lost_total") == 1
    # Claim latency: first claims only (a reclaim's post time says nothing).
    assert value(registry, "jobboard_claim_latency_seconds_count") == 1
    assert value(registry, "jobboard_claim_latency_seconds_sum") == pytest.approx(0.5)
    assert value(registry, "jobboard_claim_latency_seconds_bucket", le="0.5") == 1
    assert value(registry, "jobboard_claim_latency_seconds_bucket", le="0.25") == 0
    # Job duration by the flow learnt from the engine's events, else "unknown".
    assert value(registry, "jobboard_job_duration_seconds_sum",
                 flow="provision") == pytest.approx(3.0)
    assert value(registry, "jobboard_job_duration_seconds_count", flow="unknown") == 2
    assert value(registry, "jobboard_job_duration_seconds_sum",
                 flow="unknown") == pytest.approx(101.0)


def test_task_durations_by_flow_and_outcome(registry, notifier):
    def task(kind, name, at, **details):
        notifier.emit(kind, job_id="j", flow="f", task=name, at=at, details=details)

    task(EventKind.TASK_STARTED, "a", 10.0)
    task(EventKind.TASK_SUCCEEDED, "a", 10.25)
    task(EventKind.TASK_STARTED, "b", 11.0)
    task(EventKind.TASK_RETRYING, "b", 12.0, delay=0.1)
    task(EventKind.TASK_STARTED, "b", 13.0)
    task(EventKind.TASK_FAILED, "b", 16.0)
    task(EventKind.TASK_REVERTING, "a", 20.0)
    task(EventKind.TASK_REVERTED, "a", 20.5)
    task(EventKind.TASK_SUCCEEDED, "never-started", 30.0)   # no start: not observed

    def observed(outcome):
        return (value(registry, "jobboard_task_duration_seconds_count", flow="f", outcome=outcome),
                value(registry, "jobboard_task_duration_seconds_sum", flow="f", outcome=outcome))

    assert observed("succeeded") == (1, pytest.approx(0.25))
    assert observed("retrying") == (1, pytest.approx(1.0))
    assert observed("failed") == (1, pytest.approx(3.0))
    assert observed("reverted") == (1, pytest.approx(0.5))


def test_task_timers_are_bounded(registry):
    metrics = Metrics(registry, max_tracked=10)
    notifier = Notifier()
    notifier.subscribe(metrics.listener)
    for n in range(50):
        notifier.emit(EventKind.TASK_STARTED, job_id=f"j{n}", flow="f", task="t", at=float(n))
    assert len(metrics._task_started) == 10
    notifier.emit(EventKind.TASK_SUCCEEDED, job_id="j0", flow="f", task="t", at=100.0)
    notifier.emit(EventKind.TASK_SUCCEEDED, job_id="j49", flow="f", task="t", at=100.0)
    assert value(registry, "jobboard_task_duration_seconds_count",
                 flow="f", outcome="succeeded") == 1   # j0 was forgotten


def test_engine_events_feed_task_metrics(registry, notifier, tmp_path):
    """The real engine's events, not hand-made ones."""
    journal = Journal()
    flow = flows.linear("metered", Step("a", journal),
                        Flaky("flaky", failures=1, retry=Retry(attempts=3, backoff=0, jitter=False)),
                        Step("boom", journal, fail=ValueError("no")))
    with Logbook(f"sqlite:///{tmp_path}/logbook.db") as book:
        outcome = make_engine(flow, book, notifier=notifier).run()
    assert outcome.state is FlowState.REVERTED
    count = "jobboard_task_duration_seconds_count"
    assert value(registry, count, flow="metered", outcome="succeeded") == 2   # a, flaky
    assert value(registry, count, flow="metered", outcome="retrying") == 1
    assert value(registry, count, flow="metered", outcome="failed") == 1      # boom
    assert value(registry, count, flow="metered", outcome="reverted") >= 2


def test_board_events_feed_job_metrics(registry, metrics, board):
    board.notifier.subscribe(metrics.listener)
    for _ in range(3):
        board.post(FACTORY)
    claimer = Claimer(board, "c1")
    first, second = claimer.claim_next(), claimer.claim_next()
    board.consume(first, "c1", {"ok": True})
    board.abandon(second, "c1")
    again = claimer.claim_next()
    assert value(registry, "jobboard_jobs_posted_total") == 3
    assert value(registry, "jobboard_jobs_claimed_total") == 3
    assert value(registry, "jobboard_jobs_reclaimed_total") == (1 if again.uuid == second.uuid
                                                                else 0)
    assert value(registry, "jobboard_jobs_completed_total") == 1
    assert value(registry, "jobboard_jobs_abandoned_total") == 1
    assert value(registry, "jobboard_claim_latency_seconds_count") >= 2
    assert value(registry, "jobboard_job_duration_seconds_count", flow="unknown") == 1


def test_conductor_methods(registry, metrics):
    metrics.register_conductor("c1", version="9.9")
    assert value(registry, "jobboard_conductor_info", conductor="c1", version="9.9") == 1
    assert value(registry, "jobboard_zookeeper_connected", conductor="c1") == 1

    metrics.set_in_flight("c1", 4)
    assert value(registry, "jobboard_jobs_in_flight", conductor="c1") == 4

    metrics.zookeeper_state("c1", "SUSPENDED")
    assert value(registry, "jobboard_zookeeper_connected", conductor="c1") == 0
    assert value(registry, "jobboard_zookeeper_state", conductor="c1", state="SUSPENDED") == 1
    assert value(registry, "jobboard_zookeeper_state", conductor="c1", state="CONNECTED") == 0
    metrics.zookeeper_state("c1", "lost")
    assert value(registry, "jobboard_zookeeper_state", conductor="c1", state="LOST") == 1
    with pytest.raises(ValueError):
        metrics.zookeeper_state("c1", "CONFUSED")
    metrics.session_lost()
    assert value(registry, "jobboard_zookeeper_session_losses_total") == 1

    metrics.observe_lock_wait("mutex", 0.003)
    metrics.observe_lock_wait("read", 2.0)
    assert value(registry, "jobboard_lock_wait_seconds_count", kind="mutex") == 1
    assert value(registry, "jobboard_lock_wait_seconds_bucket", kind="read", le="1.0") == 0
    assert value(registry, "jobboard_lock_wait_seconds_bucket", kind="read", le="2.5") == 1

    metrics.claim_conflicts(3)
    metrics.claim_conflicts(0)
    assert value(registry, "jobboard_claim_conflicts_total") == 3
    metrics.fenced_write()
    assert value(registry, "jobboard_logbook_fenced_writes_total") == 1

    assert value(registry, "jobboard_conductor_ready", conductor="c1") == 1
    metrics.conductor_ready("c1", False)
    assert value(registry, "jobboard_conductor_ready", conductor="c1") == 0


def test_heartbeats_are_counted_by_flow(registry, notifier, tmp_path):
    """The real engine's heartbeat events (a task reporting progress)."""
    from jobboard.engine import Engine, task
    from jobboard.engine.control import current

    saved = threading.Event()
    notifier.subscribe(lambda event: saved.set()
                       if event.kind is EventKind.TASK_HEARTBEAT else None)

    @task
    def report() -> None:      # beats until the engine saved one (bounded)
        for _ in range(500):
            current().heartbeat(progress=0.5, note="half")
            if saved.wait(0.01):
                return

    with Logbook(f"sqlite:///{tmp_path}/logbook.db") as book:
        engine = Engine(flows.linear("beating", report), journal=book, job_id="j1", token=1,
                        notifier=notifier, heartbeat_interval=0)
        assert engine.run().ok
    assert value(registry, "jobboard_task_heartbeats_total", flow="beating") >= 1


def test_conductor_events_feed_gauges_and_counters(registry, notifier):
    """What a conductor tells (as events) becomes its gauges and counters."""
    emit = notifier.emit
    emit(EventKind.CONDUCTOR_STARTED, owner="c1", details={"version": "9.9"})
    assert value(registry, "jobboard_conductor_info", conductor="c1", version="9.9") == 1
    assert value(registry, "jobboard_zookeeper_connected", conductor="c1") == 1
    assert value(registry, "jobboard_conductor_ready", conductor="c1") == 1
    emit(EventKind.JOBS_IN_FLIGHT, owner="c1", details={"count": 3})
    assert value(registry, "jobboard_jobs_in_flight", conductor="c1") == 3
    emit(EventKind.ZOOKEEPER_STATE, owner="c1", details={"state": "SUSPENDED"})
    assert value(registry, "jobboard_zookeeper_state", conductor="c1", state="SUSPENDED") == 1
    assert value(registry, "jobboard_zookeeper_connected", conductor="c1") == 0
    emit(EventKind.SESSION_LOST, owner="c1")
    assert value(registry, "jobboard_zookeeper_session_losses_total") == 1
    emit(EventKind.CONDUCTOR_READY, owner="c1", details={"ready": False, "reason": "db"})
    assert value(registry, "jobboard_conductor_ready", conductor="c1") == 0
    emit(EventKind.LOCK_ACQUIRED, owner="c1", details={"kind": "mutex", "waited": 0.2})
    assert value(registry, "jobboard_lock_wait_seconds_count", kind="mutex") == 1
    emit(EventKind.CLAIM_CONFLICTS, owner="c1", details={"count": 2})
    assert value(registry, "jobboard_claim_conflicts_total") == 2
    emit(EventKind.JOB_CANCELLED, job_id="j", details={"state": "CANCELLED"})
    assert value(registry, "jobboard_jobs_cancelled_total") == 1
    for kind, details in ((EventKind.WEBHOOK_DELIVERED, {}), (EventKind.WEBHOOK_FAILED, {}),
                          (EventKind.WEBHOOK_FAILED, {}),
                          (EventKind.WEBHOOK_DROPPED, {"reason": "queue_full"})):
        emit(kind, job_id="j", details=details)
    assert value(registry, "jobboard_webhook_deliveries_total") == 1
    assert value(registry, "jobboard_webhook_failures_total") == 2
    assert value(registry, "jobboard_webhook_dropped_total", reason="queue_full") == 1


def test_logbook_write_events_time_writes_and_count_fencing(registry, notifier):
    emit = notifier.emit
    emit(EventKind.LOGBOOK_WRITE, job_id="j",
         details={"op": "save_atom", "seconds": 0.002, "ok": True, "fenced": False})
    emit(EventKind.LOGBOOK_WRITE, job_id="j",
         details={"op": "save_atom", "seconds": 0.003, "ok": False, "fenced": True})
    emit(EventKind.LOGBOOK_WRITE, job_id="j",
         details={"op": "take_over", "seconds": 5.0, "ok": False, "fenced": False})
    assert value(registry, "jobboard_logbook_write_seconds_count", op="save_atom") == 2
    assert value(registry, "jobboard_logbook_write_failures_total", op="save_atom") == 1
    assert value(registry, "jobboard_logbook_write_failures_total", op="take_over") == 1
    assert value(registry, "jobboard_logbook_fenced_writes_total") == 1


def test_a_real_logbook_tells_its_writes(registry, notifier, tmp_path):
    with Logbook(f"sqlite:///{tmp_path}/logbook.db", notifier=notifier) as book:
        journal = Journal()
        outcome = make_engine(flows.linear("w", Step("a", journal)), book, token=5,
                              new=True).run()
        assert outcome.state is FlowState.SUCCESS
        # The take-over with the flow and the task's RUNNING; the task's
        # SUCCESS with the flow's.
        assert value(registry, "jobboard_logbook_write_seconds_count", op="take_over") == 1
        assert value(registry, "jobboard_logbook_write_seconds_count", op="save_flow") == 1
        writes = value(registry, "jobboard_logbook_write_seconds_count", op="save_atom")
        with pytest.raises(StaleOwner):
            book.save_atom("job-1", book.load_flow("job-1").atoms["a"], token=1)
        assert book.fenced_writes == 1
    assert value(registry, "jobboard_logbook_write_failures_total", op="save_atom") == 1
    assert value(registry, "jobboard_logbook_write_seconds_count", op="save_atom") == writes + 1
    assert value(registry, "jobboard_logbook_fenced_writes_total") == 1


# -- the board collector ------------------------------------------------------------

def test_board_collector_reports_depth(registry, board):
    registry.register(BoardCollector(board))
    board.post_many([{"factory": FACTORY} for _ in range(3)])
    board.post(FACTORY, priority=5)
    board.post(FACTORY, delay=60)
    claimer = Claimer(board, "c1")
    held = claimer.claim_next()
    assert held.priority == 5
    board.register_conductor("c1", {"host": "h"})
    board.register_conductor("c2", {"host": "h"})

    assert value(registry, "jobboard_board_up") == 1
    assert value(registry, "jobboard_board_waiting_jobs", priority="0") == 3
    assert registry.get_sample_value("jobboard_board_waiting_jobs", {"priority": "5"}) is None
    assert value(registry, "jobboard_board_delayed_jobs") == 1
    assert value(registry, "jobboard_board_claimed_jobs") == 1
    assert value(registry, "jobboard_board_dead_jobs") == 0
    assert value(registry, "jobboard_board_conductors") == 2
    assert 0 <= value(registry, "jobboard_board_oldest_waiting_age_seconds") < 60
    assert value(registry, "jobboard_board_scrape_errors_total") == 0


def test_board_collector_counts_every_post(registry, board, zk_hosts):
    """Posts by any process, counted from the board: trashing does not
    lower the count, and nothing else raises it."""
    registry.register(BoardCollector(board))
    assert value(registry, "jobboard_board_jobs_posted_total") == 0
    first = board.post(FACTORY)
    board.post_many([{"factory": FACTORY} for _ in range(4)])
    with Board.connect(zk_hosts, root="/jobboard") as producer:      # another client
        producer.post(FACTORY, key="once")
        producer.post(FACTORY, key="once")                          # the same job
    assert value(registry, "jobboard_board_jobs_posted_total") == 6
    board.trash(first.uuid)
    claimer = Claimer(board, "c1")
    board.consume(claimer.claim_next(), "c1", {})
    board.abandon(claimer.claim_next(), "c1")
    assert value(registry, "jobboard_board_jobs_posted_total") == 6
    assert value(registry, "jobboard_board_claimed_jobs") == 0


def test_board_collector_on_an_empty_board(registry, board):
    registry.register(BoardCollector(board))
    assert value(registry, "jobboard_board_up") == 1
    assert registry.get_sample_value("jobboard_board_waiting_jobs", {"priority": "0"}) == 0
    assert registry.get_sample_value("jobboard_board_oldest_waiting_age_seconds") == 0


def test_board_collector_survives_zookeeper_down(registry, zk_hosts):
    board = Board.connect(zk_hosts, root="/jobboard", session_timeout=4.0)
    registry.register(BoardCollector(board))
    assert scrape(registry)["jobboard_board_up"] == 1
    board.close()                       # the client is gone: every call fails
    for errors in (1, 2):               # one scrape: one error, and no raise
        samples = scrape(registry)
        assert samples["jobboard_board_up"] == 0
        assert samples["jobboard_board_scrape_errors_total"] == errors
        assert not any(name.startswith("jobboard_board_waiting_jobs") for name in samples)


def test_registering_the_collector_does_not_scrape(registry):
    class Exploding:
        def depth(self):
            raise AssertionError("scraped at registration")

        conductors = depth

    registry.register(BoardCollector(Exploding()))       # describe(), no collect()
    names = {m.name for m in BoardCollector(Exploding()).describe()}
    assert "jobboard_board_waiting_jobs" in names and "jobboard_board_up" in names


# -- over HTTP -------------------------------------------------------------------------

def test_serve_exposes_metrics_over_http(registry, metrics, notifier, board):
    registry.register(BoardCollector(board))
    board.post(FACTORY, priority=2)
    notifier.emit(EventKind.JOB_POSTED, job_id="j")
    metrics.register_conductor("c1")
    server = serve(0, registry, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("jobboard_jobs_posted_total", ())] == 1
    assert samples[("jobboard_board_waiting_jobs", (("priority", "2"),))] == 1
    assert samples[("jobboard_board_up", ())] == 1
    assert samples[("jobboard_zookeeper_connected", (("conductor", "c1"),))] == 1
    assert ("jobboard_job_duration_seconds_bucket", ()) not in samples   # labelled only


def test_scrape_a_running_conductor(registry, zk_hosts, tmp_path):
    """A real conductor fed by Metrics, scraped over HTTP after it ran jobs."""
    from jobboard.conductor import Conductor

    metrics = Metrics(registry)
    board = Board.connect(zk_hosts, root="/fleet", session_timeout=4.0)
    registry.register(BoardCollector(board))
    logbook = Logbook(f"sqlite:///{tmp_path}/logbook.db", notifier=board.notifier)
    conductor = Conductor(board, logbook, name="c1", concurrency=2,
                          allow=("jobboard.testing",), metrics=metrics)
    thread = threading.Thread(target=conductor.run, daemon=True)
    thread.start()
    server = serve(0, registry, addr="127.0.0.1")
    try:
        ok = board.post("jobboard.testing.flows:five_steps",
                        args={"journal": str(tmp_path / "ok.journal")})
        bad = board.post("jobboard.testing.flows:five_steps",
                         args={"journal": str(tmp_path / "bad.journal"), "fail_at": "step3"})
        assert board.wait(ok.uuid, timeout=30).ok
        assert not board.wait(bad.uuid, timeout=30).ok
        # wait() returns once the record is final; the conductor counts the
        # finish just after its commit, on its own thread.
        finished = ("jobboard_jobs_completed_total", "jobboard_jobs_failed_total")
        assert wait_until(lambda: sum(registry.get_sample_value(n) or 0 for n in finished) == 2,
                          timeout=10)
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        conductor.stop()
        assert conductor.wait(30)
        server.shutdown()
        server.server_close()
        board.close()
        logbook.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def get(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert get("jobboard_jobs_posted_total") == 2
    assert get("jobboard_board_jobs_posted_total") == 2
    assert get("jobboard_jobs_claimed_total") == 2
    assert get("jobboard_jobs_completed_total") == 1
    assert get("jobboard_jobs_failed_total") == 1
    assert get("jobboard_job_duration_seconds_count", flow="five-steps") == 2
    assert get("jobboard_task_duration_seconds_count", flow="five-steps",
               outcome="succeeded") == 5 + 2
    assert get("jobboard_task_duration_seconds_count", flow="five-steps",
               outcome="failed") == 1
    assert get("jobboard_claim_latency_seconds_count") == 2
    assert get("jobboard_logbook_write_seconds_count", op="save_atom") > 0
    assert get("jobboard_logbook_write_seconds_count", op="take_over") == 2
    assert get("jobboard_zookeeper_connected", conductor="c1") == 1
    assert get("jobboard_conductor_ready", conductor="c1") == 1
    assert get("jobboard_conductor_info", conductor="c1", version=jobboard.__version__) == 1
    assert ("jobboard_jobs_in_flight", (("conductor", "c1"),)) in samples
    assert get("jobboard_board_conductors") == 1
    assert get("jobboard_board_waiting_jobs", priority="0") == 0


def test_a_lost_claim_and_lock_waits_reach_the_dashboard(registry, zk_hosts, tmp_path):
    """A real conductor runs a job holding at step 2 (after a lock at step
    1); an admin abandons the claim under it: jobboard_claims_lost_total
    counts it once, and the job is claimed again and completes."""
    from jobboard.conductor import Conductor
    from jobboard.testing.flows import read_journal

    metrics = Metrics(registry)
    board = Board.connect(zk_hosts, root="/fleet", session_timeout=4.0)
    logbook = Logbook(f"sqlite:///{tmp_path}/logbook.db", notifier=board.notifier)
    conductor = Conductor(board, logbook, name="c1", concurrency=1,
                          allow=("jobboard.testing",), metrics=metrics, stop_timeout=5)
    thread = threading.Thread(target=conductor.run, daemon=True)
    thread.start()
    journal, gate = tmp_path / "j.journal", tmp_path / "gate"
    try:
        job = board.post("jobboard.testing.flows:five_steps",
                         args={"journal": str(journal), "hold_at": "step2", "gate": str(gate),
                               "lock": "disk"})
        assert wait_until(lambda: "step2-holding" in read_journal(str(journal)), timeout=30)
        board.abandon(job.uuid, "c1")             # what `jobboard abandon` does
        gate.touch()
        assert board.wait(job.uuid, timeout=60).ok
        assert wait_until(lambda: value(registry, "jobboard_claims_lost_total") == 1,
                          timeout=10)
    finally:
        conductor.stop()
        assert conductor.wait(30)
        board.close()
        logbook.close()
    assert value(registry, "jobboard_claims_lost_total") == 1
    assert value(registry, "jobboard_jobs_abandoned_total") == 1
    assert value(registry, "jobboard_jobs_completed_total") == 1
    assert value(registry, "jobboard_lock_wait_seconds_count", kind="mutex") >= 1
    assert value(registry, "jobboard_jobs_in_flight", conductor="c1") == 0


def test_every_event_the_metrics_count_has_an_emitter():
    """Each event the metrics (and so the dashboard) count is emitted
    somewhere outside the listeners: no counter stays 0 for want of an
    emitter (as jobboard_claims_lost_total once did)."""
    from pathlib import Path

    from jobboard.metrics import _HANDLERS

    package = Path(jobboard.__file__).parent
    listeners = {package / "events.py", package / "metrics.py"}
    emitters = "\n".join(path.read_text() for path in package.rglob("*.py")
                         if path not in listeners and "notify" not in path.parts)
    webhook = (package / "notify" / "webhook.py").read_text()
    missing = []
    for kind in _HANDLERS:
        text = webhook if kind.name.startswith("WEBHOOK_") else emitters
        if f"EventKind.{kind.name}" not in text:
            missing.append(kind.name)
    assert not missing, f"counted but never emitted: {missing}"
