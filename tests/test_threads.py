"""ThreadCache: reuses idle threads, never lets a call that hangs hold up another."""

from __future__ import annotations

import threading

import pytest

from jobboard.testing.waiting import wait_until
from jobboard.threads import ThreadCache


def test_an_idle_thread_is_reused():
    cache = ThreadCache("t")
    first = cache.submit(threading.get_ident).result(5)
    assert wait_until(lambda: len(cache._idle) == 1, 5)
    assert cache.submit(threading.get_ident).result(5) == first


def test_a_call_that_hangs_keeps_its_thread_and_blocks_nothing():
    cache = ThreadCache("t")
    release = threading.Event()
    hung = cache.submit(release.wait, 30)
    try:
        assert cache.submit(lambda: "next").result(5) == "next"
        assert not hung.done()
    finally:
        release.set()
    assert hung.result(5) is True


def test_errors_reach_the_caller_base_exceptions_included():
    cache = ThreadCache("t")
    with pytest.raises(SystemExit):
        cache.submit(lambda: (_ for _ in ()).throw(SystemExit(3))).result(5)
    assert cache.submit(lambda: 1).result(5) == 1        # the thread survived


def test_idle_threads_end_after_the_idle_timeout():
    cache = ThreadCache("t", idle_timeout=0.2)
    ident = cache.submit(threading.get_ident).result(5)
    assert wait_until(lambda: not any(t.ident == ident for t in threading.enumerate()), 5)
    assert cache._idle == []
    assert cache.submit(lambda: 2).result(5) == 2
