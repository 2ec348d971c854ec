"""Shared fixtures: a real ZooKeeper per test session, a fresh chroot per test,
a 3-node ensemble for failover tests, and the logbook databases."""

from __future__ import annotations

import uuid

import pytest
from kazoo.client import KazooClient

from jobboard.testing.zookeeper import ZooKeeperEnsemble, ZooKeeperServer


@pytest.fixture(scope="session")
def zk_server():
    with ZooKeeperServer() as server:
        yield server


@pytest.fixture
def zk_hosts(zk_server) -> str:
    """Connection string with a chroot of its own, so tests never collide."""
    chroot = f"/t-{uuid.uuid4().hex[:12]}"
    admin = KazooClient(hosts=zk_server.address)
    admin.start(timeout=15)
    try:
        admin.ensure_path(chroot)
    finally:
        admin.stop()
        admin.close()
    return zk_server.address + chroot


@pytest.fixture
def zk_client(zk_hosts):
    client = KazooClient(hosts=zk_hosts)
    client.start(timeout=15)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def zk_ensemble():
    with ZooKeeperEnsemble(3) as ensemble:
        yield ensemble
