"""Admin signs in, creates a Data Access key, uses it, revokes it, and finds both in the audit log."""

from __future__ import annotations

import csv
import io

from playwright.sync_api import expect


def create_key(ui, name: str, *, access: str = "Data Access", scopes: list[str] = (), expiration: str | None = None):
    """Fill and submit the Create API Key dialog; returns (secret, POST response)."""
    page = ui.page
    page.get_by_role("button", name="Create API Key").click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Name").fill(name)
    dialog.get_by_label(access).check()
    for scope in scopes:
        dialog.locator(f'input[name=scopes][value="{scope}"]').check()
    if expiration:
        dialog.get_by_label("Expiration", exact=True).select_option(label=expiration)
    ui.snap(f"create-dialog-{name}")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/settings/api-keys")) as info:
        dialog.get_by_role("button", name="Create", exact=True).click()
    page.wait_for_load_state("load")
    secret_box = page.get_by_label("Your new API key")
    expect(secret_box).to_be_visible()
    ui.snap(f"key-created-{name}")
    return secret_box.input_value(), info.value


def dismiss_secret(ui, secret: str) -> None:
    page = ui.page
    page.get_by_role("button", name="I have copied the key").click()
    expect(page.locator("dialog#new-key-dialog")).to_have_count(0)  # removed, not just closed
    assert secret not in page.content()
    assert page.locator("#new-key-secret").count() == 0
    assert page.url.endswith("/settings/api-keys")
    ui.snap("secret-dismissed")


def test_create_use_revoke_and_audit(ui, web):
    page = ui.page
    ui.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web.url)
    ui.sign_in(web.admin_email, web.admin_password)

    # Security headers on pages.
    response = ui.goto("/settings/api-keys")
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    # The organization id is on the page, with a copy button.
    assert page.get_by_role("textbox", name="Organization ID").input_value() == web.org_id

    secret, post = create_key(ui, "Production BI", access="Data Access", expiration="30 days")
    assert secret.startswith("qk_") and len(secret) == 41
    assert post.status == 200 and post.headers["cache-control"] == "no-store"
    dialog = page.get_by_role("dialog", name="API key created: Production BI")
    expect(dialog.get_by_text("It is shown only once")).to_be_visible()
    assert web.org_id in dialog.get_by_label("Organization ID (X-Tenant-ID)").input_value()
    curl = dialog.locator("#new-key-curl").inner_text()
    assert f"Bearer {secret}" in curl and f"X-Tenant-ID: {web.org_id}" in curl and web.url in curl

    # The Copy button puts exactly the key on the clipboard.
    dialog.get_by_role("button", name="Copy API key").click()
    expect(dialog.get_by_text("Copied to clipboard.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret

    dismiss_secret(ui, secret)
    prefix = secret[:12]
    row = ui.key_row(prefix)
    expect(row).to_have_count(1)
    key_id = row.get_attribute("data-key-id")
    expect(row).to_contain_text("Production BI")
    expect(row).to_contain_text("Data Access")
    expect(row).to_contain_text(web.admin_email)
    expect(row).to_contain_text("Active")
    expect(row.locator("td").nth(4)).to_have_text("Never")  # last used

    # The key authenticates: a Data Access key may not list keys (403, not 401).
    with web.api(secret) as api:
        refused = api.get("/keys")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    # A refused request is not a use; a served one is.
    with web.api(secret) as api:
        assert api.get("/sources").status_code == 200

    # "Last used" shows when and from where (the journal ships within about a second).
    for _ in range(20):
        ui.goto("/settings/api-keys", label="keys-after-use")
        if "from 127.0.0.1" in ui.key_row(prefix).inner_text():
            break
        page.wait_for_timeout(250)
    last_used = ui.key_row(prefix).locator("td").nth(4)
    expect(last_used).to_contain_text("from 127.0.0.1")
    assert "Never" not in last_used.inner_text() and "just now" in last_used.inner_text()

    # Search by name and by prefix.
    ui.goto("/settings/api-keys?q=production", label="search-name")
    expect(ui.key_row(prefix)).to_have_count(1)
    ui.goto(f"/settings/api-keys?q={prefix}", label="search-prefix")
    expect(page.locator("tr[data-key-id]")).to_have_count(1)
    ui.goto("/settings/api-keys?q=nothing-like-this", label="search-none")
    expect(page.locator("tr[data-key-id]")).to_have_count(0)

    # Revoke asks for confirmation first.
    ui.goto("/settings/api-keys", label="keys-before-revoke")
    ui.key_action(prefix, "Revoke").click()
    confirm = page.get_by_role("dialog", name="Revoke API key?")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text(f"Production BI ({prefix}")
    ui.snap("revoke-confirm")
    confirm.get_by_role("button", name="Cancel").click()
    expect(confirm).to_be_hidden()
    expect(ui.key_row(prefix)).to_contain_text("Active")
    ui.key_action(prefix, "Revoke").click()
    with page.expect_navigation():
        confirm.get_by_role("button", name="Revoke key").click()
    ui.snap("revoked")
    expect(page.get_by_role("status")).to_contain_text("The key was revoked")
    expect(ui.key_row(prefix)).to_contain_text("Revoked")
    expect(ui.key_row(prefix).get_by_role("link", name="Revoke", include_hidden=True)).to_have_count(0)

    with web.api(secret) as api:
        after = api.get("/keys")
    assert after.status_code == 401 and after.json()["error"]["code"] == "api_key_revoked"

    # Both lifecycle events are on the audit page, attributed to the admin, from the browser.
    ui.goto("/audit", label="audit")
    about_key = page.locator(f'a[data-key-id="{key_id}"]')
    created = page.locator('tr[data-action="api_key.created"]', has=about_key)
    revoked = page.locator('tr[data-action="api_key.revoked"]', has=about_key)
    expect(created).to_have_count(1)
    expect(revoked).to_have_count(1)
    expect(created).to_contain_text(web.admin_email)
    expect(created).to_contain_text("127.0.0.1")
    expect(created).to_contain_text(f"Production BI ({prefix}")
    created.locator("summary").click()  # the details disclosure opens with the whole event
    expect(created.locator("pre")).to_contain_text('"via": "web"')
    ui.snap("audit-details-open")

    # Filtered by this key: its lifecycle and its requests, nothing else.
    page.get_by_label("Key", exact=True).select_option(key_id)
    with page.expect_navigation():
        page.get_by_role("button", name="Apply filters").click()
    ui.snap("audit-filtered-by-key")
    actions = page.locator("tr[data-action]").evaluate_all("rows => rows.map(r => r.dataset.action)")
    assert set(actions) == {"api_key.created", "api_key.revoked", "api.request"}, actions

    # The per-key view: what the key accessed, when, from where, and the outcome.
    ui.goto(f"/audit/keys/{key_id}", label="key-activity")
    requests = page.get_by_role("table", name="Requests made with this key")
    expect(requests.locator("tbody tr")).to_have_count(3)
    expect(requests).to_contain_text("GET /api/v1/keys")
    expect(requests).to_contain_text("127.0.0.1")
    expect(requests.locator("tbody tr").nth(0)).to_contain_text("401")  # newest first
    expect(requests.locator("tbody tr").nth(1)).to_contain_text("200")  # GET /api/v1/sources
    expect(requests.locator("tbody tr").nth(2)).to_contain_text("403")
    expect(page.get_by_role("table", name="Events about this key")).to_contain_text("api_key.revoked")

    # CSV export of the filtered list.
    ui.goto(f"/audit?key_id={key_id}", label="audit-before-export")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text())))
    assert {r["action"] for r in rows} == {"api_key.created", "api_key.revoked", "api.request"}
    assert all(r["target_id"] == key_id or r["key_id"] == key_id for r in rows)

    # Nothing on any later page carries the secret.
    for path in ("/settings/api-keys", "/audit", f"/audit/keys/{key_id}"):
        ui.goto(path, label=f"no-secret-{path}")
        assert secret not in page.content()


def test_csv_export_neutralizes_formulas(ui, web):
    ui.sign_in(web.admin_email, web.admin_password)
    secret, _ = create_key(ui, '=HYPERLINK("http://evil","x")', access="Data Access")
    dismiss_secret(ui, secret)
    with web.api(secret) as api:
        api.get("/keys")
    key_id = ui.key_row(secret[:12]).get_attribute("data-key-id")
    response = ui.context.request.get(f"/audit/export.csv?key_id={key_id}")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text())))
    request_rows = [r for r in rows if r["action"] == "api.request"]
    assert request_rows, rows
    assert all(r["key"].startswith("'=HYPERLINK") for r in request_rows)
    assert not any(v.startswith(("=", "+", "-", "@")) for r in rows for v in r.values() if v)


def test_markup_in_names_is_shown_as_text(ui, web):
    name = '<img src=x onerror="console.error(1)"><b>bold</b>'
    ui.sign_in(web.admin_email, web.admin_password)
    secret, _ = create_key(ui, name)
    dismiss_secret(ui, secret)
    row = ui.key_row(secret[:12])
    expect(row.get_by_role("rowheader")).to_have_text(name)
    assert row.locator("img, b").count() == 0
    ui.goto("/audit", label="audit-with-markup")
    expect(ui.page.locator('tr[data-action="api_key.created"]').first).to_contain_text("onerror")
    assert ui.page.locator("main img").count() == 0
    # (the fixture then checks that nothing reached the console)


def test_refused_create_keeps_the_form_and_never_500s(ui, web):
    page = ui.page
    ui.sign_in(web.admin_email, web.admin_password)
    ui.expect_status(400, 403)
    page.get_by_role("button", name="Create API Key").click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    dialog.get_by_label("Name").fill("Needs a scope")
    dialog.get_by_label("Custom").check()
    with page.expect_navigation():
        dialog.get_by_role("button", name="Create", exact=True).click()
    ui.snap("custom-without-scopes")
    dialog = page.get_by_role("dialog", name="Create API Key")
    expect(dialog).to_be_visible()  # reopened, with the message and what was typed
    expect(dialog.get_by_role("alert")).to_have_text("Pick at least one permission for a custom key.")
    expect(dialog.get_by_label("Name")).to_have_value("Needs a scope")
    expect(dialog.get_by_label("Custom")).to_be_checked()

    csrf = ui.csrf()
    base = {"csrf_token": csrf, "name": "k", "access": "data_access", "expiration": "never"}
    cases = [
        ({"name": "   "}, "Give the key a name of 1 to 200 characters."),
        ({"access": "everything"}, "Choose Full Access, Data Access or Custom."),
        ({"access": "custom", "scopes": "data:destroy"}, "Unknown scope(s): data:destroy"),
        ({"expiration": "date", "expiration_date": "2001-01-01"}, "between tomorrow and ten years"),
        ({"expiration": "date", "expiration_date": "soon"}, "That is not a date"),
        ({"expiration": "forever"}, "Choose an expiration."),
        ({"rate_limit": "fast"}, "between 1 and 10,000 requests per minute"),
        ({"rate_limit": "0"}, "between 1 and 10,000 requests per minute"),
        ({"source_ids": "src_doesnotexist"}, "no source you may open has that id"),
        ({"name": "x" * 5000}, "too long"),
    ]
    for change, message in cases:
        response = ui.context.request.post("/settings/api-keys", form={**base, **change})
        assert response.status == 400, (change, response.status)
        assert message in response.text(), (change, message)
    for path in (
        "/settings/api-keys?q=" + "x" * 500,
        "/settings/api-keys?sort=secret",
        "/settings/api-keys?status=lost",
        "/settings/api-keys?order=sideways",
        "/settings/api-keys?page=0",
        "/audit?since=yesterday",
        "/audit/keys/key_nope",
        "/settings/api-keys/key_nope/revoke",
        "/settings/people/user_nope/deactivate",
    ):
        response = ui.context.request.get(path)
        assert 400 <= response.status < 500, (path, response.status)
        assert response.headers["content-type"].startswith("text/html")
    with web.api() as api:
        names = [k["name"] for k in api.get("/keys", params={"limit": 100}).json()["data"]]
    assert "Needs a scope" not in names and "k" not in names
