"""The dashboard's pages: each handler reads the store a bounded number of times (in a worker
thread) and renders a template; errors become pages in ``app.guarded``.

Store round trips per page: the list costs one ``count_by_status`` and one ``list_runs`` (up to
``listing.MAX_SCAN_PAGES`` with a pipeline or reason filter, three reads for a search); a run's
page costs one ``get`` with its events, plus one ``list_unmatched`` when the run awaited provider
jobs; a fragment costs the same as the page; an action one ``get`` plus the action itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from mpstate.cli.flower import run_search_link
from mpstate.dashboard import csrf
from mpstate.dashboard.actions import ACTIONS, applicable, check_applies, perform, step_for
from mpstate.dashboard.app import Dashboard, PageRefusedError, cookie_path, flash_redirect
from mpstate.dashboard.auth import SESSION_COOKIE, LoginAuth
from mpstate.dashboard.forms import read_form
from mpstate.dashboard.graph_view import build_graph
from mpstate.dashboard.listing import read_runs_page
from mpstate.dashboard.query import parse_list_query
from mpstate.dashboard.rendering import path_for
from mpstate.dashboard.run_view import (
    current_steps,
    duration,
    run_budget,
    step_deliveries,
    suspension_help,
    task_url,
)
from mpstate.dashboard.stream import sse_events
from mpstate.dashboard.timeline import build_timeline
from mpstate.deliveries import UnmatchedCallback
from mpstate.errors import InvalidInputError, MpStateError
from mpstate.events import EVENT_TYPES
from mpstate.models import PipelineRun, PipelineRunStatus, StepState, SuspendReason

__all__ = [
    "confirm_page",
    "event_stream",
    "login_page",
    "logout",
    "perform_action",
    "run_fragment",
    "run_page",
    "runs_page",
]

#: The 14 event kinds, for the log's kind filter.
EVENT_KINDS = [str(t.model_fields["kind"].default) for t in EVENT_TYPES]

#: The parts of a run's page the live refresh fetches.
FRAGMENTS = frozenset({"header", "timeline", "graph", "steps"})

#: What a form with a wrong CSRF token or origin is told.
_BAD_FORM = "The form's CSRF token or origin is wrong (or missing): reload the page and retry."

#: How many unmatched callbacks a run's page looks through for its job ids.
UNMATCHED_READ = 200


@dataclass(frozen=True, slots=True)
class RunRow:
    run: PipelineRun
    duration: str
    current: list[StepState]


async def runs_page(d: Dashboard, request: Request) -> Response:
    query = parse_list_query(request.query_params)
    page = await d.read(read_runs_page, d.view, query)
    now = datetime.now(UTC)
    rows = [RunRow(run, duration(run, now), current_steps(run)) for run in page.runs]
    return d.page(
        request,
        "runs.html",
        {
            "query": query,
            "page": page,
            "rows": rows,
            "counts": page.counts,
            "statuses": list(PipelineRunStatus),
            "reasons": list(SuspendReason),
        },
    )


async def _run_context(
    d: Dashboard, request: Request, run: PipelineRun, *, deliveries: bool = True
) -> dict[str, Any]:
    """What the run's page and its fragments show."""
    unmatched: list[UnmatchedCallback] = []
    unmatched_note = None
    if deliveries and run.external_jobs():
        try:
            unmatched = await d.read(d.store.list_unmatched, limit=UNMATCHED_READ)
        except InvalidInputError:  # a store handed in already scoped to a tenant
            unmatched_note = "Unmatched callbacks cannot be read through a tenant's store."
    user = d.user(request)
    actions = applicable(run, d.mp) if d.actions_enabled and user is not None else []
    by_step: dict[str, list[str]] = {}
    for name, step_id in actions:
        if step_id is not None:
            by_step.setdefault(step_id, []).append(name)
    now = datetime.now(UTC)
    return {
        "run": run,
        "duration": duration(run, now),
        "budget": run_budget(run),
        "suspension_help": suspension_help(run),
        "flower_search": run_search_link(d.flower_url, run.run_id) if d.flower_url else None,
        "actions": ACTIONS,
        "run_actions": [(name, None) for name, step_id in actions if step_id is None],
        "actions_by_step": by_step,
        "actions_need_login": d.actions_enabled and user is None,
        "timeline": build_timeline(run, int(now.timestamp() * 1000)),
        "graph": build_graph(run),
        "deliveries": step_deliveries(run, unmatched),
        "unmatched_note": unmatched_note,
        "task_url": lambda step: task_url(d.flower_url, step),
    }


async def _require_run(d: Dashboard, request: Request, *, events: bool = True) -> PipelineRun:
    run_id = d.check_run_id(request.path_params["run_id"])
    run: PipelineRun = await d.read(d.view.require, run_id, include_events=events)
    return run


async def run_page(d: Dashboard, request: Request) -> Response:
    run = await _require_run(d, request)
    context = await _run_context(d, request, run)
    context["event_kinds"] = EVENT_KINDS
    context["last_seq"] = max((event.seq or 0 for event in run.events), default=0)
    return d.page(request, "run.html", context)


async def run_fragment(d: Dashboard, request: Request) -> Response:
    part = request.path_params["part"]
    if part not in FRAGMENTS:
        raise PageRefusedError(404, "Not found", f"a run page has no part {part!r}")
    run = await _require_run(d, request)
    context = await _run_context(d, request, run, deliveries=part == "steps")
    return d.fragment(request, f"_{part}.html", context)


async def event_stream(d: Dashboard, request: Request) -> Response:
    run = await _require_run(d, request, events=False)
    since_text = request.headers.get("last-event-id") or request.query_params.get("since") or "0"
    if not since_text.isdigit():
        raise InvalidInputError(f"since must be an event seq (>= 0), not {since_text!r}")

    async def messages() -> AsyncIterator[str]:
        try:
            async for message in sse_events(
                run.run_id, int(since_text), d.view, d.async_view, ended=run.is_terminal
            ):
                yield message
        except MpStateError as exc:  # the run expired, or the store went away: say so, end
            yield f"event: failure\ndata: {str(exc)!r}\n\n"

    return StreamingResponse(
        messages(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _action(d: Dashboard, request: Request) -> str:
    name = request.path_params["action"]
    if name not in ACTIONS:
        raise PageRefusedError(404, "Not found", f"there is no action {name!r}")
    if not d.actions_enabled:
        raise PageRefusedError(
            403, "Read-only", "This dashboard is read-only: actions are turned off."
        )
    return str(name)


async def confirm_page(d: Dashboard, request: Request) -> Response:
    name = _action(d, request)
    if d.user(request) is None:
        return d.challenge(request)
    run = await _require_run(d, request, events=False)
    step_id = request.query_params.get("step") or None
    check_applies(run, name, step_id, d.mp)
    action = ACTIONS[name]
    step = step_for(run, name, step_id, d.mp) if action.on_step else None
    budget = run_budget(run)
    return d.page(
        request,
        "confirm.html",
        {
            "run": run,
            "action": action,
            "step": step,
            "budget": budget,
            "suggested_budget": round(budget * 2, 2) if budget else None,
        },
    )


async def perform_action(d: Dashboard, request: Request) -> Response:
    name = _action(d, request)
    user = d.user(request)
    if user is None:
        return d.challenge(request)
    form = await read_form(request)
    if not csrf.valid(request, form.get(csrf.CSRF_FIELD)):
        raise PageRefusedError(403, "Refused", _BAD_FORM)
    run = await _require_run(d, request, events=False)
    assert d.mp is not None  # actions_enabled
    outcome = await d.read(perform, d.mp, run, name, form, user)
    return flash_redirect(request, path_for(request, "run", run_id=outcome.run_id), outcome.message)


def _safe_next(request: Request, target: str | None) -> str:
    """Where to go after signing in: a path under this mount, never another site."""
    root = cookie_path(request)
    if target and target.startswith(root) and not target.startswith("//"):
        return target
    return path_for(request, "runs")


async def login_page(d: Dashboard, request: Request) -> Response:
    auth = d.auth
    if not isinstance(auth, LoginAuth):
        raise PageRefusedError(404, "Not found", "This dashboard has no sign-in form.")
    if request.method == "GET":
        target = _safe_next(request, request.query_params.get("next"))
        return d.page(request, "login.html", {"next": target, "message": None})
    form = await read_form(request)
    target = _safe_next(request, str(form.get("next") or ""))
    if not csrf.valid(request, form.get(csrf.CSRF_FIELD)):
        raise PageRefusedError(403, "Refused", _BAD_FORM)
    user = auth.login(str(form.get("token") or ""))
    if user is None:
        context = {"next": target, "message": "That token is not right."}
        return d.page(request, "login.html", context, status=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        auth.session_value(user),
        path=cookie_path(request),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(d: Dashboard, request: Request) -> Response:
    form = await read_form(request)
    if not csrf.valid(request, form.get(csrf.CSRF_FIELD)):
        raise PageRefusedError(403, "Refused", _BAD_FORM)
    response = flash_redirect(request, path_for(request, "runs"), "Signed out.")
    response.delete_cookie(SESSION_COOKIE, path=cookie_path(request))
    return response
