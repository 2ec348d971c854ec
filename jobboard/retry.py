"""Named retry policies, in one place.

Only transient errors are retried. ZooKeeper connection loss is retried by
kazoo's own ``KazooRetry`` inside the board (see ``jobboard.board``); these
tenacity policies cover the database and task retries, and are never stacked
on top of kazoo's retry for the same call.
"""

from __future__ import annotations

from typing import Callable

import tenacity
from tenacity import (retry_if_exception, stop_after_attempt, stop_before_delay,
                      wait_exponential_jitter)


def database_retry(is_transient: Callable[[BaseException], bool], *,
                   attempts: int = 6, max_delay: float = 20.0,
                   sleep: Callable[[float], None] = tenacity.nap.sleep) -> tenacity.Retrying:
    """Policy for database calls: dropped connections, deadlocks, serialization
    failures. Bounded by attempts and total time: no new attempt starts when
    its backoff would end past ``max_delay`` seconds from the first one, so a
    call gives up within ``max_delay`` plus the duration of one attempt (which
    the database driver's timeouts bound). Re-raises the last error."""
    return tenacity.Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts) | stop_before_delay(max_delay),
        wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.1),
        sleep=sleep,
        reraise=True,
    )
