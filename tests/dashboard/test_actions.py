"""Actions over real HTTP: confirmation, CSRF, auth, read-only and tenant modes, typed errors."""

from __future__ import annotations

import httpx
from celery_support import Harness
from dashboard_support import Serve, create_run, csrf_of, gated_run, tags

from mpstate.dashboard import BasicAuth, TokenAuth, dashboard_app

TOKEN = "s3cret-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def confirm(http: httpx.Client, base: str, path: str, **headers: str) -> str:
    """GET the confirmation page; return its CSRF token (the cookie is now in ``http``)."""
    page = http.get(f"{base}{path}", headers={**BEARER, **headers})
    assert page.status_code == 200, page.text
    assert tags(page.text, "form", id="confirm") and tags(page.text, "button", id="confirm-button")
    return csrf_of(page.text)


def post(http: httpx.Client, base: str, path: str, data: dict[str, str], **headers: str):
    return http.post(f"{base}{path}", data=data, headers={**BEARER, "Origin": base, **headers})


def test_cancel_asks_for_confirmation_and_redirects_with_a_flash(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    create_run(h.store, "c-1")
    base = serve(dashboard_app(h.store, mp=h.mp, auth=TokenAuth(TOKEN)))
    page = http.get(f"{base}/runs/c-1", headers=BEARER).text
    assert 'data-read-only="false"' in page
    links = {a["data-action"]: a["href"] for a in tags(page, "a", class_="action")}
    assert links == {"cancel": "/runs/c-1/actions/cancel"}
    token = confirm(http, base, links["cancel"])
    done = post(http, base, links["cancel"], {"csrf_token": token})
    assert done.status_code == 303 and done.headers["location"] == "/runs/c-1"
    assert h.store.require("c-1").status == "cancelled"
    shown = http.get(f"{base}/runs/c-1", headers=BEARER).text
    assert 'id="flash"' in shown and "Run cancelled." in shown
    # Cancelling it again is refused with a clear 409, not a traceback.
    again = post(http, base, links["cancel"], {"csrf_token": token})
    assert again.status_code == 409 and "cannot cancel" in again.text


def test_approve_records_the_user_and_note(h: Harness, serve: Serve, http: httpx.Client) -> None:
    gated_run(h.store, "g-1")
    base = serve(dashboard_app(h.store, mp=h.mp, auth=BasicAuth({"ada": "pw-ada"})))
    auth = httpx.BasicAuth("ada", "pw-ada")
    page = http.get(f"{base}/runs/g-1", auth=auth).text
    approve = tags(page, "a", class_="action", data_action="approve")[0]["href"]
    assert tags(page, "a", class_="action", data_action="reject")
    assert approve == "/runs/g-1/actions/approve?step=review"
    form = http.get(base + approve, auth=auth).text
    assert tags(form, "textarea", name="note")
    done = http.post(
        f"{base}/runs/g-1/actions/approve",
        data={"csrf_token": csrf_of(form), "step_id": "review", "note": "looks right"},
        headers={"Origin": base},
        auth=auth,
    )
    assert done.status_code == 303, done.text
    run = h.store.require("g-1")
    assert run.step("review").status == "completed"
    gated = [e for e in run.events if e.kind == "step-gated"][-1]
    assert gated.verdict == "approved"
    assert gated.meta is not None and gated.meta["by"] == "ada"
    assert gated.meta["note"] == "looks right"


def test_a_post_without_the_csrf_token_or_from_another_origin_is_refused(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    create_run(h.store, "c-2")
    base = serve(dashboard_app(h.store, mp=h.mp, auth=TokenAuth(TOKEN)))
    path = "/runs/c-2/actions/cancel"
    token = confirm(http, base, path)
    refused = [
        post(http, base, path, {}),
        post(http, base, path, {"csrf_token": "x" * 43}),
        post(http, base, path, {"csrf_token": token}, Origin="https://evil.example"),
        http.post(f"{base}{path}", data={"csrf_token": token}, headers=BEARER),  # no Origin
    ]
    with httpx.Client() as fresh:  # the right field without the cookie
        refused.append(post(fresh, base, path, {"csrf_token": token}))
    assert [r.status_code for r in refused] == [403] * 5
    assert h.store.require("c-2").status == "running"


def test_without_auth_the_dashboard_is_read_only(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    create_run(h.store, "c-3")
    base = serve(dashboard_app(h.store, mp=h.mp))
    page = http.get(f"{base}/runs/c-3").text
    assert 'data-read-only="true"' in page and not tags(page, "a", class_="action")
    assert http.get(f"{base}/runs/c-3/actions/cancel").status_code == 403
    assert post(http, base, "/runs/c-3/actions/cancel", {"csrf_token": "x"}).status_code == 403
    read_only = serve(dashboard_app(h.store, mp=h.mp, auth=TokenAuth(TOKEN), read_only=True))
    assert not tags(http.get(f"{read_only}/runs/c-3", headers=BEARER).text, "a", class_="action")
    assert h.store.require("c-3").status == "running"


def test_tenant_mode_shows_one_tenants_runs_and_404s_the_others(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    create_run(h.store, "mine", tenant="acme")
    create_run(h.store, "theirs", tenant="globex")
    base = serve(dashboard_app(h.store, mp=h.mp, auth=TokenAuth(TOKEN), tenant_id="acme"))
    listing = http.get(f"{base}/").text
    assert [r["data-run-id"] for r in tags(listing, "tr", data_run_id="*")] == ["mine"]
    assert http.get(f"{base}/runs/theirs").status_code == 404
    assert http.get(f"{base}/runs/theirs/events/stream").status_code == 404
    token = confirm(http, base, "/runs/mine/actions/cancel")
    assert post(http, base, "/runs/theirs/actions/cancel", {"csrf_token": token}).status_code == 404
    assert h.store.require("theirs").status == "running"


def test_actions_need_auth_and_the_login_form_signs_in(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    create_run(h.store, "c-4")
    base = serve(dashboard_app(h.store, mp=h.mp, auth=TokenAuth(TOKEN)))
    page = http.get(f"{base}/runs/c-4").text  # reading is open
    assert not tags(page, "a", class_="action") and "Sign in to act" in page
    to_login = http.get(f"{base}/runs/c-4/actions/cancel")
    assert to_login.status_code == 303
    assert to_login.headers["location"] == "/login?next=/runs/c-4/actions/cancel"
    assert http.post(f"{base}/runs/c-4/actions/cancel", data={}).status_code == 401
    login = http.get(f"{base}/login?next=/runs/c-4").text
    wrong = http.post(
        f"{base}/login",
        data={"csrf_token": csrf_of(login), "token": "wrong", "next": "/runs/c-4"},
        headers={"Origin": base},
    )
    assert wrong.status_code == 401
    signed_in = http.post(
        f"{base}/login",
        data={"csrf_token": csrf_of(login), "token": TOKEN, "next": "/runs/c-4"},
        headers={"Origin": base},
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/runs/c-4"
    page = http.get(f"{base}/runs/c-4").text
    assert tags(page, "a", class_="action", data_action="cancel")
    basic = serve(dashboard_app(h.store, mp=h.mp, auth=BasicAuth({"ada": "pw"})))
    challenged = httpx.post(f"{basic}/runs/c-4/actions/cancel", data={})
    assert challenged.status_code == 401 and "Basic" in challenged.headers["www-authenticate"]


def test_bad_input_is_a_400_and_changes_nothing(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    create_run(
        h.store,
        "b-1",
        status="suspended",
        steps=[{"stepId": "a", "operation": "op.a", "status": "held"}],
        patch={
            "suspendReason": "budget",
            "resumeToken": "t" * 24,
            "resumable": True,
            "budget": {"maxUsd": 1.0},
        },
    )
    base = serve(dashboard_app(h.store, mp=h.mp, auth=TokenAuth(TOKEN)))
    token = confirm(http, base, "/runs/b-1/actions/resume")
    before = h.store.require("b-1").version
    for value in ("abc", "-1", "nan", ""):
        answer = post(
            http, base, "/runs/b-1/actions/resume", {"csrf_token": token, "max_usd": value}
        )
        assert answer.status_code == 400, value
        assert "max_usd" in answer.text and "Traceback" not in answer.text
    assert post(http, base, "/runs/b-1/actions/nuke", {"csrf_token": token}).status_code == 404
    assert post(http, base, "/runs/b-1/actions/rerun", {"csrf_token": token}).status_code == 409
    assert h.store.require("b-1").version == before
