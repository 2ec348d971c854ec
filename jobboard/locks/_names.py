"""Lock names and where their znodes live, in one place.

::

    {root}/mutex/{encoded name}/{uuid}__lock__{seq}        mutex contenders
    {root}/rw/{encoded name}/{uuid}__lock__{seq}           writers
    {root}/rw/{encoded name}/{uuid}__rlock__{seq}          readers
    {root}/semaphore/{encoded name}/leases/{uuid}          semaphore leases
    {root}/semaphore/{encoded name}/leases-__lock__/...    kazoo's lease-pool lock

Each kind has its own subtree, so ``mutex("x")`` and ``write("x")`` are two
different locks. A name is percent-encoded into a single znode name
(``volume/42`` -> ``volume%2F42``): the encoded form uses only
``[A-Za-z0-9_.~%-]``, so it never contains ``/`` or a character ZooKeeper
refuses. Fails with :class:`ValueError` for an empty, too long or
unencodable name, or a name that encodes to ``.`` or ``..``.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

DEFAULT_ROOT = "/jobboard/locks"
MAX_NAME_LENGTH = 256

MUTEX = "mutex"
RW = "rw"
SEMAPHORE = "semaphore"
SEMAPHORE_LEASES = "leases"


def encode_name(name: str) -> str:
    """The single znode name that stands for lock ``name``.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: ``name`` is empty, longer than :data:`MAX_NAME_LENGTH`
            characters, contains lone surrogates, or is ``.`` / ``..``.
    """
    if not isinstance(name, str):
        raise TypeError(f"lock name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("lock name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"lock name is {len(name)} characters, over the limit of {MAX_NAME_LENGTH}: "
            f"{name[:40]!r}...")
    try:
        encoded = quote(name, safe="")
    except UnicodeEncodeError as exc:
        raise ValueError(f"lock name {name!r} is not valid text: {exc.reason}") from exc
    if encoded in (".", ".."):
        # ZooKeeper refuses "." and ".." as path components.
        raise ValueError(f"lock name {name!r} is reserved")
    return encoded


def decode_name(encoded: str) -> str:
    """The lock name a znode name stands for (inverse of :func:`encode_name`)."""
    return unquote(encoded, errors="strict")


def check_root(root: str) -> str:
    """``root`` without a trailing slash; ValueError unless it is absolute."""
    if not isinstance(root, str) or not root.startswith("/") or root == "/":
        raise ValueError(f"lock root must be an absolute znode path other than '/', not {root!r}")
    return root.rstrip("/")


def lock_path(root: str, kind: str, name: str) -> str:
    """The parent znode of the contenders (or the lease pool) for ``name``."""
    path = f"{root}/{kind}/{encode_name(name)}"
    if kind == SEMAPHORE:
        # kazoo puts the pool's own lock at "{path}-__lock__", next to the pool:
        # one level down it cannot collide with another name's pool.
        path += "/" + SEMAPHORE_LEASES
    return path
