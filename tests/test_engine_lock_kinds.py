"""Engine: declared locks with kinds (``read``, ``write``, ``semaphore``,
plain names as mutexes) on tasks and flows, held through real ZooKeeper
recipes (``Locks.acquire_all``), with real SQLite and PostgreSQL logbooks."""

from __future__ import annotations

import threading

import pytest

from flows_for_tests import Journal, RecordingLocker, Step, make_engine
from jobboard import flows
from jobboard.engine import ThreadExecutor
from jobboard.engine.locking import LockSpec, mutex, read, semaphore, write
from jobboard.errors import FlowInvalid
from jobboard.locks import Locks
from jobboard.testing.zookeeper import connected_client

TOGETHER = 1.0     # seconds a task waits for a partner before going on alone


class Meeting:
    """Counts tasks inside at once; each waits (bounded) for a partner."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.cond = threading.Condition()

    def enter(self, want: int = 2) -> None:
        with self.cond:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.inside >= want, timeout=TOGETHER)

    def leave(self) -> None:
        with self.cond:
            self.inside -= 1
            self.cond.notify_all()


class Meets(Step):
    def __init__(self, name: str, meeting: Meeting, want: int = 2, **options) -> None:
        super().__init__(name, Journal(), **options)
        self.meeting = meeting
        self.want = want

    def execute(self, **inputs):
        self.meeting.enter(self.want)
        try:
            return self.name
        finally:
            self.meeting.leave()


@pytest.fixture
def zk_locker(zk_hosts):
    with connected_client(zk_hosts) as client:
        locks = Locks(client, root="/locks", identifier="engine-test")
        yield lambda specs: locks.acquire_all(specs, timeout=20)


def run(flow, logbook, locker, **options):
    with ThreadExecutor(width=4) as executor:
        return make_engine(flow, logbook, executor=executor, locker=locker, **options).run()


def test_a_semaphore_lets_its_leases_run_together_and_no_more(logbook, zk_locker):
    meeting = Meeting()
    flow = flows.unordered("gpu", *[Meets(f"t{i}", meeting, want=3,
                                          locks=[semaphore("gpu", 2)]) for i in range(4)])
    assert run(flow, logbook, zk_locker).ok
    assert meeting.most == 2


def test_readers_share_a_read_lock(logbook, zk_locker):
    meeting = Meeting()
    flow = flows.unordered("readers", *[Meets(f"r{i}", meeting, locks=[read("volume/{vid}")])
                                        for i in range(2)])
    assert run(flow, logbook, zk_locker, store={"vid": 7}).ok
    assert meeting.most == 2


def test_a_writer_excludes_readers_and_writers(logbook, zk_locker):
    meeting = Meeting()
    flow = flows.unordered("mixed", Meets("w", meeting, locks=[write("volume/{vid}")]),
                           Meets("r", meeting, locks=[read("volume/{vid}")]),
                           Meets("w2", meeting, locks=["other", write("volume/{vid}")]))
    assert run(flow, logbook, zk_locker, store={"vid": 7}).ok
    assert meeting.most == 1


def test_flow_locks_take_their_kind_for_the_whole_run(logbook, zk_locker, zk_hosts):
    held_during: list[bool] = []

    with connected_client(zk_hosts) as client:
        probe = Locks(client, root="/locks", identifier="probe")

        class Probe(Step):
            def execute(self, **inputs):
                # A reader may join the flow's read lock; a writer may not.
                with probe.read("volume/7", timeout=5):
                    pass
                try:
                    probe.write("volume/7", timeout=0.2).release()
                    held_during.append(False)
                except Exception:  # noqa: BLE001 - LockTimeout expected
                    held_during.append(True)
                return "ok"

        flow = flows.linear("f", Probe("probe", Journal()), locks=[read("volume/{vid}")])
        assert run(flow, logbook, zk_locker, store={"vid": 7}).ok
    assert held_during == [True]


def test_the_locker_receives_rendered_specs_with_their_kinds(logbook):
    locker = RecordingLocker()
    j = Journal()
    flow = flows.linear("f", Step("a", j, locks=["m/{vid}", read("r/{vid}"),
                                                  semaphore("gpu", 3)]),
                        locks=[write("w/{vid}")])
    assert make_engine(flow, logbook, locker=locker, store={"vid": 9}).run().ok
    entered = [names for what, names in locker.calls if what == "enter"]
    assert [[repr(s) for s in names] for names in entered] == [
        ["write('w/9')"], ["mutex('m/9')", "read('r/9')", "semaphore('gpu', 3)"]]
    assert all(isinstance(s, LockSpec) for names in entered for s in names)
    # A locker that only knows names sees plain strings (as mutexes).
    assert entered[1] == ("m/9", "r/9", "gpu")


def test_bad_declarations_are_refused():
    with pytest.raises(FlowInvalid):
        semaphore("gpu", 0)
    with pytest.raises(FlowInvalid):
        LockSpec("x", "exclusive")
    with pytest.raises(FlowInvalid):
        Step("a", Journal(), locks=[3])
    assert mutex("a") == "a" and write("a").kind == "write"
