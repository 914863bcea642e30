"""Who is asking: the ``DashboardAuth`` protocol and the two built in, a bearer token and HTTP
basic users.

Auth gates the actions: a request that is not authenticated may still read the pages unless
the app was built with ``require_auth_to_read=True``. ``TokenAuth`` also accepts its token
through a login form, which sets a signed session cookie (HMAC-SHA256 over the user and an
expiry, with a key the process draws at start unless one is given), so a browser can use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from starlette.requests import Request

from mpstate.errors import InvalidInputError

__all__ = ["SESSION_COOKIE", "BasicAuth", "DashboardAuth", "LoginAuth", "TokenAuth"]

#: The cookie holding a signed session (``TokenAuth``'s login form).
SESSION_COOKIE = "mpstate_session"

#: How long a login lasts.
DEFAULT_SESSION_S = 12 * 3600


@runtime_checkable
class DashboardAuth(Protocol):
    """Names the user a request comes from, or None when it is not authenticated."""

    def authenticate(self, request: Request) -> str | None:
        """The user's name, or None."""


@runtime_checkable
class LoginAuth(DashboardAuth, Protocol):
    """An auth a browser can sign in to with a form (the dashboard then serves ``/login``)."""

    def login(self, secret: str) -> str | None:
        """The user a submitted secret signs in, or None when it is wrong."""

    def session_value(self, user: str) -> str:
        """The signed cookie value that keeps ``user`` signed in."""


class TokenAuth:
    """One shared token: ``Authorization: Bearer <token>``, or the login form's session cookie.

    The user it names is ``user`` (default ``operator``): that is the ``by`` of a verdict.
    """

    def __init__(
        self,
        token: str,
        *,
        user: str = "operator",
        secret_key: bytes | None = None,
        session_s: float = DEFAULT_SESSION_S,
    ) -> None:
        if not isinstance(token, str) or len(token) < 8:
            raise InvalidInputError("the dashboard token must be a string of 8 characters or more")
        self._token = token.encode()
        self._user = user
        self._key = secret_key or secrets.token_bytes(32)
        self._session_s = session_s

    def authenticate(self, request: Request) -> str | None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return self.login(given.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        return self._session_user(cookie) if cookie else None

    def login(self, secret: str) -> str | None:
        return self._user if hmac.compare_digest(secret.encode(), self._token) else None

    def session_value(self, user: str) -> str:
        expires = int(time.time() + self._session_s)
        body = f"{user}|{expires}"
        return f"{body}|{self._sign(body)}"

    def _session_user(self, value: str) -> str | None:
        body, _, signature = value.rpartition("|")
        user, _, expires = body.rpartition("|")
        if not (user and expires.isdigit()) or not hmac.compare_digest(signature, self._sign(body)):
            return None
        return user if int(expires) > time.time() else None

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()


class BasicAuth:
    """HTTP basic auth against ``{user: password}`` (compared in constant time)."""

    #: The challenge a 401 carries, so a browser asks for a user and password.
    www_authenticate = 'Basic realm="mpstate dashboard", charset="UTF-8"'

    def __init__(self, users: Mapping[str, str]) -> None:
        if not users or not all(isinstance(v, str) and v for v in users.values()):
            raise InvalidInputError("BasicAuth needs at least one user, each with a password")
        self._users = {name: password.encode() for name, password in users.items()}

    def authenticate(self, request: Request) -> str | None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        name, sep, password = decoded.partition(":")
        expected = self._users.get(name)
        # Compare against something even for an unknown user, so timing does not reveal names.
        ok = hmac.compare_digest(password.encode(), expected or b"\0" * 32)
        return name if sep and expected is not None and ok else None
