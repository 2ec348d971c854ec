"""Subprocess for tests/test_locks.py: take a mutex, say so on stdout, hold it
until killed. Its session timeout is short so a SIGKILL frees the lock fast.

Usage: python lock_holder.py HOSTS ROOT NAME
"""

import sys
import threading

from jobboard.locks import Locks
from jobboard.testing.zookeeper import zk_client


def main() -> None:
    hosts, root, name = sys.argv[1:4]
    client = zk_client(hosts, timeout=1.0)
    client.start(timeout=15)
    held = Locks(client, root=root, identifier="holder").mutex(name, timeout=15)
    print(f"HELD {held.token}", flush=True)
    while True:   # until killed
        threading.Event().wait(3600)


if __name__ == "__main__":
    main()
