"""Connecting to ZooKeeper and translating kazoo's errors at the boundary.

kazoo's own ``KazooRetry`` retries connection loss for idempotent calls
(``client.retry``); writes that are not idempotent (claims) check what
happened themselves instead of being blindly retried. Anything kazoo raises
that escapes is turned into a :mod:`jobboard.errors` exception here.
"""

from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.exceptions import (KazooException, NodeExistsError, NoNodeError, NotEmptyError,
                              RolledBackError, RuntimeInconsistency)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import make_digest_acl

from jobboard.errors import BoardUnavailable
from jobboard.zkerrors import translated  # noqa: F401  (re-exported for the board)

COMMAND_RETRY = dict(max_tries=8, delay=0.05, backoff=2, max_delay=2.0, ignore_expire=False)
CONNECTION_RETRY = dict(max_tries=-1, delay=0.1, backoff=2, max_delay=2.0)


def make_client(hosts: str, *, auth: tuple[str, str] | None = None,
                session_timeout: float = 10.0) -> KazooClient:
    """A KazooClient (not started); with ``auth`` every znode it creates is
    readable and writable only with the same digest credentials."""
    options: dict = dict(hosts=hosts, timeout=session_timeout,
                         command_retry=COMMAND_RETRY, connection_retry=CONNECTION_RETRY)
    if auth:
        user, password = auth
        options["auth_data"] = [("digest", f"{user}:{password}")]
        options["default_acl"] = [make_digest_acl(user, password, all=True)]
    return KazooClient(**options)


def start(client: KazooClient, hosts: str, timeout: float) -> None:
    try:
        client.start(timeout=timeout)
    except (KazooTimeoutError, KazooException) as exc:
        client.close()
        raise BoardUnavailable(
            f"cannot reach ZooKeeper at {hosts} within {timeout:g}s: check --zk / JOBBOARD_ZK and that the servers are up"
        ) from exc


def first_error(results: list) -> Exception | None:
    """The error that failed a multi-op transaction (not the rolled-back ones)."""
    for result in results:
        if isinstance(result, Exception) and not isinstance(
                result, (RolledBackError, RuntimeInconsistency)):
            return result
    return None


def ensure(client: KazooClient, path: str) -> None:
    """Create ``path`` (and its parents) unless it exists."""
    try:
        client.create(path, makepath=True)
    except NodeExistsError:
        pass


def delete_quietly(client: KazooClient, path: str) -> bool:
    """Delete ``path``; False when it is gone already or has children."""
    try:
        client.delete(path)
        return True
    except (NoNodeError, NotEmptyError):
        return False
