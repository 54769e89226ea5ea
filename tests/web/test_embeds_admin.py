"""Settings > Security > Embeds: the switch, the allowed origins, the UI config, live sessions."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tidegate.web.embeds import PLAIN_WORDS

PAGE = "/settings/security/embeds"
MEMBER_PASSWORD = "member-password-1"


@pytest.fixture(scope="module")
def embed_user(web) -> str:
    """The user embed sessions act as: a member of the organization."""
    return web.add_user("embedded@acme.test", password=MEMBER_PASSWORD)["id"]


@pytest.fixture(autouse=True)
def default_settings(web):
    """Each test starts and ends with embeds on, any origin, no UI config."""
    reset = {"embeds_enabled": True, "embed_allowed_origins": [], "embed_ui_config": {}}
    with web.api() as api:
        assert api.patch("/org/settings", json=reset).status_code == 200
    yield
    with web.api() as api:
        assert api.patch("/org/settings", json=reset).status_code == 200


def new_session(web, user_id: str, **body) -> httpx.Response:
    with web.api() as api:
        return api.post("/embed/sessions", json={"user_id": user_id, **body})


def use_session(web, token: str) -> httpx.Response:
    with httpx.Client(base_url=web.url + "/api/v1", timeout=30) as client:
        return client.get("/sources", headers={"X-Embed-Session": token})


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def open_as_admin(ui, web):
    ui.sign_in(web.admin_email, web.admin_password)
    ui.goto(PAGE, label="embeds")
    expect(ui.page.get_by_role("navigation", name="Security").get_by_role("link", name="Embeds")).to_have_attribute(
        "aria-current", "page"
    )


def settings_events(web) -> list[dict]:
    with web.api() as api:
        r = api.get("/audit/events", params={"action": "org.settings_updated", "limit": 100})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_switch_off_refuses_creating_and_using_sessions(ui, web, embed_user):
    live = new_session(web, embed_user)
    assert live.status_code == 201, live.text
    token = live.json()["session_token"]
    assert use_session(web, token).status_code == 200

    open_as_admin(ui, web)
    page = ui.page
    switch = page.get_by_label("Allow embed sessions")
    expect(switch).to_be_checked()
    switch.uncheck()
    with page.expect_navigation():
        page.get_by_role("button", name="Save", exact=True).click()
    ui.snap("embeds-off")
    expect(page.get_by_role("status")).to_contain_text("Embed sessions are off")
    expect(page.get_by_label("Allow embed sessions")).not_to_be_checked()

    assert error_of(new_session(web, embed_user)) == (403, "embeds_disabled")
    assert error_of(use_session(web, token)) == (403, "embeds_disabled")  # the existing one stops at once
    with web.api() as api:
        assert api.get("/org/settings").json()["embeds_enabled"] is False

    page.get_by_label("Allow embed sessions").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Embed sessions are on")
    assert use_session(web, token).status_code == 200
    # Audited like the API's PATCH /org/settings, by the admin.
    by_page = [e for e in settings_events(web) if e["key_id"] is None and "embeds_enabled" in e["details"]]
    assert [e["details"]["embeds_enabled"] for e in by_page[:2]] == [
        {"old": False, "new": True},
        {"old": True, "new": False},
    ]
    assert all(e["actor_id"] == web.srv.admin_user_id for e in by_page)


def test_allowed_origins_add_validate_remove(ui, web, embed_user):
    open_as_admin(ui, web)
    page = ui.page
    page.get_by_label("Origin to allow").fill("HTTPS://App.Example.com/")
    with page.expect_navigation():
        page.get_by_role("button", name="Add origin").click()
    ui.snap("origin-added")
    expect(page.get_by_role("status")).to_contain_text("The origin was added")
    origins = page.get_by_role("table", name="Allowed origins")
    expect(origins).to_contain_text("https://app.example.com")  # normalized as the API does

    assert error_of(new_session(web, embed_user)) == (400, "origin_required")
    assert error_of(new_session(web, embed_user, origin="https://evil.example")) == (400, "origin_not_allowed")
    assert new_session(web, embed_user, origin="https://app.example.com").status_code == 201

    # A bad origin: the page's 400, the reason in plain words at the field; nothing saved.
    with web.api() as api:
        api_refusal = api.patch("/org/settings", json={"embed_allowed_origins": ["ftp://files.example.com"]})
    assert error_of(api_refusal) == (400, "invalid_origin")
    ui.expect_status(400)
    page.get_by_label("Origin to allow").fill("ftp://files.example.com")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Add origin").click()
    assert navigation.value.status == 400
    ui.snap("origin-refused")
    expect(page.locator("#error-origin")).to_have_text(PLAIN_WORDS["invalid_origin"])
    expect(page.get_by_label("Origin to allow")).to_have_value("ftp://files.example.com")
    expect(page.get_by_label("Origin to allow")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Origin to allow")).to_have_accessible_description(
        PLAIN_WORDS["invalid_origin"] + " scheme://host[:port], without a path."
    )
    expect(page.get_by_label("Origin to allow")).to_be_focused()
    with web.api() as api:
        assert api.get("/org/settings").json()["embed_allowed_origins"] == ["https://app.example.com"]

    # Forged bad values are 4xx pages too, never 500.
    csrf = ui.csrf()
    for value in ("https://a.example/path", "x" * 5000, "http://[::1"):
        r = ui.context.request.post(PAGE + "/origins", form={"csrf_token": csrf, "origin": value})
        assert r.status == 400, (value, r.status)
    r = ui.context.request.post(PAGE + "/origins/remove", form={"csrf_token": csrf, "origin": "https://nope.example"})
    assert r.status == 404

    with page.expect_navigation():
        page.get_by_role("button", name="Remove https://app.example.com").click()
    ui.snap("origin-removed")
    expect(page.get_by_role("status")).to_contain_text("The origin was removed")
    assert new_session(web, embed_user).status_code == 201  # no list: any origin again
    changes = [
        e["details"]["embed_allowed_origins"] for e in settings_events(web) if "embed_allowed_origins" in e["details"]
    ]
    assert {"old": ["https://app.example.com"], "new": []} in changes


def test_ui_config_saved_validated_and_served(ui, web):
    open_as_admin(ui, web)
    page = ui.page
    page.get_by_label("Theme (JSON object)").fill('{"primary": "#0055ff", "font": {"family": "Inter"}}')
    page.get_by_label("Privacy (JSON object)").fill('{"hide_row_counts": true}')
    with page.expect_navigation():
        page.get_by_role("button", name="Save UI config").click()
    ui.snap("ui-config-saved")
    expect(page.get_by_role("status")).to_contain_text("The embed UI config was saved")
    public = httpx.get(web.url + "/api/embed/ui-config", params={"org": web.org_id}, timeout=30).json()
    assert public == {
        "chrome": {},
        "theme": {"primary": "#0055ff", "font": {"family": "Inter"}},
        "privacy": {"hide_row_counts": True},
    }

    ui.expect_status(400)
    # Refusals of the Chrome object sit at its text area in plain words; the size of all three
    # together above the form.
    for value, where, message in (
        ("{not json", "#error-chrome", "Chrome is not valid JSON"),
        ("[1, 2]", "#error-chrome", "Chrome must be a JSON object"),
        ('{"a": {"b": {"c": {"d": {"e": 1}}}}}', "#error-chrome", "Chrome is nested too deeply"),
        ("[" * 3000 + "]" * 3000, "#error-chrome", "Chrome is nested too deeply"),
        ('{"logo": "' + "a" * 16500 + '"}', "#ui-config-error", "limited to 16 KB"),
    ):
        page.get_by_label("Chrome (JSON object)").fill(value)
        with page.expect_navigation() as navigation:
            page.get_by_role("button", name="Save UI config").click()
        assert navigation.value.status == 400
        expect(page.locator(where)).to_contain_text(message)
        expect(page.get_by_label("Chrome (JSON object)")).to_have_value(value)  # as typed
        if where == "#error-chrome":
            expect(page.get_by_label("Chrome (JSON object)")).to_have_attribute("aria-invalid", "true")
        expect(page.get_by_label("Theme (JSON object)")).not_to_have_attribute("aria-invalid", "true")
    ui.snap("ui-config-refused")
    # Nothing was saved by the refused forms.
    assert httpx.get(web.url + "/api/embed/ui-config", params={"org": web.org_id}, timeout=30).json() == public


def test_live_session_listed_by_prefix_and_revoked(ui, web, embed_user):
    created = new_session(web, embed_user, origin="https://app.example.com")
    assert created.status_code == 201, created.text
    token = created.json()["session_token"]
    assert use_session(web, token).status_code == 200

    open_as_admin(ui, web)
    page = ui.page
    row = page.locator("tr[data-session-id]", has=page.locator("code", has_text=token[:16]))
    expect(row).to_contain_text("embedded@acme.test")
    expect(row).to_contain_text("https://app.example.com")
    assert token not in page.content() and token[16:] not in page.content()  # the prefix only

    row.get_by_role("link", name="Revoke").click()
    dialog = page.get_by_role("dialog", name="Revoke embed session?")
    expect(dialog).to_contain_text(token[:16])
    ui.snap("revoke-dialog")
    with page.expect_navigation():
        dialog.get_by_role("button", name="Revoke session").click()
    ui.snap("revoked")
    expect(page.get_by_role("status")).to_contain_text("The embed session was revoked")
    expect(page.locator("tr[data-session-id]", has=page.locator("code", has_text=token[:16]))).to_have_count(0)
    assert error_of(use_session(web, token)) == (401, "embed_session_revoked")  # at once

    with web.api() as api:
        events = api.get("/audit/events", params={"action": "embed_session.revoked", "limit": 10}).json()["data"]
    assert events and events[0]["details"]["token_prefix"] == token[:16]
    assert events[0]["actor_id"] == web.srv.admin_user_id and events[0]["key_id"] is None  # the admin, in the web UI
    assert token not in str(events)

    # The confirmation page (without JS), a forged revoke, and an unknown session.
    ui.goto(PAGE + "/sessions/ses_nope/revoke", status=404, label="revoke-unknown")
    r = ui.context.request.post(PAGE + "/sessions/ses_nope/revoke", form={"csrf_token": ui.csrf()})
    assert r.status == 404
    r = ui.context.request.post(PAGE + f"/sessions/{token}/revoke", form={"csrf_token": ui.csrf()})
    assert r.status in (404, 400)


def test_revoke_without_csrf_is_refused(ui, web, embed_user):
    token = new_session(web, embed_user).json()["session_token"]
    with web.api() as api:
        session_id = next(
            s["id"] for s in api.get("/embed/sessions").json()["data"] if s["session_token"] == token[:16]
        )
    open_as_admin(ui, web)
    ui.goto(PAGE + f"/sessions/{session_id}/revoke", label="revoke-confirm-page")
    expect(ui.page.get_by_role("button", name="Revoke session")).to_be_visible()
    r = ui.context.request.post(PAGE + f"/sessions/{session_id}/revoke", form={"csrf_token": "forged"})
    assert r.status == 403
    assert use_session(web, token).status_code == 200


def test_a_member_cannot_see_or_change_embeds(ui, web, embed_user):
    token = new_session(web, embed_user).json()["session_token"]
    with web.api() as api:
        session_id = next(
            s["id"] for s in api.get("/embed/sessions").json()["data"] if s["session_token"] == token[:16]
        )
    ui.sign_in("embedded@acme.test", MEMBER_PASSWORD)
    ui.goto(PAGE, status=403, label="member-embeds-refused")
    assert "embedded@acme.test" in ui.page.content()  # signed-in navigation, but no session list
    assert token[:16] not in ui.page.content()
    csrf = ui.csrf()
    ui.expect_status(403)
    for path, form in (
        ("/switch", {}),
        ("/origins", {"origin": "https://evil.example"}),
        ("/ui-config", {"theme": "{}"}),
        (f"/sessions/{session_id}/revoke", {}),
    ):
        r = ui.context.request.post(PAGE + path, form={"csrf_token": csrf, **form})
        assert r.status == 403, (path, r.status)
    with web.api() as api:
        current = api.get("/org/settings").json()
    assert current["embeds_enabled"] is True and not current["embed_allowed_origins"]
    assert use_session(web, token).status_code == 200
