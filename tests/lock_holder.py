"""Subprocess for tests/test_locks.py: take a mutex, say so on stdout, hold it
until killed. Its session timeout is short so a SIGKILL frees the lock fast.

Usage: python lock_holder.py HOSTS ROOT NAME
"""

import sys
import threading

from kazoo.client import KazooClient

from jobboard.locks import Locks


def main() -> None:
    hosts, root, name = sys.argv[1:4]
    client = KazooClient(hosts=hosts, timeout=1.0)
    client.start(timeout=15)
    held = Locks(client, root=root, identifier="holder").mutex(name, timeout=15)
    print(f"HELD {held.token}", flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
