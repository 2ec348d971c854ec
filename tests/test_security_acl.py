"""ACLs of boards opened with credentials: a root others can use is refused
(jobboard.board.security), and a board set up with credentials shuts every
other identity out of everything under its root. Real ZooKeeper; the
attackers are plain KazooClients."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NotEmptyError
from kazoo.security import (ACL, OPEN_ACL_UNSAFE, Id, Permissions, make_acl,
                            make_digest_acl, make_digest_acl_credential)

from jobboard.board import Board
from jobboard.board import _zk
from jobboard.board.layout import Paths
from jobboard.board.security import verify_board_acl
from jobboard.errors import BoardInsecure, BoardUnavailable
from jobboard.locks import Locks
from jobboard.testing.zookeeper import connected_client

FACTORY = "jobboard.testing.flows:noop"
AUTH = ("u", "p")
ROOT = "/jobboard"
TIMEOUT = 15


@contextlib.contextmanager
def zk(hosts: str, auth: tuple[str, str] | None = None) -> Iterator[KazooClient]:
    """A started client: anonymous, or authenticated (digest) without a
    default ACL, like an attacker holding some other credentials."""
    with connected_client(hosts, start_timeout=TIMEOUT, timeout=10,
                          auth_data=[("digest", f"{auth[0]}:{auth[1]}")] if auth else None) \
            as client:
        yield client


@contextlib.contextmanager
def ours(hosts: str) -> Iterator[KazooClient]:
    """A client made the way the board makes it, with our credentials."""
    client = _zk.make_client(hosts, auth=AUTH)
    client.start(timeout=TIMEOUT)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def our_acl() -> ACL:
    return make_digest_acl(*AUTH, all=True)


def connect(hosts: str, **options) -> Board:
    return Board.connect(hosts, root=ROOT, auth=AUTH, session_timeout=4.0, **options)


def walk(client: KazooClient, top: str) -> list[str]:
    """Every znode at and under ``top`` (children listed level by level, pipelined)."""
    found, level = [top], [top]
    while level:
        pending = [(path, client.get_children_async(path)) for path in level]
        level = [f"{path.rstrip('/')}/{child}"
                 for path, result in pending for child in result.get(timeout=TIMEOUT)]
        found += level
    return found


# -- a root or container others can use is refused -------------------------------------


def test_connect_refuses_a_root_squatted_by_an_anonymous_client(zk_hosts):
    with zk(zk_hosts) as squatter:
        squatter.create(ROOT, acl=OPEN_ACL_UNSAFE)
        with pytest.raises(BoardInsecure) as caught:
            connect(zk_hosts)
        message = str(caught.value)
        assert caught.value.path == ROOT
        assert caught.value.grants == {ROOT: ("world:anyone:cdrwa",)}
        assert f"board root {ROOT} is open to world:anyone:cdrwa" in message
        for fix in ("deleteall ", "addauth digest u:<password>", "auth::cdrwa",
                    "setAcl -R ", "another --root"):
            assert fix in message
        assert ":p" not in message  # never the password
        # refused before the layout was written into somebody else's znode
        assert squatter.get_children(ROOT) == []


def test_verify_refuses_a_squatted_root(zk_hosts):
    with zk(zk_hosts) as squatter, ours(zk_hosts) as client:
        squatter.create(ROOT)
        with pytest.raises(BoardInsecure, match=r"board root /jobboard .*world:anyone"):
            verify_board_acl(client, Paths(ROOT), AUTH)


def test_message_names_the_znode_as_zkcli_sees_it_under_a_chroot(zk_hosts):
    chroot = zk_hosts[zk_hosts.index("/"):]
    with zk(zk_hosts) as squatter, ours(zk_hosts) as client:
        squatter.create(ROOT)
        with pytest.raises(BoardInsecure) as caught:
            verify_board_acl(client, Paths(ROOT), AUTH)
        assert f"deleteall {chroot}{ROOT})" in str(caught.value)


def test_connect_refuses_a_root_owned_by_other_credentials(zk_hosts):
    with zk(zk_hosts, auth=("other", "pw")) as owner:
        owner.create(ROOT, acl=[make_digest_acl("other", "pw", all=True)])
        with pytest.raises(BoardInsecure, match="belongs to other credentials") as caught:
            connect(zk_hosts)
        assert caught.value.path == ROOT
        assert caught.value.grants == {}
        assert "another --root" in str(caught.value)
        assert owner.get_children(ROOT) == []


def test_verify_refuses_a_root_owned_by_other_credentials(zk_hosts):
    with zk(zk_hosts, auth=("other", "pw")) as owner, ours(zk_hosts) as client:
        owner.create(ROOT, acl=[make_digest_acl("other", "pw", all=True)])
        with pytest.raises(BoardInsecure,
                           match=r"board root /jobboard .*belongs to other credentials"):
            verify_board_acl(client, Paths(ROOT), AUTH)


@pytest.mark.parametrize("extra, shown", [
    (make_digest_acl("other", "pw", read=True), "digest:other:r"),
    (make_digest_acl("other", "pw", admin=True), "digest:other:a"),
    (make_digest_acl("u", "old-password", all=True), "digest:u (another password):cdrwa"),
    (make_acl("ip", "127.0.0.1", read=True, write=True), "ip:127.0.0.1:rw"),
    (make_acl("world", "anyone", create=True), "world:anyone:c"),
])
def test_any_grant_to_another_identity_is_refused(zk_hosts, extra, shown):
    with ours(zk_hosts) as client:
        client.create(ROOT, acl=[our_acl(), extra])
        with pytest.raises(BoardInsecure) as caught:
            verify_board_acl(client, Paths(ROOT), AUTH)
        assert caught.value.grants == {ROOT: (shown,)}
        assert shown in str(caught.value)
        # another user's password hash stays out of the message
        other_hash = make_digest_acl_credential("other", "pw").split(":", 1)[1]
        assert other_hash not in str(caught.value)


def test_a_grant_without_permissions_is_harmless(zk_hosts):
    with ours(zk_hosts) as client:
        client.create(ROOT, acl=[our_acl(), ACL(0, Id("world", "anyone"))])
        verify_board_acl(client, Paths(ROOT), AUTH)


def test_a_squatted_container_is_refused_until_the_whole_tree_is_ours(zk_hosts):
    """Root and queue created while the root was open; then the root alone is
    made ours: the open queue is still reported, and the advised fix
    (``setAcl -R root auth::cdrwa`` as our user) makes the board usable."""
    with zk(zk_hosts) as squatter:
        squatter.create(f"{ROOT}/queue", makepath=True)
        squatter.create(f"{ROOT}/queue/planted")
        with ours(zk_hosts) as client:
            client.set_acls(ROOT, [our_acl()])
            with pytest.raises(BoardInsecure) as caught:
                connect(zk_hosts)
            assert caught.value.path == f"{ROOT}/queue"
            assert caught.value.grants == {f"{ROOT}/queue": ("world:anyone:cdrwa",)}
            message = str(caught.value)
            assert "board container /jobboard/queue is open to world:anyone" in message
            assert "created while the root was open" in message
            assert "setAcl -R" in message
            # the advised fix, as zkCli's `setAcl -R /jobboard auth::cdrwa` does it
            for path in walk(client, ROOT):
                client.set_acls(path, [ACL(Permissions.ALL, Id("auth", ""))])
        with pytest.raises(NoAuthError):
            squatter.create(f"{ROOT}/queue/more")
        with connect(zk_hosts) as board:
            job = board.post(FACTORY)
            assert board.claim(job, "alice").uuid == job.uuid


def test_a_container_owned_by_other_credentials_is_refused(zk_hosts):
    with ours(zk_hosts) as client, zk(zk_hosts, auth=("other", "pw")) as other:
        client.create(ROOT, acl=[our_acl(), make_digest_acl("other", "pw", create=True)])
        other.create(f"{ROOT}/claims", acl=[make_digest_acl("other", "pw", all=True)])
        client.set_acls(ROOT, [our_acl()])
        with pytest.raises(BoardInsecure) as caught:
            verify_board_acl(client, Paths(ROOT), AUTH)
        assert caught.value.grants == {f"{ROOT}/claims": ()}
        assert "/jobboard/claims is open to other credentials" in str(caught.value)


def test_a_missing_root_passes(zk_hosts):
    with ours(zk_hosts) as client:
        verify_board_acl(client, Paths(ROOT), AUTH)
        assert client.exists(ROOT) is None


def test_a_stopped_client_is_unavailable_not_insecure(zk_hosts):
    client = _zk.make_client(zk_hosts, auth=AUTH)
    client.start(timeout=TIMEOUT)
    client.stop()
    try:
        with pytest.raises(BoardUnavailable):
            verify_board_acl(client, Paths(ROOT), AUTH, timeout=2)
    finally:
        client.close()


def test_an_open_parent_cannot_remove_a_board_once_set_up(zk_hosts):
    """The path above the root is not checked: its other users cannot delete
    a root that has children, nor touch anything under it."""
    with zk(zk_hosts) as neighbour:
        neighbour.create("/apps", acl=OPEN_ACL_UNSAFE)
        with Board.connect(zk_hosts, root="/apps/jobboard", auth=AUTH) as board:
            with pytest.raises(NotEmptyError):
                neighbour.delete("/apps/jobboard")
            with pytest.raises(NoAuthError):
                neighbour.delete("/apps/jobboard", recursive=True)
            with pytest.raises(NoAuthError):
                neighbour.delete(board.paths.layout)
            verify_board_acl(board.client, board.paths, AUTH)
            assert board.post(FACTORY).uuid


# -- a board set up with credentials keeps everybody else out --------------------------


def test_second_connect_passes_the_check_and_the_board_works(zk_hosts):
    with connect(zk_hosts) as first:
        job = first.post(FACTORY, store={"secret": "payload"})
        verify_board_acl(first.client, first.paths, AUTH)
        with connect(zk_hosts) as second:
            assert second.get(job.uuid).store == {"secret": "payload"}
            assert second.claim(job.uuid, "bob").uuid == job.uuid


@contextlib.contextmanager
def busy_board(hosts: str) -> Iterator[tuple[Board, dict[str, str]]]:
    """A board with every kind of znode in use: jobs (plain, delayed, keyed),
    a claim and its running marker, a cancel request, a live conductor, and
    held locks of each kind. Yields the board and named paths to attack."""
    with connect(hosts) as board:
        job = board.post(FACTORY, store={"secret": "payload"})
        board.post(FACTORY, delay=3600)
        board.post(FACTORY, key="once")
        waiting = board.post(FACTORY)
        board.claim(job, "alice")
        board.cancel(job.uuid)
        board.register_conductor("alice", {"pid": 1})
        locks = Locks(board.client, root=board.paths.locks, identifier="alice")
        with locks.mutex("m", timeout=5), locks.read("rw", timeout=5), \
                locks.semaphore("s", max_leases=2, timeout=5):
            yield board, {
                "job": board.paths.job(job.uuid),
                "waiting job": board.paths.job(waiting.uuid),
                "claim": board.paths.claim(job.uuid),
                "running": board.paths.running_marker(job.uuid),
                "cancel": board.paths.cancel_request(job.uuid),
                "conductor": board.paths.conductor("alice"),
                "shard": board.paths.shards()[0],
            }


def test_every_znode_of_a_busy_board_carries_only_our_acl(zk_hosts):
    """No znode anywhere under the root (claims, ephemerals, queue entries,
    lock contenders, semaphore leases) is created with another ACL."""
    with busy_board(zk_hosts) as (board, _):
        paths = walk(board.client, ROOT)
        assert len(paths) > 1 + 11 + 256 + 10
        pending = [(path, board.client.get_acls_async(path)) for path in paths]
        wrong = {path: acls for path, result in pending
                 if (acls := result.get(timeout=TIMEOUT)[0]) != [our_acl()]}
        assert wrong == {}
        assert any("/locks/" in path for path in paths)


@pytest.mark.parametrize("attacker", [None, ("other", "pw"), ("u", "wrong")],
                         ids=["anonymous", "another-user", "wrong-password"])
def test_other_identities_can_neither_read_nor_write_a_board(zk_hosts, attacker):
    with busy_board(zk_hosts) as (board, named), zk(zk_hosts, auth=attacker) as stranger:
        paths = board.paths
        everything = [paths.root, paths.layout, *paths.containers(), *named.values()]

        def denied(call, *args, **kwargs) -> None:
            with pytest.raises(NoAuthError):
                call(*args, **kwargs)

        for path in everything:
            denied(stranger.get, path)
            denied(stranger.get_children, path)
            denied(stranger.get_acls, path)
            denied(stranger.set, path, b"mine")
            denied(stranger.set_acls, path, OPEN_ACL_UNSAFE)
            denied(stranger.create, f"{path}/planted")
        for path in [paths.layout, *paths.containers(), *named.values()]:
            denied(stranger.delete, path)
        denied(stranger.delete, paths.root, recursive=True)
        # what ZooKeeper does show anyone: that a znode exists, and its Stat
        assert stranger.exists(named["job"]) is not None
        # and the owner still sees everything intact
        assert board.get(named["job"].rsplit("/", 1)[1]).store == {"secret": "payload"}
        verify_board_acl(board.client, paths, AUTH)
