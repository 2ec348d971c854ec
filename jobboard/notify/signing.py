"""Signed webhooks: how a receiver tells a real notification from a forged one.

With a shared secret, :class:`~jobboard.notify.WebhookPublisher` sends two
more headers with every POST::

    X-Jobboard-Timestamp: 1767225600
    X-Jobboard-Signature: v1=<hex HMAC-SHA256 of b"1767225600." + raw body>

The timestamp (Unix seconds) is inside the signed text, so a receiver that
also checks it is recent refuses a replayed request; a retry of the same
document is signed again with a fresh timestamp (its ``X-Jobboard-Delivery``
stays the same, to drop duplicates). :func:`verify_signature` is the check a
Python receiver runs on the raw body, before parsing it.

How it fails: :func:`verify_signature` never raises for what a sender put in
the headers: a missing, malformed, old or wrong signature is ``False``. The
secret is never logged or put in a message, an event or a ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["DEFAULT_TOLERANCE", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign",
           "signature_headers", "verify_signature"]

TIMESTAMP_HEADER = "X-Jobboard-Timestamp"
SIGNATURE_HEADER = "X-Jobboard-Signature"
#: Seconds a signature stays acceptable either side of the receiver's clock.
DEFAULT_TOLERANCE = 300.0
_SCHEME = "v1"


def _key(secret: bytes | str) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def sign(secret: bytes | str, body: bytes, timestamp: str) -> str:
    """The signature header's value, ``v1=<hex HMAC-SHA256>`` of
    ``"<timestamp>.<body>"`` (a ``str`` secret counts as its UTF-8 bytes)."""
    mac = hmac.new(_key(secret), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"{_SCHEME}={mac.hexdigest()}"


def signature_headers(secret: bytes | str, body: bytes, *,
                      now: float | None = None) -> dict[str, str]:
    """The two headers of a signed request whose body is ``body``, timestamped
    ``now`` (default: the current time)."""
    timestamp = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret, body, timestamp)}


def verify_signature(secret: bytes | str, body: bytes, timestamp: str, signature: str, *,
                     tolerance: float = DEFAULT_TOLERANCE, now: float | None = None) -> bool:
    """Whether a webhook request is genuine and recent.

    Args:
        secret: the shared secret (the content of ``--notify-secret-file``,
            without its trailing newline, or ``JOBBOARD_NOTIFY_SECRET``).
        body: the request's raw body, as received (not re-encoded JSON).
        timestamp: the ``X-Jobboard-Timestamp`` header.
        signature: the ``X-Jobboard-Signature`` header; several
            comma-separated ``v1=`` values are accepted (one must match).
        tolerance: seconds the timestamp may be away from ``now``, either
            way (a replay of an old request is refused).
        now: the receiver's time in Unix seconds (default: the clock).

    Returns:
        True when a ``v1`` signature matches (compared in constant time) and
        the timestamp is within ``tolerance``; False otherwise, including a
        missing or malformed header. Never raises for header content.
    """
    if not isinstance(timestamp, str) or not isinstance(signature, str):
        return False
    timestamp = timestamp.strip()
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, body, timestamp)
    matched = False
    for candidate in signature.split(","):
        # every candidate compared: no early exit to time
        matched |= hmac.compare_digest(candidate.strip().encode("utf-8", "replace"),
                                       expected.encode("ascii"))
    return matched
