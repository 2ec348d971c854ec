"""Connecting to ZooKeeper and translating kazoo's errors at the boundary.

Every client is built with a bounded handler (:mod:`jobboard.zkhandler`):
a blocking call that gets no answer within ``call_timeout`` raises instead of
waiting forever, and that surfaces as :class:`BoardUnavailable`.

kazoo's own ``KazooRetry`` retries connection loss for idempotent calls
(``client.retry``); writes that are not idempotent (claims) check what
happened themselves instead of being blindly retried. Anything kazoo raises
that escapes is turned into a :mod:`jobboard.errors` exception here.
"""

from __future__ import annotations

import re

from kazoo.client import KazooClient
from kazoo.exceptions import (KazooException, NodeExistsError, NoNodeError, NotEmptyError,
                              RolledBackError, RuntimeInconsistency)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import make_digest_acl

from jobboard.errors import BoardUnavailable, ConfigError
from jobboard.zkhandler import bounded_client
from jobboard.zkerrors import translated  # noqa: F401  (re-exported for the board)

COMMAND_RETRY = dict(max_tries=8, delay=0.05, backoff=2, max_delay=2.0, ignore_expire=False)
CONNECTION_RETRY = dict(max_tries=-1, delay=0.1, backoff=2, max_delay=2.0)


_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]"   # [::1]
                   r"|(?P<name>[A-Za-z0-9_][A-Za-z0-9._-]*))"          # zk1.example, 10.0.0.1
                   r"(?::(?P<port>\d*))?")
_FORM = "host:port[,host:port...][/chroot]"


def _check_hosts(hosts: str) -> None:
    """Refuse a connection string kazoo would reject with a bare ValueError or,
    worse, silently reinterpret (kazoo reads port 0 as 2181). A host without a
    port means 2181, as in every ZooKeeper client."""
    if not isinstance(hosts, str) or not hosts.strip():
        raise ConfigError(f"no ZooKeeper address given: expected {_FORM} (--zk / JOBBOARD_ZK)")
    host_list, slash, chroot = hosts.strip().partition("/")

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"bad ZooKeeper address {hosts!r}: {reason}; expected {_FORM} "
                           "(--zk / JOBBOARD_ZK)")

    for item in host_list.split(","):
        item = item.strip()
        match = _HOST.fullmatch(item)
        if not item:
            raise bad("empty host")
        if match is None:
            raise bad(f"{item!r} is not host:port")
        port = match.group("port")
        if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise bad(f"port {port or '(empty)'!s} of {item!r} is not in 1..65535")
    if slash and chroot:
        segments = chroot.rstrip("/").split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            raise bad(f"chroot '/{chroot}' has an empty, '.' or '..' segment")


def make_client(hosts: str, *, auth: tuple[str, str] | None = None,
                session_timeout: float = 10.0, call_timeout: float | None = None) -> KazooClient:
    """A KazooClient (not started); with ``auth`` every znode it creates is
    readable and writable only with the same digest credentials. Each of its
    blocking calls waits at most ``call_timeout`` seconds (default
    ``max(30, 2 x session_timeout)``), then raises kazoo's timeout error,
    which :func:`translated` turns into :class:`BoardUnavailable`.

    Raises:
        ConfigError: ``hosts`` is not ``host:port[,host:port...][/chroot]``.
    """
    _check_hosts(hosts)
    options: dict = dict(timeout=session_timeout, call_timeout=call_timeout,
                         command_retry=COMMAND_RETRY, connection_retry=CONNECTION_RETRY)
    if auth:
        user, password = auth
        options["auth_data"] = [("digest", f"{user}:{password}")]
        options["default_acl"] = [make_digest_acl(user, password, all=True)]
    try:
        return bounded_client(hosts, **options)
    except ValueError as exc:   # kazoo's host parsing; never echo auth data
        raise ConfigError(f"bad ZooKeeper address {hosts!r}: {exc}; expected {_FORM} "
                          "(--zk / JOBBOARD_ZK)") from exc


def start(client: KazooClient, hosts: str, timeout: float) -> None:
    """Connect ``client`` within ``timeout`` seconds.

    Raises:
        BoardUnavailable: no server answered in time.
        ConfigError: the chroot named in ``hosts`` does not exist.
    """
    try:
        client.start(timeout=timeout)
    except (KazooTimeoutError, KazooException) as exc:
        client.close()
        raise BoardUnavailable(
            f"cannot reach ZooKeeper at {hosts} within {timeout:g}s: check --zk / JOBBOARD_ZK and that the servers are up"
        ) from exc
    if client.chroot:
        try:
            with translated("checking the chroot"):
                missing = client.exists("/") is None
        except BaseException:
            client.stop()
            client.close()
            raise
        if missing:
            client.stop()
            client.close()
            raise ConfigError(
                f"the chroot {client.chroot} of {hosts} does not exist on ZooKeeper: create it "
                f"(zkCli.sh create {client.chroot} '') or fix --zk / JOBBOARD_ZK")


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


def children(client: KazooClient, path: str, watch=None) -> list[str]:
    """The children of ``path`` (retried through connection losses); [] when
    it does not exist."""
    try:
        return client.retry(client.get_children, path, watch=watch)
    except NoNodeError:
        return []


def stats(client: KazooClient, paths: list[str], timeout: float = 30.0) -> list:
    """The stats of many znodes (None where absent), requests pipelined."""
    pending = [client.exists_async(path) for path in paths]
    return [result.get(timeout=timeout) for result in pending]
