"""The fleet benchmark (bench/fleet.py): its arithmetic, its probes on real
servers, and one tiny real fleet run (one conductor process, SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import fleet, fleet_probes as probes
from jobboard.testing.databases import DatabaseUnavailable, postgres_base_url, skip_or_fail
from jobboard.testing.zookeeper import connected_client


def _case(**changes) -> fleet.Case:
    base = dict(name="t", conductors=2, concurrency=8, steps=3, step_ms=20, jobs=100,
                logbook="postgresql", taskflow_jobs=10)
    return fleet.Case(**{**base, **changes})


def test_ideal_and_efficiency_from_the_steady_window():
    case = _case()
    assert case.ideal_jobs_per_s == pytest.approx(2 * 8 * 1000 / 60)
    assert _case(step_ms=0).ideal_jobs_per_s is None
    # 100 jobs: claims start at t=1, 10 done at t=2, 90 done at t=6, all at t=7.
    # (t, done, active, conductors' CPU s, ZooKeeper's, PostgreSQL's, machine
    # (busy, total) jiffies, ZooKeeper packets, our own packets)
    samples = [fleet.Sample(0.0, 0, 0, 1.0, 0.5, 3.0, (0, 0), 100, 0),
               fleet.Sample(1.0, 0, 16, 1.5, 0.6, 3.1, (100, 200), 110, 2),
               fleet.Sample(2.0, 10, 16, 2.0, 0.8, 3.2, (250, 400), 200, 4),
               fleet.Sample(6.0, 90, 10, 6.0, 2.4, 5.6, (1000, 1200), 1000, 12),
               fleet.Sample(7.0, 100, 0, 7.0, 2.5, 5.7, (1100, 1400), 1100, 14)]
    out = fleet.summarize(samples, 100, case)
    assert out["jobs_per_s"] == 20.0                     # 80 jobs in 4 s
    assert out["jobs_per_s_overall"] == round(100 / 6, 1)
    assert out["efficiency"] == round(20.0 / case.ideal_jobs_per_s, 3)
    assert out["cpu_s_per_job"] == 0.05                   # 4 CPU s / 80 jobs
    assert out["zk_cpu_s_per_job"] == 0.02                # 1.6 s / 80 jobs
    assert out["pg_cpu_s_per_job"] == 0.03                # 2.4 s / 80 jobs
    assert out["machine_busy"] == round(750 / 800, 3)
    assert out["zk_requests_per_job"] == 9.9              # (800 - 8 own) / 80
    assert fleet.summarize([], 100, case) == {"done": 0}


def test_cpu_seconds_of_a_live_and_a_gone_process():
    assert probes.cpu_seconds(os.getpid()) > 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    assert probes.cpu_seconds(child.pid) is None


@pytest.fixture
def dedicated_pg():
    """The URL of a PostgreSQL database made for the test (skips locally
    without a server, fails under CI=true)."""
    try:
        manager = probes.dedicated_postgres(postgres_base_url())
        url = manager.__enter__()
    except DatabaseUnavailable as exc:
        skip_or_fail(exc)
    yield url
    manager.__exit__(None, None, None)


def test_postgres_cpu_and_machine_busy_grow_with_work(dedicated_pg):
    seen: dict[int, float] = {}
    conn = probes._pg_connect(dedicated_pg)
    try:
        before, jiffies = probes.postgres_cpu_seconds(seen), probes.machine_jiffies()
        conn.execute("SELECT count(*) FROM generate_series(1, 3000000)")
        after, later = probes.postgres_cpu_seconds(seen), probes.machine_jiffies()
    finally:
        conn.close()
    assert after - before >= 0.05                  # the query's backend, read while it lives
    assert probes.postgres_cpu_seconds(seen) >= after   # its exit takes nothing back
    assert later[0] > jiffies[0] and later[1] > jiffies[1] and later[1] >= later[0]


def test_zookeeper_counters_count_our_session(zk_server):
    port = zk_server.port
    with connected_client(zk_server.address) as client:
        sessions = {client.client_id[0]}
        before_all = probes.zk_packets_received(port)
        before_own = probes.session_packets(port, sessions)
        for _ in range(20):
            client.exists("/")
        assert probes.session_packets(port, sessions) - before_own >= 20
        assert probes.zk_packets_received(port) - before_all >= 20
    assert probes.session_packets(port, {12345}) == 0


def test_pg_transactions_are_counted_in_a_dedicated_database(dedicated_pg):
    before = probes.pg_xact_commit(dedicated_pg)
    rate = probes.pg_commits_per_s(dedicated_pg, 2, seconds=0.5)
    after = probes.pg_xact_commit(dedicated_pg)
    assert rate > 0
    assert after - before >= rate * 0.5 * 0.5   # the inserts, at least


def test_kazoo_multi_floor(zk_server):
    floor = probes.kazoo_multi_per_s(zk_server.address, sync_count=20, pipelined_count=50)
    assert floor["kazoo_multi_sync_per_s"] > 0 and floor["kazoo_multi_pipelined_per_s"] > 0


@pytest.mark.slow
def test_a_small_fleet_runs_every_job_on_sqlite():
    # 20 ms steps pace it (at most 50 jobs/s): its steady window spans
    # several samples however fast the machine is.
    case = fleet.Case("tiny", 1, 2, 2, 20, 60, "sqlite", 0)
    result = fleet.run_case(case, taskflow="not run: test", budget=90)
    jobboard = result["jobboard"]
    assert jobboard["ended"] == "all done", jobboard
    assert jobboard["outcome"] == {"COMPLETE": 60}
    assert jobboard["jobs_per_s"] > 0 and jobboard["cpu_s_per_job"] > 0
    assert "logbook_xacts_per_job" not in jobboard
    assert result["taskflow"] == {"skipped": "not run: test"}
    assert result["floor"]["sqlite_commits_per_s_1"] > 0
    table = fleet.markdown({"command": "x", "git": {"commit": "0" * 40, "clean": True,
                                                    "changed": []},
                            "machine": {**fleet.machine(), "load_end": []},
                            "results": [result]})
    assert "| 1 conductors x 2 slots, 2-step 20 ms flows, sqlite, 60 jobs | jobboard |" in table
    assert "not run: test" in table


def test_markdown_refused_from_a_dirty_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(fleet, "git_state",
                        lambda: {"commit": "0" * 40, "clean": False, "changed": ["M x"]})
    target = tmp_path / "fleet.md"
    with pytest.raises(SystemExit, match="uncommitted changes"):
        fleet.main(["--jobs", "1", "--markdown", str(target)])
    assert not target.exists()
