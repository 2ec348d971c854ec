"""The console as a Starlette application: pages, the JSON API, live events.

Pages (server-rendered Jinja2 shells; ``static/console.js`` fills them from
the JSON API below and re-reads what they show when an event names it):

* ``/jobs`` -- the jobs table with filters, counts per state, paging;
* ``/jobs/{id}`` -- one job: record, history, actions, logbook timeline;
* ``/claims`` -- claims (who holds what since when, the running task) and
  conductors (host, pid, slots in use, readiness);
* ``/login`` -- sign in with a token (when an access file is used).

JSON API (every document is one JSON object; errors are
``{"error": "one line"}`` with status 400 bad argument, 401 no
credentials, 403 refused by ``--read-only`` or a missing CSRF token, 404 no
such job, 409 the action is not allowed in the job's state, 422 a malformed
record, 503 ZooKeeper unreachable):

* ``GET /api`` -- this list, as JSON.
* ``GET /api/jobs?state=&priority=&factory=&queue=&q=&min_age=&max_age=&limit=50&cursor=``
  -- ``{"jobs": [job...], "next_cursor": str|null, "scanned": n, "partial": bool,
  "order": "claim order"|"uuid", "filter": {...}}``; each job has the fields of
  ``jobboard jobs --json`` plus ``queue``. ``q`` matches a name substring or a
  uuid prefix; ages are seconds since posting. Pass ``next_cursor`` back as
  ``cursor`` for the next page.
* ``GET /api/counts`` -- jobs per state from znode stats: ``UNCLAIMED``,
  ``CLAIMED``, ``DEAD``, ``FINISHED`` (COMPLETE + FAILED + CANCELLED),
  ``total``, ``delayed``, ``waiting_by_priority``, ``oldest_waiting_age``.
* ``GET /api/jobs/{id}`` -- one job (a full id or a unique prefix): the
  record, ``holder``, ``cancel_requested``, ``history``, ``actions``
  (``{action: null | why not}``) and ``logbook``: ``{"attempts": [{"attempt",
  "name", "state", "created_at", "updated_at", "tasks": [{"name", "kind",
  "state", "attempts", "started_at", "finished_at", "duration", "progress",
  "note", "heartbeat_at", "result", "failure": {"exc_type", "message",
  "traceback"}|null, "revert_failure"}]}], "error": null|str}``.
* ``POST /api/jobs/{id}/{action}`` with ``action`` one of ``transfer``,
  ``abandon``, ``cancel``, ``retry``, ``trash``, ``suspend``, ``resume``; JSON body ``{"to": OWNER}``
  for a transfer; header ``X-CSRF-Token`` (the page's token) unless the
  request carries credentials itself -- ``{"ok": true, "message": str}``.
* ``GET /api/claims`` -- ``{"claims": [{"job_id", "name", "owner", "since",
  "token", "task", "progress", "note", "heartbeat_at"}], "logbook_error"}``.
* ``GET /api/conductors`` -- ``{"conductors": [{"name", "host", "pid",
  "started_at", "version", "concurrency", "jobs", "slots_in_use", "queues",
  "ready", "reason", "not_ready_since"}]}``.
* ``GET /api/events?job=ID...`` -- server-sent events: ``event: change``
  with ``data: {"topics": [...]}`` (topics of :mod:`jobboard.web.live`, plus
  ``logbook:<id>`` when a followed job's logbook changed).

All times are epoch seconds. Board and logbook reads run in Starlette's
thread pool (kazoo and SQLAlchemy calls block).

How it fails: see the status codes above; the app never shows a traceback
to the browser (unexpected errors are logged and answered with 500).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import parse_qs

from kazoo.exceptions import KazooException
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from jobboard.board import Board
from jobboard.cli.admin_actions import Refused, perform
from jobboard.cli.admin_rules import Action
from jobboard.errors import (BoardUnavailable, InvalidArgument, JobBoardError, JobNotFound,
                             MalformedData)
from jobboard.web.access import Access, AccessKeys
from jobboard.board.job import is_job_id
from jobboard.board.lookup import resolve_job_id
from jobboard.web.documents import (LogbookReader, claims_document, conductors_document,
                                    job_document, job_summary)
from jobboard.web.guard import LOGIN_COOKIE, Guard, cookie_header
from jobboard.web.listing import JobFilter, list_jobs, state_counts
from jobboard.web.live import LiveFeed, Subscriber

__all__ = ["create_app", "API"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE = 15.0
#: Seconds between checks of a followed job's logbook (it has no watches).
LOGBOOK_POLL = 1.0

#: The API, as ``GET /api`` lists it.
API = {
    "GET /api/jobs": "jobs page: state, priority, factory, queue, q, min_age, max_age, "
                     "limit, cursor -> jobs, next_cursor, scanned, partial, order",
    "GET /api/counts": "jobs per state from znode stats",
    "GET /api/jobs/{id}": "one job (id or unique prefix): record, holder, history, "
                          "actions, logbook timeline",
    "POST /api/jobs/{id}/{action}": "transfer (body {\"to\": owner}), abandon, cancel, "
                                    "retry, trash, suspend, resume; header X-CSRF-Token",
    "GET /api/claims": "claims with the running task, progress and heartbeat",
    "GET /api/conductors": "live conductors with host, pid, slots in use, readiness",
    "GET /api/events?job=ID": "server-sent events: change {topics}",
}


class _JSON(JSONResponse):
    """JSON whose values may include what msgpack carries (bytes, tuples)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_plain, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def _error(status: int, message: str) -> _JSON:
    return _JSON({"error": " ".join(str(message).split())}, status_code=status)


def _status_of(exc: Exception) -> int:
    if isinstance(exc, InvalidArgument):
        return 400
    if isinstance(exc, JobNotFound):
        return 404
    if isinstance(exc, MalformedData):
        return 422
    if isinstance(exc, (BoardUnavailable, KazooException)):
        return 503
    return 409


def create_app(board: Board, logbook_url: str, *, read_only: bool = False,
               access: Access | None = None, keys: AccessKeys | None = None,
               live: bool = True) -> Guard:
    """The console for ``board`` and its logbook, as an ASGI application.

    Args:
        board: a connected board (the caller owns it and closes it).
        logbook_url: the logbook's SQLAlchemy URL (read only; never created).
        read_only: refuse every action (403) and show none.
        access: the credentials HTTP clients must present; None: open
            (serve it on a loopback address only, see
            :func:`jobboard.web.access.check_bind`).
        keys: the secret of CSRF tokens and login cookies (default: new).
        live: watch the board for server-sent events.
    """
    keys = keys or AccessKeys()
    logbook = LogbookReader(logbook_url)
    feed = LiveFeed(board) if live else None
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    def page(name: str, **context: Any) -> Callable[[Request], Response]:
        def render(request: Request) -> Response:
            return templates.TemplateResponse(request, name, {
                "csrf_token": request.state.csrf_token, "read_only": read_only,
                "page": name.removesuffix(".html"), "logins": access is not None,
                **{key: make(request) for key, make in context.items()}})
        return render

    def api(read: Callable[[Request], Any]) -> Callable[[Request], Response]:
        """A JSON endpoint; board and logbook errors become statuses."""
        def endpoint(request: Request) -> Response:
            try:
                return _JSON(read(request))
            except (JobBoardError, KazooException) as exc:
                return _error(_status_of(exc), str(exc) or type(exc).__name__)
        return endpoint

    def jobs(request: Request) -> dict[str, Any]:
        query = dict(request.query_params)
        filt = JobFilter.from_query(query)
        try:
            limit = int(query.get("limit") or 50)
        except ValueError:
            raise InvalidArgument("limit must be a number", argument="limit") from None
        found = list_jobs(board, filt, cursor=query.get("cursor") or None, limit=limit)
        return {"jobs": [job_summary(j) for j in found.jobs], "next_cursor": found.next_cursor,
                "scanned": found.scanned, "partial": found.partial, "order": found.order,
                "filter": filt.to_query()}

    def one_job(request: Request) -> dict[str, Any]:
        return job_document(board, logbook, request.path_params["job_id"])

    async def act(request: Request) -> Response:
        if read_only:
            return _error(403, "this console is read-only (--read-only): no actions")
        try:
            action = Action(request.path_params["action"])
        except ValueError:
            return _error(404, f"no action {request.path_params['action']!r}; one of "
                               + ", ".join(a.value for a in Action))
        body = await request.body()
        try:
            document = json.loads(body) if body.strip() else {}
        except ValueError:
            return _error(400, "the body must be JSON, e.g. {\"to\": \"conductor-name\"}")
        to = document.get("to") if isinstance(document, dict) else None

        def run() -> str:
            job_id = resolve_job_id(board, request.path_params["job_id"])
            return perform(board, action, job_id,
                           to=to if isinstance(to, str) else None).message

        try:
            message = await run_in_threadpool(run)
        except (JobBoardError, KazooException) as exc:
            status = 409 if isinstance(exc, Refused) else _status_of(exc)
            return _error(status, str(exc) or type(exc).__name__)
        log.info("console action %s on %s: %s", action, request.path_params["job_id"], message)
        return _JSON({"ok": True, "message": message})

    async def events(request: Request) -> Response:
        if feed is None:
            return _error(404, "live updates are off")
        job_ids = [j for j in request.query_params.getlist("job") if is_job_id(j)][:200]
        subscriber = Subscriber(asyncio.get_running_loop())
        feed.subscribe(subscriber, job_ids)
        follow_logbook = job_ids[:1] if request.query_params.get("logbook") else []

        async def stream() -> AsyncIterator[bytes]:
            marks: dict[str, Any] = {}
            for job_id in follow_logbook:
                marks[job_id] = await run_in_threadpool(logbook.fingerprint, job_id)
            last_sent = time.monotonic()
            try:
                yield b"retry: 1000\n\n"
                while not await request.is_disconnected():
                    wait = LOGBOOK_POLL if follow_logbook else 1.0
                    topics = await subscriber.take(wait)
                    for job_id in follow_logbook:
                        mark = await run_in_threadpool(logbook.fingerprint, job_id)
                        if mark != marks.get(job_id):
                            marks[job_id] = mark
                            topics.add(f"logbook:{job_id}")
                    if topics:
                        data = json.dumps({"topics": sorted(topics)})
                        yield f"event: change\ndata: {data}\n\n".encode()
                        last_sent = time.monotonic()
                    elif time.monotonic() - last_sent > KEEPALIVE:
                        yield b": keep-alive\n\n"
                        last_sent = time.monotonic()
            finally:
                feed.unsubscribe(subscriber)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def login(request: Request) -> Response:
        token = request.query_params.get("token")
        if request.method == "POST":
            form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
            token = (form.get("token") or [""])[0]
        target = request.query_params.get("next") or "/jobs"
        if not target.startswith("/") or target.startswith("//"):
            target = "/jobs"
        if access is None:
            return RedirectResponse(target, status_code=303)
        if token is not None:
            if access.check_token(token.strip()):
                response = RedirectResponse(target, status_code=303)
                name, value = cookie_header(LOGIN_COOKIE, keys.login_cookie(token.strip()))
                response.raw_headers.append((name, value))
                return response
            return templates.TemplateResponse(request, "login.html",
                                              {"error": "that token is not valid",
                                               "page": "login", "read_only": read_only,
                                               "csrf_token": "", "logins": True},
                                              status_code=401)
        return templates.TemplateResponse(request, "login.html",
                                          {"error": None, "page": "login",
                                           "read_only": read_only, "csrf_token": "",
                                           "logins": True})

    def jobs_page_filter(request: Request) -> dict[str, str]:
        return {key: request.query_params.get(key, "")
                for key in ("state", "priority", "factory", "queue", "q", "min_age", "max_age")}

    routes = [
        Route("/", lambda request: RedirectResponse("/jobs", status_code=303)),
        Route("/jobs", page("jobs.html", filter=jobs_page_filter)),
        Route("/jobs/{job_id}", page("job.html",
                                     job_id=lambda r: r.path_params["job_id"])),
        Route("/claims", page("claims.html")),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/api", api(lambda r: {"endpoints": API})),
        Route("/api/jobs", api(jobs)),
        Route("/api/counts", api(lambda r: state_counts(board))),
        Route("/api/jobs/{job_id}", api(one_job)),
        Route("/api/jobs/{job_id}/{action}", act, methods=["POST"]),
        Route("/api/claims", api(lambda r: claims_document(board, logbook))),
        Route("/api/conductors", api(lambda r: conductors_document(board))),
        Route("/api/events", events),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if feed is not None:
            feed.start()
        try:
            yield
        finally:
            if feed is not None:
                feed.close()
            logbook.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    return Guard(app, access=access, keys=keys)
