"""The job board on a real ZooKeeper: every operation, its errors, and races."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

import pytest
from kazoo.exceptions import NoAuthError

from board_helpers import children_below
from jobboard.board import Board, Claimer
from jobboard.errors import (AlreadyClaimed, BoardError, BoardUnavailable, ClaimLost,
                             JobNotFound, NotClaimed, NotOwner, NotReady, OwnerNotFound,
                             PayloadTooLarge, WaitTimeout)
from jobboard.serialization import dumps
from jobboard.states import JobState
from jobboard.testing.zookeeper import four_letter, zk_client

FACTORY = "tests.flows:noop"


def second_board(zk_hosts, **options) -> Board:
    return Board.connect(zk_hosts, root="/jobboard", session_timeout=1.0, **options)


def drain(claimer: Claimer) -> list:
    claimed = []
    while (job := claimer.claim_next()) is not None:
        claimed.append(job)
    return claimed


def test_post_round_trips_every_field(board):
    job = board.post(FACTORY, args={"region": "eu", "n": 3}, store={"x": [1, 2]},
                     name="provision", priority=7, key="k-1", details={"by": "test"})
    stored = board.get(job.uuid)
    assert stored == job
    assert (stored.name, stored.factory, stored.priority) == ("provision", FACTORY, 7)
    assert stored.args == {"region": "eu", "n": 3} and stored.store == {"x": [1, 2]}
    assert stored.state is JobState.UNCLAIMED and stored.claims == 0
    assert [j.uuid for j in board.jobs(JobState.UNCLAIMED)] == [job.uuid]
    assert list(board.jobs(JobState.CLAIMED)) == []


def test_post_refuses_bad_input(board):
    with pytest.raises(PayloadTooLarge) as info:
        board.post(FACTORY, store={"blob": b"x" * 1_000_000})
    assert info.value.size > info.value.limit
    with pytest.raises(ValueError):
        board.post("no-colon")
    with pytest.raises(ValueError):
        board.post(FACTORY, priority=10**6)
    with pytest.raises(ValueError):
        board.post(FACTORY, store={"obj": object()})
    assert list(board.jobs()) == []   # nothing half-posted


def test_idempotent_post_under_concurrent_posters(zk_hosts, board):
    boards = [second_board(zk_hosts) for _ in range(6)]
    results: list[str] = []
    barrier = threading.Barrier(len(boards))

    def post(b: Board) -> None:
        barrier.wait(timeout=10)
        results.append(b.post(FACTORY, key="same-key").uuid)

    threads = [threading.Thread(target=post, args=(b,)) for b in boards]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for b in boards:
        b.close()
    assert len(results) == 6 and len(set(results)) == 1
    assert [j.uuid for j in board.jobs()] == results[:1]
    assert len(list(board.jobs(JobState.UNCLAIMED))) == 1


def test_claim_consume_wait(board):
    job = board.post(FACTORY)
    claimed = board.claim(job, "alice")
    assert claimed.state is JobState.CLAIMED and claimed.claim.owner == "alice"
    assert claimed.claim.token > 0
    assert board.claims()[0]["owner"] == "alice"
    with pytest.raises(AlreadyClaimed) as info:
        board.claim(job.uuid, "bob")
    assert info.value.owner == "alice"
    with pytest.raises(WaitTimeout):
        board.wait(job.uuid, timeout=0.2)
    done = threading.Event()
    outcome = {}

    def waiter() -> None:
        outcome["value"] = board.wait(job.uuid, timeout=30)
        done.set()

    threading.Thread(target=waiter, daemon=True).start()
    board.consume(claimed, "alice", {"results": {"answer": 42}})
    assert done.wait(10)
    assert outcome["value"].ok and outcome["value"].results == {"answer": 42}
    assert board.get(job.uuid).state is JobState.COMPLETE
    assert board.claims() == [] and board.orphans() == []


def test_errors_for_unknown_jobs_and_non_owners(board):
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(JobNotFound):
        board.get(missing)
    with pytest.raises(JobNotFound):
        board.claim(missing, "alice")
    with pytest.raises(ValueError):
        board.get("not-a-uuid")
    job = board.post(FACTORY)
    with pytest.raises(NotClaimed):
        board.consume(job.uuid, "alice", {})
    with pytest.raises(NotClaimed):
        board.abandon(job.uuid, "alice")
    board.claim(job, "alice")
    with pytest.raises(NotOwner) as info:
        board.consume(job.uuid, "mallory", {})
    assert info.value.actual == "alice"
    with pytest.raises(AlreadyClaimed):
        board.trash(job.uuid)
    assert board.get(job.uuid).state is JobState.CLAIMED  # nothing changed


def test_abandon_puts_job_back_first(board):
    first = board.post(FACTORY)
    second = board.post(FACTORY)
    claimer = Claimer(board, "alice")
    got = claimer.claim_next()
    assert got.uuid == first.uuid
    board.abandon(got, "alice")
    with pytest.raises(ClaimLost):
        board.consume(got, "alice", {})  # its claim is gone: refused
    # A claimer that plans now sees it first. (alice's own plan still lists
    # `second` until her queue watch fires; that order is not guaranteed.)
    again = Claimer(board, "bob").claim_next()
    assert again.uuid == first.uuid and again.claims == 2
    assert again.claim.token > got.claim.token
    assert claimer.claim_next().uuid == second.uuid


def test_priorities_then_age(board):
    low = board.post(FACTORY, priority=-5)
    mid = [board.post(FACTORY) for _ in range(3)]
    high = board.post(FACTORY, priority=9)
    claimer = Claimer(board, "alice")
    order = [j.uuid for j in drain(claimer)]
    assert order == [high.uuid] + [j.uuid for j in mid] + [low.uuid]


def test_higher_priority_post_overtakes_a_cached_bucket(board):
    backlog = board.post_many([{"factory": FACTORY} for _ in range(20)])
    claimer = Claimer(board, "alice")
    assert claimer.claim_next().uuid == backlog[0].uuid
    urgent = board.post(FACTORY, priority=5)
    deadline = time.monotonic() + 10
    while not claimer._replan and time.monotonic() < deadline:
        claimer.wait_for_work(0.5)  # the bucket-list watch fires
    assert claimer.claim_next().uuid == urgent.uuid


def test_delayed_job_is_not_claimable_before_its_time(board):
    delayed = board.post(FACTORY, delay=1.5)
    claimer = Claimer(board, "alice")
    assert claimer.claim_next() is None
    with pytest.raises(NotReady):
        board.claim(delayed.uuid, "bob")
    assert [j.uuid for j in board.jobs(JobState.UNCLAIMED)] == [delayed.uuid]
    deadline = time.monotonic() + 15
    job = None
    while job is None and time.monotonic() < deadline:
        claimer.wait_for_work(5)   # returns when the job falls due
        job = claimer.claim_next()
    assert job is not None and job.uuid == delayed.uuid
    assert time.time() >= delayed.not_before


def test_a_delayed_job_trashed_before_its_time_leaves_no_entry(board, caplog):
    """The promoter meets the entry of a trashed delayed job: it drops the
    entry, and reports nothing malformed (the job is simply gone)."""
    delayed = board.post(FACTORY, delay=0.05)
    board.trash(delayed.uuid)
    deadline = time.monotonic() + 10
    while children_below(board, board.paths.delayed) and time.monotonic() < deadline:
        board.index.promote_due()
    assert children_below(board, board.paths.delayed) == []
    assert board.malformed() == {} and "malformed" not in caplog.text


def test_buckets_stay_bounded_and_ordered(board):
    board.bucket_size = 50
    posted = []
    for _ in range(4):   # a batch may overshoot a bucket by at most its own size
        posted += board.post_many([{"factory": FACTORY} for _ in range(40)])
    posted += [board.post(FACTORY) for _ in range(40)]
    buckets = board.client.get_children(board.paths.queue)
    assert len(buckets) >= 3
    for name in buckets:
        assert len(board.client.get_children(f"{board.paths.queue}/{name}")) <= 50 + 40
    claimer = Claimer(board, "alice")
    assert [j.uuid for j in drain(claimer)] == [j.uuid for j in posted]
    # drained buckets are removed, except a current one posters still use
    assert len(board.client.get_children(board.paths.queue)) <= 1


def test_a_stale_poster_does_not_bring_a_drained_bucket_back(zk_hosts, board):
    board.bucket_size = 5
    stale = second_board(zk_hosts)
    try:
        stale.bucket_size = 5
        stale.post(FACTORY)                       # stale caches bucket 1
        board.post_many([{"factory": FACTORY} for _ in range(5)])   # fills it: 2 opens
        claimer = Claimer(board, "alice")
        for job in drain(claimer):
            board.consume(job, "alice", {})
        only_bucket_2 = ["09999-0000000002"]     # priority 0, bucket 2
        assert board.client.get_children(board.paths.queue) == only_bucket_2
        late = stale.post(FACTORY)                # bucket 1 is gone: lands in bucket 2
        assert board.client.get_children(board.paths.queue) == only_bucket_2
        assert claimer.claim_next().uuid == late.uuid
    finally:
        stale.close()


def test_a_closed_board_raises_board_unavailable(zk_hosts, board):
    job = board.post(FACTORY)
    closed = second_board(zk_hosts)
    closed.close()
    for call in (lambda: closed.get(job.uuid), lambda: closed.claim_owner(job.uuid),
                 lambda: closed.holds_claim(job.uuid), closed.claims, closed.conductors):
        with pytest.raises(BoardUnavailable):
            call()


def test_two_claimers_split_the_board_without_conflicts(zk_hosts, board):
    posted = board.post_many([{"factory": FACTORY} for _ in range(200)])
    other = second_board(zk_hosts)
    members = lambda: ["a", "b"]  # noqa: E731
    a, b = Claimer(board, "a", members=members), Claimer(other, "b", members=members)
    claimed: list[str] = []
    while True:
        got = [c.claim_next() for c in (a, b)]
        claimed += [j.uuid for j in got if j]
        if not any(got):
            break
    other.close()
    assert sorted(claimed) == sorted(j.uuid for j in posted)
    assert a.conflicts + b.conflicts <= 2


RACE_SCRIPT = """
import sys
from jobboard.board import Board
from jobboard.errors import AlreadyClaimed
hosts, job_id, owner = sys.argv[1:4]
with Board.connect(hosts, root="/jobboard") as board:
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        board.claim(job_id, owner)
        print("won", flush=True)
    except AlreadyClaimed:
        print("lost", flush=True)
"""


def test_two_processes_race_to_claim_one_job(zk_hosts, board):
    for _ in range(3):
        job = board.post(FACTORY)
        procs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, zk_hosts, job.uuid, f"p{n}"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for n in range(2)]
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=30)[0].strip() for proc in procs]
        assert sorted(outputs) == ["lost", "won"]
        assert board.get(job.uuid).claims == 1


def test_watch_claim_answers_later_and_fires_when_the_claim_goes(zk_hosts, board):
    """watch_claim does not wait: its answer says whether this session holds
    the claim (None when it could not ask), and its watch fires on deletion."""
    mine, theirs = board.post(FACTORY), board.post(FACTORY)
    holder = second_board(zk_hosts)
    closed = second_board(zk_hosts)
    closed.close()
    try:
        board.claim(mine, "me")
        holder.claim(theirs, "other")
        answers: dict[str, queue.Queue] = {"mine": queue.Queue(), "theirs": queue.Queue(),
                                           "closed": queue.Queue()}
        events: queue.Queue = queue.Queue()
        board.watch_claim(mine.uuid, events.put, answers["mine"].put)
        board.watch_claim(theirs.uuid, lambda event: None, answers["theirs"].put)
        closed.watch_claim(mine.uuid, lambda event: None, answers["closed"].put)
        assert answers["mine"].get(timeout=10) is True
        assert answers["theirs"].get(timeout=10) is False     # another session's claim
        assert answers["closed"].get(timeout=10) is None      # could not ask
        board.abandon(mine.uuid, "me")
        assert events.get(timeout=10).type == "DELETED"
        board.watch_claim(mine.uuid, lambda event: None, answers["mine"].put)
        assert answers["mine"].get(timeout=10) is False       # no claim at all
    finally:
        holder.close()


def test_claim_vanishes_with_a_closed_session(zk_hosts, board):
    job = board.post(FACTORY)
    holder = second_board(zk_hosts)
    assert holder.claim(job.uuid, "holder").claim.owner == "holder"
    claimer = Claimer(board, "rescuer").start()
    holder.close()
    deadline = time.monotonic() + 15
    got = None
    while got is None and time.monotonic() < deadline:
        claimer.wait_for_work(1.0)   # the claim-set watch fires
        got = claimer.claim_next()
    assert got is not None and got.uuid == job.uuid and got.claims == 2


def test_claim_vanishes_with_an_expired_session(zk_hosts, board):
    job = board.post(FACTORY)
    holder = second_board(zk_hosts)
    claimed = holder.claim(job.uuid, "holder")
    # Expire the holder's session: open it from another client, then close that.
    session_id, password = holder.client.client_id
    thief = zk_client(zk_hosts, client_id=(session_id, password))
    thief.start(timeout=10)
    thief.stop()
    thief.close()
    claimer = Claimer(board, "rescuer")
    deadline = time.monotonic() + 15
    got = None
    while got is None and time.monotonic() < deadline:
        claimer.wait_for_work(1.0)
        got = claimer.claim_next()
    assert got is not None and got.uuid == job.uuid
    assert got.claim.token > claimed.claim.token
    with pytest.raises(BoardError):   # the old holder cannot finish it
        holder.consume(claimed, "holder", {})
    holder.close()


def test_transfer_moves_a_claim_to_a_live_conductor(zk_hosts, board):
    job = board.post(FACTORY)
    claimed = board.claim(job, "alice")
    with pytest.raises(OwnerNotFound):
        board.transfer(job.uuid, "alice", "bob")
    other = second_board(zk_hosts)
    other.register_conductor("bob", {"host": "test"})
    with pytest.raises(NotOwner):
        board.transfer(job.uuid, "carol", "bob")
    board.transfer(job.uuid, "alice", "bob")
    bob = Claimer(other, "bob")
    got = bob.claim_next()
    assert got is not None and got.uuid == job.uuid and got.claim.owner == "bob"
    assert got.claim.token > claimed.claim.token
    with pytest.raises(BoardError):
        board.consume(claimed, "alice", {})
    other.consume(got, "bob", {"results": {}})
    assert board.get(job.uuid).state is JobState.COMPLETE
    other.close()


def test_malformed_znodes_are_reported_and_skipped(board, caplog):
    good = board.post(FACTORY)
    bad = board.post(FACTORY)
    board.client.set(board.paths.job(bad.uuid), b"\xc1not msgpack")
    version_two = board.post(FACTORY)
    board.client.set(board.paths.job(version_two.uuid), dumps({"v": 2}))
    board.client.create(f"{board.paths.queue}/garbage-bucket/x", b"?", makepath=True)
    claimer = Claimer(board, "alice")
    claimed = drain(claimer)
    assert [j.uuid for j in claimed] == [good.uuid]
    drain(claimer)  # a second pass reports nothing new
    problems = board.malformed()
    assert board.paths.job(bad.uuid) in problems
    assert "version" in problems[board.paths.job(version_two.uuid)]
    assert f"{board.paths.queue}/garbage-bucket" in problems
    assert sum("malformed" in r.message for r in caplog.records) == len(problems)
    # listings skip them too, and admins see them
    assert {j.uuid for j in board.jobs()} == {good.uuid}
    assert board.paths.job(bad.uuid) in board.scan_malformed()
    # a stray child of a job shard is named by the admin's scan, not skipped
    stray = f"{board.paths.jobs}/7f/not-a-job"
    board.client.create(stray, b"?")
    assert "not a job id" in board.scan_malformed()[stray]


def test_dead_letter_after_too_many_claims_and_retry(board):
    board.max_claims = 2
    job = board.post(FACTORY)
    claimer = Claimer(board, "alice")
    for _ in range(2):
        got = claimer.claim_next()
        board.abandon(got, "alice", crashed=True)
    assert claimer.claim_next() is None
    dead = board.get(job.uuid)
    assert dead.state is JobState.DEAD and "crashed 2 times" in dead.outcome["reason"]
    assert [h["event"] for h in dead.history][-1] == "dead-lettered"
    board.retry(job.uuid)
    assert claimer.claim_next().uuid == job.uuid


def test_cancel_and_trash(board):
    waiting = board.post(FACTORY, key="cancel-me")
    assert board.cancel(waiting.uuid) is JobState.CANCELLED
    assert Claimer(board, "alice").claim_next() is None
    held = board.post(FACTORY)
    board.claim(held, "alice")
    assert board.cancel(held.uuid) is JobState.CLAIMED
    assert board.cancel_requested(held.uuid)
    board.trash(waiting.uuid)
    with pytest.raises(JobNotFound):
        board.get(waiting.uuid)
    assert board.post(FACTORY, key="cancel-me").uuid != waiting.uuid  # key freed


def test_acl_denies_clients_without_credentials(zk_hosts):
    with Board.connect(zk_hosts, root="/secure", auth=("svc", "s3cret")) as owner:
        job = owner.post(FACTORY, store={"secret": "payload"})
        stranger = zk_client(zk_hosts)
        stranger.start(timeout=10)
        try:
            with pytest.raises(NoAuthError):
                stranger.get(owner.paths.job(job.uuid))
            with pytest.raises(NoAuthError):
                stranger.create(owner.paths.claim(job.uuid), b"x", ephemeral=True)
        finally:
            stranger.stop()
            stranger.close()
        with Board(zk_client(zk_hosts), root="/secure") as anonymous:
            anonymous.client.start(timeout=10)
            with pytest.raises(BoardError, match="not authorized"):
                anonymous.get(job.uuid)
            anonymous.client.stop()
        assert owner.get(job.uuid).store == {"secret": "payload"}


def test_board_survives_a_leader_failover(zk_ensemble):
    with Board.connect(zk_ensemble.address, root="/jobboard", session_timeout=10.0) as board:
        before = board.post(FACTORY)
        zk_ensemble.leader().stop(kill=True)
        after = board.post(FACTORY)   # kazoo reconnects; the post is retried
        claimer = Claimer(board, "alice")
        assert [j.uuid for j in drain(claimer)] == [before.uuid, after.uuid]


def test_claim_sent_as_the_connection_drops(zk_ensemble):
    """The member serving the claimer freezes right after a claim is sent:
    the answer is a connection loss. The claimer looks at its claim node once
    reconnected to another member and reports what really happened, and the
    job is in the state that answer says."""
    with Board.connect(zk_ensemble.address, root="/jobboard", session_timeout=6.0) as board:
        job = board.post(FACTORY)
        current, stat = board.records.read(job.uuid)
        member = serving_member(zk_ensemble, board)
        member.freeze()
        try:
            answer = board.take_async(current, stat.version, "alice")
            claimed = answer()      # waits out the drop and the reconnect
        finally:
            member.thaw()
        after = board.get(job.uuid)
        if claimed is None:
            assert after.state is JobState.UNCLAIMED
            assert Claimer(board, "bob").claim_next().uuid == job.uuid
        else:
            assert after.state is JobState.CLAIMED and board.claim_owner(job.uuid) == "alice"


def test_consume_through_a_connection_drop(zk_ensemble):
    """The member serving the holder is frozen when it consumes: the commit
    meets a connection loss, the board reads the record on another member,
    sees it did not land, and commits again: the job ends COMPLETE, once."""
    with Board.connect(zk_ensemble.address, root="/jobboard", session_timeout=6.0) as board:
        board.post(FACTORY)
        job = Claimer(board, "alice").claim_next()
        member = serving_member(zk_ensemble, board)
        member.freeze()
        try:
            board.consume(job, "alice", {"results": {"x": 1}})
        finally:
            member.thaw()
        done = board.get(job.uuid)
        assert done.state is JobState.COMPLETE and done.outcome == {"results": {"x": 1}}
        assert [h["event"] for h in done.history].count("complete") == 1
        assert board.claim_owner(job.uuid) is None


def test_register_a_conductor_as_the_connection_drops(zk_ensemble):
    """A conductor starting while the member serving it freezes: registering
    waits out the reconnect instead of failing, and the node is its own.

    The member is really stopped before the calls (``freeze`` waits for it),
    so they meet the frozen server. kazoo parks a request while no member
    answers and once waited for it without a bound (this test hung 120 s);
    every call of the board's client is bounded now (jobboard.zkhandler), so
    an ensemble that cannot serve fails the test with BoardUnavailable."""
    with Board.connect(zk_ensemble.address, root="/jobboard", session_timeout=6.0) as board:
        member = serving_member(zk_ensemble, board)
        member.freeze()
        try:
            board.register_conductor("c1", {"pid": 1})
            board.update_conductor("c1", {"pid": 2})
        finally:
            member.thaw()
        assert board.conductors() == [{"name": "c1", "pid": 2}]
        _, stat = board.client.get(board.paths.conductor("c1"))
        assert stat.ephemeralOwner == board.session_id


def serving_member(ensemble, board: Board):
    """The ensemble member holding the board's connection."""
    session = f"sid=0x{board.session_id:x}"
    return next(m for m in ensemble.members if session in four_letter(m.port, "cons"))


def test_depth_counts_without_listing_jobs(board):
    board.max_claims = 1
    doomed = board.post(FACTORY, priority=3)
    claimer = Claimer(board, "x")
    board.abandon(claimer.claim_next(), "x", crashed=True)
    board.post_many([{"factory": FACTORY} for _ in range(5)])
    board.post(FACTORY, delay=60)
    held = claimer.claim_next()          # dead-letters `doomed`, then claims the next
    assert board.get(doomed.uuid).state is JobState.DEAD and held.uuid != doomed.uuid
    depth = board.depth()
    assert depth["waiting"] == {0: 4} and depth["delayed"] == 1
    assert depth["dead"] == 1 and depth["claimed"] == 1
    assert depth["oldest_waiting_age"] >= 0
