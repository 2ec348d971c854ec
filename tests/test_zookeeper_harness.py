"""The test harness itself: a ZooKeeper that fails to come up leaves no
process behind (its JVM runs in a session of its own, so nothing else would
reap it); a frozen server is really stopped, and stops when told to."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobboard.testing.zookeeper import (ZooKeeperEnsemble, ZooKeeperServer, ZooKeeperStartError,
                                        process_state)


def processes_using(data_dir: Path) -> list[int]:
    """Live processes whose command line names ``data_dir``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(data_dir).encode() in cmdline:
            found.append(int(proc.name))
    return found


def test_a_server_that_does_not_start_in_time_is_stopped():
    server = ZooKeeperServer()
    try:
        with pytest.raises(ZooKeeperStartError, match="did not start"):
            server.start(timeout=0.01)
        assert server.process is None
        assert processes_using(server.data_dir) == []
    finally:
        server.destroy()


def test_an_ensemble_that_does_not_start_in_time_is_stopped():
    ensemble = ZooKeeperEnsemble(3)
    try:
        with pytest.raises(ZooKeeperStartError):
            ensemble.start(timeout=0.01)
        for member in ensemble.members:
            assert member.process is None
            assert processes_using(member.data_dir) == []
    finally:
        ensemble.destroy()


def test_freeze_stops_the_process_and_thaw_resumes_it():
    with ZooKeeperServer() as server:
        server.freeze()
        assert process_state(server.process) == "T"
        assert not server.serving()           # stopped: no answer at all
        server.thaw()
        server.wait_serving(15)
        assert process_state(server.process) != "T"


def test_a_frozen_server_stops_when_told_to():
    server = ZooKeeperServer().start()
    try:
        server.freeze()
        process = server.process
        server.stop()                          # SIGTERM, then SIGCONT so it acts on it
        assert process.poll() is not None
    finally:
        server.destroy()
    assert processes_using(server.data_dir) == []


def test_free_ports_are_distinct():
    """An ensemble needs 9 ports at once; picked one by one, the kernel may
    hand out the same one twice and the servers refuse the config (CI met
    "Invalid config, exiting abnormally")."""
    from jobboard.testing.zookeeper import free_ports

    for _ in range(20):
        ports = free_ports(9)
        assert len(set(ports)) == 9
