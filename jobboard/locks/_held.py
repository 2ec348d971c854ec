"""What a lock holder keeps: the held lock, its fencing token, whether it is still valid.

A :class:`Held` watches its client's connection state: on ``LOST`` the
session's ephemeral znodes are gone, so the lock is gone and :attr:`Held.valid`
turns False; :meth:`Held.check` raises :class:`BoardUnavailable` then, and
also while the connection is suspended (the lock may be lost; nobody can
tell until the connection comes back). Releasing a lost lock does nothing and
never raises. Releasing a valid lock that ZooKeeper cannot be told about
raises :class:`BoardUnavailable` (the znode then lives until the session ends),
except from ``__exit__`` after an exception in the body, where it is logged
so as not to hide the body's error.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Iterator, Sequence, overload

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState

from jobboard.errors import BoardUnavailable

log = logging.getLogger(__name__)


class Held:
    """One held lock (mutex, read, write, or a semaphore lease).

    Attributes:
        name: The lock name as given.
        kind: ``"mutex"``, ``"read"``, ``"write"`` or ``"semaphore"``.
        node: Full path of the holder's znode.
        token: Fencing token: the holder's znode creation zxid. Strictly
            increases across successive holders of the same lock name.
        waited: Seconds spent acquiring.
    """

    def __init__(self, client: KazooClient, recipe: object, *, name: str, kind: str,
                 node: str, waited: float) -> None:
        self._client = client
        self._recipe = recipe
        self.name = name
        self.kind = kind
        self.node = node
        self.token = 0
        self.waited = waited
        self._lost = threading.Event()
        self._released = False

    # -- state -----------------------------------------------------------------

    def _on_state(self, state: str) -> bool | None:
        # Runs in kazoo's connection thread: set a flag, nothing more.
        if state == KazooState.LOST:
            self._lost.set()
            return True  # tells kazoo to drop this listener
        return None

    @property
    def lost(self) -> bool:
        """True once the session that held the lock ended."""
        return self._lost.is_set()

    @property
    def valid(self) -> bool:
        """False once released or once the holding session is lost."""
        return not self._released and not self._lost.is_set()

    def check(self) -> None:
        """Raise unless the lock is surely held right now.

        Raises:
            BoardUnavailable: released, session lost, or connection suspended.
        """
        if self._released:
            raise BoardUnavailable(f"{self.kind} lock {self.name!r} was released")
        if self._lost.is_set():
            raise BoardUnavailable(
                f"{self.kind} lock {self.name!r} was lost with the ZooKeeper session "
                f"(token {self.token}); another holder may have it now")
        if self._client.state != KazooState.CONNECTED:
            raise BoardUnavailable(
                f"{self.kind} lock {self.name!r} may be lost: the ZooKeeper connection "
                f"is {self._client.state}")

    # -- release ---------------------------------------------------------------

    def release(self) -> None:
        """Give the lock up. Idempotent; a lost lock releases silently.

        Raises:
            BoardUnavailable: ZooKeeper could not be told while the session
                is still alive (the lock then ends with the session).
        """
        if self._released:
            return
        self._released = True
        self._client.remove_listener(self._on_state)
        try:
            self._recipe.release()  # type: ignore[attr-defined]
        except (KazooException, KazooTimeoutError) as exc:
            if self._lost.is_set() or self._client.state == KazooState.LOST:
                return  # the ephemeral znode went with the session
            raise BoardUnavailable(
                f"{self.kind} lock {self.name!r} could not be released "
                f"({type(exc).__name__}); it is held until the session ends") from exc

    def __enter__(self) -> "Held":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _release_on_exit(self, exc_type)

    def __repr__(self) -> str:
        state = "valid" if self.valid else ("lost" if self.lost else "released")
        return f"<Held {self.kind} {self.name!r} token={self.token} {state}>"


class HeldGroup(Sequence[Held]):
    """Several mutexes taken together, in sorted name order (see ``Locks.acquire_all``).

    Released in reverse order; every one is attempted even when one fails.
    """

    def __init__(self, held: Sequence[Held]) -> None:
        self._held = tuple(held)

    @overload
    def __getitem__(self, index: int) -> Held: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Held]: ...

    def __getitem__(self, index: int | slice) -> Held | Sequence[Held]:
        return self._held[index]

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[Held]:
        return iter(self._held)

    def get(self, name: str) -> Held:
        """The held lock called ``name``; KeyError if it is not in the group."""
        for held in self._held:
            if held.name == name:
                return held
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [held.name for held in self._held]

    @property
    def waited(self) -> float:
        return sum(held.waited for held in self._held)

    @property
    def valid(self) -> bool:
        return all(held.valid for held in self._held)

    def check(self) -> None:
        for held in self._held:
            held.check()

    def release(self) -> None:
        """Release all, last taken first; raise the first failure afterwards."""
        release_all(self._held)

    def __enter__(self) -> "HeldGroup":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _release_on_exit(self, exc_type)


def release_all(held: Sequence[Held]) -> None:
    """Release in reverse order, attempting every one; raise the first error."""
    first: BaseException | None = None
    for item in reversed(held):
        try:
            item.release()
        except BoardUnavailable as exc:
            first = first or exc
    if first is not None:
        raise first


def _release_on_exit(target: Held | HeldGroup, exc_type: type[BaseException] | None) -> None:
    if exc_type is None:
        target.release()
        return
    try:
        target.release()
    except BoardUnavailable:
        # Do not replace the body's exception with the release failure.
        log.warning("release failed while handling %s", exc_type.__name__, exc_info=True)
