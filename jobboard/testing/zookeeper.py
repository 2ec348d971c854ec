"""Start real ZooKeeper servers on loopback, for tests, the demo and benchmarks.

Uses the ZooKeeper installed on the machine (Debian's ``zookeeper`` package,
or a tarball pointed to by ``ZOOKEEPER_HOME``); nothing is downloaded. Each
server gets a free loopback port and its own data directory, and is stopped
(and its directory removed, when we made it) on :meth:`stop`.

Fails with :class:`ZooKeeperNotInstalled` (saying how to install one) when no
distribution is found, and with :class:`ZooKeeperStartError` (with the tail of
the server log) when a server does not answer within its start timeout.

Tests that need a raw kazoo client take it from :func:`zk_client` or
:func:`connected_client`: its blocking calls are bounded (see
:mod:`jobboard.zkhandler`), so a server that stops answering fails the test
with a timeout instead of hanging it.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from kazoo.client import KazooClient

from jobboard.zkhandler import bounded_client

INSTALL_HINT = (
    "no ZooKeeper installation found: install one with "
    "`sudo apt-get install zookeeper` (Debian/Ubuntu), or unpack a ZooKeeper "
    "3.6+ release and set ZOOKEEPER_HOME to its directory"
)


class ZooKeeperNotInstalled(RuntimeError):
    pass


class ZooKeeperStartError(RuntimeError):
    pass


def find_classpath() -> str:
    """The Java classpath of the installed ZooKeeper server."""
    home = os.environ.get("ZOOKEEPER_HOME")
    if home:
        jars = sorted(glob.glob(os.path.join(home, "lib", "*.jar")))
        if jars:
            conf = os.path.join(home, "conf")
            return os.pathsep.join([conf, *jars])
    debian_jar = "/usr/share/java/zookeeper.jar"
    if os.path.exists(debian_jar):
        # The Debian jar's manifest carries the Class-Path of its dependencies.
        return os.pathsep.join(["/etc/zookeeper/conf", debian_jar])
    raise ZooKeeperNotInstalled(INSTALL_HINT)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all are held while they are picked (a
    port picked, released and picked again would be the same one twice,
    which an ensemble's config refuses)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def four_letter(port: int, word: str, timeout: float = 1.0, host: str = "127.0.0.1") -> str:
    """Send a four-letter command; empty string when the server does not answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def zk_client(hosts: str, *, timeout: float = 10.0, call_timeout: float | None = None,
              **options: Any) -> KazooClient:
    """A kazoo client (not started) whose blocking calls are bounded by
    ``call_timeout`` (default ``max(30, 2 x timeout)``); ``options`` go to
    KazooClient (``client_id=``, ``auth_data=``, ...)."""
    return bounded_client(hosts, timeout=timeout, call_timeout=call_timeout, **options)


@contextmanager
def connected_client(hosts: str, *, start_timeout: float = 15.0,
                     **options: Any) -> Iterator[KazooClient]:
    """A started :func:`zk_client`, stopped and closed on exit.

    Raises:
        kazoo.handlers.threading.KazooTimeoutError: not connected within
            ``start_timeout``.
    """
    client = zk_client(hosts, **options)
    client.start(timeout=start_timeout)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def process_state(process: subprocess.Popen) -> str:
    """The one-letter state of a running process (``T`` when stopped), from
    /proc; ``?`` when it cannot be read."""
    try:
        with open(f"/proc/{process.pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


class ZooKeeperServer:
    """One ZooKeeper server process (standalone, or a member of an ensemble)."""

    def __init__(self, *, port: int | None = None, data_dir: str | None = None,
                 tick_time: int = 100, fsync: bool = False,
                 max_session_timeout_ms: int = 60_000,
                 peers: list[tuple[int, int, int]] | None = None,
                 server_id: int | None = None, client_address: str = "127.0.0.1") -> None:
        # client_address: the one address clients connect to (a test of a
        # network partition binds a veth address instead of loopback).
        self.client_address = client_address
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="jobboard-zk-"))
        self.tick_time = tick_time
        self.fsync = fsync
        self.max_session_timeout_ms = max_session_timeout_ms
        self.peers = peers
        self.server_id = server_id
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.client_address}:{self.port}"

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self.tick_time}",
            f"dataDir={self.data_dir}",
            f"clientPort={self.port}",
            f"clientPortAddress={self.client_address}",
            "initLimit=50",
            "syncLimit=20",
            "maxClientCnxns=0",
            f"minSessionTimeout={2 * self.tick_time}",
            f"maxSessionTimeout={self.max_session_timeout_ms}",
            f"forceSync={'yes' if self.fsync else 'no'}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            "jute.maxbuffer=1048575",
        ]
        if self.peers:
            for number, (_, peer_port, election_port) in enumerate(self.peers, 1):
                lines.append(f"server.{number}=127.0.0.1:{peer_port}:{election_port}")
            (self.data_dir / "myid").write_text(f"{self.server_id}\n")
        path = self.data_dir / "zoo.cfg"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 30.0, wait: bool = True) -> "ZooKeeperServer":
        config = self._write_config()
        log_path = self.data_dir / "server.log"
        command = [
            shutil.which("java") or "java", "-Xmx256m",
            "-Dzookeeper.log.dir=" + str(self.data_dir),
            "-Dzookeeper.root.logger=INFO,CONSOLE",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp", find_classpath(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(config),
        ]
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            try:
                self.wait_serving(timeout)
            except BaseException:
                self.stop(kill=True)   # a server that did not come up is no use
                raise
        return self

    def serving(self) -> bool:
        reply = four_letter(self.port, "srvr", host=self.client_address)
        return "Mode:" in reply

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            if self.serving():
                return
            time.sleep(0.05)
        raise ZooKeeperStartError(
            f"ZooKeeper on port {self.port} did not start within {timeout}s:\n"
            + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.data_dir / "server.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, kill: bool = False) -> None:
        """Stop the process; keeps the data directory (see :meth:`destroy`)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.process.send_signal(signal.SIGCONT)   # a frozen one acts on SIGTERM
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def freeze(self, timeout: float = 5.0) -> None:
        """SIGSTOP the server and return once it is really stopped (a signal
        is delivered asynchronously): it then neither answers nor closes
        its connections, like a machine that hangs.

        Raises:
            RuntimeError: not running, or not stopped within ``timeout``.
        """
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"ZooKeeper on port {self.port} is not running")
        self.process.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while process_state(self.process) != "T":
            if time.monotonic() > deadline:
                raise RuntimeError(f"ZooKeeper on port {self.port} did not stop")
            time.sleep(0.005)

    def thaw(self) -> None:
        """SIGCONT a server stopped by :meth:`freeze` (no-op when not running)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def destroy(self) -> None:
        self.stop(kill=True)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "ZooKeeperServer":
        if self.process is None:
            try:
                self.start()
            except BaseException:
                self.destroy()   # __exit__ will not run
                raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()


class ZooKeeperEnsemble:
    """A quorum of servers on loopback (3 by default), for failover tests."""

    def __init__(self, size: int = 3, *, tick_time: int = 100, fsync: bool = False) -> None:
        ports = free_ports(3 * size)
        peers = [tuple(ports[3 * n:3 * n + 3]) for n in range(size)]
        self.members = [
            ZooKeeperServer(port=client, tick_time=tick_time, fsync=fsync,
                            peers=peers, server_id=number)
            for number, (client, _, _) in enumerate(peers, 1)
        ]

    @property
    def address(self) -> str:
        return ",".join(member.address for member in self.members)

    def start(self, timeout: float = 60.0) -> "ZooKeeperEnsemble":
        try:
            for member in self.members:
                member.start(wait=False)
            for member in self.members:
                member.wait_serving(timeout)
        except BaseException:
            for member in self.members:
                member.stop(kill=True)
            raise
        return self

    def leader(self) -> ZooKeeperServer:
        for member in self.members:
            if "Mode: leader" in four_letter(member.port, "srvr"):
                return member
        raise ZooKeeperStartError("the ensemble has no leader")

    def destroy(self) -> None:
        for member in self.members:
            member.destroy()

    def __enter__(self) -> "ZooKeeperEnsemble":
        try:
            return self.start()
        except BaseException:
            self.destroy()   # __exit__ will not run
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()
