"""msgpack encoding for job payloads and logbook results.

Values must be msgpack-native (None, bool, int, float, str, bytes, lists,
dicts with str keys); tuples come back as lists. Anything else is refused at
encode time with :class:`~jobboard.errors.MalformedData`, so a bad payload
fails at post, not in a conductor an hour later.

Records that live across releases (job znodes) wrap their body in an envelope
``{"v": FORMAT_VERSION, ...}`` via :func:`pack_record` / :func:`unpack_record`.
"""

from __future__ import annotations

from typing import Any

import msgpack

from jobboard.errors import MalformedData

FORMAT_VERSION = 1


def dumps(value: Any) -> bytes:
    """Encode a msgpack-native value."""
    try:
        return msgpack.packb(value, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedData(f"value cannot be encoded with msgpack: {exc}") from exc


def loads(data: bytes, *, path: str | None = None) -> Any:
    """Decode bytes written by :func:`dumps`."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            ValueError, TypeError) as exc:
        raise MalformedData(f"not valid msgpack: {exc}", path=path) from exc


def pack_record(body: dict[str, Any]) -> bytes:
    """Encode a versioned record."""
    return dumps({"v": FORMAT_VERSION, **body})


def unpack_record(data: bytes, required: tuple[str, ...] = (), *,
                  path: str | None = None) -> dict[str, Any]:
    """Decode a versioned record, checking its version and required fields."""
    if not data:
        raise MalformedData("empty record", path=path)
    body = loads(data, path=path)
    if not isinstance(body, dict):
        raise MalformedData(f"record is a {type(body).__name__}, not a map", path=path)
    version = body.pop("v", None)
    if version != FORMAT_VERSION:
        raise MalformedData(
            f"record format version {version!r}, expected {FORMAT_VERSION}", path=path)
    missing = [name for name in required if name not in body]
    if missing:
        raise MalformedData(f"record lacks fields {missing}", path=path)
    return body
