"""Subprocess for tests/test_schedules.py: run a Scheduler until SIGTERM (or
a SIGKILL from the test). A short session timeout makes a kill -9 hand the
leadership on fast.

Usage: python schedule_runner.py HOSTS ROOT NAME
"""

import signal
import sys
import threading

from jobboard.board import Board
from jobboard.schedules import Scheduler


def main() -> None:
    hosts, root, name = sys.argv[1:4]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Board.connect(hosts, root=root, session_timeout=1.5, timeout=15) as board:
        scheduler = Scheduler(board, name=name).start()
        print("STANDING", flush=True)
        stop.wait(300)
        scheduler.stop(timeout=5)


if __name__ == "__main__":
    main()
