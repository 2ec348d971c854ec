"""Notifications: learning that jobs finished, and telling other systems.

- :func:`on_finished` / :func:`wait_many` (:mod:`jobboard.notify.finished`):
  a callback when a job finishes, or a wait for many, on ZooKeeper watches
  (``Board.on_finished`` and ``Board.wait_many`` call these);
- publishers, listeners of the :class:`~jobboard.events.Notifier`:
  :class:`WebhookPublisher` POSTs one JSON document per finished job
  (``jobboard conductor --notify-url``), :class:`LogPublisher` writes one
  structured log line per event of interest. The metrics are the third
  listener (:meth:`jobboard.metrics.Metrics.listener`);
- :func:`verify_signature` (:mod:`jobboard.notify.signing`): a receiver's
  check of a signed webhook request (``--notify-secret-file``).
"""

from jobboard.notify._dispatch import Dispatcher
from jobboard.notify.finished import FinishedWatch, on_finished, wait_many
from jobboard.notify.log import LogPublisher
from jobboard.notify.signing import verify_signature
from jobboard.notify.webhook import Backoff, WebhookPublisher, document_of

__all__ = ["Backoff", "Dispatcher", "FinishedWatch", "LogPublisher", "WebhookPublisher",
           "document_of", "on_finished", "verify_signature", "wait_many"]
