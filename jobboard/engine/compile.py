"""Compilation of nested flows into one DAG of atoms, and its validation.

Each flow pattern orders its items through its ``links()`` (see
:mod:`.flows`): a link from a nested flow leaves from its exit tasks (those
nothing in it follows), a link to one arrives at its entry tasks. A flow with
a retry controller puts the controller before its entry tasks, and is
always linked as one unit: a link between a task inside it and a task
outside it is moved to the flow's ends. The result is a
:class:`CompiledFlow`: atoms (tasks and controllers) in a topological order,
predecessors and successors, the atom each argument comes from, each task's
retry policy and enclosing flows, each controller's scope, and the links'
deciders.

Fails with :class:`~jobboard.errors.FlowInvalid` on a cycle (naming the
tasks in it), an ambiguous provider, a link naming something that is not in
its flow, or, when the store's keys are given, a required input that neither
the store nor an earlier task provides.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from jobboard.engine.controllers import RetryController
from jobboard.engine.flows import Flow, Item, Link
from jobboard.engine.tasks import Task
from jobboard.errors import FlowInvalid

__all__ = ["CompiledFlow", "CompiledDecider", "compile_flow"]


@dataclass(frozen=True)
class CompiledDecider:
    """A conditional link: ``link.decider`` sees the results of ``sources``
    and, saying no, skips ``targets`` (``entries`` are the first of them)."""

    link: Link
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    entries: frozenset[str]

    @property
    def label(self) -> str:
        return f"{self.link.before} -> {self.link.after}"


@dataclass
class CompiledFlow:
    """A nested flow flattened into a DAG of atoms (tasks and controllers)."""

    root: Flow | Task
    tasks: dict[str, Task]                    # every atom by name, in topological order
    preds: dict[str, set[str]]
    succs: dict[str, set[str]]
    flows_of: dict[str, tuple[Flow, ...]]     # enclosing flows, outermost first
    retry_of: dict[str, Any]                  # effective retry policy or None
    # (task, param) -> providing task name, or None for the store
    sources: dict[str, dict[str, str | None]] = field(default_factory=dict)
    optional_sources: dict[str, dict[str, str | None]] = field(default_factory=dict)
    controllers: dict[str, RetryController] = field(default_factory=dict)
    scope: dict[str, tuple[str, ...]] = field(default_factory=dict)   # controller -> atoms
    controller_of: dict[str, str] = field(default_factory=dict)       # innermost enclosing
    deciders: list[CompiledDecider] = field(default_factory=list)
    deciders_into: dict[str, list[CompiledDecider]] = field(default_factory=dict)
    # atom -> atoms to revert before it, besides its successors (revert_links)
    revert_before: dict[str, set[str]] = field(default_factory=dict)

    order: list[str] = field(init=False)        # atom names, topological
    index: dict[str, int] = field(init=False)   # atom name -> position in order

    def __post_init__(self) -> None:
        self.order = list(self.tasks)
        self.index = {n: i for i, n in enumerate(self.order)}


@dataclass
class _Part:
    tasks: list[Task]
    edges: set[tuple[str, str]]
    entries: set[str]
    exits: set[str]
    names: set[str]          # every atom and flow name inside (its own included)


class _Compiler:
    """Builds the parts of a flow bottom-up."""

    def __init__(self) -> None:
        self.parts: dict[str, _Part] = {}
        self.items: dict[str, Item] = {}
        self.deciders: list[CompiledDecider] = []
        self.revert_pairs: set[tuple[str, str]] = set()

    def compile(self, item: Item) -> _Part:
        if isinstance(item, Task):
            part = _Part([item], set(), {item.name}, {item.name}, {item.name})
            self._register(item, part)
            return part
        children = [self.compile(child) for child in item.items]
        tasks = [t for c in children for t in c.tasks]
        edges = set().union(*(c.edges for c in children)) if children else set()
        names = {item.name}.union(*(c.names for c in children))
        for link in item.links():
            for end in (link.before, link.after):
                if end not in names or end == item.name:
                    raise FlowInvalid(f"flow {item.name}: link ({link.before!r}, "
                                      f"{link.after!r}) names {end!r}, which is not a task "
                                      "or flow in it")
            before = self._unit(item, link.before, link.after)
            after = self._unit(item, link.after, link.before)
            edges.update((a, b) for a in before.exits for b in after.entries)
            if link.decider is not None:
                self.deciders.append(CompiledDecider(
                    link, tuple(t.name for t in before.tasks),
                    tuple(t.name for t in after.tasks), frozenset(after.entries)))
        for first, then in item.revert_links():
            for end in (first, then):
                if end not in names:
                    raise FlowInvalid(f"flow {item.name}: revert link ({first!r}, {then!r}) "
                                      f"names {end!r}, which is not a task or flow in it")
            self.revert_pairs.update((a.name, b.name) for a in self.parts[first].tasks
                                     for b in self.parts[then].tasks)
        entries, exits = _ends((t.name for t in tasks), edges)
        ctl = item.controller
        if ctl is not None:
            edges.update((ctl.name, e) for e in entries)
            tasks = [ctl, *tasks]
            names.add(ctl.name)
            entries, exits = {ctl.name}, exits or {ctl.name}
            self._register(ctl, _Part([ctl], set(), {ctl.name}, {ctl.name}, {ctl.name}))
        part = _Part(tasks, edges, entries, exits, names)
        self._register(item, part)
        return part

    def _register(self, item: Item, part: _Part) -> None:
        self.parts.setdefault(item.name, part)
        self.items.setdefault(item.name, item)

    def _unit(self, flow: Flow, name: str, other: str) -> _Part:
        """The part a link end stands for: the outermost flow with a
        controller inside ``flow`` holding ``name`` but not ``other``, else
        ``name``'s own part."""
        for item in _path(flow, name):
            if isinstance(item, Flow) and item.controller is not None \
                    and other not in self.parts[item.name].names:
                return self.parts[item.name]
        return self.parts[name]


def _path(flow: Flow, name: str) -> list[Item]:
    """The items from a child of ``flow`` down to the one named ``name``."""
    for child in flow.items:
        if child.name == name:
            return [child]
        if isinstance(child, Flow):
            if child.controller is not None and child.controller.name == name:
                return [child, child.controller]
            below = _path(child, name)
            if below:
                return [child, *below]
    return []


def _ends(names: Iterable[str], edges: set[tuple[str, str]]) -> tuple[set[str], set[str]]:
    names = set(names)
    has_pred = {b for a, b in edges if a in names and b in names}
    has_succ = {a for a, b in edges if a in names and b in names}
    return names - has_pred, names - has_succ


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
        FlowInvalid: A cycle, an ambiguous provider, a bad link, or a
            missing input.
    """
    compiler = _Compiler()
    part = compiler.compile(root)
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
    controllers: dict[str, RetryController] = {}
    scope: dict[str, tuple[str, ...]] = {}
    controller_of: dict[str, str] = {}

    def walk(item: Item, chain: tuple[Flow, ...], ctls: tuple[str, ...]) -> None:
        if isinstance(item, Task):
            flows_of[item.name] = chain
            policy = item.retry
            for f in reversed(chain):
                if policy is None:
                    policy = f.retry
            retry_of[item.name] = policy
            if ctls:
                controller_of[item.name] = ctls[-1]
            return
        chain = chain + (item,)
        ctl = item.controller
        if ctl is not None:
            flows_of[ctl.name] = chain
            retry_of[ctl.name] = None
            controllers[ctl.name] = ctl
            if ctls:
                controller_of[ctl.name] = ctls[-1]
            inside = {t.name for t in item.iter_atoms()} - {ctl.name}
            scope[ctl.name] = tuple(n for n in order if n in inside)
            ctls = ctls + (ctl.name,)
        for child in item.items:
            walk(child, chain, ctls)
    walk(root, (), ())

    compiled = CompiledFlow(root, {n: by_name[n] for n in order}, preds, succs,
                            flows_of, retry_of, controllers=controllers, scope=scope,
                            controller_of=controller_of, deciders=compiler.deciders)
    for decider in compiler.deciders:
        for entry in decider.entries:
            compiled.deciders_into.setdefault(entry, []).append(decider)
    for first, then in compiler.revert_pairs:
        if first != then:
            compiled.revert_before.setdefault(then, set()).add(first)
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
