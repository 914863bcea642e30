"""``dashboard_app``: the operator dashboard as an ASGI app (Starlette).

::

    app = dashboard_app(store, mp=mp, auth=TokenAuth("..."))      # standalone, or
    Mount("/ops", app=app)                                         # inside your ASGI app

Pages: ``GET /`` the runs list, ``GET /runs/{run_id}`` a run (timeline, graph, steps, live log),
``GET /runs/{run_id}/events/stream`` its log as server-sent events,
``GET /runs/{run_id}/fragment/{part}`` a part of its page (header, timeline, graph, steps) for
the live refresh, and ``GET|POST /runs/{run_id}/actions/{action}`` an action's confirmation
and the action itself. ``GET /healthz``; ``/metrics`` when ``metrics_app`` is given.

Read-only unless ``auth`` is given (and ``read_only`` is not True); actions also need ``mp``, the
``MpState`` that publishes the steps they start. Auth gates the actions: reading is open unless
``require_auth_to_read``. Links are paths under the mount (``root_path``), so the app works
mounted anywhere. The store is sync: each read runs in a worker thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote

import anyio.to_thread
from jinja2 import Environment
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from mpstate._checks import check_id
from mpstate.aio.store import AsyncPipelineStateStore
from mpstate.dashboard.auth import DashboardAuth, LoginAuth
from mpstate.dashboard.csrf import csrf_token, remember_csrf
from mpstate.dashboard.rendering import make_environment, path_for
from mpstate.errors import (
    InvalidInputError,
    InvalidTransitionError,
    MpStateError,
    RunInProgressError,
    RunNotFoundError,
    StateStoreUnavailableError,
)
from mpstate.store import PipelineStateStore

if TYPE_CHECKING:
    from mpstate.celery.binding import MpState

__all__ = [
    "FLASH_COOKIE",
    "Dashboard",
    "PageRefusedError",
    "cookie_path",
    "dashboard_app",
    "flash_redirect",
]

T = TypeVar("T")

FLASH_COOKIE = "mpstate_flash"

#: HTTP status of each typed error shown on a page (most specific first).
_STATUS_OF_ERROR: tuple[tuple[type[MpStateError], int, str], ...] = (
    (RunNotFoundError, 404, "Run not found"),
    (InvalidInputError, 400, "Bad input"),
    (InvalidTransitionError, 409, "Not possible now"),
    (RunInProgressError, 409, "The run is busy"),
    (StateStoreUnavailableError, 503, "The store is unavailable"),
    (MpStateError, 409, "Refused"),
)


class PageRefusedError(Exception):
    """A page answered with an error: its status, heading and message (and extra headers)."""

    def __init__(
        self, status: int, heading: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.heading = heading
        self.headers = headers or {}


def refusal(exc: MpStateError) -> PageRefusedError:
    """The page for a typed error."""
    for kind, status, heading in _STATUS_OF_ERROR:
        if isinstance(exc, kind):
            message = f"No run {exc.args[0]!r} here." if kind is RunNotFoundError else str(exc)
            return PageRefusedError(status, heading, message)
    raise AssertionError("MpStateError is the last entry")  # pragma: no cover


@dataclass(slots=True)
class Dashboard:
    """What every page needs: the stores, the actions' ``MpState``, auth and the templates."""

    store: PipelineStateStore
    view: PipelineStateStore
    async_view: AsyncPipelineStateStore | None
    mp: MpState | None
    auth: DashboardAuth | None
    tenant_id: str | None
    flower_url: str | None
    read_only: bool
    require_auth_to_read: bool
    env: Environment

    @property
    def actions_enabled(self) -> bool:
        return not self.read_only and self.mp is not None and self.auth is not None

    @property
    def login_enabled(self) -> bool:
        return isinstance(self.auth, LoginAuth)

    def user(self, request: Request) -> str | None:
        if "user" not in request.state._state:
            request.state.user = self.auth.authenticate(request) if self.auth else None
        user: str | None = request.state.user
        return user

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a sync store function in a worker thread."""
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    def challenge(self, request: Request) -> Response:
        """What an unauthenticated request gets where auth is needed."""
        if self.login_enabled and request.method == "GET":
            target = path_for(request, "login") + "?next=" + quote(request.url.path)
            return RedirectResponse(target, status_code=303)
        headers = {}
        scheme = getattr(self.auth, "www_authenticate", None)
        if isinstance(scheme, str):
            headers["WWW-Authenticate"] = scheme
        raise PageRefusedError(401, "Sign in", "This needs you to sign in.", headers=headers)

    def check_run_id(self, run_id: str) -> str:
        try:
            return check_id(run_id, "run_id")
        except InvalidInputError:
            raise PageRefusedError(404, "Run not found", f"No run {run_id!r} here.") from None

    def page(
        self, request: Request, template: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        """Render a page with what every page shows (user, read-only flag, CSRF token, flash)."""
        flash = request.cookies.get(FLASH_COOKIE)
        full = {
            "request": request,
            "url": lambda name, **params: path_for(request, name, **params),
            "static": lambda path: path_for(request, "static", path=path),
            "read_only": not self.actions_enabled,
            "user": self.user(request),
            "login_enabled": self.login_enabled,
            "tenant": self.tenant_id,
            "csrf": csrf_token(request),
            "flash": unquote(flash) if flash else None,
            **context,
        }
        html = self.env.get_template(template).render(full)
        response = HTMLResponse(html, status_code=status)
        remember_csrf(request, response, cookie_path(request))
        if flash:
            response.delete_cookie(FLASH_COOKIE, path=cookie_path(request))
        return response

    def fragment(self, request: Request, template: str, context: dict[str, Any]) -> HTMLResponse:
        full = {
            "request": request,
            "url": lambda name, **params: path_for(request, name, **params),
            **context,
        }
        return HTMLResponse(self.env.get_template(template).render(full))


def cookie_path(request: Request) -> str:
    """Cookies live under the app's mount only."""
    return (request.scope.get("root_path") or "") + "/"


def flash_redirect(request: Request, target: str, message: str) -> RedirectResponse:
    """A 303 to ``target`` that shows ``message`` once (a short-lived cookie)."""
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        FLASH_COOKIE,
        quote(message),
        max_age=60,
        path=cookie_path(request),
        httponly=True,
        samesite="strict",
    )
    return response


Handler = Callable[[Dashboard, Request], Awaitable[Response]]


def guarded(dashboard: Dashboard, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` with reading gated by auth when asked, and errors turned into pages."""

    async def endpoint(request: Request) -> Response:
        try:
            if dashboard.require_auth_to_read and dashboard.user(request) is None:
                return dashboard.challenge(request)
            return await handler(dashboard, request)
        except MpStateError as exc:
            refused = refusal(exc)
        except PageRefusedError as exc:
            refused = exc
        response = dashboard.page(
            request,
            "error.html",
            {
                "status_code": refused.status,
                "heading": refused.heading,
                "message": str(refused),
                "run_id": request.path_params.get("run_id")
                if refused.status not in (404, 401)
                else None,
            },
            status=refused.status,
        )
        response.headers.update(refused.headers)
        return response

    return endpoint


def dashboard_app(
    store: PipelineStateStore,
    *,
    mp: MpState | None = None,
    async_store: AsyncPipelineStateStore | None = None,
    auth: DashboardAuth | None = None,
    tenant_id: str | None = None,
    flower_url: str | None = None,
    read_only: bool | None = None,
    require_auth_to_read: bool = False,
    metrics_app: ASGIApp | None = None,
) -> Starlette:
    """The dashboard on ``store`` (an ASGI app).

    ``mp`` carries out the actions (it publishes the steps they start); ``async_store`` (on the
    same data) feeds the live log without polling; ``auth`` names the user (``TokenAuth``,
    ``BasicAuth`` or your own ``DashboardAuth``). ``read_only`` defaults to True without auth;
    False without auth is refused (nobody could be named as the actor). ``tenant_id`` shows that
    tenant's runs only: another tenant's run is "not found". ``flower_url`` links each step's
    Celery task to Flower. ``require_auth_to_read`` makes every page need auth too.
    """
    from mpstate.dashboard import routes  # noqa: PLC0415 - routes import this module

    if not isinstance(store, PipelineStateStore):
        raise InvalidInputError(f"store must be an mpstate store, not {store!r}")
    if async_store is not None and not isinstance(async_store, AsyncPipelineStateStore):
        raise InvalidInputError(f"async_store must be an mpstate.aio store, not {async_store!r}")
    if auth is not None and not isinstance(auth, DashboardAuth):
        raise InvalidInputError(f"auth must have an authenticate(request) method, not {auth!r}")
    if read_only is False and auth is None:
        raise InvalidInputError("actions need an auth (TokenAuth, BasicAuth or your own)")
    if require_auth_to_read and auth is None:
        raise InvalidInputError("require_auth_to_read needs an auth")
    view = store.for_tenant(tenant_id) if tenant_id is not None else store
    async_view = (
        async_store.for_tenant(tenant_id)
        if async_store is not None and tenant_id is not None
        else async_store
    )
    dashboard = Dashboard(
        store=store,
        view=view,
        async_view=async_view,
        mp=mp,
        auth=auth,
        tenant_id=tenant_id,
        flower_url=flower_url.rstrip("/") if flower_url else None,
        read_only=auth is None if read_only is None else read_only,
        require_auth_to_read=require_auth_to_read,
        env=make_environment(),
    )

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def route(path: str, handler: Handler, name: str, methods: list[str]) -> Route:
        return Route(path, guarded(dashboard, handler), name=name, methods=methods)

    routes_: list[BaseRoute] = [
        route("/", routes.runs_page, "runs", ["GET"]),
        route("/runs/{run_id}", routes.run_page, "run", ["GET"]),
        route("/runs/{run_id}/fragment/{part}", routes.run_fragment, "fragment", ["GET"]),
        route("/runs/{run_id}/events/stream", routes.event_stream, "stream", ["GET"]),
        route("/runs/{run_id}/actions/{action}", routes.confirm_page, "confirm", ["GET"]),
        route("/runs/{run_id}/actions/{action}", routes.perform_action, "act", ["POST"]),
        route("/login", routes.login_page, "login", ["GET", "POST"]),
        route("/logout", routes.logout, "logout", ["POST"]),
        Route("/healthz", health, name="healthz", methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("mpstate.dashboard", "static")]), name="static"),
    ]
    if metrics_app is not None:
        # A Route, not a Mount: GET /metrics itself (a Mount redirects it to /metrics/).
        routes_.append(Route("/metrics", metrics_app, name="metrics"))
    app = Starlette(routes=routes_)
    app.state.dashboard = dashboard
    return app
