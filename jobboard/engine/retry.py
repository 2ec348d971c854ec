"""Retry policies for tasks, built on tenacity's stop and wait strategies.

A :class:`Retry` answers two questions for the engine: may a task that
failed with this exception on attempt *n* run again, and how long to wait
first. It never runs anything itself, so the engine keeps recording each
attempt (``AtomDetail.attempts``, state ``RETRYING`` in between) in the
logbook. ``sleep`` is injectable so tests need not wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import tenacity
from tenacity import stop_after_attempt, wait_exponential, wait_exponential_jitter

from jobboard.errors import Cancelled

__all__ = ["Retry"]



class Retry:
    """How often, on what, and with which delays a task is tried again.

    Args:
        attempts: Total attempts, the first included (``attempts=3``: two retries).
        backoff: Initial delay in seconds, doubled after each attempt.
        max_delay: Upper bound of one delay, in seconds.
        jitter: Add up to ``backoff`` seconds of random jitter to each delay.
        on: Exception classes to retry, or a predicate taking the exception.
            Anything else fails the task at once.
        sleep: The function that waits (``time.sleep`` by default).
        stop: An extra tenacity stop strategy, or-ed with the attempt limit
            (for example ``tenacity.stop_after_delay(60)``).
        wait: A tenacity wait strategy replacing ``backoff``/``max_delay``/``jitter``.
    """

    def __init__(self, attempts: int = 3, *, backoff: float = 0.5, max_delay: float = 30.0,
                 jitter: bool = True, on: Any = (Exception,),
                 sleep: Callable[[float], None] | None = None,
                 stop: tenacity.stop.stop_base | None = None,
                 wait: tenacity.wait.wait_base | None = None) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.attempts = attempts
        self.on = on
        self.sleep = sleep or time.sleep
        self._stop = stop_after_attempt(attempts) if stop is None else stop_after_attempt(attempts) | stop
        if wait is not None:
            self._wait = wait
        elif jitter and backoff > 0:
            self._wait = wait_exponential_jitter(multiplier=backoff, max=max_delay, jitter=backoff)
        else:
            self._wait = wait_exponential(multiplier=backoff, max=max_delay)

    @staticmethod
    def _state(attempt: int, first_attempt_at: float | None) -> tenacity.RetryCallState:
        # Wall-clock times: the first attempt's is kept in the logbook, so a
        # time limit holds across a conductor restart.
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        state.outcome_timestamp = time.time()
        state.start_time = state.outcome_timestamp if first_attempt_at is None \
            else first_attempt_at
        return state

    def matches(self, exc: BaseException) -> bool:
        """Whether ``exc`` is of a kind this policy retries."""
        if isinstance(exc, Cancelled) or not isinstance(exc, Exception):
            return False
        if isinstance(self.on, type) or isinstance(self.on, tuple):
            return isinstance(exc, self.on)
        return bool(self.on(exc))

    def should_retry(self, exc: BaseException | None, attempt: int,
                     first_attempt_at: float | None = None) -> bool:
        """Whether to try again after ``attempt`` (1-based) failed with ``exc``.

        ``exc`` is None when only the attempt count is known (a failure
        read back from the logbook after a restart). ``first_attempt_at``
        (epoch seconds) is when the task's first attempt started: time limits
        (``stop_after_delay``) count from it.
        """
        if exc is not None and not self.matches(exc):
            return False
        return not self._stop(self._state(attempt, first_attempt_at))

    def delay(self, attempt: int, first_attempt_at: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return max(0.0, float(self._wait(self._state(attempt, first_attempt_at))))

    def __repr__(self) -> str:
        return f"Retry(attempts={self.attempts}, on={self.on!r})"
