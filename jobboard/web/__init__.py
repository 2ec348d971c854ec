"""The admin console: ``jobboard web`` (install with ``pip install jobboard[web]``).

A small ASGI application (Starlette, served by uvicorn) with server-rendered
Jinja2 page shells and one script of plain JavaScript that draws them from
the console's own JSON API and redraws what a ZooKeeper watch says changed
(server-sent events). Nothing is fetched from elsewhere at run time.

* :mod:`jobboard.web.listing` -- the jobs table: filters, counts, paging
  through sorted znode names (fast with 100,000 waiting jobs);
* :mod:`jobboard.web.documents` -- a job with history and logbook timeline,
  claims, conductors, as JSON documents;
* :mod:`jobboard.web.live` -- watches to topics for server-sent events;
* :mod:`jobboard.web.access`, :mod:`jobboard.web.guard` -- HTTP access
  (token or basic auth from a file), CSRF and origin checks;
* :mod:`jobboard.web.app` -- routes and the API (documented there); its
  admin actions are the CLI's own (:mod:`jobboard.cli.admin_actions`, by the
  table in :mod:`jobboard.cli.admin_rules`);
* :mod:`jobboard.web.command` -- the click command.

How it fails: see each module; importing this package needs only the core
dependencies (the web ones are imported by :mod:`~jobboard.web.app` and the
command when they run).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "web"]


def __getattr__(name: str) -> Any:
    # Starlette and uvicorn are optional (the `web` extra): import them on use.
    if name == "create_app":
        from jobboard.web.app import create_app
        return create_app
    if name == "web":
        from jobboard.web.command import web
        return web
    raise AttributeError(name)
