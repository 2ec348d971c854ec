"""Translating kazoo's errors into jobboard's, for every module that talks to
ZooKeeper (the board and the locks), so the public API never leaks them."""

from __future__ import annotations

import contextlib
from typing import Iterator

from kazoo.exceptions import (ConnectionLoss, KazooException, NoAuthError,
                              OperationTimeoutError, SessionExpiredError, ZookeeperError)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import RetryFailedError

from jobboard.errors import BoardError, BoardUnavailable

_UNAVAILABLE = (ConnectionLoss, SessionExpiredError, OperationTimeoutError, RetryFailedError,
                KazooTimeoutError)


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn kazoo errors raised inside the block into jobboard errors: missing
    credentials and server refusals -> BoardError; connection loss, expired
    session (including a closed client), timeouts (kazoo's, and a bounded
    client's :class:`~jobboard.zkhandler.CallTimeout`) -> BoardUnavailable."""
    try:
        yield
    except NoAuthError as exc:
        raise BoardError(f"{action}: not authorized; pass the board's credentials "
                         "(--auth-file or JOBBOARD_AUTH)") from exc
    except _UNAVAILABLE as exc:
        raise BoardUnavailable(f"{action}: ZooKeeper unavailable ({type(exc).__name__})") from exc
    except ZookeeperError as exc:
        raise BoardError(f"{action}: ZooKeeper refused ({type(exc).__name__})") from exc
    except KazooException as exc:
        raise BoardUnavailable(f"{action}: ZooKeeper unavailable ({type(exc).__name__})") from exc
