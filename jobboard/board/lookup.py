"""Job ids from what people type: a full uuid, or any unique prefix of one.

People copy the first characters of an id from a listing (``0041182b``), so
every command that takes a job id accepts a prefix. Resolving one is cheap:
records live under ``{root}/jobs/{xx}/{uuid}``, sharded by the first two hex
digits, so a prefix of two or more digits lists one shard's children (about
``jobs / 256`` names) and a one-digit prefix lists sixteen shards; no record
is read. Dashes are optional (``0041182b9f`` matches ``0041182b-9f..``).

How it fails: :class:`~jobboard.errors.InvalidArgument` for text that cannot
be a job id or a prefix of one; :class:`AmbiguousJobId` (an
``InvalidArgument``) when several jobs match, listing some of them;
:class:`~jobboard.errors.JobNotFound` when none does;
:class:`~jobboard.errors.BoardUnavailable` when ZooKeeper cannot be asked.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from jobboard.board import _zk
from jobboard.board.job import check_job_id, is_job_id
from jobboard.errors import InvalidArgument, JobNotFound

if TYPE_CHECKING:
    from jobboard.board.board import Board

__all__ = ["AmbiguousJobId", "MAX_CANDIDATES", "check_job_id_text", "resolve_job_id"]

#: How many matching ids an ambiguous prefix lists.
MAX_CANDIDATES = 5

_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]{0,35}")


class AmbiguousJobId(InvalidArgument):
    """A job id prefix that matches more than one job.

    Attributes:
        prefix: the text given.
        candidates: the matching ids (at most :data:`MAX_CANDIDATES`).
        matches: how many jobs match.
    """

    def __init__(self, prefix: str, candidates: list[str], matches: int) -> None:
        more = f" and {matches - len(candidates)} more" if matches > len(candidates) else ""
        super().__init__(f"job id prefix {prefix!r} is ambiguous: it matches {matches} jobs "
                         f"({', '.join(candidates)}{more}); give more characters",
                         argument="job_id")
        self.prefix = prefix
        self.candidates = candidates
        self.matches = matches


def check_job_id_text(text: str) -> str:
    """``text`` normalised (lower case, stripped) when it is a job id or could
    be a prefix of one; checked before ZooKeeper is asked anything.

    Raises:
        InvalidArgument: neither a uuid nor hex digits and dashes (at most 36).
    """
    if not isinstance(text, str):
        raise InvalidArgument(f"a job id is a string, not {type(text).__name__}",
                              argument="job_id")
    clean = text.strip().lower()
    try:
        return check_job_id(clean)
    except InvalidArgument:
        pass
    if not _PREFIX.fullmatch(clean):
        raise InvalidArgument(f"{text[:40]!r} is not a job id (a uuid, or a prefix of one "
                              "in hex digits)", argument="job_id")
    return clean


def resolve_job_id(board: "Board", text: str) -> str:
    """The id of the one job whose uuid is ``text`` or starts with it.

    A full uuid is returned as it is (canonical form), without asking
    ZooKeeper: whether that job exists is for the command to find out.

    Raises:
        InvalidArgument: ``text`` is not a job id nor a prefix of one.
        AmbiguousJobId: several jobs match.
        JobNotFound: no job matches.
        BoardUnavailable: ZooKeeper cannot be reached.
    """
    clean = check_job_id_text(text)
    if is_job_id(clean):
        return clean
    digits = clean.replace("-", "")
    paths = board.paths
    with _zk.translated("looking up a job id prefix"):
        if len(digits) >= 2:
            shards = [digits[:2]]
        else:
            shards = sorted(name for name in _zk.children(board.client, paths.jobs)
                            if name.startswith(digits))
        matches = sorted(name for shard in shards
                         for name in _zk.children(board.client, f"{paths.jobs}/{shard}")
                         if is_job_id(name) and name.replace("-", "").startswith(digits))
    if not matches:
        raise JobNotFound(clean)
    if len(matches) > 1:
        raise AmbiguousJobId(clean, matches[:MAX_CANDIDATES], len(matches))
    return matches[0]
