"""msgpack encoding for job payloads and logbook results.

Values must be msgpack-native (None, bool, int, float, str, bytes, lists,
dicts with str keys); tuples come back as lists. Anything else is refused at
encode time with :class:`~jobboard.errors.MalformedData`, so a bad payload
fails at post, not in a conductor an hour later.

Records that live across releases (job znodes) wrap their body in an envelope
``{"v": FORMAT_VERSION, ...}`` via :func:`pack_record` / :func:`unpack_record`.

How decoding fails: the bytes read back may have been written by anybody, so
:func:`loads` turns every way they can be wrong into
:class:`~jobboard.errors.MalformedData` (with the ``path`` it was given):
truncated or trailing bytes, invalid UTF-8, map keys other than str and
bytes, msgpack extension types (timestamps included: jobboard never writes
them), and nesting deeper than :data:`MAX_DEPTH` containers (which could not
be printed, compared or encoded again without a ``RecursionError``). What
:func:`loads` returns is therefore plain data of bounded depth. Checking the
*meaning* of a record's fields is the reader's job (see
:meth:`jobboard.board.job.Job.decode`).
"""

from __future__ import annotations

import reprlib
from typing import Any

import msgpack

from jobboard.errors import MalformedData

FORMAT_VERSION = 1
# Deepest nesting of lists and maps that loads accepts: well inside both
# Python's recursion limit (repr, ==, json) and msgpack's own limits.
MAX_DEPTH = 512

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlong = 40
_short.maxlevel = 3


class _ExtensionRefused(Exception):
    """Raised inside the unpacker for an extension type (never escapes)."""


def short_repr(value: Any) -> str:
    """A repr bounded in size and depth, safe for any decoded value (error messages)."""
    return _short.repr(value)


def dumps(value: Any) -> bytes:
    """Encode a msgpack-native value."""
    try:
        return msgpack.packb(value, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedData(f"value cannot be encoded with msgpack: {exc}") from exc


def _refuse_extension(code: int, data: bytes) -> Any:
    raise _ExtensionRefused(f"msgpack extension type {code} is not used by jobboard")


def loads(data: bytes, *, path: str | None = None) -> Any:
    """Decode bytes written by :func:`dumps`.

    Raises:
        MalformedData: ``data`` is not one complete msgpack value made of
            plain types (see the module docstring), whatever the bytes.
    """
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True,
                                ext_hook=_refuse_extension, max_ext_len=0)
    except msgpack.StackError as exc:
        raise MalformedData(f"not valid msgpack: nested deeper than {MAX_DEPTH} levels",
                            path=path) from exc
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError,
            RecursionError, _ExtensionRefused) as exc:
        # UnpackException covers OutOfData and ExtraData; ValueError covers bad
        # UTF-8 (UnicodeDecodeError), non-str map keys and refused extensions.
        reason = str(exc) or type(exc).__name__
        if "max_ext_len" in reason:   # max_ext_len=0 is how timestamps are refused
            reason = "msgpack extension types (timestamps included) are not used by jobboard"
        raise MalformedData(f"not valid msgpack: {reason}", path=path) from exc
    if len(data) > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise MalformedData(f"not valid msgpack: nested deeper than {MAX_DEPTH} levels",
                            path=path)
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` lists/maps (level by level,
    without recursion). Each container takes at least one byte, so data no
    longer than ``limit`` bytes never needs this walk."""
    level = [value] if type(value) in (list, dict) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            items = container.values() if type(container) is dict else container
            below.extend(item for item in items if type(item) in (list, dict))
        level = below
    return False


def pack_record(body: dict[str, Any]) -> bytes:
    """Encode a versioned record."""
    return dumps({"v": FORMAT_VERSION, **body})


def unpack_record(data: bytes, required: tuple[str, ...] = (), *,
                  path: str | None = None) -> dict[str, Any]:
    """Decode a versioned record, checking its version and required fields.

    Returns:
        The record's body (without ``"v"``): a dict of plain values, whose
        keys may still include bytes (ignored by readers as unknown fields).

    Raises:
        MalformedData: not msgpack, not a map, another format version (the
            version must be the int :data:`FORMAT_VERSION`, not ``True`` or
            ``1.0``), or a required field missing.
    """
    if not data:
        raise MalformedData("empty record", path=path)
    body = loads(data, path=path)
    if not isinstance(body, dict):
        raise MalformedData(f"record is a {type(body).__name__}, not a map", path=path)
    version = body.pop("v", None)
    if type(version) is not int or version != FORMAT_VERSION:
        raise MalformedData(f"record format version {short_repr(version)}, "
                            f"expected {FORMAT_VERSION}", path=path)
    missing = [name for name in required if name not in body]
    if missing:
        raise MalformedData(f"record lacks fields {missing}", path=path)
    return body
