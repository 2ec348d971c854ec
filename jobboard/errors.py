"""The one error tree of jobboard.

Every error the public API raises is a :class:`JobBoardError`. Errors from
kazoo, SQLAlchemy and msgpack are translated where they cross into jobboard
(``raise BoardUnavailable(...) from exc``), so callers never need to import
those libraries to handle a failure. Extra data rides on attributes
(``job_id``, ``owner``, ...), never only in the message.

::

    JobBoardError
     ├── ConfigError                    bad setting or flag
     ├── InvalidArgument (ValueError)   a bad argument to the Python API
     ├── MalformedData (ValueError)     bytes that do not decode to what was expected
     ├── BoardError
     │    ├── JobNotFound               no such job id on the board
     │    ├── AlreadyClaimed            somebody else holds the claim
     │    ├── NotOwner                  the caller does not hold the claim
     │    ├── NotClaimed                the job has no claim to act on
     │    ├── InvalidTransition         an admin action its state does not allow
     │    ├── ClaimLost                 a claim vanished under its holder
     │    ├── OwnerNotFound             transfer to a conductor that is not alive
     │    ├── NotReady                  a delayed job claimed before its time
     │    ├── PayloadTooLarge           the encoded job exceeds the znode limit
     │    ├── WaitTimeout (TimeoutError) the job did not finish in time
     │    ├── BoardInsecure             the board's znodes are open to other identities
     │    ├── ScheduleNotFound          no schedule of that name
     │    ├── ScheduleExists            add of a schedule name in use, without replace
     │    └── BoardUnavailable          ZooKeeper cannot be reached / session lost
     ├── LogbookError
     │    ├── StaleOwner                a write fenced off by a newer token
     │    ├── LogbookNotFound           no logbook for that job
     │    ├── LogbookSchemaError        no schema, or not at this release's revision
     │    └── LogbookUnavailable        the database stays unreachable
     ├── EngineError
     │    ├── FlowInvalid               cycles, missing inputs, duplicate names
     │    ├── FactoryNotAllowed         factory outside the allowed prefixes
     │    ├── FactoryNotFound           factory cannot be imported
     │    ├── TaskTimeout (TimeoutError) a task call ran past its time limit
     │    ├── WorkerDied                a worker process exited under a running task
     │    ├── NotPicklable              a task, its arguments or result cannot cross to a process
     │    └── Cancelled                 the run was asked to stop
     │         └── TaskInterrupted      a running task was asked to stop (or killed)
     └── LockTimeout (TimeoutError)     a distributed lock was not acquired in time
"""

from __future__ import annotations

from typing import Any


class JobBoardError(Exception):
    """Base of every error raised by jobboard."""


class ConfigError(JobBoardError):
    """A setting, flag or environment variable has an unusable value."""


class InvalidArgument(JobBoardError, ValueError):
    """An argument of a public call has an unusable value (a bad job id, a
    priority out of range, a factory reference of the wrong shape)."""

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class MalformedData(JobBoardError, ValueError):
    """Stored bytes do not decode to the expected structure."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


# -- board -------------------------------------------------------------------


class BoardError(JobBoardError):
    """A job board operation failed."""


class JobNotFound(BoardError, LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id} on the board")
        self.job_id = job_id


class ScheduleNotFound(BoardError, LookupError):
    """No schedule of that name on the board."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule named {name!r} (jobboard schedule list shows them)")
        self.name = name


class ScheduleExists(BoardError):
    """A schedule of that name exists already."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a schedule named {name!r} exists already (remove it first, "
                         f"or add it with --replace)")
        self.name = name


class AlreadyClaimed(BoardError):
    def __init__(self, job_id: str, owner: str | None = None) -> None:
        who = f" by {owner}" if owner else ""
        super().__init__(f"job {job_id} is already claimed{who}")
        self.job_id = job_id
        self.owner = owner


class NotOwner(BoardError):
    def __init__(self, job_id: str, owner: str, actual: str | None) -> None:
        super().__init__(
            f"job {job_id} is not claimed by {owner}"
            + (f" (held by {actual})" if actual else "")
        )
        self.job_id = job_id
        self.owner = owner
        self.actual = actual


class NotClaimed(BoardError):
    def __init__(self, job_id: str, state: Any = None) -> None:
        now = f" (it is {state})" if state is not None else ""
        super().__init__(f"job {job_id} is not claimed{now}")
        self.job_id = job_id
        self.state = state


class InvalidTransition(BoardError):
    """An admin action that the job's state does not allow (retry of a
    COMPLETE job, say); ``why`` says what would."""

    def __init__(self, job_id: str, state: Any, action: str, why: str) -> None:
        super().__init__(f"job {job_id} is {state}: cannot {action} it; {why}")
        self.job_id = job_id
        self.state = state
        self.action = action


class ClaimLost(BoardError):
    def __init__(self, job_id: str, owner: str | None = None) -> None:
        super().__init__(f"the claim on job {job_id} was lost")
        self.job_id = job_id
        self.owner = owner


class OwnerNotFound(BoardError):
    def __init__(self, owner: str) -> None:
        super().__init__(f"no live conductor named {owner!r}")
        self.owner = owner


class NotReady(BoardError):
    def __init__(self, job_id: str, not_before: float) -> None:
        super().__init__(f"job {job_id} is delayed until {not_before:.3f} (epoch seconds)")
        self.job_id = job_id
        self.not_before = not_before


class PayloadTooLarge(BoardError, ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"encoded job is {size} bytes, over the board's limit of {limit} bytes; "
            "keep large data elsewhere and pass a reference"
        )
        self.size = size
        self.limit = limit


class WaitTimeout(BoardError, TimeoutError):
    def __init__(self, job_id: str, timeout: float, state: Any = None) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g}s (state {state})")
        self.job_id = job_id
        self.timeout = timeout
        self.state = state


class BoardInsecure(BoardError):
    """A board opened with credentials whose root or containers others can use.

    Raised when an ACL entry grants any permission to an identity other than
    the board's digest credentials (``world:anyone``, an ``ip:`` range,
    another digest user), or when the root's ACL shuts the credentials out.

    Attributes:
        path: the first offending znode (the root when the root is at fault).
        grants: offending znode -> the foreign ACL entries on it, as
            ``scheme:id:perms`` (e.g. ``world:anyone:cdrwa``); empty when the
            root belongs to other credentials and its ACL cannot be read.
    """

    def __init__(self, message: str, *, path: str,
                 grants: dict[str, tuple[str, ...]] | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.grants = dict(grants or {})


class BoardUnavailable(BoardError):
    """ZooKeeper could not be reached, or the session was lost mid-operation."""


# -- logbook -----------------------------------------------------------------


class LogbookError(JobBoardError):
    """A logbook operation failed."""


class StaleOwner(LogbookError):
    def __init__(self, job_id: str, token: int, current: int | None) -> None:
        super().__init__(
            f"write to job {job_id} refused: token {token} is fenced off by {current}"
        )
        self.job_id = job_id
        self.token = token
        self.current = current


class LogbookNotFound(LogbookError, LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no logbook for job {job_id}")
        self.job_id = job_id


class LogbookUnavailable(LogbookError):
    """The database could not be reached after bounded retries."""


class LogbookSchemaError(LogbookError):
    """The database is reachable but holds no logbook schema, or one at another
    revision than this release needs (run ``jobboard logbook upgrade``).

    Attributes:
        url: the database URL without its password.
        revision: the schema's revision (None: no schema at all, or unknown).
        head: the revision this release needs (None when not known).
    """

    def __init__(self, message: str, *, url: str, revision: str | None = None,
                 head: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.revision = revision
        self.head = head


# -- engine ------------------------------------------------------------------


class EngineError(JobBoardError):
    """The workflow engine could not build or run a flow."""


class FlowInvalid(EngineError, ValueError):
    """The flow cannot run: a cycle, a missing input, a duplicate task name."""


class FactoryNotAllowed(EngineError):
    def __init__(self, factory: str, allowed: tuple[str, ...] | list[str]) -> None:
        super().__init__(
            f"flow factory {factory!r} is outside the allowed module prefixes "
            f"{list(allowed)}; add its prefix with --allow"
        )
        self.factory = factory
        self.allowed = tuple(allowed)


class FactoryNotFound(EngineError, LookupError):
    def __init__(self, factory: str, reason: str) -> None:
        super().__init__(f"flow factory {factory!r} cannot be loaded: {reason}")
        self.factory = factory
        self.reason = reason


class Cancelled(EngineError):
    """The engine was asked to stop (claim lost, shutdown, admin cancel)."""


class TaskInterrupted(Cancelled):
    """A running task was asked to stop (engine cancel, claim lost, admin
    cancel, time limit): raised by ``Task.heartbeat`` once the task is
    asked to stop, and the failure of a task whose worker process was killed."""

    def __init__(self, message: str, *, task: str | None = None) -> None:
        super().__init__(message)
        self.task = task

    def __reduce__(self) -> Any:      # pickles across a worker process's pipe
        return (_rebuild, (type(self), (str(self),), {"task": self.task}))


class TaskTimeout(EngineError, TimeoutError):
    """A task's execute or revert ran past its time limit."""

    def __init__(self, task: str, limit: float, *, phase: str = "execute") -> None:
        super().__init__(f"task {task!r} {phase} exceeded its time limit of {limit:g}s")
        self.task = task
        self.limit = limit
        self.phase = phase

    def __reduce__(self) -> Any:
        return (type(self), (self.task, self.limit), {"phase": self.phase,
                                                       "args": self.args})


class WorkerDied(EngineError):
    """The worker process running a task exited (``os._exit``, a signal, the
    OOM killer) before it answered; only that task fails."""

    def __init__(self, task: str, exitcode: int | None) -> None:
        super().__init__(f"task {task!r}: worker process exited with code {exitcode}")
        self.task = task
        self.exitcode = exitcode

    def __reduce__(self) -> Any:
        return (type(self), (self.task, self.exitcode))


class NotPicklable(EngineError):
    """A task object, its arguments or its result cannot be pickled, so it
    cannot run on (or come back from) a worker process."""

    def __init__(self, task: str, what: str, reason: str) -> None:
        super().__init__(f"task {task!r} cannot run in a worker process: its {what} "
                         f"cannot be pickled ({reason}); define tasks at module level "
                         f"and pass plain data")
        self.task = task
        self.what = what
        self.reason = reason

    def __reduce__(self) -> Any:
        return (type(self), (self.task, self.what, self.reason))


def _rebuild(cls: type, args: tuple[Any, ...], attrs: dict[str, Any]) -> BaseException:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(attrs)
    return error


# -- locks -------------------------------------------------------------------


class LockTimeout(JobBoardError, TimeoutError):
    def __init__(self, name: str, timeout: float | None) -> None:
        super().__init__(f"lock {name!r} not acquired within {timeout}s")
        self.name = name
        self.timeout = timeout
