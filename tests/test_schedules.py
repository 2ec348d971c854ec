"""Schedules: records and validation, the store on a real ZooKeeper, the
missed-fire policy, the scheduler (watches, pause, a leader's death between
post and status), the CLI, and a kill -9 of the leading process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobboard.board import Board
from jobboard.conductor import Conductor
from jobboard.errors import InvalidArgument, MalformedData
from jobboard.logbook import Logbook
from jobboard.schedules import (MissedFires, Schedule, ScheduleExists, ScheduleNotFound,
                                Scheduler, Schedules, Trigger, parse_duration, plan_fires)
from jobboard.testing.waiting import wait_until
from jobboard.testing.zookeeper import connected_client

FACTORY = "tests.flows_for_tests:noop"
T0 = 1_000_000.5          # a fixed "now" for deterministic schedules (1970, epoch-aligned)


class Clock:
    """A settable clock for the scheduler and the store."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fired(board: Board, name: str) -> list:
    """The jobs posted for schedule ``name``, by fire time."""
    jobs = [job for job in board.jobs() if job.details.get("schedule") == name]
    return sorted(jobs, key=lambda job: job.details["fire_time"])


# -- records, triggers, durations (no ZooKeeper) -----------------------------------

def test_durations():
    assert parse_duration("30s") == 30
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2d") == 172800
    assert parse_duration("90") == 90
    for bad in ("", "5x", "m5", "-3s", "1h 3", "nan"):
        with pytest.raises(InvalidArgument):
            parse_duration(bad)


def test_trigger_every_is_epoch_aligned_and_cron_uses_the_time_zone():
    every = Trigger(every=30)
    assert every.next_after(95.0) == 120.0
    assert every.next_after(120.0) == 150.0           # strictly after
    assert every.due(100.0, 215.0, keep=2) == ([180.0, 210.0], 2)   # 120, 150 older
    paris = Trigger(cron="0 3 * * *", tz="Europe/Paris")
    # 2026-03-29 is the spring-forward day in Paris: 03:00 CEST is 01:00 UTC
    start = 1774674000.0                              # 2026-03-28 05:00 UTC
    assert paris.next_after(start) == 1774746000.0    # 2026-03-29 01:00 UTC
    assert Trigger(cron="@hourly").next_after(3599.0) == 3600.0


@pytest.mark.parametrize("kwargs, argument", [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * *"}, "cron"),
    ({"cron": "0 0 30 2 *"}, "cron"),
    ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "tz"),
    ({"every": 0.5}, "every"),
    ({"every": 30, "tz": "UTC"}, "tz"),
    ({}, "cron"),
    ({"cron": "* * * * *", "every": 5}, "cron"),
])
def test_bad_triggers_are_refused(kwargs, argument):
    with pytest.raises(InvalidArgument) as caught:
        Schedule(name="s", factory=FACTORY, **kwargs)
    assert caught.value.argument == argument


@pytest.mark.parametrize("changes, argument", [
    ({"name": "a/b"}, "name"), ({"name": ""}, "name"), ({"factory": "nope"}, "factory"),
    ({"priority": 10_000}, "priority"), ({"queue": "no space"}, "queue"),
    ({"missed": "sometimes"}, "missed"), ({"catch_up_limit": 0}, "catch_up_limit"),
    ({"grace": -1}, "grace"), ({"args": {1: 2}}, "args"),
])
def test_bad_definitions_are_refused(changes, argument):
    with pytest.raises(InvalidArgument) as caught:
        Schedule(**{"name": "s", "factory": FACTORY, "every": 60, **changes})
    assert caught.value.argument == argument


def test_record_round_trip_and_validation_on_read():
    schedule = Schedule(name="s", factory=FACTORY, cron="*/5 * * * *", tz="Europe/Paris",
                        args={"a": 1}, queue="gpu", missed="catch-up", catch_up_limit=3)
    assert Schedule.decode(schedule.encode(), path="/x", name="s") == schedule
    with pytest.raises(MalformedData, match="names 's', not 'other'"):
        Schedule.decode(schedule.encode(), path="/x", name="other")
    with pytest.raises(MalformedData):
        Schedule.decode(b"\xc1garbage", path="/x", name="s")
    from jobboard.serialization import pack_record
    tampered = pack_record({**schedule.to_dict(), "cron": "99 * * * *"})
    with pytest.raises(MalformedData, match="bad cron"):
        Schedule.decode(tampered, path="/x", name="s")


def test_missed_fire_policy():
    skip = Schedule(name="s", factory=FACTORY, every=1, since=T0)
    plan = plan_fires(skip, 0.0, T0 + 8.7)            # nine fires due: 1_000_001 .. 009
    assert plan.post == (1_000_009.0,) and plan.skipped == 8
    assert plan.next_fire == 1_000_010.0
    strict = skip.replace(grace=0.1)                  # the latest is 0.2 s late: skip it too
    plan = plan_fires(strict, 0.0, T0 + 8.7)
    assert plan.post == () and plan.skipped == 9 and plan.skip_to == 1_000_009.0
    catch_up = skip.replace(missed=MissedFires.CATCH_UP, catch_up_limit=3)
    plan = plan_fires(catch_up, 0.0, T0 + 8.7)
    assert plan.post == (1_000_007.0, 1_000_008.0, 1_000_009.0) and plan.skipped == 6
    # in time: exactly the one fire the scheduler woke for
    plan = plan_fires(catch_up, 1_000_009.0, 1_000_010.001)
    assert plan.post == (1_000_010.0,) and plan.skipped == 0 and plan.skip_to is None


# -- the store on ZooKeeper ------------------------------------------------------------

def test_crud(board):
    schedules = Schedules(board)
    added = schedules.add("nightly", FACTORY, cron="0 3 * * *", tz="Europe/Paris",
                          args={"fmt": "pdf"}, priority=5)
    schedules.add("often", FACTORY, every=parse_duration("30s"))
    assert schedules.get("nightly") == added
    with pytest.raises(ScheduleExists):
        schedules.add("nightly", FACTORY, every=60)
    replaced = schedules.add("nightly", FACTORY, every=60, replace=True)
    assert schedules.get("nightly") == replaced and replaced.cron is None
    assert [info.name for info in schedules.list()] == ["nightly", "often"]
    assert schedules.pause("often").paused
    assert schedules.info("often").state == "paused"
    assert schedules.info("often").next_fire() is None
    resumed = schedules.resume("often")
    assert not resumed.paused and resumed.since >= added.since
    assert schedules.info("often").next_fire() > time.time()
    schedules.remove("often")
    with pytest.raises(ScheduleNotFound):
        schedules.get("often")
    with pytest.raises(ScheduleNotFound):
        schedules.remove("often")
    with pytest.raises(InvalidArgument):
        schedules.add("bad", FACTORY, cron="not cron")
    assert [info.name for info in schedules.list()] == ["nightly"]


def test_a_broken_schedule_is_reported_and_the_others_fire(board):
    clock = Clock(T0)
    schedules = Schedules(board, clock=clock)
    schedules.add("good", FACTORY, every=1)
    schedules.add("bad", FACTORY, every=1)
    board.client.set(schedules.path("bad"), b"\x93not a record")
    infos = {info.name: info for info in schedules.list()}
    assert infos["bad"].state == "broken" and "not valid msgpack" in infos["bad"].broken
    assert infos["good"].state == "active"
    with pytest.raises(MalformedData):
        schedules.get("bad")
    clock.now = T0 + 1.2
    Scheduler(board, clock=clock).tick()
    assert [job.details["fire_time"] for job in fired(board, "good")] == [1_000_001.0]
    assert fired(board, "bad") == []
    # a status that does not validate breaks its schedule until a resume resets it
    board.client.set(schedules.status_path("good"), b"junk")
    assert schedules.info("good").state == "broken"
    with pytest.raises(MalformedData):
        schedules.status("good")
    schedules.resume("good")
    assert schedules.info("good").state == "active" and schedules.status("good") is None


# -- the scheduler ----------------------------------------------------------------------

def test_tick_posts_each_fire_once_with_its_key(board):
    clock = Clock(T0)
    schedules = Schedules(board, clock=clock)
    schedule = schedules.add("t", FACTORY, every=1, args={"x": 1}, priority=3)
    scheduler = Scheduler(board, name="s1", clock=clock)
    clock.now = T0 + 0.2
    assert scheduler.tick() == pytest.approx(0.3)     # nothing due; next at 1_000_001
    assert fired(board, "t") == []
    clock.now = T0 + 0.5
    scheduler.tick()
    scheduler.tick()                                  # twice at the same time: no second job
    jobs = fired(board, "t")
    assert [job.key for job in jobs] == [schedule.key(1_000_001.0)]
    assert jobs[0].args == {"x": 1} and jobs[0].priority == 3 and jobs[0].name == "t"
    status = schedules.status("t")
    assert (status.cursor, status.last_fire, status.fires, status.leader) == \
        (1_000_001.0, 1_000_001.0, 1, "s1")
    assert status.last_job == jobs[0].uuid
    # the alert's gauge: 0 while fires are handled, growing when none is
    assert schedules.info("t").overdue(now=T0 + 1.4) == 0.0
    assert schedules.info("t").overdue(now=T0 + 30.0) == pytest.approx(28.5)


def test_a_leader_dying_between_post_and_status_does_not_post_twice(board):
    clock = Clock(T0)
    schedules = Schedules(board, clock=clock)
    schedule = schedules.add("t", FACTORY, every=1)
    # the dead leader posted the fire for 1_000_001 but never wrote the cursor
    ghost = board.post(FACTORY, key=schedule.key(1_000_001.0), name="t",
                       details={"schedule": "t", "fire_time": 1_000_001.0})
    clock.now = T0 + 0.6
    Scheduler(board, name="successor", clock=clock).tick()
    assert [job.uuid for job in fired(board, "t")] == [ghost.uuid]
    assert schedules.status("t").last_job == ghost.uuid


@pytest.mark.parametrize("missed, limit, expected", [
    ("skip", 10, [1_000_010.0]),
    ("catch-up", 3, [1_000_008.0, 1_000_009.0, 1_000_010.0]),
])
def test_missed_fires_after_an_outage(board, missed, limit, expected):
    clock = Clock(T0)
    schedules = Schedules(board, clock=clock)
    schedules.add("t", FACTORY, every=1, missed=missed, catch_up_limit=limit)
    clock.now = T0 + 10.2                             # ten fires passed with no scheduler
    scheduler = Scheduler(board, clock=clock)
    scheduler.tick()
    assert [job.details["fire_time"] for job in fired(board, "t")] == expected
    assert schedules.status("t").skipped == 10 - len(expected)
    clock.now = T0 + 11.1                             # back in time: the next one only
    scheduler.tick()
    assert [job.details["fire_time"] for job in fired(board, "t")] == expected + [1_000_011.0]


def test_a_paused_schedule_does_not_fire_and_resume_does_not_catch_up(board):
    clock = Clock(T0)
    schedules = Schedules(board, clock=clock)
    schedules.add("t", FACTORY, every=1, missed="catch-up", catch_up_limit=100)
    schedules.pause("t")
    scheduler = Scheduler(board, clock=clock)
    clock.now = T0 + 5.3
    scheduler.tick()
    assert fired(board, "t") == []
    schedules.resume("t")                              # since = T0 + 5.3
    clock.now = T0 + 7.4
    scheduler.wake()                                   # the leader's watch would do this
    scheduler.tick()
    assert [job.details["fire_time"] for job in fired(board, "t")] == [1_000_006.0,
                                                                        1_000_007.0]


def test_the_leader_wakes_on_changes_not_on_a_timer(board):
    scheduler = Scheduler(board, name="leader", max_wait=300.0).start()
    try:
        assert scheduler.wait_leading(10)
        schedules = Schedules(board)
        # the leader sleeps up to 300 s: only the watch can make it fire this soon
        schedules.add("t", FACTORY, every=1)
        assert wait_until(lambda: len(fired(board, "t")) >= 2, timeout=10)
        schedules.pause("t")
        paused_at = time.time()
        count = len(fired(board, "t"))
        time.sleep(2.5)                                # a window in which nothing may fire
        late = [job for job in fired(board, "t")
                if job.details["fire_time"] > paused_at + 0.5]
        assert late == [] and len(fired(board, "t")) <= count + 1
        schedules.resume("t")
        assert wait_until(lambda: len(fired(board, "t")) > count + 1, timeout=10)
        schedules.remove("t")
    finally:
        scheduler.stop(timeout=10)
    assert not scheduler.leading


def test_one_leader_among_schedulers(board, zk_hosts):
    with Board.connect(zk_hosts, root="/jobboard", session_timeout=4.0) as other:
        first = Scheduler(board, name="a").start()
        second = Scheduler(other, name="b").start()
        try:
            assert wait_until(lambda: first.leading or second.leading, timeout=10)
            assert not (first.leading and second.leading)
            leader, follower = (first, second) if first.leading else (second, first)
            leader.stop(timeout=10)
            assert follower.wait_leading(10)
        finally:
            first.stop(timeout=10)
            second.stop(timeout=10)


def test_a_leader_whose_session_expired_stands_again(board, zk_hosts):
    from kazoo.client import KazooState

    from jobboard.testing.zookeeper import zk_client

    with Board.connect(zk_hosts, root="/jobboard", session_timeout=4.0) as own:
        scheduler = Scheduler(own, name="phoenix", max_wait=300.0).start()
        try:
            assert scheduler.wait_leading(10)
            lost = threading.Event()
            own.client.add_listener(lambda state: lost.set()
                                    if state == KazooState.LOST else None)
            thief = zk_client(zk_hosts, client_id=own.client.client_id)
            thief.start(timeout=10)   # takes the session over; closing it expires it
            thief.stop()
            thief.close()
            assert lost.wait(20), "the session did not expire"
            assert wait_until(lambda: scheduler.terms == 2 and scheduler.leading, timeout=20)
            # the watches of the new session wake it: a schedule added now fires soon
            Schedules(board).add("t", FACTORY, every=1)
            assert wait_until(lambda: fired(board, "t"), timeout=10)
        finally:
            scheduler.stop(timeout=10)


# -- kill -9 of the leader ---------------------------------------------------------------

RUNNER = Path(__file__).with_name("schedule_runner.py")


@pytest.mark.slow
def test_every_second_for_ten_seconds_across_a_leader_kill(board, zk_hosts):
    """Two scheduler processes; the leader is killed with SIGKILL mid-run. Each
    tick of 10+ seconds is posted exactly once (catch-up covers the failover)."""
    schedules = Schedules(board)
    schedule = schedules.add("tick", FACTORY, every=1, missed="catch-up",
                             catch_up_limit=100)
    env = {**os.environ, "PYTHONPATH": str(RUNNER.parent.parent)}
    procs = {name: subprocess.Popen([sys.executable, str(RUNNER), zk_hosts, "/jobboard",
                                     name], env=env, stdout=subprocess.PIPE, text=True)
             for name in ("sched-a", "sched-b")}
    election = f"{board.paths.leaders}/scheduler"
    try:
        with connected_client(zk_hosts) as client:
            contenders = wait_until(
                lambda: len(client.Election(election).contenders()) == 2
                and client.Election(election).contenders(), timeout=30)
        assert contenders, "the two schedulers did not both stand"
        leader, survivor = contenders[0], [n for n in procs if n != contenders[0]][0]
        assert wait_until(lambda: (schedules.status("tick") or None)
                          and schedules.status("tick").fires >= 4, timeout=15)
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(timeout=10)
        first = fired(board, "tick")[0].details["fire_time"]
        assert wait_until(lambda: schedules.status("tick").leader == survivor
                          and schedules.status("tick").last_fire >= first + 10, timeout=30)
        procs[survivor].send_signal(signal.SIGTERM)
        assert procs[survivor].wait(timeout=15) == 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    jobs = fired(board, "tick")
    times = [job.details["fire_time"] for job in jobs]
    assert len(times) == len(set(times)), "a tick was posted twice"
    assert times == [first + n for n in range(len(times))], "a tick was lost"
    assert len(times) >= 11
    # the failover (a 1.5 s session) missed a tick that catch-up then posted late
    assert any(job.created_at - job.details["fire_time"] > 0.5 for job in jobs)
    assert all(job.key == schedule.key(job.details["fire_time"]) for job in jobs)
    status = schedules.status("tick")
    assert status.skipped == 0 and status.fires >= len(times)


# -- the CLI -------------------------------------------------------------------------------

@pytest.fixture
def cli(zk_hosts, tmp_path):
    from jobboard.cli import main
    from jobboard.cli.schedule import schedule

    added = "schedule" not in main.commands
    if added:
        main.add_command(schedule)
    runner = CliRunner()
    env = {"JOBBOARD_ZK": zk_hosts, "JOBBOARD_ROOT": "/cli",
           "JOBBOARD_LOGBOOK": f"sqlite:///{tmp_path}/logbook.db"}

    def invoke(*args: str):
        return runner.invoke(main, ["schedule", *args], env=env, catch_exceptions=False)

    yield invoke
    if added:
        main.commands.pop("schedule", None)


def test_cli(cli):
    added = cli("add", "nightly", FACTORY, "--cron", "0 3 * * *", "--tz", "Europe/Paris",
                "--arg", "n=3", "--store", "ids=[1,2]", "--priority", "4", "--json")
    assert added.exit_code == 0, added.output
    doc = json.loads(added.output)
    assert doc["name"] == "nightly" and doc["state"] == "active"
    assert doc["schedule"]["args"] == {"n": 3} and doc["schedule"]["store"] == {"ids": [1, 2]}
    assert doc["schedule"]["tz"] == "Europe/Paris" and doc["next_fire"] > time.time()
    assert cli("add", "often", FACTORY, "--every", "30s", "--missed", "catch-up",
               "--catch-up-limit", "5").exit_code == 0

    listing = json.loads(cli("list", "--json").output)
    assert [s["name"] for s in listing["schedules"]] == ["nightly", "often"]
    assert listing["schedules"][1]["schedule"]["every"] == 30.0
    table = cli("list").output
    assert "nightly" in table and "cron 0 3 * * * (Europe/Paris)" in table
    assert "every 30s" in table

    assert json.loads(cli("pause", "often", "--json").output)["state"] == "paused"
    assert "PAUSED" in cli("show", "often").output
    assert json.loads(cli("resume", "often", "--json").output)["state"] == "active"
    shown = json.loads(cli("show", "often", "--json").output)
    assert shown["schedule"]["missed"] == "catch-up" and shown["status"] is None
    assert json.loads(cli("remove", "often", "--json").output) == {"name": "often",
                                                                    "removed": True}


def test_cli_errors(cli):
    missing = cli("show", "nope")
    assert missing.exit_code == 1 and "no schedule named 'nope'" in missing.output
    assert "Traceback" not in missing.output
    for args in (["add", "x", FACTORY, "--cron", "99 * * * *"],
                 ["add", "x", FACTORY, "--every", "soon"],
                 ["add", "x", FACTORY],
                 ["add", "x", FACTORY, "--cron", "* * * * *", "--tz", "Nowhere/Else"]):
        result = cli(*args)
        assert result.exit_code in (1, 2), (args, result.output)
        assert result.output.startswith("error:"), (args, result.output)
    assert cli("add", "x", FACTORY, "--every", "1m").exit_code == 0
    taken = cli("add", "x", FACTORY, "--every", "1m")
    assert taken.exit_code == 1 and "exists already" in taken.output
    assert cli("add", "x", FACTORY, "--every", "2m", "--replace").exit_code == 0


# -- in the conductor and the exporter ---------------------------------------------


def test_conductor_runs_the_scheduler(board, zk_hosts, tmp_path):
    with Logbook(f"sqlite:///{tmp_path}/lb.db", auto_upgrade=True) as lb, \
         Board.connect(zk_hosts, root="/jobboard", session_timeout=4.0) as b1, \
         Board.connect(zk_hosts, root="/jobboard", session_timeout=4.0) as b2:
        off = Conductor(b1, lb, name="off", scheduler=False)
        on = Conductor(b2, lb, name="on")
        threads = [threading.Thread(target=c.run, daemon=True) for c in (off, on)]
        for t in threads:
            t.start()
        try:
            assert wait_until(lambda: on.scheduler is not None and on.scheduler.leading, 10)
            assert off.scheduler is None
            schedules = Schedules(board)
            schedules.add("t", "tests.flows_for_tests:noop", every=1)
            assert wait_until(lambda: (schedules.status("t") or None) is not None
                              and schedules.status("t").fires >= 2, 10)
            assert "/jobboard/schedules" in board.paths.containers()
        finally:
            for c in (off, on):
                c.stop(graceful=False)
            for c in (off, on):
                assert c.wait(30)
        assert not on.scheduler.leading


def test_schedule_collector(board):
    from prometheus_client import CollectorRegistry

    from jobboard.metrics import ScheduleCollector
    from jobboard.schedules import Scheduler

    s = Schedules(board, clock=lambda: 1_000_000.5)
    s.add("a", "m.x:f", every=1)
    s.add("p", "m.x:f", every=1, paused=True)
    reg = CollectorRegistry()
    reg.register(ScheduleCollector(s))
    assert reg.get_sample_value("jobboard_schedules", {"state": "active"}) == 1
    assert reg.get_sample_value("jobboard_schedules", {"state": "paused"}) == 1
    assert reg.get_sample_value("jobboard_schedule_overdue_seconds", {"schedule": "a"}) > 1e6
    Scheduler(board, clock=lambda: 1_000_001.2).tick()
    assert reg.get_sample_value("jobboard_schedule_fires_total", {"schedule": "a"}) == 1
    assert reg.get_sample_value("jobboard_schedule_last_fire_timestamp_seconds",
                                {"schedule": "a"}) == 1_000_001.0
