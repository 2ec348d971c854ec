"""Compilation of nested flows into one DAG of tasks, and its validation.

A linear flow chains its items (every exit task of one item precedes every
entry task of the next), an unordered flow adds no edges between its items,
a graph flow adds an edge from the task providing a name to each task of
another item requiring it, plus its explicit edges. The result is a
:class:`CompiledFlow`: tasks in a topological order, predecessors and
successors, the task each argument comes from, each task's retry policy and
enclosing flows.

Fails with :class:`~jobboard.errors.FlowInvalid` on a cycle (naming the
tasks in it), an ambiguous provider, or, when the store's keys are given, a
required input that neither the store nor an earlier task provides.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from jobboard.engine.flows import Flow, GraphFlow, Item, LinearFlow
from jobboard.engine.tasks import Task
from jobboard.errors import FlowInvalid

__all__ = ["CompiledFlow", "compile_flow"]


@dataclass
class CompiledFlow:
    """A nested flow flattened into a DAG of tasks."""

    root: Flow | Task
    tasks: dict[str, Task]                    # by name, in topological order
    preds: dict[str, set[str]]
    succs: dict[str, set[str]]
    flows_of: dict[str, tuple[Flow, ...]]     # enclosing flows, outermost first
    retry_of: dict[str, Any]                  # effective retry policy or None
    # (task, param) -> providing task name, or None for the store
    sources: dict[str, dict[str, str | None]] = field(default_factory=dict)
    optional_sources: dict[str, dict[str, str | None]] = field(default_factory=dict)

    order: list[str] = field(init=False)        # task names, topological
    index: dict[str, int] = field(init=False)   # task name -> position in order

    def __post_init__(self) -> None:
        self.order = list(self.tasks)
        self.index = {n: i for i, n in enumerate(self.order)}


@dataclass
class _Part:
    tasks: list[Task]
    edges: set[tuple[str, str]]
    entries: set[str]
    exits: set[str]


def _ends(names: Iterable[str], edges: set[tuple[str, str]]) -> tuple[set[str], set[str]]:
    names = set(names)
    has_pred = {b for a, b in edges if a in names and b in names}
    has_succ = {a for a, b in edges if a in names and b in names}
    return names - has_pred, names - has_succ


def _compile_item(item: Item, parts: dict[str, _Part]) -> _Part:
    if isinstance(item, Task):
        part = _Part([item], set(), {item.name}, {item.name})
        parts.setdefault(item.name, part)
        return part
    children = [_compile_item(child, parts) for child in item.items]
    tasks = [t for c in children for t in c.tasks]
    edges = set().union(*(c.edges for c in children)) if children else set()
    if isinstance(item, LinearFlow):
        for before, after in zip(children, children[1:]):
            edges.update((a, b) for a in before.exits for b in after.entries)
    elif isinstance(item, GraphFlow):
        edges |= _graph_edges(item, children, parts)
    entries, exits = _ends((t.name for t in tasks), edges)
    part = _Part(tasks, edges, entries, exits)
    parts.setdefault(item.name, part)
    return part


def _graph_edges(flow: GraphFlow, children: list[_Part],
                 parts: dict[str, _Part]) -> set[tuple[str, str]]:
    edges: set[tuple[str, str]] = set()
    providers: dict[str, list[tuple[int, str]]] = {}
    for i, child in enumerate(children):
        for t in child.tasks:
            for n in t.provides:
                providers.setdefault(n, []).append((i, t.name))
    for i, child in enumerate(children):
        for t in child.tasks:
            for n in sorted(t.requires | frozenset(t.optional.values())):
                outside = [(j, p) for j, p in providers.get(n, []) if j != i]
                items = {j for j, _ in outside}
                if len(items) > 1:
                    names = sorted(p for _, p in outside)
                    raise FlowInvalid(f"graph flow {flow.name}: {t.name!r} requires {n!r}, "
                                      f"which several tasks provide: {names}")
                edges.update((p, t.name) for _, p in outside)
    for a, b in flow.edges:
        edges.update((x, y) for x in parts[a].exits for y in parts[b].entries)
    return edges


def _topological(names: list[str], preds: dict[str, set[str]],
                 succs: dict[str, set[str]], where: str) -> list[str]:
    """Kahn's algorithm keeping the declaration order among ready tasks."""
    position = {n: i for i, n in enumerate(names)}
    missing = {n: len(preds[n]) for n in names}
    ready = [position[n] for n in names if not missing[n]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        n = names[heapq.heappop(ready)]
        order.append(n)
        for s in succs[n]:
            missing[s] -= 1
            if not missing[s]:
                heapq.heappush(ready, position[s])
    if len(order) < len(names):
        raise FlowInvalid(f"flow {where} has a cycle: "
                          f"{' -> '.join(_find_cycle(set(names) - set(order), succs))}")
    return order


def _find_cycle(left: set[str], succs: dict[str, set[str]]) -> list[str]:
    start = min(left)
    path, seen, node = [], {}, start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(s for s in succs[node] if s in left)
    return path[seen[node]:] + [node]


def compile_flow(root: Flow | Task, store_keys: Collection[str] | None = None) -> CompiledFlow:
    """Flatten ``root`` into a :class:`CompiledFlow` and validate it.

    Args:
        root: A flow or a single task.
        store_keys: The names the initial store holds; when given, every
            required input must come from the store or an earlier task.

    Returns:
        The compiled flow.

    Raises:
        FlowInvalid: A cycle, an ambiguous provider, or a missing input.
    """
    part = _compile_item(root, {})
    names = [t.name for t in part.tasks]
    preds: dict[str, set[str]] = {n: set() for n in names}
    succs: dict[str, set[str]] = {n: set() for n in names}
    for a, b in part.edges:
        preds[b].add(a)
        succs[a].add(b)
    order = _topological(names, preds, succs, root.name)
    by_name = {t.name: t for t in part.tasks}
    flows_of: dict[str, tuple[Flow, ...]] = {}
    retry_of: dict[str, Any] = {}

    def walk(item: Item, chain: tuple[Flow, ...]) -> None:
        if isinstance(item, Task):
            flows_of[item.name] = chain
            policy = item.retry
            for f in reversed(chain):
                if policy is None:
                    policy = f.retry
            retry_of[item.name] = policy
        else:
            for child in item.items:
                walk(child, chain + (item,))
    walk(root, ())

    compiled = CompiledFlow(root, {n: by_name[n] for n in order}, preds, succs,
                            flows_of, retry_of)
    _resolve_sources(compiled, store_keys)
    return compiled


def _resolve_sources(c: CompiledFlow, store_keys: Collection[str] | None) -> None:
    """Pick for each argument the closest earlier task providing it."""
    index = c.index
    ancestors: dict[str, int] = {}
    providers: dict[str, list[str]] = {}
    for n, t in c.tasks.items():
        bits = 0
        for p in c.preds[n]:
            bits |= ancestors[p] | (1 << index[p])
        ancestors[n] = bits
        for name in t.provides:
            providers.setdefault(name, []).append(n)
    problems: list[str] = []

    def source(n: str, name: str) -> str | None:
        cands = [p for p in providers.get(name, ()) if ancestors[n] >> index[p] & 1]
        if not cands:
            return None
        latest = max(cands, key=index.__getitem__)
        unordered = [p for p in cands if p != latest and not ancestors[latest] >> index[p] & 1]
        if unordered:
            raise FlowInvalid(f"task {n!r} requires {name!r}, provided by tasks "
                              f"{sorted([latest, *unordered])} that are not ordered")
        return latest

    for n, t in c.tasks.items():
        c.sources[n] = {}
        for param, name in t.requirements.items():
            c.sources[n][param] = src = source(n, name)
            if src is None and store_keys is not None and name not in store_keys:
                problems.append(f"task {n!r} requires {name!r}, which neither the store "
                                "nor an earlier task provides")
        c.optional_sources[n] = {param: source(n, name) for param, name in t.optional.items()}
    if problems:
        raise FlowInvalid(f"flow {c.root.name}: " + "; ".join(problems))
