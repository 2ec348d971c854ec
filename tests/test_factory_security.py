"""What a job's factory reference can make a conductor do: call one public
module-level function defined in an allowed module, and nothing else.

The hostile references point into tests/hostile_flows.py, whose would-be
targets leave marker files in ``$HOSTILE_FLOWS_MARKERS`` when called; every
test checks that directory stays empty. No mocks: real imports, a real
ZooKeeper, real conductors (in-process and as a process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hostile_helpers import MARKER_ENV
from jobboard.board import Board
from jobboard.conductor import Conductor
from jobboard.engine import Task, build_flow, flows, resolve_factory
from jobboard.engine.factory import MAX_REF_LENGTH, is_allowed
from jobboard.errors import FactoryNotAllowed, FactoryNotFound, FlowInvalid
from jobboard.logbook import Logbook
from jobboard.states import JobState

TESTS_DIR = Path(__file__).resolve().parent
ALLOW = ("hostile_flows",)
ALLOW_BOTH = ("hostile_flows", "jobboard.testing")


@pytest.fixture(autouse=True)
def markers(tmp_path, monkeypatch) -> Path:
    """The directory anything hostile that runs would leave a marker in."""
    directory = tmp_path / "markers"
    directory.mkdir()
    monkeypatch.setenv(MARKER_ENV, str(directory))
    yield directory
    assert sorted(p.name for p in directory.iterdir()) == [], "hostile code ran"


def hostile_args(markers: Path) -> dict[str, dict]:
    """Args that would leave a marker if the os/subprocess targets ran."""
    return {
        "hostile_flows:os.system": {"command": f"touch {markers}/os.system"},
        "hostile_flows:system": {"command": f"touch {markers}/system"},
        "hostile_flows:subprocess.run": {"args": ["touch", f"{markers}/subprocess.run"]},
        "hostile_flows:os.path.join": {"a": str(markers), "p": "join"},
    }


# (reference, error, words in the message)
REFUSED = [
    # attribute paths: only one name after the colon
    ("hostile_flows:os.system", FactoryNotFound, "one function name"),
    ("hostile_flows:os.path.join", FactoryNotFound, "one function name"),
    ("hostile_flows:subprocess.run", FactoryNotFound, "one function name"),
    ("hostile_flows:legit.__globals__", FactoryNotFound, "one function name"),
    # imported into an allowed module from elsewhere
    ("hostile_flows:system", FactoryNotAllowed, "a builtin (posix.system)"),
    ("hostile_flows:evaluate", FactoryNotAllowed, "a builtin (builtins.eval)"),
    ("hostile_flows:OrderedDict", FactoryNotAllowed, "a class (collections.OrderedDict)"),
    ("hostile_flows:imported_helper", FactoryNotAllowed, "defined in 'hostile_helpers'"),
    ("hostile_flows:touch_marker", FactoryNotAllowed, "defined in 'hostile_helpers'"),
    ("hostile_flows:disguised", FactoryNotAllowed, "defined in 'hostile_helpers'"),
    ("hostile_flows:os", FactoryNotAllowed, "a module (os)"),
    # defined here, but not a module-level function
    ("hostile_flows:DefinedHere", FactoryNotAllowed, "a class (hostile_flows.DefinedHere)"),
    ("hostile_flows:instance", FactoryNotAllowed, "hostile_flows._Callable object"),
    ("hostile_flows:pretend_function", FactoryNotAllowed, "_PretendFunction object"),
    ("hostile_flows:bound_method", FactoryNotAllowed, "a bound method"),
    ("hostile_flows:partial", FactoryNotAllowed, "functools.partial object"),
    ("hostile_flows:as_lambda", FactoryNotAllowed, "a lambda"),
    ("hostile_flows:closure", FactoryNotAllowed, "_make_runner.<locals>.runner"),
    ("hostile_flows:_private", FactoryNotAllowed, "private"),
    ("hostile_flows:__getattr__", FactoryNotAllowed, "private"),
    ("hostile_flows:__builtins__", FactoryNotAllowed, "private"),
    # names that are not there: the module's __getattr__ is not consulted
    ("hostile_flows:eval", FactoryNotFound, "no attribute 'eval'"),
    ("hostile_flows:anything", FactoryNotFound, "no attribute 'anything'"),
    # modules
    ("builtins:eval", FactoryNotAllowed, "outside the allowed module prefixes"),
    ("os:system", FactoryNotAllowed, "outside the allowed module prefixes"),
    ("hostile_flowsx:legit", FactoryNotAllowed, "outside the allowed module prefixes"),
    ("hostile_flows.__init__:legit", FactoryNotAllowed, "dunder"),
]


@pytest.mark.parametrize("ref, error, words", REFUSED, ids=[r for r, _, _ in REFUSED])
def test_hostile_reference_refused_before_anything_runs(ref, error, words, markers):
    args = hostile_args(markers).get(ref, {"command": f"touch {markers}/ran"})
    with pytest.raises(error) as err:
        resolve_factory(ref, ALLOW)
    assert words in str(err.value), str(err.value)
    assert err.value.factory == ref
    with pytest.raises(error):
        build_flow(ref, args, ALLOW)
    # the markers fixture asserts nothing ran


def test_refusal_messages_say_what_to_do():
    with pytest.raises(FactoryNotAllowed) as err:
        resolve_factory("hostile_flows:system", ALLOW)
    message = str(err.value)
    assert "'hostile_flows:system'" in message and "not a function" in message
    assert "'def' in an allowed module" in message
    assert err.value.reason and err.value.allowed == ALLOW
    with pytest.raises(FactoryNotAllowed, match="--allow"):
        resolve_factory("os:system", ALLOW)
    with pytest.raises(FactoryNotFound, match="package.module:function"):
        resolve_factory("hostile_flows:os.system", ALLOW)


@pytest.mark.parametrize("ref", [
    None, 42, b"hostile_flows:legit", ["hostile_flows:legit"],
    "hostile_flows:" + "a" * MAX_REF_LENGTH, "hostile_flows.x" * 100 + ":legit",
    "hostile_flows:legit\n", "hostile_flows:legit ", " hostile_flows:legit",
    "hostile_flows:légit", "hostile_flows:legit()", "hostile_flows:legit;x",
    "hostile_flows::legit", "hostile_flows:", ":legit", "hostile_flows.:legit",
    "hostile_flows:legit:x", "hostile_flows/legit", "",
], ids=repr)
def test_malformed_reference_is_not_found(ref):
    with pytest.raises(FactoryNotFound):
        resolve_factory(ref, ALLOW)


def test_refused_module_is_never_imported(markers):
    assert "never_imported" not in sys.modules
    with pytest.raises(FactoryNotAllowed):
        resolve_factory("never_imported:flow", ALLOW)
    with pytest.raises(FactoryNotAllowed):
        build_flow("never_imported:flow", {}, ("never",))       # whole components only
    with pytest.raises(FactoryNotAllowed):
        build_flow("never_imported:flow", {}, "never_importedx")
    assert "never_imported" not in sys.modules


def test_allowed_as_a_lone_string_is_one_prefix():
    assert is_allowed("hostile_flows", "hostile_flows")
    assert not is_allowed("h", "hostile_flows")
    with pytest.raises(FactoryNotAllowed):
        resolve_factory("h:f", "hostile_flows")      # not one prefix per letter
    assert resolve_factory("hostile_flows:legit", "hostile_flows.")


def test_prefix_semantics_kept():
    for prefix in ("myapp", "myapp.", "myapp.."):
        assert is_allowed("myapp", [prefix]) and is_allowed("myapp.flows", [prefix])
        assert not is_allowed("myappx", [prefix]) and not is_allowed("myappx.flows", [prefix])
    assert not is_allowed("myapp", ["", "."])
    assert not is_allowed(None, ["myapp"])


def test_legitimate_factories_resolve_and_build():
    import hostile_flows
    from jobboard.testing import flows as testing_flows

    assert resolve_factory("hostile_flows:legit", ALLOW) is hostile_flows.legit
    assert resolve_factory("hostile_flows:alias_of_legit", ALLOW) is hostile_flows.legit
    flow = build_flow("hostile_flows:legit", {"label": "x"}, ALLOW)
    assert isinstance(flow, flows.Flow) and flow.name == "legit-x"
    # Defined in another allowed module and imported here: fine when both are allowed ...
    assert resolve_factory("hostile_flows:noop", ALLOW_BOTH) is testing_flows.noop
    assert isinstance(build_flow("hostile_flows:noop", None, ALLOW_BOTH), (flows.Flow, Task))
    # ... refused when only the importing module is.
    with pytest.raises(FactoryNotAllowed, match="defined in 'jobboard.testing.flows'"):
        resolve_factory("hostile_flows:noop", ALLOW)


@pytest.mark.parametrize("ref, kind, reason", [
    ("hostile_flows:raises_system_exit", SystemExit, "factory called sys.exit"),
    ("hostile_flows:raises_keyboard_interrupt", KeyboardInterrupt, "factory interrupted"),
    ("hostile_flows:raises_generator_exit", GeneratorExit, "factory closed"),
])
def test_factory_raising_base_exception_is_flow_invalid(ref, kind, reason):
    with pytest.raises(FlowInvalid) as err:
        build_flow(ref, {}, ALLOW)
    assert f"{kind.__name__}: {reason}" in str(err.value)
    assert isinstance(err.value.__cause__, kind)


def test_factory_bad_args_or_junk_result_is_flow_invalid():
    with pytest.raises(FlowInvalid, match="TypeError"):
        build_flow("hostile_flows:legit", {"nope": 1}, ALLOW)
    with pytest.raises(FlowInvalid, match="not a flow"):
        build_flow("flows_for_tests:not_a_flow", None, ("flows_for_tests",))


# -- end to end: a real conductor keeps serving ------------------------------------

HOSTILE_E2E = [ref for ref, _, _ in REFUSED if not ref.startswith("hostile_flows.__")] + [
    "never_imported:flow",
    "hostile_flows:raises_system_exit",
    "hostile_flows:raises_keyboard_interrupt",
    "hostile_flows:raises_generator_exit",
]


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/logbook.db"


def post_hostile(board: Board, markers: Path, refs: list[str]) -> dict[str, str]:
    """Post each reference with args that would leave a marker; job ids by ref.

    The board may refuse a malformed reference (``hostile_flows:os.system``)
    at post already, with InvalidArgument (a ValueError): then there is no
    job, which is as good; the conductor's own refusal of such a reference is
    covered by the unit tests above (records from older clients could still
    carry one).
    """
    args = hostile_args(markers)
    posted = {}
    for ref in refs:
        default = {} if ":raises_" in ref else {"command": f"touch {markers}/ran"}
        try:
            posted[ref] = board.post(ref, args=args.get(ref, default)).uuid
        except ValueError:          # InvalidArgument is a ValueError
            pass
    return posted


def assert_hostile_failed(board: Board, posted: dict[str, str]) -> None:
    """Nothing hostile ran: a reference inside the allowed modules failed for
    good at its first claim; one whose module is outside them was given back
    (for a conductor that may import it) and parked DEAD once the refusals
    ran out, never run."""
    for ref, job_id in posted.items():
        outcome = board.wait(job_id, timeout=60)
        if "outside its --allow prefixes" in (outcome.reason or ""):
            assert outcome.state is JobState.DEAD, (ref, outcome)
            assert board.get(job_id).deaths == 0        # refusals, not deaths
            continue
        assert outcome.state is JobState.FAILED, (ref, outcome)
        assert ref in outcome.reason and ("not allowed" in outcome.reason
                                          or "cannot be loaded" in outcome.reason
                                          or "outside the allowed" in outcome.reason
                                          or "failed:" in outcome.reason), outcome.reason
        assert board.get(job_id).claims == 1           # failed for good, not retried


def test_conductor_refuses_hostile_jobs_and_keeps_serving(zk_hosts, sqlite_url, markers):
    with Board.connect(zk_hosts, root="/fleet") as board:
        before = [board.post("hostile_flows:legit", args={"label": f"b{n}"}).uuid
                  for n in range(2)]
        posted = post_hostile(board, markers, HOSTILE_E2E)
        after = [board.post("hostile_flows:noop").uuid,
                 board.post("hostile_flows:legit", args={"label": "after"}).uuid]

        conductor_board = Board.connect(zk_hosts, root="/fleet", session_timeout=4.0)
        logbook = Logbook(sqlite_url)
        # A short refusal backoff: the jobs outside --allow are parked after
        # their 5 refusals in a second, not in 20.
        conductor = Conductor(conductor_board, logbook, name="guard", concurrency=2,
                              allow=ALLOW_BOTH, refusal_backoff=0.2)
        thread = threading.Thread(target=conductor.run, daemon=True)
        thread.start()
        try:
            assert_hostile_failed(board, posted)
            reason = board.wait(posted["hostile_flows:raises_system_exit"], timeout=5).reason
            assert "SystemExit: factory called sys.exit" in reason
            for job_id in before + after:
                outcome = board.wait(job_id, timeout=60)
                assert outcome.ok, outcome
            assert thread.is_alive()
        finally:
            conductor.stop(graceful=False)
            assert conductor.wait(30), "conductor did not stop"
            conductor_board.close()
            logbook.close()
    assert "never_imported" not in sys.modules


def test_conductor_process_survives_hostile_jobs(zk_hosts, sqlite_url, markers, tmp_path):
    refs = ["hostile_flows:os.system", "hostile_flows:system", "hostile_flows:disguised",
            "hostile_flows:as_lambda", "never_imported:flow",
            "hostile_flows:raises_system_exit", "hostile_flows:raises_keyboard_interrupt"]
    pythonpath = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "JOBBOARD_ZK": zk_hosts, "JOBBOARD_ROOT": "/fleet",
           "JOBBOARD_LOGBOOK": sqlite_url, "PYTHONPATH": pythonpath}
    log_path = tmp_path / "conductor.log"
    with Board.connect(zk_hosts, root="/fleet") as board:
        posted = post_hostile(board, markers, refs)
        good = board.post("hostile_flows:legit", args={"label": "proc"}).uuid
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobboard", "conductor", "--name", "guard-proc",
                 "--allow", "hostile_flows", "--session-timeout", "2",
                 "--refusal-backoff", "0.2"],
                env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
        try:
            assert_hostile_failed(board, posted)
            assert board.wait(good, timeout=60).ok
            late = board.post("hostile_flows:legit", args={"label": "late"}).uuid
            assert board.wait(late, timeout=60).ok
            assert proc.poll() is None, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
