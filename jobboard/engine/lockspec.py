"""Declared locks: :class:`LockSpec` and the helpers declaring each kind.

A plain string in ``locks=[...]`` is a mutex name template; :func:`read`,
:func:`write` (the two sides of a read/write lock) and :func:`semaphore`
declare the other kinds. A :class:`LockSpec` is a ``str`` (its name)
carrying ``kind`` and ``leases``, so code that only knows names keeps
working (it sees every lock as a mutex). How it fails: a bad declaration
raises :class:`~jobboard.errors.FlowInvalid` where it is made; a template
that cannot be filled in raises it when rendered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jobboard.errors import FlowInvalid

__all__ = ["LockSpec", "LOCK_KINDS", "mutex", "read", "write", "semaphore",
           "as_lock_specs", "render_locks"]

#: The kinds of declared locks.
LOCK_KINDS = ("mutex", "read", "write", "semaphore")


class LockSpec(str):
    """A declared lock: the ``str`` is its name (a template until rendered),
    ``kind`` one of :data:`LOCK_KINDS`, ``leases`` a semaphore's size.

    Raises:
        FlowInvalid: An unknown kind, an empty name, or ``leases`` that is
            not a positive int (for a semaphore).
    """

    kind: str
    leases: int

    def __new__(cls, name: str, kind: str = "mutex", leases: int = 1) -> "LockSpec":
        if not isinstance(name, str) or not name:
            raise FlowInvalid(f"a lock name must be a non-empty string, got {name!r}")
        if kind not in LOCK_KINDS:
            raise FlowInvalid(f"lock {name!r}: kind must be one of {list(LOCK_KINDS)}, "
                              f"got {kind!r}")
        if isinstance(leases, bool) or not isinstance(leases, int) or leases < 1:
            raise FlowInvalid(f"lock {name!r}: leases must be a positive int, got {leases!r}")
        spec = super().__new__(cls, name)
        spec.kind = kind
        spec.leases = leases if kind == "semaphore" else 1
        return spec

    @property
    def name(self) -> str:
        return str.__str__(self)

    def render(self, values: Mapping[str, Any], owner: str) -> "LockSpec":
        """This spec with its name template filled from ``values``.

        Raises:
            FlowInvalid: The template names a value that is not available.
        """
        try:
            name = self.name.format_map(values)
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            raise FlowInvalid(f"{owner}: lock {self.name!r} cannot be filled in "
                              f"({type(exc).__name__}: {exc})") from exc
        return LockSpec(name, self.kind, self.leases)

    def __getnewargs__(self) -> tuple[str, str, int]:   # pickling (process executor)
        return (self.name, self.kind, self.leases)

    def __repr__(self) -> str:
        extra = f", {self.leases}" if self.kind == "semaphore" else ""
        return f"{self.kind}({self.name!r}{extra})"


def mutex(name: str) -> LockSpec:
    """An exclusive lock (what a plain string declares)."""
    return LockSpec(name, "mutex")


def read(name: str) -> LockSpec:
    """The shared side of the read/write lock ``name``: readers hold it
    together, never with a writer."""
    return LockSpec(name, "read")


def write(name: str) -> LockSpec:
    """The exclusive side of the read/write lock ``name``."""
    return LockSpec(name, "write")


def semaphore(name: str, leases: int) -> LockSpec:
    """One of ``leases`` places of the semaphore ``name`` (every user of the
    name must declare the same ``leases``)."""
    return LockSpec(name, "semaphore", leases)


def as_lock_specs(value: str | Sequence[str | LockSpec] | None, what: str) -> tuple[LockSpec, ...]:
    """Declared locks as specs (a plain string is a mutex).

    Raises:
        FlowInvalid: Something that is not a name or a spec.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    specs = []
    for item in value:
        if isinstance(item, LockSpec):
            specs.append(item)
        elif isinstance(item, str) and item:
            specs.append(LockSpec(item))
        else:
            raise FlowInvalid(f"{what} must be non-empty strings or lock specs, got {item!r}")
    return tuple(specs)


def render_locks(templates: Sequence[str], values: Mapping[str, Any],
                 owner: str) -> list[LockSpec]:
    """Fill lock name templates (specs or plain mutex names) from ``values``.

    Raises:
        FlowInvalid: A template names a value that is not available.
    """
    return [(t if isinstance(t, LockSpec) else LockSpec(t)).render(values, owner)
            for t in templates]
