"""Flows: tasks and nested flows with an ordering.

* :func:`linear` runs its items one after the other;
* :func:`unordered` lets its items run at the same time;
* :func:`graph` orders its items by data (an item requiring a name runs after
  the item providing it) plus explicit ``edges=[(before, after)]``.

Flows nest. Problems visible in a flow on its own are refused here with
:class:`~jobboard.errors.FlowInvalid`: a duplicate task name anywhere in the
nesting, two items of an unordered flow providing the same name, a cycle in
a graph, an edge naming an unknown task. Missing inputs are checked when the
engine is built, once the store's keys are known (see ``compile``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Union

from jobboard.engine.tasks import Task, _as_names
from jobboard.errors import FlowInvalid

__all__ = ["Flow", "LinearFlow", "UnorderedFlow", "GraphFlow", "Item",
           "linear", "unordered", "graph"]

Item = Union[Task, "Flow"]


class Flow:
    """Base of the flow kinds: a name, items, an optional retry and locks.

    Args:
        name: The flow's name (it also names the logbook's flow detail).
        *items: Tasks and flows.
        retry: A retry policy applying to each task without one of its own.
        locks: Lock name templates held around the whole flow's run.

    Raises:
        FlowInvalid: A duplicate task name, or an item that is not a task
            or a flow.
    """

    kind = "flow"

    def __init__(self, name: str, *items: Item, retry: Any = None,
                 locks: Sequence[str] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise FlowInvalid(f"flow name must be a non-empty string, got {name!r}")
        self.name = name
        self.retry = retry
        self.locks: tuple[str, ...] = _as_names(locks, f"flow {name}: locks")
        for item in items:
            if not isinstance(item, (Task, Flow)):
                raise FlowInvalid(f"flow {name}: {item!r} is neither a Task nor a flow")
        self.items: tuple[Item, ...] = tuple(items)
        seen: set[str] = set()
        for t in self.iter_tasks():
            if t.name in seen:
                raise FlowInvalid(f"flow {name}: duplicate task name {t.name!r} "
                                  "(task names must be unique in a flow; use copy(name=...))")
            seen.add(t.name)

    def iter_tasks(self) -> Iterator[Task]:
        """Every task in this flow and its nested flows, depth first."""
        for item in self.items:
            if isinstance(item, Task):
                yield item
            else:
                yield from item.iter_tasks()

    def iter_flows(self) -> Iterator["Flow"]:
        """This flow and every nested flow, depth first."""
        yield self
        for item in self.items:
            if isinstance(item, Flow):
                yield from item.iter_flows()

    @property
    def provides(self) -> frozenset[str]:
        """Every name a task of this flow provides."""
        return frozenset(n for t in self.iter_tasks() for n in t.provides)

    def __len__(self) -> int:
        return sum(1 for _ in self.iter_tasks())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} items={[i.name for i in self.items]}>"


class LinearFlow(Flow):
    """Items run in the given order."""

    kind = "linear"


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


class GraphFlow(Flow):
    """Items ordered by data dependencies and explicit edges (no cycles).

    Args:
        edges: ``(before, after)`` pairs of task or nested-flow names.
    """

    kind = "graph"

    def __init__(self, name: str, *items: Item,
                 edges: Sequence[tuple[str, str]] = (), **options: Any) -> None:
        super().__init__(name, *items, **options)
        self.edges: tuple[tuple[str, str], ...] = tuple((str(a), str(b)) for a, b in edges)
        known = {t.name for t in self.iter_tasks()} | {f.name for f in self.iter_flows()}
        for a, b in self.edges:
            for end in (a, b):
                if end not in known:
                    raise FlowInvalid(f"graph flow {name}: edge ({a!r}, {b!r}) names "
                                      f"{end!r}, which is not a task or flow in it")
        # Compiling on our own catches cycles and ambiguous providers now.
        from jobboard.engine.compile import compile_flow
        compile_flow(self)


def linear(name: str, *items: Item, retry: Any = None,
           locks: Sequence[str] | None = None) -> LinearFlow:
    """A flow running ``items`` in order. See :class:`Flow`."""
    return LinearFlow(name, *items, retry=retry, locks=locks)


def unordered(name: str, *items: Item, retry: Any = None,
              locks: Sequence[str] | None = None) -> UnorderedFlow:
    """A flow whose ``items`` may run at the same time. See :class:`Flow`."""
    return UnorderedFlow(name, *items, retry=retry, locks=locks)


def graph(name: str, *items: Item, edges: Sequence[tuple[str, str]] = (),
          retry: Any = None, locks: Sequence[str] | None = None) -> GraphFlow:
    """A flow ordered by data dependencies plus explicit ``edges``
    ``[(before, after), ...]`` naming tasks or nested flows. See :class:`Flow`."""
    return GraphFlow(name, *items, edges=edges, retry=retry, locks=locks)
