"""A network namespace joined to the host by a veth pair, for partition tests.

:class:`VethNamespace` creates a namespace with a unique name and a veth
pair (the host end keeps ``host_ip``, the namespace end gets ``ns_ip``, a
/30 of ``10.x.y.z``), so a process started with :attr:`exec_prefix`
(``ip netns exec NAME ...``) reaches the host only through that link.
:meth:`link_down` / :meth:`link_up` set the host end down and up: a real
partition (packets are dropped, TCP connections stall and time out), not a
polite close. :meth:`destroy` removes both (also on failure: use it as a
context manager).

Needs Linux, root and ``ip`` (iproute2): :func:`unavailable` says why not, for
a test to skip with. How it fails: a failing ``ip`` command raises
:class:`NetnsError` with its output; every command has a bounded timeout.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid
from typing import Any

__all__ = ["VethNamespace", "NetnsError", "unavailable"]

COMMAND_TIMEOUT = 10.0


class NetnsError(RuntimeError):
    """An ``ip`` command failed (its output is in the message)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(["ip", *args], capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"ip {' '.join(args)}: {exc}") from exc
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()}")
    return result


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (run the test as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"jbprobe-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", probe)
    except NetnsError as exc:
        return f"`ip netns add` fails here: {exc}"
    _ip("netns", "del", probe, check=False)
    return None


class VethNamespace:
    """A namespace and a veth pair (see the module docstring)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.name = f"jb-{tag}"
        self.host_if = f"jbh{tag}"          # interface names: at most 15 characters
        self.ns_if = f"jbn{tag}"
        second, third = random.randrange(16, 250), random.randrange(0, 256)
        fourth = random.randrange(0, 64) * 4
        self.host_ip = f"10.{second}.{third}.{fourth + 1}"
        self.ns_ip = f"10.{second}.{third}.{fourth + 2}"
        self._created: list[str] = []

    @property
    def exec_prefix(self) -> list[str]:
        """Prefix of a command run inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def create(self) -> "VethNamespace":
        try:
            _ip("netns", "add", self.name)
            self._created.append("netns")
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            self._created.append("link")
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            _ip("-n", self.name, "link", "set", self.ns_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def link_down(self) -> None:
        """Partition: the host end of the pair goes down."""
        _ip("link", "set", self.host_if, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def destroy(self) -> None:
        """Remove the pair and the namespace (errors ignored: best effort)."""
        if "link" in self._created:
            _ip("link", "del", self.host_if, check=False)   # takes its peer along
        if "netns" in self._created:
            _ip("netns", "del", self.name, check=False)
        self._created.clear()

    def __enter__(self) -> "VethNamespace":
        return self.create()

    def __exit__(self, *exc_info: Any) -> None:
        self.destroy()
