"""Entry names never reused, the repair sweep (fsck), and poison records
next to healthy jobs: on a real ZooKeeper, with real conductors."""

from __future__ import annotations

from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from board_helpers import children_below
from jobboard.board import Board, Claimer
from jobboard.board.job import Job
from jobboard.board.layout import RESTORE_BUCKET, Bucket
from jobboard.board.repair import Sweep
from jobboard.errors import JobNotFound
from jobboard.serialization import pack_record
from jobboard.states import JobState
from test_conductor import Fleet, logbook_url, wait_until  # noqa: F401  (fixture)

FACTORY = "jobboard.testing.flows:noop"


@pytest.fixture
def board(zk_hosts):   # the fleet's root, so conductors see these jobs
    with Board.connect(zk_hosts, root="/fleet") as board:
        yield board


@pytest.fixture
def fleet(zk_hosts, logbook_url):  # noqa: F811
    fleet = Fleet(zk_hosts, logbook_url)
    yield fleet
    fleet.stop_all()


def restore_entries(board: Board, priority: int = 0) -> list[str]:
    bucket = board.paths.bucket(Bucket(priority, RESTORE_BUCKET))
    return sorted(board.client.get_children(bucket)) if board.client.exists(bucket) else []


def entry_paths(board: Board) -> list[str]:
    return children_below(board, board.paths.queue)


def test_entry_names_are_never_reused(board):
    """The interleaving that stranded jobs: a restore bucket drained and
    deleted, made again by the next abandon (its sequence counter restarts),
    and a claimer holding the old entry path deletes it as stale. The new
    entry has another name, so the stale delete misses it."""
    job = board.post(FACTORY)
    board.abandon(board.claim(job.uuid, "alice"), "alice")
    [first] = restore_entries(board)
    restore = board.paths.bucket(Bucket(0, RESTORE_BUCKET))
    stale_path = f"{restore}/{first}"
    # alice takes it again directly (the entry stays behind, stale), a claimer
    # drops the stale entry and the drained bucket
    board.claim(job.uuid, "alice")
    board.client.delete(stale_path)
    board.client.delete(restore)
    board.abandon(job.uuid, "alice")              # the bucket is made again
    [second] = restore_entries(board)
    assert second != first and second.endswith("-0000000000")   # same counter value
    # the stale claimer's delete of its old path hits nothing
    assert board.index.remove(stale_path) is False
    claimed = Claimer(board, "bob").claim_next()
    assert claimed is not None and claimed.uuid == job.uuid


def test_a_stale_read_ahead_never_deletes_a_fresh_entry(board):
    """A claimer that read the record while it was claimed, then meets the
    entry of its next put-back, reads again instead of deleting the entry."""
    job = board.post(FACTORY)
    claimer = Claimer(board, "bob")
    claimer.start()
    held = board.claim(job.uuid, "alice")
    stale_record = board.client.get(board.paths.job(job.uuid))  # CLAIMED, version 1
    board.abandon(held, "alice")
    [entry] = restore_entries(board)
    assert board.index.is_live(board.get(job.uuid), 2, 2)
    assert Job.decode(stale_record[0]).state is JobState.CLAIMED
    assert entry.startswith(f"{job.uuid}_2-")
    got = claimer.claim_next()
    assert got is not None and got.uuid == job.uuid


def test_fsck_requeues_a_stranded_job(board):
    job = board.post(FACTORY)
    [entry] = entry_paths(board)
    board.client.delete(entry)                    # what the old bug left behind
    assert Claimer(board, "alice").claim_next() is None
    [finding] = board.fsck()
    assert (finding.kind, finding.job_id, finding.repaired) == ("unqueued-job", job.uuid, False)
    [repaired] = board.fsck(repair=True)
    assert repaired.repaired
    assert Claimer(board, "alice").claim_next().uuid == job.uuid
    assert board.fsck() == []


def corrupt(board: Board, job: Job, **fields) -> None:
    body = {**job.to_dict(), **fields}
    board.client.set(board.paths.job(job.uuid), pack_record(body))


def test_fsck_finds_and_repairs_every_inconsistency(zk_hosts, board):
    paths = board.paths
    stranded = board.post(FACTORY)
    board.client.delete(entry_paths(board)[0])
    trashed = board.post(FACTORY)
    trashed_entry = [p for p in entry_paths(board) if trashed.uuid in p]
    board.client.delete(paths.job(trashed.uuid))               # entry left: stale
    orphan = board.post(FACTORY)
    with Board.connect(zk_hosts, root=paths.root, session_timeout=4.0) as gone:
        gone.claim(orphan.uuid, "gone")                         # session ends: orphan
    holderless = board.post(FACTORY)
    board.claim(holderless.uuid, "alice")
    board.client.delete(paths.claim(holderless.uuid))
    board.client.delete(paths.running_marker(holderless.uuid))
    finished = board.post(FACTORY)
    board.consume(board.claim(finished.uuid, "alice"), "alice", {})
    board.client.create(paths.claim(finished.uuid), b"ghost")
    keyed = board.post(FACTORY, key="k1")
    board.trash(keyed.uuid)
    board.client.create(paths.key("k1"), keyed.uuid.encode())    # key pointing nowhere
    board.client.create(paths.dead_marker(finished.uuid))
    waiting = board.post(FACTORY)
    board.client.create(paths.cancel_request(waiting.uuid))
    malformed = board.post(FACTORY)
    corrupt(board, malformed, not_before="tomorrow")
    board.client.create(f"{paths.jobs}/7f/not-a-job", b"?")
    board.client.create(f"{paths.queue}/garbage-bucket", b"?")

    found = {(f.kind, f.job_id) for f in board.fsck()}
    expected = {
        ("unqueued-job", stranded.uuid), ("stale-entry", trashed.uuid),
        ("orphan", orphan.uuid), ("claimed-without-holder", holderless.uuid),
        ("claim-not-running", finished.uuid), ("dangling-key", keyed.uuid),
        ("dead-marker", finished.uuid), ("stale-cancel", waiting.uuid),
        ("malformed-record", malformed.uuid), ("stray-znode", None),
    }
    assert expected <= found, expected - found
    assert trashed_entry and all(board.client.exists(p) for p in trashed_entry)

    report = board.fsck(repair=True)
    assert all(f.repaired for f in report), [f for f in report if not f.repaired]
    assert board.fsck() == []
    # what was put back is claimable; what was garbage is quarantined and named
    claimer = Claimer(board, "carol")
    claimed = set()
    while (job := claimer.claim_next()) is not None:
        claimed.add(job.uuid)
    assert {stranded.uuid, orphan.uuid, holderless.uuid} <= claimed
    # a cancel request that raced with a put-back: honoured, as the next holder would
    assert waiting.uuid not in claimed and board.get(waiting.uuid).state is JobState.CANCELLED
    assert board.cancel_requested(waiting.uuid) is False
    assert board.post(FACTORY, key="k1").uuid != keyed.uuid
    problems = board.malformed()
    assert "not_before" in problems[paths.job(malformed.uuid)]
    assert f"{paths.jobs}/7f/not-a-job" in problems
    assert not board.client.exists(f"{paths.jobs}/7f/not-a-job")


def test_conductors_sweep_the_board(board, fleet):
    """A stranded job is back on the queue within one sweep interval, run by
    the one conductor that leads the sweep."""
    job = board.post(FACTORY)
    board.client.delete(entry_paths(board)[0])
    fleet.start("c1", fsck_interval=0.5)
    fleet.start("c2", fsck_interval=0.5)
    assert board.wait(job.uuid, timeout=30).state is JobState.COMPLETE
    election = f"{board.paths.leaders}/fsck"
    wait_until(lambda: len(board.client.get_children(election)) == 2, timeout=15,
               what="both conductors standing for the sweep")   # one leads, one waits


POISON = {
    "not_before": "tomorrow", "priority": "high", "args": ["not", "a", "map"],
    "created_at": "now", "state": "RUNNING-ISH", "claims": -1, "history": "oops",
    "store": 7, "factory": "no colon here", "owner": 5, "outcome": [1],
}


def test_poison_records_cost_only_themselves(board, fleet):
    """Records that fail validation in every field, and one whose uuid is not
    its znode's name, at a higher priority than 10 healthy jobs: the 10
    complete, the poison ones are quarantined and listed, none is stranded."""
    healthy = [board.post(FACTORY) for _ in range(10)]
    poison = []
    for field, value in POISON.items():
        job = board.post(FACTORY, priority=5)
        corrupt(board, job, **{field: value})
        poison.append(job)
    impostor = board.post(FACTORY, priority=5)
    corrupt(board, impostor, uuid=healthy[0].uuid)
    poison.append(impostor)
    fleet.start("c1", concurrency=8)
    for job in healthy:
        assert board.wait(job.uuid, timeout=60).state is JobState.COMPLETE
    problems = board.malformed()
    for job in poison:
        assert board.paths.job(job.uuid) in problems
    assert entry_paths(board) == [] and board.claims() == []


def test_an_entry_goes_with_a_record_another_moved_aside_first(board):
    """A claimer judging a malformed record and a repair sweep moving it
    aside race: whoever comes second still deletes the entry it was given
    (or it would name nothing for good, skipped by that claimer)."""
    for with_data in (True, False):
        job = board.post(FACTORY)
        corrupt(board, job, priority="high")
        path = board.paths.job(job.uuid)
        data, stat = board.client.get(path)
        [entry] = entry_paths(board)
        assert board.records.quarantine(path, "the sweep's")             # the record alone
        assert entry_paths(board) == [entry]
        late = dict(version=stat.version, data=data) if with_data else {}
        assert not board.records.quarantine(path, "the claimer's", also_delete=(entry,), **late)
        assert entry_paths(board) == []


def test_a_quarantine_whose_companion_went_takes_the_others(board):
    """One of the znodes to delete with a malformed record went meanwhile:
    the record goes with the others, not alone."""
    job = board.post(FACTORY)
    corrupt(board, job, priority="high")
    [entry] = entry_paths(board)
    gone = board.paths.cancel_request(job.uuid)          # never made
    assert board.records.quarantine(board.paths.job(job.uuid), "bad", also_delete=(gone, entry))
    assert entry_paths(board) == [] and board.paths.job(job.uuid) in board.malformed()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(
    st.binary(max_size=64),
    st.builds(lambda value: pack_record({"value": value}), st.recursive(
        st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
        | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)),
    st.builds(lambda field, value: {field: value},
              st.sampled_from(sorted(POISON) + ["uuid", "name", "key", "details",
                                                 "claimed_at", "finished_at"]),
              st.none() | st.integers(-2**63, 2**63) | st.text(max_size=8) | st.floats()
              | st.lists(st.integers(-9, 9), max_size=2))))
def test_any_record_under_a_job_path_never_breaks_a_claim(board, garbage):
    """Whatever sits in a job's znode, the claim path neither raises nor
    strands the healthy job posted beside it."""
    bad = board.post(FACTORY, priority=1)
    if isinstance(garbage, dict):
        corrupt(board, bad, **garbage)
    else:
        board.client.set(board.paths.job(bad.uuid), garbage)
    good = board.post(FACTORY)
    claimer = Claimer(board, "alice")
    claimed = claimer.claim_batch(4)
    claimed += claimer.claim_batch(4)
    assert good.uuid in {job.uuid for job in claimed}
    for job in claimed:
        board.consume(job, "alice", {})
    assert entry_paths(board) == []


def test_a_failed_answer_costs_its_own_job_and_is_given_back(board):
    """A claim batch where one answer fails after its claim committed: the
    other jobs of the batch are claimed; the failed one is checked on the
    next call and given back, then claimed like any waiting job."""
    from jobboard.errors import Cancelled
    from jobboard.events import EventKind

    jobs = [board.post(FACTORY) for _ in range(3)]
    unlucky = jobs[1].uuid
    failed = []

    def listener(event):
        if event.kind is EventKind.JOB_CLAIMED and event.job_id == unlucky and not failed:
            failed.append(event.job_id)
            raise Cancelled("this answer is lost")

    board.notifier.subscribe(listener)
    claimer = Claimer(board, "alice")
    first = claimer.claim_batch(3)
    assert {job.uuid for job in first} == {jobs[0].uuid, jobs[2].uuid}
    assert failed == [unlucky] and board.claim_owner(unlucky) == "alice"   # it landed
    again = claimer.claim_batch(3)                # given back, then claimed afresh
    assert [job.uuid for job in again] == [unlucky]
    assert [h["event"] for h in board.get(unlucky).history][-3:] == [
        "claimed", "abandoned", "claimed"]


def test_an_entry_that_cannot_be_deleted_does_not_hold_the_claimer(board):
    """A stale entry with a child (a delete fails with NotEmpty) at a higher
    priority: the claimer skips it and claims the next job, once."""
    stale = board.post(FACTORY, priority=5)
    [entry] = entry_paths(board)
    board.client.create(f"{entry}/child", b"")
    board.client.delete(board.paths.job(stale.uuid))
    waiting = board.post(FACTORY)
    claimer = Claimer(board, "alice")
    assert claimer.claim_next().uuid == waiting.uuid
    assert claimer.claim_next() is None


def test_a_stray_running_marker_does_not_bring_a_finished_job_back(board):
    job = board.post(FACTORY)
    board.consume(board.claim(job.uuid, "alice"), "alice", {})
    board.client.create(board.paths.running_marker(job.uuid), b"ghost")
    assert Claimer(board, "bob").claim_next() is None
    assert board.restore_orphan(job.uuid, me="bob") is None
    assert board.get(job.uuid).state is JobState.COMPLETE
    assert not board.client.exists(board.paths.running_marker(job.uuid))


def finished_entries(board: Board) -> list[str]:
    return children_below(board, board.paths.finished)


def finish(board: Board, state: JobState = JobState.COMPLETE) -> Job:
    job = board.post(FACTORY, priority=1)        # ahead of any job waiting
    held = Claimer(board, "alice").claim_next()  # (a claim by id leaves the entry)
    assert held.uuid == job.uuid
    return board.consume(held, "alice", {}, state=state)


def test_fsck_checks_and_repairs_the_finished_index(board):
    """A finished job missing from the finished index (retention would never
    prune it) gets its entry; entries of a trashed job, of a retried one (as
    older releases left them) and in the wrong minute are deleted; names
    that are not the index's are moved aside. Then retention prunes every finished job."""
    paths = board.paths
    done = finish(board)
    missing = finish(board)
    board.client.delete(paths.finished_entry(missing.finished_at, missing.uuid))
    trashed = finish(board)
    board.trash(trashed.uuid)              # an older release left its entry: made again
    board.client.create(paths.finished_entry(trashed.finished_at, trashed.uuid))
    moved = finish(board)
    elsewhere = paths.finished_entry(moved.finished_at - 600, moved.uuid)
    board.client.create(elsewhere, makepath=True)
    retried = finish(board, JobState.FAILED)
    board.retry(retried.uuid)                                  # likewise
    board.client.create(paths.finished_entry(retried.finished_at, retried.uuid))
    board.client.create(f"{paths.finished}/not-a-minute", b"?")
    odd = f"{paths.finished_minute(int(done.finished_at // 60))}/not-a-job"
    board.client.create(odd, b"?")
    stale = {paths.finished_entry(trashed.finished_at, trashed.uuid),
             paths.finished_entry(retried.finished_at, retried.uuid), elsewhere}

    found = board.fsck()
    assert {(f.kind, f.job_id) for f in found} == {
        ("unindexed-job", missing.uuid), ("stale-entry", trashed.uuid),
        ("stale-entry", retried.uuid), ("stale-entry", moved.uuid), ("stray-znode", None)}
    assert {f.path for f in found if f.kind == "stale-entry"} == stale
    assert {f.path for f in found if f.kind == "stray-znode"} == {
        f"{paths.finished}/not-a-minute", odd}
    assert not any(f.repaired for f in found)

    repaired = board.fsck(repair=True)
    assert len(repaired) == len(found) and all(f.repaired for f in repaired), repaired
    assert board.fsck() == []
    assert sorted(finished_entries(board)) == sorted(
        paths.finished_entry(job.finished_at, job.uuid) for job in (done, missing, moved))
    assert odd in board.malformed()
    assert board.prune(0).removed == 3                         # the missing one too
    for job in (done, missing, moved):
        with pytest.raises(JobNotFound):
            board.get(job.uuid)
    assert board.get(retried.uuid).state is JobState.UNCLAIMED


def test_a_job_claimed_or_finished_during_the_sweep_is_not_reported(board):
    """The sweep's picture is taken over time: jobs claimed, finished and
    posted between its listings look inconsistent in it. Taking the sweep's
    steps one by one and changing the board between them, every such job is
    judged again and let go; the one stranded job is reported."""
    def claim() -> Job:
        return Claimer(board, "c1").claim_next()      # a fresh plan each time

    board.post(FACTORY)
    consumed_early = claim()              # claim listed, then finished
    board.post(FACTORY)
    consumed_late = claim()               # read CLAIMED, then finished
    stranded = board.post(FACTORY)
    board.client.delete(entry_paths(board)[0])
    board.post(FACTORY, priority=9)       # claimed after the markers were listed
    claimed_late = board.post(FACTORY, priority=8)   # read waiting, then claimed

    sweep = Sweep(board.repair, fix=False)
    sweep.list_markers()
    board.consume(consumed_early, "c1", {})
    assert claim().priority == 9
    shards = {shard: sweep.read_shard(shard) for shard in board.paths.shards()}
    assert claim().uuid == claimed_late.uuid
    board.consume(consumed_late, "c1", {})
    board.post(FACTORY)                   # posted after its shard was read
    for shard, jobs in shards.items():
        sweep.check_shard(shard, jobs)
        sweep.remember(jobs)
    sweep.check_shard("", {})
    sweep.check_queue_index()
    sweep.check_finished_index()
    sweep.check_keys()

    assert [(f.kind, f.job_id) for f in sweep.findings] == [("unqueued-job", stranded.uuid)]
    # claim-not-running, claimed-without-holder, unqueued-job, a stale
    # finished-index entry and a stale queue entry, each let go
    assert sweep.dismissed == 5
    assert [(f.kind, f.job_id) for f in board.fsck()] == [("unqueued-job", stranded.uuid)]


def test_a_finding_is_judged_again_from_the_record_as_it_is_now(board):
    """The re-read alone: a suspect whose record moved on is let go, one
    whose record is as judged is reported."""
    waiting = board.post(FACTORY)
    [entry] = entry_paths(board)
    version = board.client.get(board.paths.job(waiting.uuid))[1].version
    sweep = Sweep(board.repair, fix=False)
    verdict = partial(sweep.entry_verdict, entry, waiting.uuid, version)
    sweep.suspect(waiting.uuid, verdict)          # live: let go
    sweep.confirm()
    assert sweep.findings == [] and sweep.dismissed == 1
    board.consume(Claimer(board, "c1").claim_next(), "c1", {})
    board.client.create(entry)                    # an entry the claim left behind
    sweep.suspect(waiting.uuid, verdict)          # its job finished: stale
    sweep.confirm()
    assert [(f.kind, f.path) for f in sweep.findings] == [("stale-entry", entry)]
