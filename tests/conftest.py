"""Shared fixtures: a real ZooKeeper per test session, a fresh chroot per test,
a 3-node ensemble for failover tests, the CLI in-process, and the logbook
databases."""

from __future__ import annotations

import os
import uuid

import pytest
from jobboard.testing.zookeeper import ZooKeeperEnsemble, ZooKeeperServer, connected_client


@pytest.fixture(scope="session")
def zk_server():
    with ZooKeeperServer() as server:
        yield server


@pytest.fixture
def zk_hosts(zk_server) -> str:
    """Connection string with a chroot of its own, so tests never collide."""
    chroot = f"/t-{uuid.uuid4().hex[:12]}"
    with connected_client(zk_server.address) as admin:
        admin.ensure_path(chroot)
    return zk_server.address + chroot


@pytest.fixture
def board(zk_hosts):
    """A board in the test's own chroot (test_conductor.py has its own, at /fleet)."""
    from jobboard.board import Board

    with Board.connect(zk_hosts, root="/jobboard", session_timeout=4.0) as board:
        yield board


@pytest.fixture
def zk_ensemble():
    with ZooKeeperEnsemble(3) as ensemble:
        yield ensemble


@pytest.fixture
def cli(zk_hosts, tmp_path, monkeypatch):
    """The ``jobboard`` command in-process: ``cli(*args, env_extra=None)``
    returns click's result. It runs in ``tmp_path`` with no JOBBOARD_*
    variables or jobboard.toml from the outside, against the test's
    ZooKeeper chroot with the board at /jobboard (where the ``board``
    fixture's is) and a SQLite logbook in ``tmp_path``."""
    from click.testing import CliRunner

    from jobboard.cli import main

    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("JOBBOARD_")]:
        monkeypatch.delenv(key)
    runner = CliRunner()
    env = {"JOBBOARD_ZK": zk_hosts, "JOBBOARD_ROOT": "/jobboard",
           "JOBBOARD_LOGBOOK": f"sqlite:///{tmp_path}/logbook.db"}

    def invoke(*args: str, env_extra: dict | None = None):
        return runner.invoke(main, list(args), env={**env, **(env_extra or {})},
                             catch_exceptions=False)

    return invoke


# ---- logbook databases -------------------------------------------------------

from jobboard.testing.databases import (DatabaseUnavailable, isolated_database,  # noqa: E402
                                        skip_or_fail)


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def logbook_url(request) -> str:
    """A fresh, empty database per test on each backend. A missing PostgreSQL
    skips locally and fails under CI=true; a missing MySQL always skips."""
    try:
        manager = isolated_database(request.param)
        url = manager.__enter__()
    except DatabaseUnavailable as exc:
        skip_or_fail(exc, request.param)
    request.addfinalizer(lambda: manager.__exit__(None, None, None))
    return url


@pytest.fixture
def logbook(logbook_url):
    from jobboard.logbook import Logbook

    with Logbook(logbook_url, auto_upgrade=True, retry_max_delay=5.0) as book:
        yield book


@pytest.fixture
def book(tmp_path):
    """A SQLite logbook in the test's directory, for the engine tests."""
    from jobboard.logbook import Logbook

    with Logbook(f"sqlite:///{tmp_path}/logbook.db") as lb:
        yield lb
