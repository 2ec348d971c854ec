"""Changed code on resume: what to do with results saved by another version
of a task.

Every atom records the ``version`` of the task that wrote it. When a flow is
resumed, each ``SUCCESS`` task whose recorded version differs from its
current ``Task.version`` follows the task's ``on_version_change``:

* ``"rerun"``: the saved result is dropped and the task runs again (what
  already ran after it keeps its results);
* ``"keep"``: the saved result stands;
* ``"fail"``: the job fails at once, with a reason naming the task and both
  versions; nothing runs and nothing is reverted.

An atom saved before versions were recorded counts as version ``"1"``.
Retry controllers keep their state whatever their version. A task added to
the flow since the journal was written simply runs; one removed is ignored.
Only a forward resume is checked: a revert in progress carries on with the
code at hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from jobboard.engine.journal import AtomDetail
from jobboard.engine.tasks import Task
from jobboard.errors import FlowInvalid
from jobboard.states import AtomState

__all__ = ["VersionPlan", "reconcile_versions", "UNVERSIONED"]

#: The version of an atom saved before versions were recorded.
UNVERSIONED = "1"


@dataclass
class VersionPlan:
    """What a resume does about changed versions: (task, saved version) pairs."""

    rerun: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    refusal: FlowInvalid | None = None


def reconcile_versions(tasks: Mapping[str, Task], atoms: Mapping[str, AtomDetail]) -> VersionPlan:
    """Sort the saved results of changed tasks by their policies.

    Returns:
        The plan; ``refusal`` is set (naming every task that refuses) when a
        changed task says ``"fail"``.
    """
    plan = VersionPlan()
    refusing: list[str] = []
    for name, atom in atoms.items():
        task = tasks.get(name)
        if task is None or atom.kind != "task" or atom.state != AtomState.SUCCESS:
            continue
        saved = atom.version or UNVERSIONED
        if saved == task.version:
            continue
        policy = task.on_version_change
        if policy == "keep":
            plan.kept.append((name, saved))
        elif policy == "fail":
            refusing.append(f"task {name!r} is version {task.version!r} but its saved "
                            f"result is from version {saved!r}")
        else:
            plan.rerun.append((name, saved))
    if refusing:
        plan.refusal = FlowInvalid("cannot resume: " + "; ".join(refusing)
                                   + " (on_version_change='fail')")
    return plan
