"""Flow factories: ``"package.module:function"`` references to flow builders.

A job names its factory, so any conductor can rebuild the flow. The job comes
from whoever can post to the board, so the reference is untrusted input. What
a poster can make a conductor do with it is exactly this, and nothing else:

* import a module whose dotted name is one of the conductor's allowed prefixes
  or under one (``"myapp."`` or ``"myapp"`` allow ``myapp`` and
  ``myapp.flows``, never ``myappx``); importing runs that module's top-level
  code, which is why only allowed modules are ever imported;
* call one public module-level function defined in an allowed module, with the
  job's ``args`` (msgpack-native values) as keyword arguments.

So a reference is ``package.module:function`` with ONE attribute name after the
colon. Everything below is refused before anything is called:

* an attribute path (``myflows:os.system``, ``myflows:os.path.join``);
* a private name (``myflows:_helper``): leading underscores mark what a module
  does not mean to expose;
* anything that is not a plain Python function (``type(obj) is FunctionType``):
  builtins (``from builtins import eval``), classes (calling one runs its
  ``__init__``), instances with ``__call__``, ``functools.partial`` objects,
  bound methods;
* a function defined outside the allowed prefixes, even when an allowed module
  imported it (``from os import system`` in ``myflows`` does not make
  ``myflows:system`` callable). Both the function's ``__module__`` and the
  module its code was compiled in (``__globals__['__name__']``, which
  ``functools.wraps`` cannot disguise) must be allowed. A function imported
  from another *allowed* module is fine; a factory wrapped by a decorator from
  a module outside the prefixes is refused (allow the decorator's module, or
  do not decorate factories);
* a function that is not a module-level ``def``: lambdas (``f = lambda: ...``)
  and nested functions or closures (``f = make_runner(...)``) are refused;
  write a ``def`` at the top of the module.

The attribute is looked up in the module's ``__dict__``, never with
``getattr``, so a module-level ``__getattr__`` (PEP 562) is not run either.

Fails with :class:`~jobboard.errors.FactoryNotAllowed` for a reference outside
the allowed prefixes or naming something that is not an allowed factory
function, :class:`~jobboard.errors.FactoryNotFound` for a malformed reference
or one that cannot be imported or found, and
:class:`~jobboard.errors.FlowInvalid` when the factory raises anything at all
(``SystemExit``, ``KeyboardInterrupt`` and ``GeneratorExit`` included: a job
must not stop the conductor) or returns something that is not a flow or task.
"""

from __future__ import annotations

import importlib
import re
import types
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from jobboard.engine.flows import Flow
from jobboard.engine.tasks import Task
from jobboard.errors import FactoryNotAllowed, FactoryNotFound, FlowInvalid
from jobboard.threads import ThreadCache

_FACTORY_THREADS = ThreadCache("jobboard-factory")

__all__ = ["resolve_factory", "build_flow", "is_allowed", "MAX_REF_LENGTH"]

#: Longest factory reference accepted, in characters.
MAX_REF_LENGTH = 512

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_REF = re.compile(rf"(?P<module>{_IDENT}(?:\.{_IDENT})*):(?P<function>{_IDENT})", re.ASCII)
_MISSING = object()
_SHAPE = "expected 'package.module:function' (one function name after the colon)"


def _prefixes(allowed: Iterable[str] | str) -> tuple[str, ...]:
    # A lone string is one prefix, not a sequence of one-letter prefixes.
    if isinstance(allowed, str):
        return (allowed,)
    return tuple(p for p in allowed if isinstance(p, str))


def is_allowed(module: str, allowed: Iterable[str] | str) -> bool:
    """Whether ``module`` is one of the ``allowed`` prefixes or under one.

    Prefixes match whole dotted components: ``"myapp"`` and ``"myapp."`` both
    allow ``myapp`` and ``myapp.flows``, never ``myappx``. Empty prefixes allow
    nothing.
    """
    if not isinstance(module, str):
        return False
    for prefix in _prefixes(allowed):
        prefix = prefix.rstrip(".")
        if prefix and (module == prefix or module.startswith(prefix + ".")):
            return True
    return False


def _refused(ref: str, allowed: tuple[str, ...], reason: str) -> FactoryNotAllowed:
    """A FactoryNotAllowed whose message says why (not only "outside the
    prefixes"); the reason also rides on ``.reason``."""
    exc = FactoryNotAllowed(ref, allowed)
    exc.args = (f"flow factory {ref!r} is not allowed: {reason}",)
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"a class ({obj.__module__}.{obj.__qualname__})"
    if isinstance(obj, types.BuiltinFunctionType):
        return f"a builtin ({getattr(obj, '__module__', None) or 'builtins'}.{obj.__name__})"
    if isinstance(obj, types.MethodType):
        return "a bound method"
    if isinstance(obj, types.ModuleType):
        return f"a module ({obj.__name__})"
    return f"a {type(obj).__module__}.{type(obj).__qualname__} object"


def resolve_factory(ref: str, allowed: Iterable[str] | str) -> types.FunctionType:
    """Find the factory function named by ``ref`` (``"package.module:function"``).

    Only the module is imported (and only when it is inside ``allowed``);
    nothing found in it is called. See the module docstring for what is
    refused and why.

    Args:
        ref: A dotted module name, a colon, and one public function name.
        allowed: Module prefixes factories may come from.

    Returns:
        The factory: a public module-level function defined in an allowed
        module.

    Raises:
        FactoryNotFound: Malformed or over-long reference, module not
            importable, or no such name in the module.
        FactoryNotAllowed: The module, or the module the function is defined
            in, is outside ``allowed``; the name is private; or the object is
            not a module-level function (builtin, class, instance, partial,
            bound method, lambda, closure).
    """
    prefixes = _prefixes(allowed)
    if not isinstance(ref, str):
        raise FactoryNotFound(repr(ref)[:80],
                              f"a reference is a string, not a {type(ref).__name__}")
    if len(ref) > MAX_REF_LENGTH:
        raise FactoryNotFound(ref[:80] + "...",
                              f"reference longer than {MAX_REF_LENGTH} characters")
    match = _REF.fullmatch(ref)
    if match is None:
        raise FactoryNotFound(ref, _SHAPE)
    module_name, name = match["module"], match["function"]
    if not is_allowed(module_name, prefixes):
        raise FactoryNotAllowed(ref, prefixes)
    if any(part.startswith("__") for part in module_name.split(".")):
        # myapp.__init__ / __main__ would re-run a module's code under a new name.
        raise _refused(ref, prefixes, f"module name {module_name!r} has a dunder component")
    if name.startswith("_"):
        raise _refused(ref, prefixes, f"{name!r} is private (starts with '_'); "
                                      "factories are public module-level functions")

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise FactoryNotFound(ref, f"no module {exc.name!r}") from exc
    except BaseException as exc:  # noqa: BLE001 - a module's sys.exit() must not stop us
        raise FactoryNotFound(ref, f"importing {module_name} failed: "
                                   f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(module, types.ModuleType):
        raise FactoryNotFound(ref, f"{module_name} is not a module")

    # The module's own namespace: no getattr, so no PEP 562 __getattr__ runs.
    obj = vars(module).get(name, _MISSING)
    if obj is _MISSING:
        raise FactoryNotFound(ref, f"{module_name} has no attribute {name!r}")
    # type() and not isinstance(): an object can lie about its __class__.
    if type(obj) is not types.FunctionType:
        raise _refused(ref, prefixes, f"{module_name}.{name} is {_describe(obj)}, not a "
                                      "function; a factory is a 'def' in an allowed module")
    defined_in = obj.__module__
    compiled_in = obj.__globals__.get("__name__")
    for where in (defined_in, compiled_in):
        if not is_allowed(where, prefixes):
            raise _refused(ref, prefixes, f"{module_name}.{name} is defined in {where!r}, "
                                          f"outside the allowed module prefixes "
                                          f"{list(prefixes)}")
    qualname = obj.__qualname__
    if not (isinstance(qualname, str) and re.fullmatch(_IDENT, qualname, re.ASCII)):
        kind = "a lambda" if obj.__name__ == "<lambda>" else "not a module-level function"
        raise _refused(ref, prefixes, f"{module_name}.{name} is {kind} ({qualname}); "
                                      "write a module-level 'def'")
    return obj


def build_flow(ref: str, args: Mapping[str, Any] | None,
               allowed: Iterable[str] | str, *, timeout: float | None = None) -> Flow | Task:
    """Resolve ``ref`` and call it with ``args`` as keyword arguments.

    Whatever the factory raises, even ``SystemExit`` or ``KeyboardInterrupt``,
    becomes :class:`FlowInvalid`: a job cannot stop the conductor running it.
    With a ``timeout`` the factory runs on a thread of its own, and one that
    has not returned by then is abandoned there (a thread cannot be killed).

    Returns:
        The flow (or single task) the factory built.

    Raises:
        FactoryNotFound: See :func:`resolve_factory`.
        FactoryNotAllowed: See :func:`resolve_factory`.
        FlowInvalid: The factory raised, did not return within ``timeout``
            seconds, or returned neither a flow nor a task.
    """
    factory = resolve_factory(ref, allowed)
    if timeout is None:
        flow = _call_factory(ref, factory, args)
    else:
        # On a thread of its own (reused): one that never returns keeps it.
        try:
            flow = _FACTORY_THREADS.submit(_call_factory, ref, factory, args).result(timeout)
        except FutureTimeout:
            raise FlowInvalid(f"flow factory {ref} did not return within {timeout:g}s") from None
    if not isinstance(flow, (Flow, Task)):
        raise FlowInvalid(f"flow factory {ref} returned a {type(flow).__name__}, "
                          "not a flow or a task")
    return flow


def _call_factory(ref: str, factory: Callable[..., Any], args: Mapping[str, Any] | None) -> Any:
    try:
        return factory(**dict(args or {}))
    except FlowInvalid:
        raise
    except BaseException as exc:  # noqa: BLE001 - the conductor must stay up
        raise FlowInvalid(f"flow factory {ref} failed: {type(exc).__name__}: {exc}") from exc


