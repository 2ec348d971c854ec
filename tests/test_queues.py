"""Queues on a real ZooKeeper with real conductors: routing, priority across
queues, jobs given back by conductors that cannot import their factory,
parking after the refusals run out, and a claim cost that does not grow with
the number of queues or waiting jobs."""

from __future__ import annotations

import threading

import pytest

from jobboard.board import Board, Claimer
from jobboard.conductor import Conductor
from jobboard.errors import InvalidArgument
from jobboard.logbook import Logbook
from jobboard.schedules import Schedules, Scheduler
from jobboard.states import JobState
from test_conductor import board, conductor_process, fleet, logbook_url, wait_until  # noqa: F401

NOOP = "jobboard.testing.flows:noop"
BROKEN = "jobboard.testing.flows:broken"
NOT_INSTALLED = "jobboard_not_installed_here.flows:build"


def owners(job) -> set[str]:
    return {h["owner"] for h in job.history if h["event"] == "claimed"}


def test_queue_names_are_checked_and_jobs_listed_by_queue(board):
    with pytest.raises(InvalidArgument):
        board.post(NOOP, queue="GPU")
    with pytest.raises(InvalidArgument):
        board.post(NOOP, queue="9lives")      # a bucket name starts with a digit
    gpu = board.post(NOOP, queue="gpu")
    plain = board.post(NOOP)
    batch = board.post_many([{"factory": NOOP, "queue": "gpu"}, {"factory": NOOP}])
    assert (gpu.queue, plain.queue, [j.queue for j in batch]) == \
        ("gpu", "default", ["gpu", "default"])
    assert board.get(gpu.uuid).queue == "gpu"
    assert [j.uuid for j in board.jobs("UNCLAIMED", queue="gpu")] == [gpu.uuid, batch[0].uuid]
    assert board.waiting_by_queue() == {"default": 2, "gpu": 2}
    assert board.depth()["waiting"] == {0: 4}
    assert sorted(board.queues()) == ["default", "gpu"]


def test_a_claimer_takes_its_queues_in_order_then_priority(board):
    low_a = board.post(NOOP, queue="alpha", priority=-5)
    high_b = board.post(NOOP, queue="beta", priority=50)
    high_a = board.post(NOOP, queue="alpha", priority=7)
    other = board.post(NOOP, queue="gamma", priority=99)
    claimer = Claimer(board, "c1", queues=("alpha", "beta"))
    taken = [claimer.claim_next().uuid for _ in range(3)]
    assert taken == [high_a.uuid, low_a.uuid, high_b.uuid]
    assert claimer.claim_next() is None
    assert board.get(other.uuid).state is JobState.UNCLAIMED
    claimer.stop()


def test_conductors_serve_only_their_queues_and_a_queue_waits_for_its_own(board, zk_hosts,
                                                                          logbook_url):
    gpu = board.post(NOOP, queue="gpu")
    cpu = board.post(NOOP, queue="cpu")
    video = board.post(NOOP, queue="video")
    procs = [conductor_process(zk_hosts, logbook_url, "c-gpu", "--queue", "gpu"),
             conductor_process(zk_hosts, logbook_url, "c-cpu", "--queue", "cpu,default")]
    try:
        assert board.wait(gpu.uuid, timeout=60).state is JobState.COMPLETE
        assert board.wait(cpu.uuid, timeout=60).state is JobState.COMPLETE
        assert owners(board.get(gpu.uuid)) == {"c-gpu"}
        assert owners(board.get(cpu.uuid)) == {"c-cpu"}
        waiting = board.get(video.uuid)
        assert waiting.state is JobState.UNCLAIMED and waiting.claims == 0
        assert board.waiting_by_queue()["video"] == 1
        procs.append(conductor_process(zk_hosts, logbook_url, "c-video", "--queue", "video"))
        assert board.wait(video.uuid, timeout=60).state is JobState.COMPLETE
        assert owners(board.get(video.uuid)) == {"c-video"}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def test_a_conductor_missing_the_factory_gives_the_job_back(board, fleet):
    fleet.start("narrow", allow=("jobboard.testing.lifecycle_flows",), refusal_backoff=60)
    job = board.post(NOOP)
    refused = threading.Event()

    def given_back() -> bool:
        current = board.get(job.uuid)
        return current.refusals == 1 and current.state is JobState.UNCLAIMED

    wait_until(given_back, what="the narrow conductor to give the job back")
    refused.set()
    fleet.start("wide", allow=("jobboard.testing",))
    outcome = board.wait(job.uuid, timeout=30)
    assert outcome.state is JobState.COMPLETE
    done = board.get(job.uuid)
    assert owners(done) == {"narrow", "wide"}
    assert (done.refusals, done.deaths) == (1, 0)       # uncounted against max_claims
    refusal = next(h for h in done.history if h["event"] == "refused")
    assert refusal["owner"] == "narrow" and "outside its --allow" in refusal["reason"]


def test_a_job_nobody_can_import_is_parked_with_the_reason(zk_hosts, logbook_url):
    members = []
    try:
        for name, allow in (("c1", ("jobboard.testing.lifecycle_flows",)),
                            ("c2", ("jobboard.testing.lifecycle_flows",
                                    "jobboard_not_installed_here"))):
            member_board = Board.connect(zk_hosts, root="/fleet", session_timeout=2.0,
                                         max_refusals=3)
            conductor = Conductor(member_board, Logbook(logbook_url), name=name, allow=allow,
                                  refusal_backoff=0.2, keep_finished=None)
            thread = threading.Thread(target=conductor.run, daemon=True)
            thread.start()
            members.append((conductor, member_board))
        board = members[0][1]
        outside = board.post(NOOP)
        missing = board.post(NOT_INSTALLED)
        for job in (outside, missing):
            outcome = board.wait(job.uuid, timeout=30)
            assert outcome.state is JobState.DEAD
            assert outcome.reason.startswith(
                f"no conductor serving queue 'default' can import {job.factory}")
            parked = board.get(job.uuid)
            assert parked.refusals == 3 and parked.deaths == 0
        # c2 allows the module but does not have it: a refusal too, not a failure
        reasons = {(h["owner"], h["reason"].rsplit(": ", 1)[-1])
                   for h in board.get(missing.uuid).history if h["event"] == "refused"}
        assert ("c2", "no module 'jobboard_not_installed_here' is installed there)") in reasons
        retried = board.retry(outside.uuid)
        assert (retried.refusals, retried.state) == (0, JobState.UNCLAIMED)
    finally:
        for conductor, member_board in members:
            conductor.stop(graceful=False)
        for conductor, member_board in members:
            assert conductor.wait(30)
            member_board.close()


def test_an_import_error_inside_an_allowed_module_fails_the_job(board, fleet):
    fleet.start("c1", allow=("jobboard.testing",))
    job = board.post(BROKEN)
    outcome = board.wait(job.uuid, timeout=30)
    assert outcome.state is JobState.FAILED
    assert board.get(job.uuid).refusals == 0


class Counting:
    """Counts the requests a kazoo client sends (every call goes through
    ``_call``, transactions included)."""

    def __init__(self, client) -> None:
        self.count = 0
        original = client._call

        def counted(request, async_object):
            self.count += 1
            return original(request, async_object)

        client._call = counted


def claim_cost(board: Board, queue: str, claims: int) -> float:
    claimer = Claimer(board, "counter", queues=(queue,), members=lambda: ["counter"])
    assert claimer.claim_next() is not None            # the first claim plans
    counter = Counting(board.client)
    for _ in range(claims):
        assert claimer.claim_next() is not None
    claimer.stop()
    return counter.count / claims


def test_claim_cost_does_not_grow_with_queues_or_waiting_jobs(zk_hosts):
    with Board.connect(zk_hosts, root="/small") as small:
        small.post_many([{"factory": NOOP, "queue": "work"} for _ in range(30)])
        few = claim_cost(small, "work", 20)
    with Board.connect(zk_hosts, root="/large") as large:
        large.bucket_size = 10_000
        specs = [{"factory": NOOP, "queue": f"q{n}", "priority": n % 3}
                 for n in range(60) for _ in range(40)]
        large.post_many(specs)
        many = claim_cost(large, "q7", 20)
        assert large.waiting_by_queue()["q0"] == 40
    assert many <= few + 0.5, (few, many)
    assert many <= 3.0, many


def test_a_scheduled_fire_lands_in_its_queue(board):
    clock_now = [1_000_000.5]
    schedules = Schedules(board, clock=lambda: clock_now[0])
    schedules.add("gpu-nightly", NOOP, every=1, queue="gpu")
    clock_now[0] += 0.6
    Scheduler(board, name="s1", clock=lambda: clock_now[0]).tick()
    [job] = [j for j in board.jobs() if j.details.get("schedule") == "gpu-nightly"]
    assert job.queue == "gpu"
    assert [j.uuid for j in board.jobs("UNCLAIMED", queue="gpu")] == [job.uuid]
