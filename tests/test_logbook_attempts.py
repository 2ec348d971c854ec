"""Attempts: a retried job runs its flow afresh as a new attempt and the
logbook keeps every earlier one; fencing holds across attempts. Run against
SQLite, PostgreSQL and MySQL."""

from __future__ import annotations

import pytest

from driver_log import logged_logbook
from jobboard.errors import InvalidArgument, LogbookError, StaleOwner
from jobboard.logbook import AtomDetail, Logbook
from jobboard.states import AtomState, FlowState

pytestmark = pytest.mark.timeout(60)


def _run_attempt(book: Logbook, token: int, attempt: int, state: FlowState,
                 result: str) -> AtomDetail:
    book.take_over("job", token, f"conductor-{token}", name="provision", attempt=attempt)
    book.save_flow("job", "provision", FlowState.RUNNING, token=token)
    atom = AtomDetail(name="attach", state=AtomState.SUCCESS, result=result, attempts=1)
    book.save_atom("job", atom, token=token)
    book.save_flow("job", "provision", state, token=token, meta={"attempt": attempt})
    return atom


def test_a_new_attempt_starts_a_fresh_flow_and_keeps_the_old_one(logbook):
    _run_attempt(logbook, 3, 1, FlowState.FAILURE, "first")
    assert logbook.get_logbook("job").attempt == 1
    assert logbook.load_flow("job").attempt == 1

    logbook.take_over("job", 8, "conductor-8", attempt=2)
    info = logbook.get_logbook("job")
    assert (info.attempt, info.token, info.flow_state) == (2, 8, None)
    assert logbook.load_flow("job") is None              # nothing run yet in attempt 2
    assert logbook.load_flow("job", attempt=1).state is FlowState.FAILURE

    saved = logbook.save_flow("job", "provision", FlowState.RUNNING, token=8)
    assert saved.attempt == 2
    assert logbook.load_flow("job").atoms == {}          # attempt 1's atoms stay there
    logbook.save_atom("job", AtomDetail(name="attach", result="second"), token=8)
    logbook.save_flow("job", "provision", FlowState.SUCCESS, token=8)

    first, second = logbook.attempts("job")
    assert (first.attempt, first.state, first.meta) == (1, FlowState.FAILURE, {"attempt": 1})
    assert first.atoms["attach"].result == "first"
    assert (second.attempt, second.state) == (2, FlowState.SUCCESS)
    assert second.atoms["attach"].result == "second"
    assert second.created_at >= first.updated_at
    assert logbook.get_logbook("job").flow_state is FlowState.SUCCESS
    assert [i.attempt for i in logbook.list_logbooks()] == [2]


def test_an_atom_object_from_an_earlier_attempt_lands_in_the_current_one(logbook):
    """The fast path of save_atom (an atom saved before through this object)
    must not update the earlier attempt's row."""
    old_atom = _run_attempt(logbook, 3, 1, FlowState.FAILURE, "first")
    assert old_atom.created_at is not None
    logbook.take_over("job", 4, "b", attempt=2)
    logbook.save_flow("job", "provision", FlowState.RUNNING, token=4)
    old_atom.result = "reused"
    logbook.save_atom("job", old_atom, token=4)
    first, second = logbook.attempts("job")
    assert first.atoms["attach"].result == "first"
    assert second.atoms["attach"].result == "reused"


def test_a_new_attempt_needs_its_own_flow_before_atoms(logbook):
    _run_attempt(logbook, 3, 1, FlowState.FAILURE, "first")
    logbook.take_over("job", 4, "b", attempt=2)
    with pytest.raises(LogbookError, match="save_flow first"):
        logbook.save_atom("job", AtomDetail(name="attach"), token=4)
    assert [f.attempt for f in logbook.attempts("job")] == [1]


def test_the_attempt_never_moves_back(logbook):
    _run_attempt(logbook, 3, 1, FlowState.FAILURE, "first")
    logbook.take_over("job", 5, "b", attempt=3)
    logbook.take_over("job", 6, "c", attempt=2)         # token accepted, attempt ignored
    logbook.take_over("job", 7, "d")                     # the default (1) too
    info = logbook.get_logbook("job")
    assert (info.attempt, info.token, info.owner) == (3, 7, "d")
    logbook.save_flow("job", "provision", FlowState.RUNNING, token=7)
    assert [f.attempt for f in logbook.attempts("job")] == [1, 3]


def test_a_first_take_over_may_start_at_any_attempt(logbook):
    """A job retried before its first attempt wrote anything (or whose
    logbook was pruned) starts its logbook at the job's attempt."""
    logbook.take_over("job", 1, "a", attempt=4)
    logbook.save_flow("job", "f", FlowState.RUNNING, token=1)
    assert logbook.get_logbook("job").attempt == 4
    assert [f.attempt for f in logbook.attempts("job")] == [4]
    assert logbook.load_flow("job", attempt=1) is None


def test_fencing_holds_across_attempts(logbook):
    _run_attempt(logbook, 3, 1, FlowState.RUNNING, "first")
    logbook.take_over("job", 9, "new", attempt=2)
    logbook.save_flow("job", "provision", FlowState.RUNNING, token=9)
    with pytest.raises(StaleOwner) as caught:            # the old attempt's holder
        logbook.save_atom("job", AtomDetail(name="attach", result="stale"), token=3)
    assert caught.value.current == 9
    with pytest.raises(StaleOwner):
        logbook.save_flow("job", "provision", FlowState.SUCCESS, token=3)
    with pytest.raises(StaleOwner):                       # a newer attempt, an older token
        logbook.take_over("job", 8, "late", attempt=3)
    info = logbook.get_logbook("job")
    assert (info.attempt, info.token, info.owner) == (2, 9, "new")
    first, second = logbook.attempts("job")
    assert first.state is FlowState.RUNNING and first.atoms["attach"].result == "first"
    assert second.atoms == {} and second.state is FlowState.RUNNING
    assert logbook.fenced_writes == 3


def test_attempts_of_unknown_or_flowless_jobs_are_empty(logbook):
    assert logbook.attempts("nope") == []
    logbook.take_over("job", 1, "a")
    assert logbook.attempts("job") == []
    with pytest.raises(InvalidArgument):
        logbook.take_over("job", 2, "a", attempt=0)
    assert logbook.current_token("job") == 1


def test_delete_removes_every_attempt(logbook):
    _run_attempt(logbook, 3, 1, FlowState.FAILURE, "first")
    _run_attempt(logbook, 4, 2, FlowState.SUCCESS, "second")
    assert logbook.delete("job") is True
    assert logbook.attempts("job") == []


def test_save_atom_hot_path_is_one_fenced_statement(logbook, logbook_url):
    """An atom saved before: one statement carrying the fence (a CTE on
    PostgreSQL, in autocommit; a multi-table UPDATE on MySQL; SQLite runs the
    fence and the update in-process), no pre-ping, no read; the attempt is
    resolved inside the statement, so it lands in the current attempt's flow."""
    _run_attempt(logbook, 3, 1, FlowState.FAILURE, "first")
    logbook.take_over("job", 4, "b", attempt=2)
    logbook.save_flow("job", "provision", FlowState.RUNNING, token=4)
    atom = AtomDetail(name="a", state=AtomState.RUNNING)
    logbook.save_atom("job", atom, token=4)                # first save: read + insert
    book, log = logged_logbook(logbook_url)
    with book:
        atom.state = AtomState.SUCCESS
        book.save_atom("job", atom, token=4)
    dialect = logbook._engine.dialect.name
    expected = {"postgresql": [("WITH", True)], "sqlite": [("UPDATE", False)] * 2
                }.get(dialect, [("UPDATE", False)])
    assert log.statements == expected
    assert logbook.load_flow("job").atoms["a"].state is AtomState.SUCCESS
    assert "a" not in logbook.load_flow("job", attempt=1).atoms
