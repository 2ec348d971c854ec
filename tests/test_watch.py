"""ChildWatch on a real ZooKeeper: changes, connection losses, expired
sessions, a frozen server, and never an exception in kazoo's threads."""

from __future__ import annotations

import logging
import queue
import threading
import time

import pytest
from kazoo.protocol.states import Callback
from kazoo.recipe.watchers import ChildrenWatch

from jobboard.board._watch import ChildWatch
from jobboard.testing.waiting import wait_until
from jobboard.testing.zookeeper import ZooKeeperServer, connected_client, zk_client

WAIT = 15.0


class Seen:
    """What a watch's func was called with, in order."""

    def __init__(self, result=None) -> None:
        self.calls: queue.Queue[list[str]] = queue.Queue()
        self.result = result

    def __call__(self, children: list[str]):
        self.calls.put(sorted(children))
        return self.result

    def until(self, expected: list[str], timeout: float = WAIT) -> list[str]:
        """The calls up to the first with ``expected`` (fails at the deadline)."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            try:
                children = self.calls.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"never called with {expected}; calls: {got}")
            got.append(children)
            if children == sorted(expected):
                return got


@pytest.fixture
def thread_errors(monkeypatch):
    """Exceptions that escaped any thread, and error records kazoo logged
    from its worker threads."""
    escaped: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    return escaped


def kazoo_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("kazoo")]


def expire(client, hosts: str) -> None:
    """Expire ``client``'s session: open it from another client, close that."""
    thief = zk_client(hosts, client_id=client.client_id)
    thief.start(timeout=10)
    thief.stop()
    thief.close()


def block_watch_thread(client) -> threading.Event:
    """Park kazoo's watch-callback thread until the returned event is set
    (bounded), so events queue up behind it."""
    release = threading.Event()
    client.handler.dispatch_callback(Callback("watch", lambda: release.wait(30), ()))
    return release


def test_reports_children_now_and_after_every_change(zk_hosts):
    with connected_client(zk_hosts) as client, connected_client(zk_hosts) as other:
        client.ensure_path("/w/a")
        seen = Seen()
        watch = ChildWatch(client, "/w", seen).start()
        assert watch.wait_first(WAIT)
        assert seen.calls.get_nowait() == ["a"]
        other.create("/w/b")
        seen.until(["a", "b"])
        other.delete("/w/a")
        seen.until(["b"])
        watch.stop()
        other.create("/w/c")
        other.sync("/w")
        time.sleep(0.3)   # a call after stop() would land within this
        assert seen.calls.empty() and watch.stopped


def test_false_stops_and_a_failing_func_does_not(zk_hosts, caplog, thread_errors):
    with connected_client(zk_hosts) as client:
        client.ensure_path("/w")
        once = Seen(result=False)
        stopping = ChildWatch(client, "/w", once).start()
        once.until([])
        calls = []

        def broken(children):
            calls.append(children)
            raise RuntimeError("a bug in the callback")

        failing = ChildWatch(client, "/w", broken).start()
        assert wait_until(lambda: len(calls) == 1, WAIT)
        client.create("/w/x")
        assert wait_until(lambda: len(calls) == 2, WAIT)   # still watching
        assert stopping.stopped and once.calls.empty()
        assert sum("callback for /w failed" in r.getMessage() for r in caplog.records) == 2
        failing.stop()
    assert thread_errors == [] and kazoo_errors(caplog) == []


def test_an_absent_path_is_watched_until_it_exists(zk_hosts):
    with connected_client(zk_hosts) as client:
        seen = Seen()
        ChildWatch(client, "/later", seen).start()
        client.ensure_path("/later/one")
        seen.until(["one"])


def test_set_again_on_a_new_session(zk_hosts, caplog, thread_errors):
    with connected_client(zk_hosts, timeout=4.0) as client, \
            connected_client(zk_hosts) as other:
        client.ensure_path("/w")
        seen = Seen()
        ChildWatch(client, "/w", seen).start()
        seen.until([])
        old_session = client.client_id[0]
        expire(client, zk_hosts)
        assert wait_until(lambda: client.connected and client.client_id[0] != old_session, WAIT)
        other.create("/w/after")
        seen.until(["after"])
    assert thread_errors == [] and kazoo_errors(caplog) == []


def test_set_again_after_the_server_restarts(caplog, thread_errors):
    with ZooKeeperServer() as server:
        with connected_client(server.address, timeout=4.0) as client:
            client.ensure_path("/w")
            seen = Seen()
            watch = ChildWatch(client, "/w", seen).start()
            seen.until([])
            server.stop()
            assert wait_until(lambda: not client.connected, WAIT)
            server.start()
            with connected_client(server.address) as other:
                other.create("/w/back")
                seen.until(["back"])
            assert watch.failures <= 2
    assert thread_errors == [] and kazoo_errors(caplog) == []


def _frozen_mid_change(server, client, other) -> None:
    """A change is queued in kazoo's watch thread, then the server freezes
    and the connection drops before the thread handles it; then it thaws."""
    release = block_watch_thread(client)
    other.create("/w/during")
    other.sync("/w")
    time.sleep(0.2)        # the event reaches the client (nothing to wait on: it is queued)
    server.freeze()
    try:
        assert wait_until(lambda: not client.connected, WAIT)
        release.set()      # the watch handles the change with no server to ask
        time.sleep(1.5)    # longer than the client's call bound
    finally:
        server.thaw()
    assert wait_until(lambda: client.connected, WAIT)


def test_a_frozen_server_mid_change_costs_one_warning_and_no_exception(caplog, thread_errors):
    caplog.set_level(logging.WARNING)
    with ZooKeeperServer() as server:
        with connected_client(server.address, timeout=3.0, call_timeout=1.0) as client, \
                connected_client(server.address, timeout=30.0) as other:
            client.ensure_path("/w")
            seen = Seen()
            watch = ChildWatch(client, "/w", seen).start()
            seen.until([])
            _frozen_mid_change(server, client, other)
            seen.until(["during"])
            other.create("/w/later")
            seen.until(["during", "later"])
            assert not watch.stopped
    assert thread_errors == [] and kazoo_errors(caplog) == []
    warnings = [r for r in caplog.records if r.name == "jobboard.board._watch"
                and r.levelno == logging.WARNING]
    assert len(warnings) <= 1 and all(r.exc_info is None for r in warnings)


def test_kazoo_children_watch_raises_in_its_thread_in_the_same_case(caplog, thread_errors):
    """Why ChildWatch exists: kazoo's ChildrenWatch re-reads synchronously in
    its watch thread, and the failed read escapes into that thread."""
    with ZooKeeperServer() as server:
        with connected_client(server.address, timeout=3.0, call_timeout=1.0) as client, \
                connected_client(server.address, timeout=30.0) as other:
            client.ensure_path("/w")
            ChildrenWatch(client, "/w", lambda children: None)
            _frozen_mid_change(server, client, other)
    escaped = kazoo_errors(caplog) + [repr(e) for e in thread_errors]
    assert escaped, "kazoo's ChildrenWatch no longer raises in its thread: ChildWatch may go"
