"""Module-level tasks for the executor, time-limit, heartbeat and cancel tests.

They must pickle (the process executor ships them to worker processes), so
they keep no locks or open files; they talk to the test through files in a
directory the test gives them (a :class:`FileJournal`), which works across
the process boundary.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from jobboard import Task
from jobboard.testing.waiting import wait_until


class FileJournal:
    """An append-only journal in a file; picklable, shared by processes."""

    def __init__(self, directory: str | os.PathLike[str], name: str = "journal") -> None:
        self.path = str(Path(directory) / name)

    def add(self, entry: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(entry + "\n")

    @property
    def entries(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8") as f:
                return [line.rstrip("\n") for line in f]
        except FileNotFoundError:
            return []

    def wait_for(self, entry: str, timeout: float = 10.0) -> bool:
        return bool(wait_until(lambda: entry in self.entries, timeout))

    def value(self, prefix: str) -> str | None:
        for entry in self.entries:
            if entry.startswith(prefix + ":"):
                return entry.split(":", 1)[1]
        return None


class Noop(Task):
    def execute(self) -> None:
        return None


class Echo(Task):
    """Returns its input and the pid it ran in."""

    def execute(self, value: Any) -> Any:
        return {"value": value, "pid": os.getpid()}


class Hang(Task):
    """Writes ``started:<name>`` and ``pid:<name>:<pid>``, then sleeps (not cooperative)."""

    def __init__(self, name: str, journal: FileJournal, *, seconds: float = 3600,
                 **options: Any) -> None:
        super().__init__(name, **options)
        self.journal = journal
        self.seconds = seconds

    def execute(self) -> str:
        self.journal.add(f"pid:{self.name}:{os.getpid()}")
        self.journal.add(f"started:{self.name}")
        time.sleep(self.seconds)
        self.journal.add(f"finished:{self.name}")
        return "woke"

    def revert(self, **kwargs: Any) -> None:
        self.journal.add(f"revert:{self.name}")


class HangOnce(Hang):
    """Hangs on its first attempt only (the journal remembers attempts)."""

    def execute(self) -> str:
        attempt = sum(1 for e in self.journal.entries if e == f"started:{self.name}") + 1
        self.journal.add(f"started:{self.name}")
        if attempt == 1:
            time.sleep(self.seconds)
        return f"attempt {attempt}"


class Cooperative(Task):
    """Heartbeats until asked to stop; records what it saw."""

    def __init__(self, name: str, journal: FileJournal, **options: Any) -> None:
        super().__init__(name, **options)
        self.journal = journal

    def execute(self) -> str:
        self.journal.add(f"pid:{self.name}:{os.getpid()}")
        self.journal.add(f"started:{self.name}")
        deadline = time.monotonic() + 60
        while not self.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        self.journal.add(f"cancelled:{self.name}:{self.cancelled}")
        try:
            self.heartbeat(note="still here")
        except Exception as exc:       # TaskInterrupted, a Cancelled
            self.journal.add(f"heartbeat-raised:{self.name}:{type(exc).__name__}")
            raise
        return "not stopped"

    def revert(self, **kwargs: Any) -> None:
        self.journal.add(f"revert:{self.name}")


class Beats(Task):
    """Sends ``count`` heartbeats ``pause`` seconds apart, progress i/count."""

    def __init__(self, name: str, journal: FileJournal, count: int = 10,
                 pause: float = 0.05, **options: Any) -> None:
        super().__init__(name, **options)
        self.journal = journal
        self.count = count
        self.pause = pause

    def execute(self) -> str:
        for i in range(1, self.count + 1):
            self.heartbeat(progress=i / self.count, note=f"step {i}/{self.count} " + "x" * 300)
            time.sleep(self.pause)
        self.journal.add(f"done:{self.name}")
        return "beaten"


class Wait(Task):
    """Writes ``started``, then waits for a file ``go`` (the test's release)."""

    def __init__(self, name: str, journal: FileJournal, **options: Any) -> None:
        super().__init__(name, **options)
        self.journal = journal

    def execute(self) -> str:
        self.journal.add(f"started:{self.name}")
        go = Path(self.journal.path).with_name("go")
        wait_until(go.exists, 30)
        self.journal.add(f"finished:{self.name}")
        return "released"


class Exit(Task):
    """Leaves its process the hard way: ``os._exit(code)`` or a signal."""

    def __init__(self, name: str, *, code: int = 3, signum: int | None = None,
                 **options: Any) -> None:
        super().__init__(name, **options)
        self.code = code
        self.signum = signum

    def execute(self) -> None:
        if self.signum is not None:
            os.kill(os.getpid(), self.signum)
            time.sleep(10)
        os._exit(self.code)


class RaiseBase(Task):
    """Raises a BaseException (SystemExit, KeyboardInterrupt, GeneratorExit)."""

    def __init__(self, name: str, error: str, *, in_revert: bool = False,
                 **options: Any) -> None:
        super().__init__(name, **options)
        self.error = error
        self.in_revert = in_revert

    def _raise(self) -> None:
        errors = {"SystemExit": SystemExit(7), "KeyboardInterrupt": KeyboardInterrupt("ctrl-c"),
                  "GeneratorExit": GeneratorExit("closed")}
        raise errors[self.error]

    def execute(self) -> str:
        if not self.in_revert:
            self._raise()
        return "ran"

    def revert(self, **kwargs: Any) -> None:
        if self.in_revert:
            self._raise()


class Fail(Task):
    def execute(self) -> None:
        raise ValueError("fails on purpose")


class Unpicklable(Task):
    """Holds a lock: cannot be pickled."""

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.lock = threading.Lock()

    def execute(self) -> str:
        return "ran"


class ReturnsUnpicklable(Task):
    def execute(self) -> Any:
        return threading.Lock()


class Record(Task):
    """Journals execute and revert; returns its name."""

    def __init__(self, name: str, journal: FileJournal, **options: Any) -> None:
        super().__init__(name, **options)
        self.journal = journal

    def execute(self) -> str:
        self.journal.add(f"execute:{self.name}")
        return self.name

    def revert(self, **kwargs: Any) -> None:
        self.journal.add(f"revert:{self.name}")


class HangRevert(Record):
    """Reverts forever (not cooperative)."""

    def revert(self, **kwargs: Any) -> None:
        self.journal.add(f"pid:{self.name}:{os.getpid()}")
        self.journal.add(f"reverting:{self.name}")
        time.sleep(3600)


class Pid(Task):
    def execute(self) -> int:
        return os.getpid()


SIGKILL = signal.SIGKILL
