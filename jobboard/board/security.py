"""Refusing a board whose znodes other identities can use.

A board opened with credentials (``Board.connect(..., auth=(user, password))``)
creates every znode with one ACL entry, ``digest:user:<base64 sha1>:cdrwa``
(the client's ``default_acl``; kazoo applies it to plain creates, to
``ensure_path`` and ``makepath`` parents, to the creates of a transaction and to
the nodes of its lock recipes). What protects the board is a chain of trust:
ZooKeeper checks CREATE and DELETE on the *parent*, so when the root's ACL
names only our identity, nobody else can create or delete its children; when
each container's ACL names only us, nobody else can create or delete under
it, and so on down to every job record. Nobody else can read (``get``,
``get_children``, ``get_acls``) or write (``set``, ``set_acls``) any of them.

The chain breaks only at its top: ``ensure_path`` does nothing when the root
already exists, so a root created beforehand by someone else (squatting: an
anonymous client creating ``/jobboard`` with ``world:anyone:cdrwa``) would be
used as it is, and its creator could read every job, delete the layout
marker, post or claim jobs, and set the root's ACL to shut us out.

:func:`verify_board_acl` checks the root, the ``layout`` marker and the
containers (``jobs``, ``queue``, ...) that exist, pipelining one
``get_acls`` per znode, and refuses any ACL entry that grants any permission
(even ADMIN alone, which allows setting a new ACL) to an identity other than
ours: ``world:anyone``, ``ip:...``, another digest user, our user name with
another password, ``sasl:``/``x509:`` principals. It is cheap (a dozen reads,
one round trip), so it runs before the board creates its layout and again
after (see the race below). The 256 job shards and deeper znodes are not
checked: they can only have been created by someone else while their parent
was open to them, which the check of that parent reports (as long as the
parent still is open: see the ``setAcl -R`` advice below).

How it fails:

* the root or a container grants a permission to another identity ->
  :class:`BoardInsecure` (``path``, ``grants``), whose message names the
  znodes and the identities and says how to fix it: delete the root when it
  holds nothing you need, or make the whole tree yours with zkCli
  (``addauth digest user:<password>`` then ``setAcl -R /root auth::cdrwa``;
  ``-R`` matters: znodes created under an open root may themselves be open),
  or choose another ``--root``.
* the root's ACL does not let our credentials read it (it belongs to other
  credentials: ZooKeeper refuses ``getACL`` without READ or ADMIN) ->
  :class:`BoardInsecure` saying so. A container we cannot read likewise.
* the root does not exist yet -> nothing to check (the board creates it with
  our ACL).
* ZooKeeper unreachable or slower than ``timeout`` -> :class:`BoardUnavailable`.

What is deliberately not checked, and why:

* The path *above* the root (``/a`` for a root ``/a/jobboard``, a chroot).
  ``ensure_path`` creates missing parents with our ACL; a parent created by
  someone else may stay open. Its other users can create siblings of our root
  and set the parent's data, which touches nothing of ours; they can delete
  our root only while it is empty (ZooKeeper refuses to delete a node with
  children), that is in the instant between ``ensure_path`` and the creation
  of the containers. Whoever does so and recreates the root open to
  themselves gets our containers created under their root: the check after
  the layout is created reports that root. Once set up, the root always has
  children (the containers are never deleted), so it cannot be removed.
* Metadata: ZooKeeper lets any client call ``exists`` on any path, so a
  client without credentials learns whether a znode exists and its ``Stat``
  (times, versions, data length, number of children) and can watch it for
  changes, but neither its data nor its children's names nor its ACL.
* A server running with ``skipACL=yes``, or clients holding the super
  user's digest, bypass ACLs altogether; nothing on the client side can
  detect or prevent that.
* ZooKeeper's own ``/zookeeper/quota`` is open to anyone, so anyone can set a
  quota on the root's path; that only logs warnings unless the server runs
  with ``zookeeper.enforceQuota=true`` (off by default), where it would
  refuse our creates.
"""

from __future__ import annotations

import time

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.security import ACL, Permissions, make_digest_acl_credential

from jobboard.board.layout import Paths
from jobboard.errors import BoardInsecure
from jobboard.zkerrors import translated

ACL_TIMEOUT = 10.0
"""Seconds to wait for the answers to the pipelined ``get_acls`` calls."""

_LETTERS = (("c", Permissions.CREATE), ("d", Permissions.DELETE), ("r", Permissions.READ),
            ("w", Permissions.WRITE), ("a", Permissions.ADMIN))
_SHOWN = 4  # znodes named in a message; the rest are counted


def verify_board_acl(client: KazooClient, paths: Paths, auth: tuple[str, str], *,
                     timeout: float = ACL_TIMEOUT) -> None:
    """Refuse a board root (or layout container) that others can read or write.

    Args:
        client: a started KazooClient authenticated with ``auth``.
        paths: the board's layout.
        auth: ``(user, password)``, the board's digest credentials.
        timeout: seconds to wait for all the ACLs together.

    Raises:
        BoardInsecure: an ACL entry of the root, the layout marker or a
            container grants a permission to another identity, or the root
            (or a container) belongs to other credentials.
        BoardUnavailable: ZooKeeper did not answer within ``timeout``.
    """
    user, password = auth
    ours = make_digest_acl_credential(user, password)
    checked = [paths.root, paths.layout, *paths.containers()]
    grants: dict[str, tuple[str, ...]] = {}
    deadline = time.monotonic() + timeout
    with translated("checking the board's ACLs"):
        pending = [(path, client.get_acls_async(path)) for path in checked]
        for path, result in pending:
            try:
                acls, _stat = result.get(timeout=max(0.0, deadline - time.monotonic()))
            except NoNodeError:
                continue
            except NoAuthError as exc:
                if path == paths.root:
                    raise BoardInsecure(_owned_message(client, paths, user),
                                        path=paths.root) from exc
                grants[path] = ()  # a container some other credentials own
                continue
            foreign = tuple(_describe(acl, user) for acl in acls
                            if acl.perms and not _is_ours(acl, ours))
            if foreign:
                grants[path] = foreign
    if grants:
        raise BoardInsecure(_open_message(client, paths, user, grants),
                            path=next(iter(grants)), grants=grants)


def _is_ours(acl: ACL, ours: str) -> bool:
    return acl.id.scheme == "digest" and acl.id.id == ours


def _describe(acl: ACL, user: str) -> str:
    """``scheme:id:perms``; a digest id without its password hash (a hash in a
    log could be attacked offline)."""
    scheme, ident = acl.id.scheme, acl.id.id
    if scheme == "digest":
        name = ident.split(":", 1)[0]
        ident = f"{name} (another password)" if name == user else name
    letters = "".join(letter for letter, bit in _LETTERS if acl.perms & bit)
    return f"{scheme}:{ident}:{letters}"


def _znode(client: KazooClient, path: str) -> str:
    """The path as zkCli sees it (with the connection's chroot)."""
    return f"{client.chroot or ''}{path}"


def _owned_message(client: KazooClient, paths: Paths, user: str) -> str:
    root = paths.root
    where = "" if not client.chroot else f" (znode {_znode(client, root)})"
    return (f"board root {root}{where} belongs to other credentials: its ACL does not let "
            f"digest user {user!r} read it. Connect with the credentials that created it "
            f"(--auth), ask its owner to delete it, or choose another --root.")


def _open_message(client: KazooClient, paths: Paths, user: str,
                  grants: dict[str, tuple[str, ...]]) -> str:
    parts = []
    for path in list(grants)[:_SHOWN]:
        what = "board root" if path == paths.root else "board container"
        who = ", ".join(grants[path]) or "other credentials (we cannot read its ACL)"
        parts.append(f"{what} {path} is open to {who}")
    if len(grants) > _SHOWN:
        parts.append(f"{len(grants) - _SHOWN} more containers are open too")
    root = _znode(client, paths.root)
    how = ("anyone" if any(g.startswith("world:anyone:") for gs in grants.values() for g in gs)
           else "those identities")
    cause = ("" if paths.root in grants
             else "; they were created while the root was open to others")
    return (
        "; ".join(parts) + cause + f". Without your credentials, {how} can read the board's "
        "jobs, add or remove its znodes, or take it over. Fix it with ZooKeeper's zkCli: "
        f"if the board holds nothing you need, delete it (deleteall {root}) and connect again "
        f"to recreate it with your ACL; to keep it, make its whole tree yours "
        f"(addauth digest {user}:<password>, then setAcl -R {root} auth::cdrwa); "
        "or choose another --root."
    )
