"""Admins: people and roles, the admin controls, rotation."""

from __future__ import annotations

from datetime import UTC, datetime

from playwright.sync_api import expect

from .test_keys_flow import create_key, dismiss_secret

NEW_PASSWORD = "initial-password-42"


def test_people_add_change_role_deactivate(ui_factory, web):
    admin = ui_factory("admin")
    admin.sign_in(web.admin_email, web.admin_password)
    page = admin.page
    admin.goto("/settings/people", label="people")
    page.get_by_role("button", name="Add user").click()
    dialog = page.get_by_role("dialog", name="Add user")
    dialog.get_by_label("Email").fill("carol@acme.test")
    dialog.get_by_label("Initial password").fill("short")
    admin.snap("add-user-dialog")
    # The browser's own minlength check stops a short password; bypass it to see the server's answer.
    dialog.locator("form").evaluate("f => f.noValidate = true")
    admin.expect_status(400)
    with page.expect_navigation():
        dialog.get_by_role("button", name="Add user").click()
    admin.snap("add-user-refused")
    dialog = page.get_by_role("dialog", name="Add user")
    expect(dialog.get_by_role("alert")).to_contain_text("at least 12 characters")
    # ... at the password field, tied to it, and focus there.
    password = dialog.get_by_label("Initial password")
    expect(password).to_have_attribute("aria-invalid", "true")
    assert "error-password" in password.get_attribute("aria-describedby").split()
    expect(dialog.locator("#error-password")).to_contain_text("at least 12 characters")
    expect(password).to_be_focused()
    expect(dialog.get_by_label("Email")).to_have_value("carol@acme.test")
    dialog.get_by_label("Initial password").fill(NEW_PASSWORD)
    with page.expect_navigation():
        dialog.get_by_role("button", name="Add user").click()
    admin.snap("user-added")
    row = page.locator("tr", has_text="carol@acme.test")
    expect(row).to_contain_text("Active")
    expect(row.get_by_label("Role of carol@acme.test")).to_have_value("member")

    # Carol signs in as a member: no People page.
    carol = ui_factory("carol")
    carol.sign_in("carol@acme.test", NEW_PASSWORD)
    carol.goto("/settings/people", status=403, label="carol-people-refused")

    # Promoted, she has it on her very next request.
    row.get_by_label("Role of carol@acme.test").select_option("admin")
    with page.expect_navigation():
        row.get_by_role("button", name="Save role").click()
    admin.snap("role-changed")
    expect(page.get_by_role("status")).to_contain_text("The role was changed")
    carol.goto("/settings/people", label="carol-people-allowed")

    # Deactivated (after a confirmation), she is signed out at once.
    row = page.locator("tr", has_text="carol@acme.test")
    row.get_by_role("link", name="Deactivate").click()
    confirm = page.get_by_role("dialog", name="Deactivate user?")
    expect(confirm).to_contain_text("carol@acme.test")
    admin.snap("deactivate-confirm")
    with page.expect_navigation():
        confirm.get_by_role("button", name="Deactivate").click()
    admin.snap("deactivated")
    expect(page.locator("tr", has_text="carol@acme.test")).to_contain_text("Deactivated")
    carol.goto("/settings/api-keys", label="carol-after-deactivation")
    assert "/login" in carol.page.url
    # And cannot sign in again.
    carol.expect_status(401)
    carol.sign_in("carol@acme.test", NEW_PASSWORD, expect_home=False)
    expect(carol.page.get_by_role("alert")).to_have_text("Email or password is incorrect.")


def test_last_admin_cannot_demote_themselves_into_lockout(ui, web):
    # The only admin's own row has no role form; a forged one is refused by the service rule.
    ui.sign_in(web.admin_email, web.admin_password)
    ui.goto("/settings/people", label="people")
    me = ui.page.locator("tr", has_text=web.admin_email)
    expect(me.get_by_role("combobox")).to_have_count(0)


def test_admin_controls_switch_key_creation_off_and_on(ui_factory, web):
    web.add_user("dave@acme.test", password="member-password-1")
    admin = ui_factory("admin")
    admin.sign_in(web.admin_email, web.admin_password)
    page = admin.page
    admin.goto("/settings/security", label="admin-controls")
    switch = page.get_by_label("Allow qk_ API key creation")
    expect(switch).to_be_checked()
    switch.uncheck()
    with page.expect_navigation():
        page.get_by_role("button", name="Save").click()
    admin.snap("creation-off")
    expect(page.get_by_role("status")).to_have_text("Admin controls saved.")
    expect(page.get_by_label("Allow qk_ API key creation")).not_to_be_checked()

    member = ui_factory("member")
    member.sign_in("dave@acme.test", "member-password-1")
    expect(member.page.get_by_role("button", name="Create API Key")).to_be_disabled()
    expect(member.page.get_by_role("note")).to_contain_text("An admin has switched off API key creation")
    member.snap("member-creation-disabled")
    # A forged create is refused by the service, as through the API.
    member.expect_status(403)
    forged = member.context.request.post(
        "/settings/api-keys",
        form={"csrf_token": member.csrf(), "name": "sneaky", "access": "data_access", "expiration": "never"},
    )
    assert forged.status == 403 and "switched off API key creation" in forged.text()

    switch = page.get_by_label("Allow qk_ API key creation")
    switch.check()
    with page.expect_navigation():
        page.get_by_role("button", name="Save").click()
    member.goto("/settings/api-keys", label="member-creation-enabled")
    expect(member.page.get_by_role("button", name="Create API Key")).to_be_enabled()
    admin.goto("/audit?action=org.settings_updated", label="audit-settings")
    expect(page.locator('tr[data-action="org.settings_updated"]')).to_have_count(2)


def test_rotate_with_grace_period_then_now(ui, web):
    page = ui.page
    ui.sign_in(web.admin_email, web.admin_password)
    first, _ = create_key(
        ui, "Rotating integration", access="Custom", scopes=["admin:keys:manage"], expiration="90 days"
    )
    dismiss_secret(ui, first)
    with web.api(first) as api:
        assert api.get("/keys").status_code == 200  # a custom key with Keys may list keys

    ui.key_action(first[:12], "Rotate").click()
    dialog = page.get_by_role("dialog", name="Rotate API key")
    dialog.get_by_label("Keep the old key working for 1 hour").check()
    ui.snap("rotate-dialog")
    with page.expect_navigation():
        dialog.get_by_role("button", name="Rotate key").click()
    second = page.get_by_label("Your new API key").input_value()
    ui.snap("rotated")
    rotated_name = f"Rotating integration (rotated {datetime.now(UTC).date().isoformat()})"
    expect(page.get_by_role("dialog", name=f"Key rotated: {rotated_name}")).to_be_visible()
    dismiss_secret(ui, second)
    with web.api() as api:
        keys = {k["key_prefix"]: k for k in api.get("/keys", params={"limit": 100}).json()["data"]}
    old, new = keys[first[:12]], keys[second[:12]]
    assert old["status"] == "active" and old["expires_at"] is not None  # retires in an hour
    assert new["scopes"] == ["admin:keys:manage"] and new["name"] == rotated_name
    assert new["expires_at"] is not None and new["expires_at"] > old["expires_at"]
    with web.api(first) as api:
        assert api.get("/keys").status_code == 200  # still in its grace period
    with web.api(second) as api:
        assert api.get("/keys").status_code == 200

    ui.key_action(second[:12], "Rotate").click()
    dialog = page.get_by_role("dialog", name="Rotate API key")
    dialog.get_by_label("Revoke the old key now").check()
    with page.expect_navigation():
        dialog.get_by_role("button", name="Rotate key").click()
    third = page.get_by_label("Your new API key").input_value()
    dismiss_secret(ui, third)
    expect(ui.key_row(second[:12])).to_contain_text("Revoked")
    with web.api(second) as api:
        refused = api.get("/keys")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "api_key_revoked"
    with web.api(third) as api:
        assert api.get("/keys").status_code == 200
    ui.goto("/audit?action=api_key.rotated", label="audit-rotated")
    expect(page.locator('tr[data-action="api_key.rotated"]')).to_have_count(2)
