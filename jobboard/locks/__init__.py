"""Named distributed locks on ZooKeeper, with fencing tokens.

::

    from jobboard.locks import Locks
    locks = Locks(client, root="/jobboard/locks", identifier="conductor-1")
    with locks.mutex("volume/42", timeout=10) as held:
        write_somewhere(fencing_token=held.token)
    with locks.acquire_all(["volume/42", "server/7"], timeout=10) as group:
        ...

Mutex, read/write lock and semaphore are kazoo's recipes (each waiter watches
only its predecessor). Every holder gets a fencing token, the creation zxid of
its znode: it strictly increases across successive holders of a name, so a
system that remembers the highest token it has seen can refuse a stale holder.

How it fails: :class:`~jobboard.errors.LockTimeout` when not acquired in time;
:class:`~jobboard.errors.BoardUnavailable` when ZooKeeper cannot be reached
or the session holding a lock is lost (``held.valid`` turns False,
``held.check()`` raises); :class:`ValueError` for a bad name. No kazoo
exception escapes. Details in :mod:`._locks` and :mod:`._held`.
"""

from jobboard.locks._held import Held, HeldGroup
from jobboard.locks._locks import Locks
from jobboard.locks._names import DEFAULT_ROOT, MAX_NAME_LENGTH, decode_name, encode_name

__all__ = [
    "DEFAULT_ROOT",
    "MAX_NAME_LENGTH",
    "Held",
    "HeldGroup",
    "Locks",
    "decode_name",
    "encode_name",
]
