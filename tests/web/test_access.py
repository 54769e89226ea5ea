"""Members: only their own keys, no admin pages, no scopes they do not hold."""

from __future__ import annotations

import json

from playwright.sync_api import expect

PASSWORD = "member-password-1"
ADMIN_PAGES = ("/settings/people", "/settings/security", "/audit")


def test_member_sees_only_own_keys_and_no_admin_pages(ui, web):
    web.add_user("ann@acme.test", password=PASSWORD)
    web.add_user("bob@acme.test", password=PASSWORD)
    bob_key = json.loads(
        web.srv.cli(
            "keys",
            "create",
            "--json",
            "--org",
            web.org_id,
            "--user",
            "bob@acme.test",
            "--name",
            "Bob's pipeline",
            "--preset",
            "data_access",
        ).stdout
    )
    page = ui.page
    ui.sign_in("ann@acme.test", PASSWORD)
    expect(page.get_by_text("You see the keys you created.")).to_be_visible()

    # Navigation offers no admin page.
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Audit log")).to_have_count(0)
    settings_nav = page.get_by_role("navigation", name="Settings")
    expect(settings_nav.get_by_role("link")).to_have_count(1)
    expect(settings_nav.get_by_role("link", name="API Keys")).to_be_visible()

    # The create dialog opens from the keyboard, takes focus, and offers only what a member holds.
    page.get_by_role("button", name="Create API Key").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Create API Key")
    expect(dialog).to_be_visible()
    assert dialog.evaluate("d => d.contains(document.activeElement)")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert page.evaluate("document.activeElement.id") == "create-key-button"  # focus comes back
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Custom").check()
    ui.snap("member-custom-scopes")
    offered = dialog.locator("input[name=scopes]").evaluate_all("els => els.map(e => e.value)")
    assert "data:read" in offered and "admin:keys:manage" in offered
    assert not [s for s in offered if s.startswith(("admin:users", "admin:audit", "admin:org", "admin:policies"))]
    dialog.locator('input[name=scopes][value="data:read"]').check()
    dialog.get_by_label("Name").fill("Ann's notebook")
    with page.expect_navigation():
        dialog.get_by_role("button", name="Create", exact=True).click()
    secret = page.get_by_label("Your new API key").input_value()
    ui.snap("member-key-created")
    page.keyboard.press("Escape")  # Escape asks first; Enter on its "Yes, close" dismisses it and the secret
    expect(page.get_by_text("Have you copied it?")).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("#new-key-dialog")).to_have_count(0)
    assert secret not in page.content()

    # Own key listed, Bob's not, not even by searching for it.
    rows = page.locator("tr[data-key-id]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Ann's notebook")
    expect(rows.first).to_contain_text("Custom (1 scope)")
    ui.goto(f"/settings/api-keys?q={bob_key['key_prefix']}", label="search-for-bobs-key")
    expect(page.locator("tr[data-key-id]")).to_have_count(0)
    assert bob_key["id"] not in page.content()

    # Admin pages and Bob's key are refused.
    ui.expect_status(403, 404)
    for path in ADMIN_PAGES + (f"/audit/keys/{bob_key['id']}", "/audit/export.csv"):
        ui.goto(path, status=403, label=f"member-{path}")
        expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    ui.goto(f"/settings/api-keys/{bob_key['id']}/revoke", status=404, label="member-bobs-key")
    csrf = page.locator("input[name=csrf_token]").first.input_value()
    for action in ("revoke", "rotate"):
        response = ui.context.request.post(
            f"/settings/api-keys/{bob_key['id']}/{action}",
            form={"csrf_token": csrf, "grace_seconds": "0"},
            max_redirects=0,
        )
        assert response.status == 404, action
    with web.api() as api:
        assert api.get(f"/keys/{bob_key['id']}").json()["status"] == "active"
        # And an admin-only change by a member is refused even with a valid token.
        response = ui.context.request.post(
            "/settings/security/admin-controls", form={"csrf_token": csrf}, max_redirects=0
        )
        assert response.status == 403
        assert api.get("/org/settings").json()["api_key_creation_enabled"] is True
