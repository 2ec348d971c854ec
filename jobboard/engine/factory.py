"""Flow factories: ``"package.module:function"`` references to flow builders.

A job names its factory, so any conductor can rebuild the flow. Factories are
imported only from allowed module prefixes (``"myapp."`` or ``"myapp"``
allow ``myapp`` and ``myapp.flows``, never ``myappx``), so a job cannot make
a conductor import arbitrary code.

Fails with :class:`~jobboard.errors.FactoryNotAllowed` outside the allowed
prefixes, :class:`~jobboard.errors.FactoryNotFound` for a malformed
reference or one that cannot be imported, and
:class:`~jobboard.errors.FlowInvalid` when the factory raises or returns
something that is not a flow or task.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jobboard.engine.flows import Flow
from jobboard.engine.tasks import Task
from jobboard.errors import FactoryNotAllowed, FactoryNotFound, FlowInvalid

__all__ = ["resolve_factory", "build_flow", "is_allowed"]

_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_allowed(module: str, allowed: Iterable[str]) -> bool:
    """Whether ``module`` is one of the ``allowed`` prefixes or under one."""
    for prefix in allowed:
        prefix = prefix.rstrip(".")
        if prefix and (module == prefix or module.startswith(prefix + ".")):
            return True
    return False


def resolve_factory(ref: str, allowed: Iterable[str]) -> Callable[..., Any]:
    """Import the factory named by ``ref`` (``"package.module:function"``).

    Args:
        ref: Module path and attribute path separated by a colon.
        allowed: Module prefixes factories may come from.

    Returns:
        The factory callable.

    Raises:
        FactoryNotFound: Malformed reference, or module/attribute missing.
        FactoryNotAllowed: The module is outside ``allowed``.
    """
    allowed = tuple(allowed)
    if not isinstance(ref, str) or not _REF.match(ref):
        raise FactoryNotFound(str(ref), "expected 'package.module:function'")
    module_name, attr_path = ref.split(":", 1)
    if not is_allowed(module_name, allowed):
        raise FactoryNotAllowed(ref, allowed)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise FactoryNotFound(ref, f"no module {exc.name!r}") from exc
    except Exception as exc:
        raise FactoryNotFound(ref, f"importing {module_name} failed: "
                                   f"{type(exc).__name__}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FactoryNotFound(ref, f"{module_name} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise FactoryNotFound(ref, f"{attr_path} is a {type(obj).__name__}, not callable")
    return obj


def build_flow(ref: str, args: Mapping[str, Any] | None, allowed: Iterable[str]) -> Flow | Task:
    """Resolve ``ref`` and call it with ``args`` as keyword arguments.

    Returns:
        The flow (or single task) the factory built.

    Raises:
        FactoryNotFound: See :func:`resolve_factory`.
        FactoryNotAllowed: See :func:`resolve_factory`.
        FlowInvalid: The factory raised, or returned neither a flow nor a task.
    """
    factory = resolve_factory(ref, allowed)
    try:
        flow = factory(**dict(args or {}))
    except FlowInvalid:
        raise
    except Exception as exc:
        raise FlowInvalid(f"flow factory {ref} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(flow, (Flow, Task)):
        raise FlowInvalid(f"flow factory {ref} returned a {type(flow).__name__}, "
                          "not a flow or a task")
    return flow
