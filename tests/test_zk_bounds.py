"""Every blocking ZooKeeper call is bounded: a server that stops answering
(its process SIGSTOPped) costs a caller at most the call bound, then
BoardUnavailable, never a hang."""

from __future__ import annotations

import threading
import time

import pytest
from kazoo.client import KazooClient

from jobboard.board import Board, _zk
from jobboard.errors import BoardUnavailable
from jobboard.testing.zookeeper import ZooKeeperServer, connected_client, zk_client
from jobboard.zkerrors import translated
from jobboard.zkhandler import (DEFAULT_CALL_TIMEOUT, BoundedHandler, CallTimeout,
                                bounded_client, call_timeout_for)

BOUND = 2.0
SESSION = 1.0      # the client gives up on a silent server after 2/3 of it


@pytest.fixture
def own_server():
    """A standalone server of this test's own: it gets frozen."""
    with ZooKeeperServer() as server:
        yield server


def test_the_bound_follows_the_session_timeout():
    assert call_timeout_for(1.0) == DEFAULT_CALL_TIMEOUT
    assert call_timeout_for(40.0) == 80.0
    client = bounded_client("127.0.0.1:2181", timeout=4.0)
    assert isinstance(client.handler, BoundedHandler)
    assert client.handler.call_timeout == DEFAULT_CALL_TIMEOUT
    made = _zk.make_client("127.0.0.1:2181", session_timeout=20.0)
    assert isinstance(made.handler, BoundedHandler) and made.handler.call_timeout == 40.0
    assert _zk.make_client("127.0.0.1:2181", call_timeout=3.0).handler.call_timeout == 3.0
    with pytest.raises(ValueError):
        BoundedHandler(0)
    with pytest.raises(TypeError):
        bounded_client("127.0.0.1:2181", handler=BoundedHandler())


def test_an_unanswered_result_times_out_at_the_bound():
    handler = BoundedHandler(0.2)
    result = handler.async_result()
    started = time.monotonic()
    with pytest.raises(CallTimeout, match="within 0.2s"):
        result.get()
    assert 0.15 < time.monotonic() - started < 5
    assert result.wait() is False                   # wait() bounded too
    with pytest.raises(CallTimeout, match="within 0.05s"):
        result.get(timeout=0.05)                    # an explicit timeout wins
    result.set("answer")
    assert result.get() == "answer" and result.wait() is True


def test_a_call_timeout_is_board_unavailable():
    with pytest.raises(BoardUnavailable, match="CallTimeout"):
        with translated("reading"):
            BoundedHandler(0.01).async_result().get()


def test_a_call_to_a_frozen_server_returns_within_the_bound(own_server):
    """The request is sent, the server is stopped: kazoo alone would wait
    for ever; the client answers with a timeout at the bound."""
    with connected_client(own_server.address, timeout=30.0, call_timeout=BOUND) as client:
        client.ensure_path("/here")
        own_server.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(CallTimeout):
                client.get("/here")
            assert time.monotonic() - started < BOUND + 1.5
        finally:
            own_server.thaw()


def test_a_board_on_a_frozen_server_raises_board_unavailable_in_time(own_server):
    """Every kind of board call: a read, a post (a transaction), the kazoo
    retry of connection losses (each retry queued while no server answers):
    each returns BoardUnavailable within the bound plus the retries' waits,
    not after the outage."""
    client = _zk.make_client(own_server.address, session_timeout=SESSION, call_timeout=BOUND)
    _zk.start(client, own_server.address, 15)
    board = Board(client, root="/bounded")
    try:
        job = board.post("tests.flows:noop")
        own_server.freeze()
        try:
            for call in (lambda: board.get(job.uuid), lambda: board.post("tests.flows:noop"),
                         board.conductors):
                started = time.monotonic()
                with pytest.raises(BoardUnavailable):
                    call()
                # one bounded wait, plus kazoo's retry back-off (< 8 s in all)
                assert time.monotonic() - started < BOUND + 10
        finally:
            own_server.thaw()
    finally:
        client.stop()
        client.close()


def test_a_blocked_caller_is_released_while_others_keep_going(own_server):
    """Many threads stuck on a frozen server all come back, each bounded."""
    with connected_client(own_server.address, timeout=30.0, call_timeout=BOUND) as client:
        client.ensure_path("/many")
        own_server.freeze()
        errors: list[BaseException] = []

        def call() -> None:
            try:
                client.get_children("/many")
            except BaseException as exc:  # noqa: BLE001 - collected for the assert
                errors.append(exc)

        try:
            threads = [threading.Thread(target=call) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(BOUND + 5)
            assert not any(thread.is_alive() for thread in threads)
        finally:
            own_server.thaw()
    assert len(errors) == 8 and all(isinstance(e, CallTimeout) for e in errors)


def test_testing_clients_are_bounded(zk_hosts):
    client = zk_client(zk_hosts, timeout=5.0)
    assert isinstance(client, KazooClient) and isinstance(client.handler, BoundedHandler)
    with connected_client(zk_hosts) as connected:
        assert connected.connected and connected.exists("/") is not None
    assert not connected.connected
