"""Taking named locks: the :class:`Locks` factory over kazoo's lock recipes.

Every method acquires now (or raises) and returns a :class:`Held` that is
also a context manager releasing it. kazoo's recipes queue contenders on
sequential znodes and each waiter watches only its predecessor (no herd).

How it fails:

* not acquired within ``timeout`` -> :class:`LockTimeout` (``name``,
  ``timeout``); the contender znode is removed. kazoo's own timeout bounds
  each wait for a predecessor, not the whole acquisition, so a timer cancels
  the attempt at the deadline (for a semaphore the timer interrupts the wait
  for a lease, the pool's inner lock is bounded by kazoo per wait).
  ``timeout=0`` tries once without waiting; ``None`` waits forever.
* ZooKeeper unreachable, client stopped, session lost while acquiring and
  not recovered, a ZooKeeper call unanswered within the client's call bound
  -> :class:`BoardUnavailable`; no kazoo exception escapes. Give it a client
  from ``jobboard.board._zk.make_client`` or
  :func:`jobboard.zkhandler.bounded_client`: kazoo's recipes make synchronous
  calls that, on a plain KazooClient, wait without a bound while no server
  answers.
* an invalid name -> :class:`ValueError`; a semaphore opened with another
  ``max_leases`` than the one stored for its name -> :class:`ValueError`.
* the session lost while holding: see :mod:`jobboard.locks._held`.

Per-name parent znodes are persistent and never deleted here (deleting one
races with a contender about to create under it).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Iterable

from kazoo.client import KazooClient
from kazoo.exceptions import CancelledError
from kazoo.exceptions import LockTimeout as KazooLockTimeout
from kazoo.protocol.states import KazooState
from kazoo.recipe.lock import Lock, ReadLock, Semaphore, WriteLock

from jobboard.errors import BoardUnavailable, LockTimeout
from jobboard.zkerrors import translated
from jobboard.locks._held import Held, HeldGroup, release_all
from jobboard.locks._names import DEFAULT_ROOT, MUTEX, RW, SEMAPHORE, check_root, encode_name, lock_path

_Recipe = Lock | Semaphore


class Locks:
    """Named mutexes, read/write locks and semaphores under one root znode.

    Args:
        client: A started KazooClient (its threading handler).
        root: The znode under which every lock lives.
        identifier: Stored in each contender znode, so admins can see who
            holds or waits (default ``host:pid``).
    """

    def __init__(self, client: KazooClient, *, root: str = DEFAULT_ROOT,
                 identifier: str | None = None) -> None:
        self.client = client
        self.root = check_root(root)
        self.identifier = identifier if identifier is not None else f"{socket.gethostname()}:{os.getpid()}"

    # -- public API -------------------------------------------------------------

    def mutex(self, name: str, *, timeout: float | None) -> Held:
        """Take the exclusive lock ``name``.

        Raises:
            LockTimeout: not acquired within ``timeout`` seconds.
            BoardUnavailable: ZooKeeper unavailable or session lost.
            ValueError: invalid name.
        """
        recipe = Lock(self.client, lock_path(self.root, MUTEX, name), self.identifier)
        return self._acquire("mutex", name, recipe, timeout)

    def read(self, name: str, *, timeout: float | None) -> Held:
        """Take the shared side of read/write lock ``name`` (see :meth:`mutex`)."""
        recipe = ReadLock(self.client, lock_path(self.root, RW, name), self.identifier)
        return self._acquire("read", name, recipe, timeout)

    def write(self, name: str, *, timeout: float | None) -> Held:
        """Take the exclusive side of read/write lock ``name`` (see :meth:`mutex`)."""
        recipe = WriteLock(self.client, lock_path(self.root, RW, name), self.identifier)
        return self._acquire("write", name, recipe, timeout)

    def semaphore(self, name: str, *, max_leases: int, timeout: float | None) -> Held:
        """Take one of ``max_leases`` leases of semaphore ``name``.

        ``max_leases`` is stored with the name on first use; every user of the
        name must pass the same value.

        Raises:
            ValueError: invalid name, ``max_leases < 1``, or a different
                ``max_leases`` is stored for this name.
            LockTimeout, BoardUnavailable: as for :meth:`mutex`.
        """
        if not isinstance(max_leases, int) or isinstance(max_leases, bool) or max_leases < 1:
            raise ValueError(f"max_leases must be a positive int, not {max_leases!r}")
        recipe = Semaphore(self.client, lock_path(self.root, SEMAPHORE, name),
                           self.identifier, max_leases=max_leases)
        return self._acquire("semaphore", name, recipe, timeout)

    def acquire_all(self, names: Iterable[str], *, timeout: float | None) -> HeldGroup:
        """Take a set of locks, in sorted (name, kind) order.

        A plain ``str`` is a mutex name. A name carrying ``kind`` (and, for
        a semaphore, ``leases``) attributes, as the engine's declared
        ``LockSpec`` does, takes that kind: ``"mutex"``, ``"read"``,
        ``"write"`` or ``"semaphore"``. Duplicates are ignored; asked for
        both sides of one read/write lock, only the write side is taken.

        Every process takes them in the same order, so two overlapping sets
        cannot deadlock. ``timeout`` bounds the whole set. On any failure
        the ones already taken are released, last first, before raising.

        Raises:
            LockTimeout: one was not acquired in time (its name, ``timeout``).
            BoardUnavailable, ValueError: as for :meth:`mutex` (also an
                unknown kind).
        """
        ordered = _requests(names)
        for _, name, _ in ordered:
            encode_name(name)  # every name is valid before anything is taken
        deadline = None if timeout is None else time.monotonic() + timeout
        held: list[Held] = []
        try:
            for kind, name, leases in ordered:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    held.append(self._take(kind, name, leases, left))
                except LockTimeout as exc:
                    raise LockTimeout(name, timeout) from exc
        except BaseException:
            try:
                release_all(held)
            except BoardUnavailable:
                pass  # the acquisition error matters more; sessions end them anyway
            raise
        return HeldGroup(held)

    def _take(self, kind: str, name: str, leases: int, timeout: float | None) -> Held:
        if kind == "read":
            return self.read(name, timeout=timeout)
        if kind == "write":
            return self.write(name, timeout=timeout)
        if kind == "semaphore":
            return self.semaphore(name, max_leases=leases, timeout=timeout)
        return self.mutex(name, timeout=timeout)

    # -- acquisition ------------------------------------------------------------

    def _acquire(self, kind: str, name: str, recipe: _Recipe, timeout: float | None) -> Held:
        started = time.monotonic()
        with translated(f"{kind} lock {name!r}"):
            try:
                gotten = _acquire_recipe(recipe, timeout)
            except (KazooLockTimeout, CancelledError) as exc:
                raise LockTimeout(name, timeout) from exc
            except ValueError as exc:  # kazoo's check of the stored max_leases
                raise ValueError(f"semaphore {name!r}: {exc}") from exc
            finally:
                if isinstance(recipe, Semaphore):
                    # kazoo's Semaphore adds this listener on each attempt and
                    # only drops it on LOST: without this it leaks one per use.
                    self.client.remove_listener(recipe._watch_session)
            if not gotten:
                if self.client.state != KazooState.CONNECTED:
                    raise BoardUnavailable(
                        f"{kind} lock {name!r}: ZooKeeper connection {self.client.state}")
                raise LockTimeout(name, timeout)
            node = _node_of(recipe)
            held = Held(self.client, recipe, name=name, kind=kind, node=node,
                        waited=time.monotonic() - started)
            try:
                self._stamp(held)
            except BaseException:
                held.release()
                raise
        return held

    def _stamp(self, held: Held) -> None:
        """Watch the session, then read the token; the order makes loss visible."""
        self.client.add_listener(held._on_state)
        stat = self.client.retry(self.client.exists, held.node)
        session = self.client.client_id
        if stat is None or session is None or stat.ephemeralOwner != session[0] or held.lost:
            raise BoardUnavailable(
                f"{held.kind} lock {held.name!r} was lost with the ZooKeeper session "
                "while being acquired")
        held.token = stat.czxid


_KINDS = ("mutex", "read", "write", "semaphore")


def _requests(names: Iterable[str]) -> list[tuple[str, str, int]]:
    """(kind, name, leases) for each distinct lock, sorted by (name, kind)."""
    wanted: dict[tuple[str, str], int] = {}
    for item in names:
        kind = getattr(item, "kind", "mutex")
        if kind not in _KINDS:
            raise ValueError(f"lock {str(item)!r}: unknown kind {kind!r}")
        name = str.__str__(item) if isinstance(item, str) else str(item)
        wanted[(name, kind)] = int(getattr(item, "leases", 1) or 1)
    for name, kind in list(wanted):
        if kind == "read" and (name, "write") in wanted:
            del wanted[(name, kind)]
    return [(kind, name, leases) for (name, kind), leases in sorted(wanted.items())]


def _acquire_recipe(recipe: _Recipe, timeout: float | None) -> bool:
    if timeout is not None and timeout <= 0:
        return bool(recipe.acquire(blocking=False))
    timer = None
    if timeout is not None:
        # kazoo's timeout restarts for each predecessor waited on: cancel at the deadline.
        timer = threading.Timer(timeout, recipe.cancel)
        timer.daemon = True
        timer.start()
    try:
        return bool(recipe.acquire(timeout=timeout))
    finally:
        if timer is not None:
            timer.cancel()


def _node_of(recipe: _Recipe) -> str:
    if isinstance(recipe, Semaphore):
        return recipe.create_path
    return f"{recipe.path}/{recipe.node}"


