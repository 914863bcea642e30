"""CSRF protection of the actions: a per-session token in a cookie repeated in each form, and a
same-origin check on ``Origin`` (else ``Referer``).

A cross-site form cannot read the cookie to copy it into its fields, and a browser always sends
``Origin`` (or at least ``Referer``) on a cross-site POST; a POST with neither is refused too.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "csrf_token", "is_same_origin", "remember_csrf", "valid"]

CSRF_COOKIE = "mpstate_csrf"
CSRF_FIELD = "csrf_token"


def csrf_token(request: Request) -> str:
    """The session's token: the cookie's, or a new one (``remember_csrf`` then sets the cookie)."""
    existing = request.cookies.get(CSRF_COOKIE)
    if existing and len(existing) >= 32:
        return existing
    token = getattr(request.state, "new_csrf", None)
    if token is None:
        token = request.state.new_csrf = secrets.token_urlsafe(32)
    return str(token)


def remember_csrf(request: Request, response: Response, cookie_path: str) -> None:
    """Set the cookie when ``csrf_token`` made a new token for this request."""
    token = getattr(request.state, "new_csrf", None)
    if token is not None:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            path=cookie_path,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )


def is_same_origin(request: Request) -> bool:
    """Whether the POST comes from a page of this host (``Origin``, else ``Referer``)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    own = request.base_url
    return (parts.scheme, parts.netloc) == (own.scheme, own.netloc)


def valid(request: Request, submitted: object) -> bool:
    """The form's token matches the cookie's (constant time) and the POST is same-origin."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not (isinstance(submitted, str) and cookie and len(cookie) >= 32):
        return False
    return hmac.compare_digest(submitted.encode(), cookie.encode()) and is_same_origin(request)
