"""The job state machine on a real ZooKeeper (the table in jobboard.states):
every admin action from every state, what counts against ``max_claims``, and
the hand-off of a job between holders."""

from __future__ import annotations

import threading
import time

import pytest

from board_helpers import after_next_read, markers_of
from jobboard.board import Board, Claimer
from jobboard.errors import (AlreadyClaimed, BoardError, InvalidTransition, JobNotFound,
                             NotClaimed)
from jobboard.states import JobState
from jobboard.testing.waiting import wait_until

FACTORY = "tests.flows:noop"
STATES = ["UNCLAIMED", "CLAIMED", "COMPLETE", "FAILED", "CANCELLED", "DEAD", "SUSPENDED",
          "MALFORMED"]


def other_board(zk_hosts: str) -> Board:
    return Board.connect(zk_hosts, root="/jobboard", session_timeout=4.0)


def job_in(board: Board, state: str) -> str:
    """A job in ``state``, made through the API (MALFORMED: a record quarantined
    by the claimer that met it)."""
    job = board.post(FACTORY)
    if state == "UNCLAIMED":
        return job.uuid
    if state == "SUSPENDED":
        assert board.suspend(job.uuid) is JobState.SUSPENDED
        return job.uuid
    if state == "MALFORMED":
        board.client.set(board.paths.job(job.uuid), b"\x93garbage")
        assert Claimer(board, "c1").claim_next() is None
        return job.uuid
    held = Claimer(board, "c1").claim_next()
    assert held.uuid == job.uuid
    if state == "CLAIMED":
        return job.uuid
    if state == "DEAD":
        board.dead_letter(board.get(job.uuid), board.client.get(board.paths.job(job.uuid))[1]
                          .version, None, "test")
        board.client.delete(board.paths.claim(job.uuid))
        board.client.delete(board.paths.running_marker(job.uuid))
        return job.uuid
    board.consume(held, "c1", {"results": {}}, state=JobState(state))
    return job.uuid


def abandon(board: Board, job_id: str) -> None:
    owner = board.claim_owner(job_id)
    if owner is None:
        raise NotClaimed(job_id, board.get(job_id).state)
    board.abandon(job_id, owner)


ACTIONS = {
    "abandon": abandon,
    "transfer": lambda board, job_id: board.transfer(job_id, None, "c2"),
    "cancel": lambda board, job_id: board.cancel(job_id),
    "retry": lambda board, job_id: board.retry(job_id),
    "trash": lambda board, job_id: board.trash(job_id),
    "suspend": lambda board, job_id: board.suspend(job_id),
    "resume": lambda board, job_id: board.resume(job_id),
}
# (action, state) -> the state after, or the error raised. Mirrors the table
# in jobboard/states.py.
EXPECTED = {
    ("abandon", "UNCLAIMED"): NotClaimed, ("abandon", "CLAIMED"): "UNCLAIMED",
    ("transfer", "UNCLAIMED"): NotClaimed, ("transfer", "CLAIMED"): "CLAIMED",
    ("cancel", "UNCLAIMED"): "CANCELLED", ("cancel", "CLAIMED"): "CLAIMED",
    ("retry", "UNCLAIMED"): InvalidTransition, ("retry", "CLAIMED"): InvalidTransition,
    ("retry", "COMPLETE"): InvalidTransition,
    ("trash", "CLAIMED"): AlreadyClaimed,
    ("abandon", "SUSPENDED"): NotClaimed, ("transfer", "SUSPENDED"): NotClaimed,
    ("cancel", "SUSPENDED"): "CANCELLED", ("retry", "SUSPENDED"): InvalidTransition,
    ("suspend", "UNCLAIMED"): "SUSPENDED", ("suspend", "CLAIMED"): "CLAIMED",
    ("suspend", "SUSPENDED"): "SUSPENDED", ("resume", "SUSPENDED"): "UNCLAIMED",
    ("resume", "UNCLAIMED"): InvalidTransition, ("resume", "CLAIMED"): InvalidTransition,
}
for _state in ("COMPLETE", "FAILED", "CANCELLED", "DEAD"):
    EXPECTED[("abandon", _state)] = NotClaimed
    EXPECTED[("transfer", _state)] = NotClaimed
    EXPECTED[("cancel", _state)] = _state
for _state in ("FAILED", "CANCELLED", "DEAD"):
    EXPECTED[("retry", _state)] = "UNCLAIMED"
for _state in ("COMPLETE", "FAILED", "CANCELLED", "DEAD"):
    EXPECTED[("suspend", _state)] = InvalidTransition
    EXPECTED[("resume", _state)] = InvalidTransition
for _state in ("UNCLAIMED", "COMPLETE", "FAILED", "CANCELLED", "DEAD", "SUSPENDED"):
    EXPECTED[("trash", _state)] = JobNotFound   # gone: reading it afterwards
for _action in ACTIONS:
    EXPECTED[(_action, "MALFORMED")] = JobNotFound


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_admin_action_from_every_state(board, action, state):
    board.register_conductor("c2", {})
    job_id = job_in(board, state)
    expected = EXPECTED[(action, state)]
    if isinstance(expected, type) and action != "trash" or state == "MALFORMED":
        with pytest.raises(expected) as raised:
            ACTIONS[action](board, job_id)
        assert job_id in str(raised.value)
        if state != "MALFORMED":
            assert board.get(job_id).state.value == state, "a refused action changed the job"
        return
    if isinstance(expected, type):      # trash refused, or done (then the job is gone)
        if expected is AlreadyClaimed:
            with pytest.raises(AlreadyClaimed):
                ACTIONS[action](board, job_id)
            assert board.get(job_id).state is JobState.CLAIMED
            return
        ACTIONS[action](board, job_id)
        with pytest.raises(JobNotFound):
            board.get(job_id)
        return
    ACTIONS[action](board, job_id)
    after = board.get(job_id)
    assert after.state.value == expected
    if action == "retry":
        assert after.attempt == 2 and after.claims == 0 and after.deaths == 0
        assert Claimer(board, "c1").claim_next().uuid == job_id, "a retried job runs again"
    if (action, state) == ("cancel", "CLAIMED"):
        assert board.cancel_requested(job_id)
    if (action, state) == ("suspend", "CLAIMED"):
        assert board.suspend_requested(job_id)   # the holder honours it
    if after.state is JobState.SUSPENDED:
        assert Claimer(board, "c2").claim_next() is None, "a suspended job was claimed"
    if action == "resume":
        assert Claimer(board, "c2").claim_next().uuid == job_id, "a resumed job runs again"
    if action == "transfer":
        assert after.transfer_to == "c2"
    # never a claim nobody will release: an unclaimed job has no claim or marker
    if after.state is not JobState.CLAIMED:
        assert board.claim_owner(job_id) is None or action in ("retry", "resume")
    # nothing stranded (a transferred job waits, marker without claim, for its
    # target to take it)
    harmless = {"orphan"} if action == "transfer" else set()
    assert not [f for f in board.fsck() if f.job_id == job_id and f.kind not in harmless]


@pytest.mark.parametrize("action, state", [("retry", "FAILED"), ("retry", "CANCELLED"),
                                           ("trash", "COMPLETE"), ("trash", "FAILED")])
def test_retry_and_trash_of_a_finished_job_leave_the_board_consistent(board, action, state):
    """The finished index loses the job's entry in the same transaction: a
    routine retry or trash is not a finding of the next repair sweep."""
    job_id = job_in(board, state)
    entry = board.paths.finished_entry(board.get(job_id).finished_at, job_id)
    assert board.client.exists(entry) is not None
    getattr(board, action)(job_id)
    assert board.client.exists(entry) is None
    assert board.fsck() == []


def test_retry_of_a_job_cancelled_before_it_ran_can_be_finished(board):
    """A job cancelled while waiting has no cancel request; its retry must
    still be consumable (the consume used to delete a request that was not
    there, and the claim stayed forever)."""
    job = board.post(FACTORY)
    assert board.cancel(job.uuid) is JobState.CANCELLED
    board.retry(job.uuid)
    held = Claimer(board, "c1").claim_next()
    done = board.consume(held, "c1", {"reason": "cancelled again"}, state=JobState.CANCELLED)
    assert done.state is JobState.CANCELLED and board.claim_owner(job.uuid) is None


def test_retry_drops_a_cancel_request_left_behind(board):
    job = board.post(FACTORY)
    held = board.claim(job.uuid, "c1")
    board.cancel(job.uuid)
    board.consume(held, "c1", {}, state=JobState.FAILED)   # finished before it saw it
    assert board.cancel_requested(job.uuid)                 # the request outlived it
    board.retry(job.uuid)
    assert not board.cancel_requested(job.uuid)


def test_trash_deletes_requests_and_markers_with_the_record(board):
    """A DEAD job's marker, a cancel and a suspend request left by older
    releases, and a claim and running marker a broken board left: all go in
    the trash's transaction (claim and running marker used to stay)."""
    job_id = job_in(board, "DEAD")
    for path in board.paths.markers(job_id)[:-1]:
        board.client.create(path)
    assert len(markers_of(board, job_id)) == 5
    board.trash(job_id)
    with pytest.raises(JobNotFound):
        board.get(job_id)
    assert markers_of(board, job_id) == []
    assert [f for f in board.fsck() if f.job_id == job_id] == []


def test_a_suspend_racing_the_trash_leaves_no_request(board, monkeypatch):
    """The admin reads the job CLAIMED; before the request lands its holder
    finishes it and another admin trashes it: no request is made for the
    job that is gone (it used to be, and the suspend raised, leaving it)."""
    job = board.post(FACTORY)
    held = board.claim(job.uuid, "c1")

    def finish_and_trash(job_id: str) -> None:
        board.consume(held, "c1", {})
        board.trash(job_id)

    after_next_read(monkeypatch, board, finish_and_trash)
    with pytest.raises(JobNotFound):
        board.suspend(job.uuid)
    assert markers_of(board, job.uuid) == []


def test_only_deaths_count_against_max_claims(board, zk_hosts):
    board.max_claims = 2
    job = board.post(FACTORY)
    claimer = Claimer(board, "c1")
    for _ in range(5):                   # abandons and transfers are not deaths
        board.abandon(claimer.claim_next(), "c1")
    assert board.get(job.uuid).deaths == 0
    for died in (1, 2):                  # a holder whose session ends: a death
        with other_board(zk_hosts) as mortal:
            held = Claimer(mortal, "mortal").claim_next()
            assert held.uuid == job.uuid
        board.restore_orphan(job.uuid)
        assert board.get(job.uuid).deaths == died
    assert claimer.claim_next() is None
    dead = board.get(job.uuid)
    assert dead.state is JobState.DEAD and "died or crashed 2 times" in dead.outcome["reason"]


def test_a_crash_on_the_job_counts(board):
    board.max_claims = 1
    job = board.post(FACTORY)
    claimer = Claimer(board, "c1")
    board.abandon(claimer.claim_next(), "c1", crashed=True)
    assert claimer.claim_next() is None
    assert board.get(job.uuid).state is JobState.DEAD


def test_handoff_waits_for_the_old_holders_tasks(board, zk_hosts):
    job = board.post(FACTORY)
    with other_board(zk_hosts) as old:
        assert old.start_working(job.uuid, 1, stop_timeout=5) < 1
        waited: list[float | None] = []
        new = threading.Thread(
            target=lambda: waited.append(board.start_working(job.uuid, 2, stop_timeout=30)))
        new.start()
        new.join(0.3)         # it must still be waiting
        assert new.is_alive(), "the new holder started while the old one's tasks ran"
        old.stop_working(job.uuid, 1)
        new.join(10)
        assert not new.is_alive() and 0.2 < waited[0] < 10
    board.stop_working(job.uuid, 2)
    assert board.client.exists(board.paths.working_marker(job.uuid)) is None


def test_handoff_from_a_dead_holder_is_at_once_and_bounded_by_the_stop_timeout(board,
                                                                                 zk_hosts):
    job = board.post(FACTORY)
    old = other_board(zk_hosts)
    old.start_working(job.uuid, 1, stop_timeout=5)
    old.close()                          # its session ends: the marker goes with it
    assert board.start_working(job.uuid, 2, stop_timeout=30) < 5
    board.stop_working(job.uuid, 2)
    with other_board(zk_hosts) as stuck:   # alive, but never stops its tasks
        stuck.start_working(job.uuid, 3, stop_timeout=5)
        started = time.monotonic()
        board.start_working(job.uuid, 4, stop_timeout=1.0)
        assert 0.9 < time.monotonic() - started < 10
        stat = board.client.exists(board.paths.working_marker(job.uuid))
        assert stat.ephemeralOwner == board.session_id
        stuck.stop_working(job.uuid, 3)   # leaves the new holder's marker alone
        assert board.client.exists(board.paths.working_marker(job.uuid)) is not None


def test_a_run_claimed_again_by_the_same_conductor_waits_for_its_older_run(board):
    """Same session, older token: the older run's tasks may still be stopping."""
    job = board.post(FACTORY)
    assert board.start_working(job.uuid, 1, stop_timeout=5) < 1
    assert board.start_working(job.uuid, 1, stop_timeout=5) < 1     # a retried create
    started = time.monotonic()
    assert board.start_working(job.uuid, 2, stop_timeout=0.5) >= 0.5
    assert time.monotonic() - started < 10
    board.stop_working(job.uuid, 1)       # the older run ends: the newer marker stays
    assert board.client.get(board.paths.working_marker(job.uuid))[0] == b"2"


def test_a_handoff_wait_ends_when_the_claim_is_lost_meanwhile(board, zk_hosts):
    job = board.post(FACTORY)
    lost = threading.Event()
    with other_board(zk_hosts) as old:
        old.start_working(job.uuid, 1, stop_timeout=5)
        result: list[float | None] = []
        waiter = threading.Thread(target=lambda: result.append(
            board.start_working(job.uuid, 2, stop_timeout=60, abort=lost.is_set)))
        waiter.start()
        lost.set()
        waiter.join(10)
        assert not waiter.is_alive() and result == [None]
        data, _ = board.client.get(board.paths.working_marker(job.uuid))
        assert data == b"1", "a run that lost its claim replaced the marker"


def test_a_first_claim_by_a_claimer_sets_the_working_marker_and_the_consume_drops_it(board):
    job = board.post(FACTORY)
    marker = board.paths.working_marker(job.uuid)
    claimed = Claimer(board, "c1").claim_next()
    assert claimed.claim.working
    data, stat = board.client.get(marker)
    assert data == claimed.run_mark.encode() and stat.ephemeralOwner == board.session_id
    board.consume(claimed, "c1", {}, working=True)
    assert board.client.exists(marker) is None


def test_a_direct_claim_sets_no_working_marker(board):
    """Only a conductor's claimer has a run that drops the marker it sets."""
    job = board.post(FACTORY)
    claimed = board.claim(job.uuid, "c1")
    assert not claimed.claim.working
    assert board.client.exists(board.paths.working_marker(job.uuid)) is None
    board.consume(claimed, "c1", {})


def test_a_claim_whose_answer_was_lost_is_given_back_with_its_working_marker(board):
    job = board.post(FACTORY)
    claimer = Claimer(board, "c1")
    claimed = claimer.claim_next()
    # As if the answer had not been read: the next call settles it.
    claimer._unsure[job.uuid] = claimed.run_mark
    assert claimer.claim_next().uuid == job.uuid      # given back, claimed again
    assert board.client.exists(board.paths.working_marker(job.uuid)) is None
    assert board.get(job.uuid).claims == 2


def test_refusals_are_one_line_and_say_what_to_do(board):
    job = board.post(FACTORY)
    board.consume(board.claim(job.uuid, "c1"), "c1", {})
    with pytest.raises(BoardError) as raised:
        board.retry(job.uuid)
    message = str(raised.value)
    assert "\n" not in message and "COMPLETE" in message and "FAILED" in message


def test_a_job_transferred_to_the_conductor_that_gave_it_back_is_taken_up(board, zk_hosts):
    """A conductor's own release answers one deletion of the claim only: when
    the job later comes back to it by a transfer, the vanished claim is seen
    (it used to be ignored as "released lately", and the job stayed CLAIMED
    by nobody)."""
    job = board.post(FACTORY)
    with other_board(zk_hosts) as board_a, other_board(zk_hosts) as board_b:
        board_a.register_conductor("a", {})
        board_b.register_conductor("b", {})
        a, b = Claimer(board_a, "a"), Claimer(board_b, "b")
        board_a.abandon(a.claim_next(), "a")
        assert b.claim_next().uuid == job.uuid
        a.claim_next()                       # a has seen b's claim
        board.transfer(job.uuid, "b", "a")
        taken = wait_until(lambda: a.claim_next(), timeout=10)
        assert taken is not None and taken.uuid == job.uuid
        assert board.claim_owner(job.uuid) == "a"
