"""The console's gate, as ASGI middleware: a session cookie for every
browser, HTTP access control (see :mod:`jobboard.web.access`), and CSRF and
origin checks on every request that changes something.

How it fails: a request without valid credentials gets 401 (with a basic-auth
challenge when logins are configured, and the login form for tokens); a
POST without the session's CSRF token, or from another origin, gets 403.
It never raises.
"""

from __future__ import annotations

import json
import re
from http.cookies import SimpleCookie
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobboard.web.access import Access, AccessKeys

__all__ = ["Guard", "SESSION_COOKIE", "LOGIN_COOKIE", "CSRF_HEADER"]

SESSION_COOKIE = "jobboard_session"
LOGIN_COOKIE = "jobboard_login"
CSRF_HEADER = "x-csrf-token"
_SESSION = re.compile(r"[0-9a-f]{32}")
# Reached without credentials: the login page and the page's own style and script.
_OPEN_PATHS = ("/login", "/static/")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def cookie_header(name: str, value: str, *, max_age: int | None = None) -> tuple[bytes, bytes]:
    morsel = f"{name}={value}; Path=/; HttpOnly; SameSite=Strict"
    if max_age is not None:
        morsel += f"; Max-Age={max_age}"
    return b"set-cookie", morsel.encode("latin-1")


class Guard:
    """ASGI middleware guarding the console (see the module docstring).

    Args:
        app: the console application.
        access: the accepted credentials; None for an open console.
        keys: the per-process secret for CSRF tokens and login cookies.
    """

    def __init__(self, app: ASGIApp, *, access: Access | None, keys: AccessKeys) -> None:
        self.app = app
        self.access = access
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cookies = _cookies(headers.get("cookie", ""))
        session = cookies.get(SESSION_COOKIE, "")
        fresh = None
        if not _SESSION.fullmatch(session):
            session = fresh = self.keys.new_session()
        scope.setdefault("state", {})["session"] = session
        scope["state"]["csrf_token"] = self.keys.csrf_token(session)
        path: str = scope["path"]
        method: str = scope["method"]

        async def send_with_session(message: Message) -> None:
            if message["type"] == "http.response.start" and fresh is not None:
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      cookie_header(SESSION_COOKIE, fresh)]
            await send(message)

        if self.access is not None and not path.startswith(_OPEN_PATHS) \
                and not self._authorized(headers, cookies):
            await self._deny(scope, send_with_session, headers)
            return
        if method not in _SAFE_METHODS and path != "/login":
            why = self._forged(scope, headers, session)
            if why is not None:
                await _send_json(send_with_session, 403, {"error": why})
                return
        await self.app(scope, receive, send_with_session)

    def _authorized(self, headers: Headers, cookies: dict[str, str]) -> bool:
        assert self.access is not None
        return self.access.check_authorization(headers.get("authorization")) or \
            self.keys.check_login_cookie(self.access, cookies.get(LOGIN_COOKIE))

    def _forged(self, scope: Scope, headers: Headers, session: str) -> str | None:
        """Why a state-changing request is refused (None: it is not)."""
        origin = headers.get("origin")
        if origin is not None and origin != "null":
            host = headers.get("host", "")
            if origin.split("://", 1)[-1] != host:
                return f"request from another origin ({origin}) refused"
        if self.access is not None and self.access.check_authorization(
                headers.get("authorization")):
            return None    # a script with credentials in each request: no cookie to forge
        if not self.keys.check_csrf(session, headers.get(CSRF_HEADER)):
            return ("missing or wrong CSRF token: reload the page and try again "
                    f"(scripts send the page's token in the {CSRF_HEADER} header)")
        return None

    async def _deny(self, scope: Scope, send: Send, headers: Headers) -> None:
        assert self.access is not None
        extra: list[tuple[bytes, bytes]] = []
        if self.access.basic:
            extra.append((b"www-authenticate", b'Basic realm="jobboard", charset="UTF-8"'))
        if "text/html" in headers.get("accept", "") and scope["method"] == "GET":
            body = _LOGIN_HINT.encode()
            content_type = b"text/html; charset=utf-8"
        else:
            body = json.dumps({"error": "authentication required: a token "
                               "(Authorization: Bearer) or basic auth"}).encode()
            content_type = b"application/json"
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", content_type),
                                (b"content-length", str(len(body)).encode()), *extra]})
        await send({"type": "http.response.body", "body": body})


_LOGIN_HINT = """<!doctype html><meta charset="utf-8"><title>jobboard: sign in</title>
<p>This console needs a credential. <a href="/login">Sign in with a token</a>.</p>"""


def _cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # noqa: BLE001 - a malformed Cookie header counts as none
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


async def _send_json(send: Send, status: int, document: Any) -> None:
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
