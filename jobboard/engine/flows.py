"""Flows: tasks and nested flows with an ordering, and the pattern interface.

A *pattern* is a :class:`Flow` subclass. It says how its items are ordered
by returning :class:`Link` objects from :meth:`Flow.links` (``before`` runs
before ``after``; either names an item of the flow, or a task or flow nested
inside it), and it may constrain the order of reverts with
:meth:`Flow.revert_links`. The engine knows nothing else about a pattern:
reverts always run in the reverse of the links (latest finished first, a
task only after everything depending on it), plus the pattern's own pairs.
The built-in patterns use the same interface:

* :func:`linear` runs its items one after the other (a link between each
  pair of neighbours);
* :func:`unordered` lets its items run at the same time (no links);
* :func:`graph` orders its items by data (an item requiring a name runs after
  the item providing it) plus explicit ``edges=[(before, after)]`` and
  :meth:`GraphFlow.link`, whose ``decider`` can skip a branch at run time.

A link to or from a flow stands for its last (``before``) or first
(``after``) tasks; a flow with a retry controller (``retry=Times(3)``, see
:mod:`.controllers`) is always ordered as one unit.

Flows nest. Problems visible in a flow on its own are refused here with
:class:`~jobboard.errors.FlowInvalid`: a duplicate task name anywhere in the
nesting, two items of an unordered flow providing the same name, a cycle in
a graph, an edge naming an unknown task, a pattern without ``links()``.
Missing inputs are checked when the engine is built, once the store's keys
are known (see ``compile``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from jobboard.engine.controllers import RetryController
from jobboard.engine.lockspec import LockSpec, as_lock_specs
from jobboard.engine.tasks import Task
from jobboard.errors import FlowInvalid

__all__ = ["Flow", "LinearFlow", "UnorderedFlow", "GraphFlow", "Item", "Link",
           "Decider", "DEPTHS", "linear", "unordered", "graph"]

Item = Union[Task, "Flow"]
#: ``decider(history) -> bool``: ``history`` maps each task of the link's
#: ``before`` side to its result; a false answer skips the ``after`` side.
Decider = Callable[[Mapping[str, Any]], Any]
#: How far a "no" from a decider reaches: "all" (the default) skips the
#: ``after`` side and everything after it; "atom" skips only the ``after``
#: side (what comes after it runs, without its results).
DEPTHS = ("all", "atom")


@dataclass(frozen=True)
class Link:
    """``before`` runs before ``after`` (names of tasks or flows in a flow).

    With a ``decider``, ``after`` runs only if ``decider(history)`` is true
    once ``before`` finished; otherwise its tasks are recorded ``IGNORE``
    (and, with ``depth="all"``, every task after them too).
    """

    before: str
    after: str
    decider: Decider | None = None
    depth: str = "all"


class Flow:
    """Base of the flow patterns: a name, items, an optional retry and locks.

    A pattern subclasses it and implements :meth:`links` (and, if it needs
    to, :meth:`revert_links`).

    Args:
        name: The flow's name (it also names the logbook's flow detail).
        *items: Tasks and flows.
        retry: A :class:`~jobboard.engine.retry.Retry` policy applying to
            each task without one of its own, or a retry controller
            (:class:`~jobboard.engine.controllers.RetryController`: ``Times``,
            ``ForEach``, ``ParameterizedForEach``) running the whole flow
            again when part of it fails.
        locks: Locks held around the whole flow's run: name templates
            (mutexes) or :func:`~jobboard.engine.locking.read`,
            :func:`~jobboard.engine.locking.write`,
            :func:`~jobboard.engine.locking.semaphore` specs.

    Raises:
        FlowInvalid: A duplicate task name, an item that is not a task or a
            flow, or a subclass that does not implement ``links()``.
    """

    kind = "flow"

    def __init__(self, name: str, *items: Item, retry: Any = None,
                 locks: Sequence[str | LockSpec] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise FlowInvalid(f"flow name must be a non-empty string, got {name!r}")
        if type(self).links is Flow.links:
            raise FlowInvalid(f"flow pattern {type(self).__qualname__} does not implement "
                              "links() (how its items are ordered)")
        self.name = name
        self.controller: RetryController | None = None
        if isinstance(retry, RetryController):
            # A copy: one controller object may serve several flows.
            self.controller = retry.copy(name=f"{name}:retry" if retry.auto_named else None)
            retry = None
        self.retry = retry
        self.locks: tuple[LockSpec, ...] = as_lock_specs(locks, f"flow {name}: locks")
        for item in items:
            if not isinstance(item, (Task, Flow)) or isinstance(item, RetryController):
                raise FlowInvalid(f"flow {name}: {item!r} is neither a Task nor a flow "
                                  "(a retry controller goes in retry=)")
        self.items: tuple[Item, ...] = tuple(items)
        seen: set[str] = set()
        for t in self.iter_atoms():
            if t.name in seen:
                raise FlowInvalid(f"flow {name}: duplicate task name {t.name!r} "
                                  "(task names must be unique in a flow; use copy(name=...))")
            seen.add(t.name)

    # -- the pattern interface -------------------------------------------------

    def links(self) -> Iterable[Link]:
        """How this flow orders its items: ``Link(before, after)`` pairs of
        names of its items (or of tasks and flows nested in them). Items no
        link orders may run at the same time. Called when the flow is
        compiled (once per engine)."""
        raise NotImplementedError

    def revert_links(self) -> Iterable[tuple[str, str]]:
        """Extra ordering of reverts: ``(first, then)`` names whose tasks are
        reverted first / after. Reverts always follow :meth:`links`
        backwards; by default nothing more."""
        return ()

    # -- walking ---------------------------------------------------------------

    def iter_tasks(self) -> Iterator[Task]:
        """Every task in this flow and its nested flows, depth first."""
        for item in self.items:
            if isinstance(item, Task):
                yield item
            else:
                yield from item.iter_tasks()

    def iter_atoms(self) -> Iterator[Task]:
        """Every task and retry controller in this flow and its nested flows,
        depth first (a flow's controller before its items)."""
        if self.controller is not None:
            yield self.controller
        for item in self.items:
            if isinstance(item, Task):
                yield item
            else:
                yield from item.iter_atoms()

    def iter_flows(self) -> Iterator["Flow"]:
        """This flow and every nested flow, depth first."""
        yield self
        for item in self.items:
            if isinstance(item, Flow):
                yield from item.iter_flows()

    @property
    def provides(self) -> frozenset[str]:
        """Every name a task (or retry controller) of this flow provides."""
        return frozenset(n for t in self.iter_atoms() for n in t.provides)

    def __len__(self) -> int:
        return sum(1 for _ in self.iter_tasks())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} items={[i.name for i in self.items]}>"


class LinearFlow(Flow):
    """Items run in the given order."""

    kind = "linear"

    def links(self) -> Iterable[Link]:
        return [Link(a.name, b.name) for a, b in zip(self.items, self.items[1:])]


class UnorderedFlow(Flow):
    """Items may run at the same time; they may not provide the same name."""

    kind = "unordered"

    def __init__(self, name: str, *items: Item, **options: Any) -> None:
        super().__init__(name, *items, **options)
        owner: dict[str, str] = {}
        for item in self.items:
            for n in sorted(item.provides):
                if n in owner:
                    raise FlowInvalid(f"unordered flow {name}: {owner[n]!r} and {item.name!r} "
                                      f"both provide {n!r}")
                owner[n] = item.name

    def links(self) -> Iterable[Link]:
        return ()


class GraphFlow(Flow):
    """Items ordered by data dependencies and explicit edges (no cycles).

    Args:
        edges: ``(before, after)`` pairs of task or nested-flow names.
    """

    kind = "graph"

    def __init__(self, name: str, *items: Item,
                 edges: Sequence[tuple[str, str]] = (), **options: Any) -> None:
        super().__init__(name, *items, **options)
        self._known = ({t.name for t in self.iter_atoms()}
                       | {f.name for f in self.iter_flows()})
        self._links: list[Link] = []
        for a, b in edges:
            self._add(Link(str(a), str(b)))
        self._check()

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        """The explicit ``(before, after)`` pairs (conditional links included)."""
        return tuple((link.before, link.after) for link in self._links)

    def link(self, before: str, after: str, *, decider: Decider | None = None,
             depth: str = "all") -> "GraphFlow":
        """Order ``after`` after ``before`` (task or nested-flow names); with a
        ``decider``, run ``after`` only if ``decider(history)`` says so (see
        :class:`Link`). Returns the flow, so calls chain.

        Raises:
            FlowInvalid: An unknown name, a bad ``depth``, a decider that is
                not callable, or a cycle.
        """
        if decider is not None and not callable(decider):
            raise FlowInvalid(f"graph flow {self.name}: decider of ({before!r}, {after!r}) "
                              f"is not callable: {decider!r}")
        if depth not in DEPTHS:
            raise FlowInvalid(f"graph flow {self.name}: depth must be one of {list(DEPTHS)}, "
                              f"got {depth!r}")
        self._add(Link(str(before), str(after), decider, depth))
        try:
            self._check()
        except FlowInvalid:
            self._links.pop()
            raise
        return self

    def _add(self, link: Link) -> None:
        for end in (link.before, link.after):
            if end not in self._known:
                raise FlowInvalid(f"graph flow {self.name}: edge ({link.before!r}, "
                                  f"{link.after!r}) names {end!r}, which is not a task or "
                                  "flow in it")
        self._links.append(link)

    def _check(self) -> None:
        # Compiling on our own catches cycles and ambiguous providers now.
        from jobboard.engine.compile import compile_flow
        compile_flow(self)

    def links(self) -> Iterable[Link]:
        return [*self._data_links(), *self._links]

    def _data_links(self) -> list[Link]:
        """From the task providing a name to each task of another item
        requiring it."""
        links: list[Link] = []
        providers: dict[str, list[tuple[int, str]]] = {}
        atoms = [list(item.iter_atoms()) if isinstance(item, Flow) else [item]
                 for item in self.items]
        for i, group in enumerate(atoms):
            for t in group:
                for n in t.provides:
                    providers.setdefault(n, []).append((i, t.name))
        for i, group in enumerate(atoms):
            for t in group:
                for n in sorted(t.requires | frozenset(t.optional.values())):
                    outside = [(j, p) for j, p in providers.get(n, []) if j != i]
                    if len({j for j, _ in outside}) > 1:
                        names = sorted(p for _, p in outside)
                        raise FlowInvalid(f"graph flow {self.name}: {t.name!r} requires "
                                          f"{n!r}, which several tasks provide: {names}")
                    links.extend(Link(p, t.name) for _, p in outside)
        return links


def linear(name: str, *items: Item, retry: Any = None,
           locks: Sequence[str | LockSpec] | None = None) -> LinearFlow:
    """A flow running ``items`` in order. See :class:`Flow`."""
    return LinearFlow(name, *items, retry=retry, locks=locks)


def unordered(name: str, *items: Item, retry: Any = None,
              locks: Sequence[str | LockSpec] | None = None) -> UnorderedFlow:
    """A flow whose ``items`` may run at the same time. See :class:`Flow`."""
    return UnorderedFlow(name, *items, retry=retry, locks=locks)


def graph(name: str, *items: Item, edges: Sequence[tuple[str, str]] = (),
          retry: Any = None, locks: Sequence[str | LockSpec] | None = None) -> GraphFlow:
    """A flow ordered by data dependencies plus explicit ``edges``
    ``[(before, after), ...]`` naming tasks or nested flows. See :class:`Flow`."""
    return GraphFlow(name, *items, edges=edges, retry=retry, locks=locks)
