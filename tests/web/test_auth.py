"""Signing in and out: CSRF, backoff after failures, one email in two organizations."""

from __future__ import annotations

import json

from playwright.sync_api import expect

PASSWORD = "member-password-1"


def test_sign_in_sets_a_safe_cookie_and_sign_out_ends_the_session(ui, web):
    page = ui.page
    # Not signed in: pages send you to sign in, and back afterwards.
    ui.goto("/settings/api-keys?q=x", label="redirected-to-sign-in")
    assert "/login?next=" in page.url
    page.get_by_label("Email").fill(web.admin_email)
    page.get_by_label("Password").fill(web.admin_password)
    with page.expect_navigation():
        page.get_by_label("Password").press("Enter")  # keyboard only
    assert page.url.endswith("/settings/api-keys?q=x")
    ui.snap("back-where-we-were")

    cookie = next(c for c in ui.context.cookies() if c["name"] == "tidegate_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["secure"] is False  # plain http here
    assert page.evaluate("document.cookie") == ""  # invisible to scripts

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login?notice=signed_out")
    ui.snap("signed-out")
    expect(page.get_by_role("status")).to_have_text("You have signed out.")
    # The old cookie is dead server-side, not only deleted from this browser.
    ui.context.add_cookies([cookie])
    ui.goto("/settings/api-keys", label="old-cookie-refused")
    assert "/login" in page.url


def test_wrong_password_then_backoff(ui, web):
    email = "slow@acme.test"
    web.add_user(email, password=PASSWORD)
    page = ui.page
    ui.expect_status(401, 429)
    ui.goto("/login", label="sign-in")
    for attempt in range(5):
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(f"wrong-password-{attempt}")
        with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as info:
            page.get_by_role("button", name="Sign in").click()
        assert info.value.status == 401
        expect(page.get_by_role("alert")).to_have_text("Email or password is incorrect.")
    ui.snap("wrong-password")
    # Locked now: even the right password is refused, with a clear message and a wait.
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as info:
        page.get_by_role("button", name="Sign in").click()
    assert info.value.status == 429
    assert 1 <= int(info.value.headers["retry-after"]) <= 900  # until the 15-minute window passes
    expect(page.get_by_role("alert")).to_contain_text("Too many failed sign-in attempts")
    expect(page.get_by_role("alert")).to_contain_text("try again in")
    ui.snap("backoff")
    assert "tidegate_session" not in {c["name"] for c in ui.context.cookies()}
    # The lock is per (organization, email, IP) (and per IP with a much higher bar): someone else still signs in.
    ui.sign_in(web.admin_email, web.admin_password)


def test_csrf_token_is_required_on_every_change(ui, web):
    ui.sign_in(web.admin_email, web.admin_password)
    ui.expect_status(403)
    request = ui.context.request  # shares the browser's cookies: a forged cross-site form would too
    with web.api() as api:
        key_id = api.get("/keys").json()["data"][0]["id"]
        keys_before = len(api.get("/keys").json()["data"])

    for form in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
        refused = request.post(f"/settings/api-keys/{key_id}/revoke", form=form, max_redirects=0)
        assert refused.status == 403, form
        assert "security token" in refused.text()
        created = request.post(
            "/settings/api-keys",
            form={**form, "name": "csrf", "access": "data_access", "expiration": "never"},
            max_redirects=0,
        )
        assert created.status == 403
        assert request.post("/settings/security/admin-controls", form=form, max_redirects=0).status == 403
        assert (
            request.post(
                "/settings/people",
                form={**form, "email": "x@acme.test", "role": "admin", "password": "long-enough-password"},
                max_redirects=0,
            ).status
            == 403
        )
        assert request.post("/logout", form=form, max_redirects=0).status == 403

    with web.api() as api:
        assert api.get(f"/keys/{key_id}").json()["status"] == "active"
        assert len(api.get("/keys").json()["data"]) == keys_before
        assert api.get("/org/settings").json()["api_key_creation_enabled"] is True
        assert "x@acme.test" not in api.get("/users").text
    # The sign-in form is protected as well (no login CSRF).
    other = ui.context.browser.new_context(base_url=web.url)
    try:
        bare = other.request.post(
            "/login", form={"email": web.admin_email, "password": web.admin_password}, max_redirects=0
        )
        assert bare.status == 403
        assert "tidegate_session" not in {c["name"] for c in other.cookies()}
    finally:
        other.close()
    # Still signed in: the refused sign-out did nothing.
    ui.goto("/settings/api-keys", label="still-signed-in")
    # And the refusal is a page a person can read.
    ui.goto(f"/settings/api-keys/{key_id}/revoke", label="revoke-confirm-page")
    ui.page.locator("main form input[name=csrf_token]").evaluate("el => el.value = 'tampered'")
    with ui.page.expect_navigation():
        ui.page.get_by_role("button", name="Revoke key").click()
    ui.snap("csrf-refused")
    expect(ui.page.get_by_role("heading", name="Request refused")).to_be_visible()
    with web.api() as api:
        assert api.get(f"/keys/{key_id}").json()["status"] == "active"


def test_same_email_in_two_organizations(ui, web):
    email = "shared@acme.test"
    web.add_user(email, password=PASSWORD)
    beta = json.loads(
        web.srv.cli("init", "--json", "--org-name", "Beta", "--admin-email", email, "--admin-password", PASSWORD).stdout
    )
    page = ui.page
    ui.sign_in(email, PASSWORD, organization="Beta")
    expect(page.locator(".org-name")).to_have_text("Beta")
    expect(page.get_by_role("textbox", name="Organization ID")).to_have_value(beta["org_id"])
    expect(page.locator(".who")).to_contain_text("(admin)")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login?notice=signed_out")
    ui.sign_in(email, PASSWORD, organization="Acme")
    expect(page.locator(".org-name")).to_have_text("Acme")
    expect(page.locator(".who")).to_contain_text("(member)")
    expect(page.get_by_role("textbox", name="Organization ID")).to_have_value(web.org_id)
