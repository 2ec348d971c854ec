"""Who may use the console over HTTP, and CSRF protection of its actions.

The access file (``--access-file PATH``) holds one credential a line;
blank lines and lines starting with ``#`` are ignored:

* ``USER:PASSWORD`` -- a login for HTTP basic auth (the browser asks);
* anything without a colon -- a token, sent as ``Authorization: Bearer
  TOKEN`` by scripts, or once by a browser as ``/login?token=TOKEN`` (or the
  login form), which sets an HttpOnly cookie derived from the token.

Without an access file the console is open, and :func:`check_bind` refuses
to serve it anywhere but a loopback address.

Every browser gets a random session cookie (HttpOnly, SameSite=Strict). A
state-changing request (POST) must carry the CSRF token of that session in
the ``X-CSRF-Token`` header (or a ``csrf_token`` form field): an HMAC of the
session id under a per-process secret, put in each page. Another site can
neither read the token nor send the SameSite cookie, and a POST whose
``Origin`` is not this console is refused as well.

How it fails: an unreadable or empty access file, or one that is readable
by others with a warning, is a :class:`~jobboard.errors.ConfigError` (the
message never holds a credential); a request without valid credentials gets
401, an action without a valid CSRF token 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from jobboard.errors import ConfigError

__all__ = ["Access", "AccessKeys", "check_bind", "is_loopback"]

_MAX_ACCESS_FILE = 64 * 1024


@dataclass(frozen=True)
class Access:
    """The credentials the console accepts (see the module docstring)."""

    tokens: frozenset[str] = frozenset()
    logins: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | os.PathLike[str], *,
             warn: Callable[[str], None] | None = None) -> "Access":
        """Read an access file.

        Raises:
            ConfigError: missing, unreadable, not UTF-8 text, or no credential.
        """
        path = Path(path)
        try:
            with open(path, "rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise ConfigError(f"access file {path} is not a regular file")
                raw = handle.read(_MAX_ACCESS_FILE + 1)
        except FileNotFoundError as exc:
            raise ConfigError(f"access file {path} does not exist (--access-file)") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read access file {path}: {exc.strerror or exc}") from exc
        try:
            text = raw[:_MAX_ACCESS_FILE].decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"access file {path} is not UTF-8 text") from None
        tokens: set[str] = set()
        logins: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if sep and user:
                logins[user] = password
            elif not sep:
                tokens.add(line)
        if not tokens and not logins:
            raise ConfigError(f"access file {path} holds no credential: one line per "
                              "token, or USER:PASSWORD for basic auth")
        if warn is not None and mode & (stat.S_IRGRP | stat.S_IROTH):
            warn(f"access file {path} is readable by group or others (mode "
                 f"{stat.S_IMODE(mode):04o}); keep it private: chmod 600 {path}")
        return cls(frozenset(tokens), logins)

    @property
    def basic(self) -> bool:
        """Whether basic-auth logins are configured (the browser may ask)."""
        return bool(self.logins)

    def check_authorization(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries a valid credential."""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer":
            return self.check_token(value)
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return False
            user, sep, password = decoded.partition(":")
            expected = self.logins.get(user)
            return bool(sep) and expected is not None and hmac.compare_digest(
                expected.encode(), password.encode())
        return False

    def check_token(self, token: str) -> bool:
        # compare with every token, so the time taken does not tell which matched
        found = False
        for known in self.tokens:
            found |= hmac.compare_digest(known.encode(), token.encode())
        return found


class AccessKeys:
    """The per-process secret behind the session's CSRF token and the login
    cookie (both stop being valid when the console restarts)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    @staticmethod
    def new_session() -> str:
        return secrets.token_hex(16)

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{value}".encode(),
                        hashlib.sha256).hexdigest()

    def csrf_token(self, session: str) -> str:
        return self._mac("csrf", session)

    def check_csrf(self, session: str | None, token: str | None) -> bool:
        return bool(session and token) and hmac.compare_digest(
            self.csrf_token(session or ""), token or "")

    def login_cookie(self, token: str) -> str:
        """The cookie value standing for a valid token."""
        return self._mac("login", token)

    def check_login_cookie(self, access: Access, cookie: str | None) -> bool:
        if not cookie:
            return False
        found = False
        for token in access.tokens:
            found |= hmac.compare_digest(self.login_cookie(token), cookie)
        return found


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves only to loopback
    addresses. An unresolvable name is not loopback."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback
                               for info in infos)


def check_bind(host: str, access: Access | None) -> None:
    """Refuse to serve an open console on a non-loopback address.

    Raises:
        ConfigError: ``host`` is not loopback and no access file was given.
    """
    if access is None and not is_loopback(host):
        raise ConfigError(f"refusing to serve the console on {host} without "
                          "--access-file: anyone who reaches it could act on the "
                          "board (listen on 127.0.0.1, or give an access file)")
