"""What several board tests look at or do: znodes two levels down (queue,
delayed and finished index entries), a job's markers, and a race injected
right after the next record read."""

from __future__ import annotations

from typing import Callable

import pytest

from jobboard.board import Board


def children_below(board: Board, root: str) -> list[str]:
    """The paths of the grandchildren of ``root`` (the entries of an index
    whose children are buckets or minutes)."""
    out = []
    for parent in board.client.get_children(root):
        out += [f"{root}/{parent}/{name}"
                for name in board.client.get_children(f"{root}/{parent}")]
    return out


def markers_of(board: Board, job_id: str) -> list[str]:
    """The markers naming ``job_id`` (claim, running, cancel, suspend, dead)
    that are on the board."""
    return [path for path in board.paths.markers(job_id) if board.client.exists(path)]


def after_next_read(monkeypatch: pytest.MonkeyPatch, board: Board,
                    meanwhile: Callable[[str], None]) -> None:
    """Make the board's next record read return what it read, after
    ``meanwhile(job_id)`` changed the board (once): the race an admin call
    loses between its read and its write."""
    read = board.records.read

    def racing_read(job_id, **options):
        found = read(job_id, **options)
        monkeypatch.setattr(board.records, "read", read)
        meanwhile(job_id)
        return found

    monkeypatch.setattr(board.records, "read", racing_read)
