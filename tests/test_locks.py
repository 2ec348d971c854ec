"""jobboard.locks on a real ZooKeeper: exclusion (threads of one process, two
processes), read/write, semaphore, fencing tokens, timeouts, session loss."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException

from jobboard.errors import BoardUnavailable, LockTimeout
from jobboard.locks import Held, Locks, decode_name, encode_name
from jobboard.testing.waiting import wait_until
from jobboard.testing.zookeeper import zk_client

ROOT = "/jobboard/locks"
HOLDER = Path(__file__).with_name("lock_holder.py")


@pytest.fixture
def connect(zk_hosts: str) -> Iterator[Callable[..., KazooClient]]:
    clients: list[KazooClient] = []

    def make(**options: object) -> KazooClient:
        client = zk_client(zk_hosts, **options)
        client.start(timeout=15)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.stop()
        client.close()


@pytest.fixture
def locks(connect: Callable[..., KazooClient]) -> Locks:
    return Locks(connect(), root=ROOT, identifier="test-a")


@pytest.fixture
def other(connect: Callable[..., KazooClient]) -> Locks:
    """Locks on a second client: a second session, as another conductor has."""
    return Locks(connect(), root=ROOT, identifier="test-b")


def is_free(locks: Locks, name: str) -> bool:
    try:
        locks.mutex(name, timeout=0).release()
    except LockTimeout:
        return False
    return True


# -- mutex ---------------------------------------------------------------------


def test_mutex_excludes_another_session_until_released(locks: Locks, other: Locks) -> None:
    held = locks.mutex("volume/42", timeout=5)
    assert held.valid and held.name == "volume/42" and held.kind == "mutex"
    with pytest.raises(LockTimeout) as info:
        other.mutex("volume/42", timeout=0.2)
    assert info.value.name == "volume/42" and info.value.timeout == 0.2
    assert is_free(other, "volume/43")  # another name is another lock
    held.release()
    assert not held.valid
    with other.mutex("volume/42", timeout=5) as second:
        assert second.token > held.token


def test_waiter_acquires_when_holder_releases(locks: Locks, other: Locks) -> None:
    held = locks.mutex("job", timeout=5)
    result: list[Held] = []
    waiter = threading.Thread(target=lambda: result.append(other.mutex("job", timeout=10)))
    waiter.start()
    assert wait_until(lambda: len(locks.client.get_children(f"{ROOT}/mutex/job")) == 2, 10)
    assert not result  # still waiting behind the holder
    held.release()
    waiter.join(10)
    assert result and result[0].valid and result[0].token > held.token
    assert result[0].waited > 0
    result[0].release()


def test_mutex_excludes_across_processes_and_frees_on_sigkill(
        zk_hosts: str, locks: Locks) -> None:
    process = subprocess.Popen(
        [sys.executable, str(HOLDER), zk_hosts, ROOT, "volume/7"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout],  # type: ignore[union-attr]
                     daemon=True).start()
    try:
        line = lines.get(timeout=20)
        assert line.startswith("HELD "), line
        their_token = int(line.split()[1])
        with pytest.raises(LockTimeout):
            locks.mutex("volume/7", timeout=0.3)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        # Freed when the dead holder's 1 s session expires; bounded by the timeout.
        with locks.mutex("volume/7", timeout=10) as held:
            assert held.token > their_token
            assert held.waited < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


# -- read / write ---------------------------------------------------------------


def test_readers_share_writer_excluded(locks: Locks, other: Locks,
                                       connect: Callable[..., KazooClient]) -> None:
    third = Locks(connect(), root=ROOT)
    first = locks.read("db/schema", timeout=5)
    second = other.read("db/schema", timeout=1)  # two readers together
    assert first.valid and second.valid
    with pytest.raises(LockTimeout):
        third.write("db/schema", timeout=0.2)
    first.release()
    with pytest.raises(LockTimeout):
        third.write("db/schema", timeout=0.2)  # one reader is enough to exclude
    second.release()
    with third.write("db/schema", timeout=5) as writer:
        assert writer.token > second.token
        with pytest.raises(LockTimeout):
            locks.read("db/schema", timeout=0.2)  # and the writer excludes readers
    assert is_free(locks, "db/schema")  # the mutex of that name is a separate lock


# -- semaphore -------------------------------------------------------------------


def test_semaphore_respects_max_leases(locks: Locks, other: Locks) -> None:
    leases = [locks.semaphore("api-quota", max_leases=3, timeout=5) for _ in range(2)]
    leases.append(other.semaphore("api-quota", max_leases=3, timeout=5))
    assert len({lease.node for lease in leases}) == 3
    with pytest.raises(LockTimeout):
        other.semaphore("api-quota", max_leases=3, timeout=0.3)
    leases.pop(0).release()
    with other.semaphore("api-quota", max_leases=3, timeout=5) as fourth:
        assert fourth.token > max(lease.token for lease in leases)
    with pytest.raises(ValueError, match="api-quota"):
        other.semaphore("api-quota", max_leases=5, timeout=1)
    for lease in leases:
        lease.release()


def test_semaphore_does_not_leak_state_listeners(locks: Locks) -> None:
    # kazoo's Semaphore leaves one listener per acquisition on the client.
    before = len(locks.client.state_listeners)
    for _ in range(3):
        with locks.semaphore("leak", max_leases=1, timeout=5):
            pass
    assert len(locks.client.state_listeners) == before


# -- fencing tokens -------------------------------------------------------------


def test_tokens_strictly_increase_across_holders(locks: Locks, other: Locks) -> None:
    tokens = []
    for round_ in range(6):
        side = locks if round_ % 2 else other
        with side.mutex("volume/42", timeout=5) as held:
            tokens.append(held.token)
        with side.write("volume/42", timeout=5) as held:
            tokens.append(held.token)
    assert all(isinstance(token, int) and token > 0 for token in tokens)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


# -- timeouts, acquire_all, exits -------------------------------------------------


def test_timeout_bounds_the_whole_wait(locks: Locks, other: Locks,
                                       connect: Callable[..., KazooClient]) -> None:
    # kazoo restarts its wait when the predecessor changes; ours must not.
    held = locks.mutex("queue", timeout=5)
    middle_failed = threading.Event()

    def middle() -> None:
        with pytest.raises(LockTimeout):
            other.mutex("queue", timeout=0.6)
        middle_failed.set()

    thread = threading.Thread(target=middle)
    thread.start()
    assert wait_until(lambda: len(locks.client.get_children(f"{ROOT}/mutex/queue")) == 2, 10)
    last = Locks(connect(), root=ROOT)
    started = time.monotonic()
    with pytest.raises(LockTimeout):
        last.mutex("queue", timeout=1.0)
    elapsed = time.monotonic() - started
    thread.join(5)
    assert middle_failed.is_set()
    assert 0.9 < elapsed < 1.45  # kazoo alone: about 1.6
    # timed-out contenders leave no znodes behind
    assert len(locks.client.get_children(f"{ROOT}/mutex/queue")) == 1
    held.release()


def test_timeout_zero_is_a_try(locks: Locks, other: Locks) -> None:
    with locks.mutex("try", timeout=0) as held:
        assert held.valid
        with pytest.raises(LockTimeout):
            other.mutex("try", timeout=0)


def test_acquire_all_in_order_and_released_together(locks: Locks, other: Locks) -> None:
    with locks.acquire_all(["volume/42", "server/7", "volume/42"], timeout=5) as group:
        assert group.names == ["server/7", "volume/42"]
        assert group.get("volume/42").token > group.get("server/7").token
        assert group.valid
        assert not is_free(other, "server/7") and not is_free(other, "volume/42")
    assert not group.valid
    assert is_free(other, "server/7") and is_free(other, "volume/42")


def test_acquire_all_releases_everything_when_one_times_out(locks: Locks, other: Locks) -> None:
    blocker = other.mutex("server/7", timeout=5)
    with pytest.raises(LockTimeout) as info:
        locks.acquire_all(["volume/42", "server/7", "a/1"], timeout=0.3)
    assert info.value.name == "server/7" and info.value.timeout == 0.3
    # "a/1" was taken before "server/7" failed; it must be free again.
    assert is_free(other, "a/1") and is_free(other, "volume/42")
    blocker.release()


def test_released_on_exception_in_body(locks: Locks, other: Locks) -> None:
    with pytest.raises(RuntimeError):
        with locks.mutex("volume/1", timeout=5) as held:
            raise RuntimeError("task failed")
    assert not held.valid
    assert is_free(other, "volume/1")
    with pytest.raises(RuntimeError):
        with locks.semaphore("sem", max_leases=1, timeout=5):
            raise RuntimeError("task failed")
    with other.semaphore("sem", max_leases=1, timeout=0):
        pass


# -- session loss -------------------------------------------------------------------


def test_session_expiry_frees_the_lock_and_invalidates_the_holder(
        zk_hosts: str, connect: Callable[..., KazooClient], other: Locks) -> None:
    client = connect()
    held = Locks(client, root=ROOT).mutex("volume/42", timeout=5)
    held.check()
    # A second client on the same session id + password, closed: expires the first.
    twin = zk_client(zk_hosts, client_id=client.client_id)
    twin.start(timeout=15)
    twin.stop()
    twin.close()
    assert wait_until(lambda: not held.valid, 10)
    assert held.lost
    with pytest.raises(BoardUnavailable, match="lost"):
        held.check()
    with other.mutex("volume/42", timeout=5) as second:
        assert second.token > held.token
    held.release()  # after loss: no error


def test_client_stop_invalidates_and_release_does_not_raise(
        connect: Callable[..., KazooClient], other: Locks) -> None:
    client = connect()
    held = Locks(client, root=ROOT).read("db/schema", timeout=5)
    client.stop()
    assert wait_until(lambda: not held.valid, 10)
    with pytest.raises(BoardUnavailable):
        held.check()
    held.release()
    with other.write("db/schema", timeout=5):
        pass


def test_kazoo_errors_are_translated(connect: Callable[..., KazooClient]) -> None:
    client = connect()
    client.stop()
    for attempt in (lambda l: l.mutex("x", timeout=1), lambda l: l.read("x", timeout=1),
                    lambda l: l.semaphore("x", max_leases=2, timeout=1),
                    lambda l: l.acquire_all(["x", "y"], timeout=1)):
        with pytest.raises(BoardUnavailable) as info:
            attempt(Locks(client, root=ROOT))
        assert not isinstance(info.value, KazooException)


# -- names ---------------------------------------------------------------------------


def test_names_map_to_one_znode(locks: Locks) -> None:
    assert encode_name("volume/42") == "volume%2F42"
    for name in ["volume/42", "a%2Fb", "ünï/cødé", "x y", "-__lock__", ".hidden"]:
        assert decode_name(encode_name(name)) == name
        with locks.mutex(name, timeout=5) as held:
            assert held.node.startswith(f"{ROOT}/mutex/{encode_name(name)}/")
    assert encode_name("a/b") != encode_name("a%2Fb")


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 257, "\ud800"])
def test_invalid_names_raise_value_error(locks: Locks, name: str) -> None:
    with pytest.raises(ValueError):
        locks.mutex(name, timeout=1)
    with pytest.raises(ValueError):
        locks.acquire_all(["fine", name], timeout=1)
    assert is_free(locks, "fine")  # nothing taken before the bad name was seen
