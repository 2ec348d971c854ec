"""Job records are validated when read: whatever bytes a znode holds,
``Job.decode`` returns a fully valid Job or raises MalformedData.

Pure unit tests, no ZooKeeper: records are built here, byte by byte.
"""

from __future__ import annotations

import json
import math
import uuid

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jobboard.board.job import (FACTORY_MAX_LENGTH, FACTORY_PATTERN, NAME_MAX_LENGTH,
                                REQUIRED_FIELDS, TIMESTAMP_MAX, Job, JobOutcome,
                                check_factory, check_job_id, is_job_id, new_job_id)
from jobboard.board.layout import PRIORITY_MAX, PRIORITY_MIN
from jobboard.errors import InvalidArgument, MalformedData
from jobboard.serialization import FORMAT_VERSION, MAX_DEPTH, dumps, loads, unpack_record
from jobboard.states import JobState

PATH = "/jobboard/jobs/ab/record"
bounded = settings(max_examples=200, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# -- helpers -------------------------------------------------------------------


def valid_body(**changes) -> dict:
    """A record body as the board writes it (before the envelope)."""
    job = Job(uuid="0123abcd-0000-4000-8000-00000000beef", name="provision",
              factory="myapp.flows:provision", args={"region": "eu"}, store={"x": [1, 2]},
              priority=3, key="k", details={"by": "test"}, created_at=1_700_000_000.5,
              history=({"at": 1_700_000_000.5, "event": "posted"},))
    return {**job.to_dict(), **changes}


def record(body: dict, *, version=FORMAT_VERSION) -> bytes:
    return msgpack.packb({"v": version, **body}, use_bin_type=True)


def nested(depth: int, leaf=0):
    value = leaf
    for _ in range(depth - 1):   # the leaf's container counts as one level
        value = [value]
    return [value]


def decode_or_malformed(data: bytes) -> Job | None:
    """Decode; None when refused. Anything but MalformedData fails the test."""
    try:
        job = Job.decode(data, path=PATH)
    except MalformedData as exc:
        assert exc.path == PATH
        return None
    assert_valid(job)
    return job


def assert_valid(job: Job) -> None:
    """Every invariant inner code relies on, for a decoded job."""
    def number(value) -> bool:
        return type(value) is float and math.isfinite(value) and 0 <= value <= TIMESTAMP_MAX

    def str_keyed(value) -> bool:
        return type(value) is dict and all(type(k) is str for k in value)

    assert is_job_id(job.uuid) and job.uuid == job.uuid.lower()
    assert type(job.name) is str and len(job.name) <= NAME_MAX_LENGTH
    assert type(job.factory) is str and len(job.factory) <= FACTORY_MAX_LENGTH
    assert FACTORY_PATTERN.fullmatch(job.factory)
    assert str_keyed(job.args) and str_keyed(job.store) and str_keyed(job.details)
    assert type(job.priority) is int and PRIORITY_MIN <= job.priority <= PRIORITY_MAX
    assert job.not_before is None or number(job.not_before)
    assert number(job.created_at)
    assert job.claimed_at is None or number(job.claimed_at)
    assert job.finished_at is None or number(job.finished_at)
    assert isinstance(job.state, JobState)
    assert type(job.claims) is int and job.claims >= 0
    for text in (job.key, job.owner, job.transfer_to):
        assert text is None or type(text) is str
    assert job.outcome is None or str_keyed(job.outcome)
    assert type(job.history) is tuple
    for entry in job.history:
        assert str_keyed(entry) and number(entry["at"]) and type(entry["event"]) is str
    # What inner code does with a job must not trip over it:
    max(job.created_at, job.not_before or 0)
    JobOutcome.of(job)
    json.dumps(job.to_dict(), default=str)
    repr(job)
    again = job.with_event("checked").encode()
    assert Job.decode(job.encode()).encode() == job.encode()
    assert Job.decode(again).history[-1]["event"] == "checked"


# -- strategies ------------------------------------------------------------------

timestamps = st.floats(min_value=0, max_value=TIMESTAMP_MAX) | st.integers(0, 2**33)
plain_leaves = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
                | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
plain_values = st.recursive(plain_leaves, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                            max_leaves=6)
plain_maps = st.dictionaries(st.text(max_size=10), plain_values, max_size=3)
identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
maybe_text = st.none() | st.text(max_size=20)
history_entries = st.fixed_dictionaries(
    {"at": st.floats(min_value=0, max_value=TIMESTAMP_MAX), "event": st.text(max_size=10)},
    optional={"owner": st.text(max_size=10)})
outcomes = st.none() | st.fixed_dictionaries({}, optional={
    "results": st.none() | plain_maps, "failure": st.none() | plain_maps,
    "reason": maybe_text, "flow_state": st.text(max_size=10)})
floats_or_none = st.none() | st.floats(min_value=0, max_value=TIMESTAMP_MAX)

valid_jobs = st.builds(
    Job,
    uuid=st.uuids().map(str),
    name=st.text(max_size=40),
    factory=st.builds("{}:{}".format, st.lists(identifiers, min_size=1, max_size=3).map(".".join),
                      identifiers),
    args=plain_maps, store=plain_maps, details=plain_maps,
    priority=st.integers(PRIORITY_MIN, PRIORITY_MAX),
    not_before=floats_or_none, key=maybe_text,
    created_at=st.floats(min_value=0, max_value=TIMESTAMP_MAX),
    state=st.sampled_from(JobState), claims=st.integers(0, 2**64 - 1),
    owner=maybe_text, claimed_at=floats_or_none, finished_at=floats_or_none,
    outcome=outcomes, transfer_to=maybe_text,
    history=st.lists(history_entries, max_size=4).map(tuple),
)

# Anything msgpack can pack, including what jobboard never writes: huge ints,
# NaN, int keys, extension types and timestamps.
any_leaves = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
              | st.binary(max_size=20)
              | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
              | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1),
                          st.integers(0, 999_999_999)))
any_values = st.recursive(any_leaves, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8) | st.integers(), inner,
                                            max_size=4),
                          max_leaves=10)
field_names = st.sampled_from(sorted(valid_body())) | st.text(max_size=8)


def packed(value) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):   # e.g. ints beyond 64 bits
        assume(False)
        raise AssertionError("unreachable")


# -- properties: any input -> a valid Job or MalformedData ------------------------------


@bounded
@given(st.binary())
def test_any_bytes_decode_to_a_valid_job_or_malformed(data):
    decode_or_malformed(data)


@bounded
@given(valid_jobs, st.data())
def test_damaged_records_decode_to_a_valid_job_or_malformed(job, data):
    raw = bytearray(job.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    decode_or_malformed(bytes(raw[:cut]))


@bounded
@given(any_values)
def test_any_msgpack_value_decodes_to_a_valid_job_or_malformed(value):
    decode_or_malformed(packed(value))


@bounded
@given(st.dictionaries(st.text(max_size=10) | st.integers(), any_values, max_size=6))
def test_any_enveloped_map_decodes_to_a_valid_job_or_malformed(body):
    decode_or_malformed(packed({"v": 1, **body}))


@bounded
@given(st.dictionaries(field_names, any_values, min_size=1, max_size=3))
def test_corrupted_fields_decode_to_a_valid_job_or_malformed(changes):
    decode_or_malformed(packed({"v": 1, **valid_body(**changes)}))


@bounded
@given(valid_jobs)
def test_valid_jobs_round_trip(job):
    decoded = Job.decode(job.encode(), path=PATH, job_id=job.uuid)
    assert decoded == job
    assert_valid(decoded)


# -- each field: wrong type or range -> MalformedData naming the field --------------------

BAD_FIELDS = [
    ("uuid", 123), ("uuid", "not-a-uuid"), ("uuid", "0123ABCD-0000-4000-8000-00000000BEEF"),
    ("uuid", "0123abcd000040008000" "00000000beef"), ("uuid", b"0123abcd"),
    ("name", 5), ("name", None), ("name", "x" * (NAME_MAX_LENGTH + 1)), ("name", b"name"),
    ("factory", "no-colon"), ("factory", "a b:c"), ("factory", "a.b:c:d"),
    ("factory", "1a:b"), ("factory", "a.:b"), ("factory", "a.b:c\n"), ("factory", 7),
    ("factory", "m" * FACTORY_MAX_LENGTH + ":f"),
    ("args", []), ("args", None), ("args", {b"k": 1}), ("args", "k=v"),
    ("store", "s"), ("store", {b"k": 1}),
    ("details", None), ("details", [1]),
    ("priority", True), ("priority", 1.0), ("priority", "1"), ("priority", None),
    ("priority", PRIORITY_MAX + 1), ("priority", PRIORITY_MIN - 1), ("priority", 2**63),
    ("not_before", "soon"), ("not_before", True), ("not_before", math.nan),
    ("not_before", math.inf), ("not_before", -1), ("not_before", [1]),
    ("not_before", TIMESTAMP_MAX * 2),
    ("key", 5), ("key", b"k"),
    ("created_at", None), ("created_at", "now"), ("created_at", math.inf),
    ("created_at", math.nan), ("created_at", False), ("created_at", -5), ("created_at", 1e300),
    ("state", "WHATEVER"), ("state", "unclaimed"), ("state", 1), ("state", None),
    ("claims", -1), ("claims", 1.5), ("claims", True), ("claims", "3"), ("claims", None),
    ("owner", 5), ("owner", b"me"),
    ("transfer_to", 5), ("transfer_to", []),
    ("claimed_at", "x"), ("claimed_at", math.inf),
    ("finished_at", "x"), ("finished_at", -math.inf),
    ("outcome", "done"), ("outcome", [1]), ("outcome", {"results": [1]}),
    ("outcome", {"failure": "boom"}), ("outcome", {"reason": 5}), ("outcome", {b"r": 1}),
    ("history", "x"), ("history", None), ("history", {"at": 1, "event": "x"}), ("history", [5]),
    ("history", [{"at": 1.0}]), ("history", [{"event": "posted"}]),
    ("history", [{"at": "now", "event": "x"}]), ("history", [{"at": 1, "event": 5}]),
    ("history", [{"at": 1, "event": "x", b"owner": "me"}]),
]


@pytest.mark.parametrize(("name", "value"), BAD_FIELDS,
                         ids=[f"{n}={v!r}"[:50] for n, v in BAD_FIELDS])
def test_a_bad_field_is_malformed_and_named(name, value):
    with pytest.raises(MalformedData) as info:
        Job.decode(record(valid_body(**{name: value})), path=PATH)
    assert f"'{name}'" in str(info.value)
    assert info.value.path == PATH


@pytest.mark.parametrize("name", REQUIRED_FIELDS)
def test_a_missing_required_field_is_malformed_and_named(name):
    body = valid_body()
    del body[name]
    with pytest.raises(MalformedData, match=name) as info:
        Job.decode(record(body), path=PATH)
    assert info.value.path == PATH


def test_absent_optional_fields_take_their_defaults():
    body = {name: value for name, value in valid_body().items() if name in REQUIRED_FIELDS}
    job = Job.decode(record(body))
    assert (job.not_before, job.key, job.details, job.claims, job.owner, job.claimed_at,
            job.finished_at, job.outcome, job.transfer_to, job.history) == (
        None, None, {}, 0, None, None, None, None, None, ())


def test_numbers_are_stored_as_floats_and_ints():
    job = Job.decode(record(valid_body(created_at=1_700_000_000, not_before=1_700_000_100,
                                       claimed_at=5, finished_at=6,
                                       history=[{"at": 7, "event": "posted"}])))
    for stamp in (job.created_at, job.not_before, job.claimed_at, job.finished_at,
                  job.history[0]["at"]):
        assert type(stamp) is float
    assert type(job.priority) is int and type(job.claims) is int


def test_unknown_fields_are_ignored():
    body = valid_body(future_field={"anything": [1]}, **{"tenant": "q"})
    job = Job.decode(msgpack.packb({"v": 1, **body, b"bytes-key": 1}, use_bin_type=True))
    assert job == Job.decode(record(valid_body()))


def test_the_record_must_name_its_znode():
    job = Job(uuid=new_job_id(), name="n", factory="m:f")
    assert Job.decode(job.encode(), path=PATH, job_id=job.uuid) == job
    for other in (new_job_id(), job.uuid.upper(), "", "x"):
        with pytest.raises(MalformedData, match="uuid") as info:
            Job.decode(job.encode(), path=PATH, job_id=other)
        assert info.value.path == PATH


# -- the envelope and msgpack itself ---------------------------------------------------

BAD_ENVELOPES = {
    "empty": b"",
    "none": None,
    "not bytes": "a str",
    "not a map": msgpack.packb([1, 2]),
    "no version": msgpack.packb(valid_body()),
    "version 2": record(valid_body(), version=2),
    "version True": record(valid_body(), version=True),
    "version 1.0": record(valid_body(), version=1.0),
    "version '1'": record(valid_body(), version="1"),
    "trailing bytes": record(valid_body()) + b"\x00",
    "truncated": record(valid_body())[:-3],
    "invalid utf-8": b"\x82\xa1v\x01\xa4uuid\xa3\xff\xfe\xfd",
    "int map key": msgpack.packb({"v": 1, 5: "x"}),
    "float map key": msgpack.packb({"v": 1, 1.5: "x"}),
    "ext type": record(valid_body(args={"x": msgpack.ExtType(5, b"abc")})),
    "empty ext type": record(valid_body()).replace(b"\xa2eu", b"\xc7\x00\x05"),
    "timestamp": record(valid_body(args={"at": msgpack.Timestamp(1, 0)})),
    "bad timestamp": record(valid_body()).replace(b"\xa2eu", b"\xc7\x00\xff"),
    "nested too deeply": record(valid_body(args={"x": nested(MAX_DEPTH)})),
    "overflowing the unpacker": record(valid_body()).replace(
        b"\xa2eu", b"\x91" * 5000 + b"\x00"),
    "reserved byte": b"\xc1",
}


@pytest.mark.parametrize("data", list(BAD_ENVELOPES.values()), ids=list(BAD_ENVELOPES))
def test_bad_envelopes_are_malformed(data):
    with pytest.raises(MalformedData) as info:
        Job.decode(data, path=PATH)
    assert info.value.path == PATH


def test_loads_accepts_exactly_the_nesting_it_can_return():
    assert loads(dumps(nested(MAX_DEPTH))) == nested(MAX_DEPTH)
    for depth in (MAX_DEPTH + 1, 1025, 100_000):
        with pytest.raises(MalformedData, match="nested"):
            loads(b"\x91" * (depth - 1) + b"\x90", path=PATH)
    deep_map = b"\x81\xa1k" * (MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(MalformedData, match="nested"):
        loads(deep_map)


def test_a_job_nested_as_deep_as_allowed_still_works():
    body = valid_body(args={"x": nested(MAX_DEPTH - 2)})   # record > args > x
    job = Job.decode(record(body))
    assert_valid(job)


def test_dumps_still_refuses_what_msgpack_cannot_encode():
    with pytest.raises(MalformedData):
        dumps({"obj": object()})
    with pytest.raises(MalformedData):
        dumps(2**64)
    assert loads(dumps({"a": (1, 2), "b": b"x"})) == {"a": [1, 2], "b": b"x"}


def test_unpack_record_checks_required_fields():
    assert unpack_record(dumps({"v": 1, "a": 1}), ("a",)) == {"a": 1}
    with pytest.raises(MalformedData, match="lacks"):
        unpack_record(dumps({"v": 1}), ("a",), path=PATH)


# -- job ids and factories -------------------------------------------------------


@pytest.mark.parametrize("garbage", ["", "nope", "0123abcd-0000-4000-8000", 123, None,
                                     b"0123abcd-0000-4000-8000-00000000beef", [], 1.5,
                                     "x" * 10_000])
def test_check_job_id_refuses_garbage(garbage):
    with pytest.raises(InvalidArgument) as info:
        check_job_id(garbage)
    assert info.value.argument == "job_id"
    assert isinstance(info.value, ValueError)   # old `except ValueError` callers
    assert not is_job_id(garbage)


def test_check_job_id_returns_the_canonical_form():
    job_id = new_job_id()
    assert check_job_id(job_id) == job_id and is_job_id(job_id)
    assert check_job_id(job_id.upper()) == job_id and not is_job_id(job_id.upper())
    assert check_job_id(uuid.UUID(job_id).hex) == job_id
    assert check_job_id("{" + job_id + "}") == job_id


def test_check_factory():
    assert check_factory("pkg.mod:func") == "pkg.mod:func"
    assert check_factory("_m:_f") == "_m:_f"
    for bad in ("no-colon", "a b:c", "a.b:", ":f", "a..b:f", "a:b.c", 5, None,
                "m" * FACTORY_MAX_LENGTH + ":f"):
        with pytest.raises(InvalidArgument) as info:
            check_factory(bad)
        assert info.value.argument == "factory"
