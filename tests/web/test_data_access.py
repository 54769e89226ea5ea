"""Sources, access policies, groups and deny-by-default in the web UI.

The source preview for a key must show exactly what the API returns to that key: every
test that changes a policy in the browser checks the preview AND a real API call with the
key, on the very next request.
"""

from __future__ import annotations

import json

from playwright.sync_api import expect

PASSWORD = "member-password-1"
SALES_CSV = (
    b"order_id,region,product,amount\n"
    b"1,EU,Widget,100\n2,US,Gadget,250\n3,EU,Gizmo,75\n4,APAC,Widget,120\n5,US,Widget,60\n6,EU,Gadget,310\n"
)
SALES = [
    ["1", "EU", "Widget", "100"],
    ["2", "US", "Gadget", "250"],
    ["3", "EU", "Gizmo", "75"],
    ["4", "APAC", "Widget", "120"],
    ["5", "US", "Widget", "60"],
    ["6", "EU", "Gadget", "310"],
]


# -- helpers -------------------------------------------------------------------------------


def member_with_key(web, email: str) -> tuple[dict, dict]:
    """A member (with a password) and a Data Access key they created (secret included)."""
    user = web.add_user(email, password=PASSWORD)
    key = json.loads(
        web.srv.cli(
            "keys",
            "create",
            "--json",
            "--org",
            web.org_id,
            "--user",
            email,
            "--name",
            f"{email.split('@')[0]} BI",
            "--preset",
            "data_access",
        ).stdout
    )
    return user, key


def admin_api(web):
    _, secret = web.srv.new_admin_key()
    return web.api(secret)


def api_rows(web, secret: str, source_id: str) -> tuple[int, list[list[str]]]:
    with web.api(secret) as api:
        response = api.get(f"/sources/{source_id}/data", params={"page_size": 1000})
    if response.status_code != 200:
        return response.status_code, []
    body = response.json()
    return 200, [[str(row[c]) for c in body["columns"]] for row in body["data"]]


def preview_rows(ui) -> list[list[str]]:
    return ui.page.locator("[data-preview-rows] tbody tr:not(.empty)").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))"
    )


def preview_as(ui, source_id: str, choice: str, label: str) -> None:
    """Open the source page and preview it as `choice` (a key id, or "me")."""
    page = ui.page
    ui.goto(f"/sources/{source_id}", label=f"source-{label}")
    page.get_by_label("See the data as").select_option(choice)
    with page.expect_navigation():
        page.get_by_role("button", name="Preview", exact=True).click()
    ui.snap(f"preview-{label}")


def where_text(ui) -> str:
    return ui.page.locator("[data-where]").inner_text().strip()


def upload_csv(ui, name: str, filename: str, content: bytes) -> str:
    page = ui.page
    ui.goto("/sources", label="sources-before-upload")
    page.get_by_role("button", name="Upload a file").click()
    page.get_by_label("File", exact=True).set_input_files(
        files=[{"name": filename, "mimeType": "text/csv", "buffer": content}]
    )
    page.get_by_label("Source name (optional)").fill(name)
    ui.snap("upload-form")
    with page.expect_navigation():
        page.get_by_role("button", name="Upload and create source").click()
    ui.snap("uploaded")
    expect(page.get_by_role("status")).to_contain_text("uploaded")
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    return page.url.split("/sources/")[1].split("?")[0].split("#")[0]


def new_policy(ui, name: str, column: str, values: list[str], *, explicit_source: str | None = None) -> str:
    """Create a policy through the form: the column picker, then suggested values."""
    page = ui.page
    ui.goto("/settings/security/access-policies", label="policies")
    page.get_by_role("button", name="New policy").click()
    page.wait_for_load_state("load")
    page.get_by_label("Name", exact=True).fill(name)
    row = page.get_by_role("group", name="Row filter 1", exact=True)
    row.get_by_label("Column").select_option(column)
    picks = row.get_by_role("group", name=f"Values of {column} in your data")
    expect(picks).to_be_visible()  # suggestions come from the data, as soon as the column is picked
    for value in values:
        picks.get_by_label(value, exact=True).check()
    if explicit_source:
        page.get_by_label("Explicit").check()
        page.get_by_role("group", name="Sources").get_by_label(explicit_source).check()
    ui.snap(f"new-policy-{name}")
    with page.expect_navigation():
        page.get_by_role("button", name="Create policy").click()
    ui.snap(f"policy-created-{name}")
    expect(page.get_by_role("status")).to_contain_text("The access policy was created")
    return page.url.split("/access-policies/")[1].split("?")[0]


# -- tests ---------------------------------------------------------------------------------


def test_policy_from_the_ui_governs_the_key_preview_and_the_api(ui_factory, web):
    mia, mia_key = member_with_key(web, "mia@acme.test")
    admin = ui_factory("admin")
    page = admin.page
    admin.sign_in(web.admin_email, web.admin_password)

    # Upload a CSV: a new source, every row visible to its (unfiltered) owner.
    source_id = upload_csv(admin, "Sales 2024", "sales.csv", SALES_CSV)
    facts = page.locator(".source-about")
    expect(facts).to_contain_text("6")
    expect(page.locator("[data-total-count]")).to_have_text("6")
    assert preview_rows(admin) == SALES
    admin.goto("/sources", label="sources-list")
    row = page.locator(f'tr[data-source-id="{source_id}"]')
    expect(row).to_contain_text("Sales 2024")
    expect(row.locator("td").nth(0)).to_have_text("6")
    expect(row).to_contain_text("4 columns")
    expect(row).to_contain_text(web.admin_email)

    # Mia's key cannot open the source until it is shared with her.
    preview_as(admin, source_id, mia_key["id"], "mia-key-unshared")
    expect(page.locator("[data-preview-refused]")).to_contain_text("This key cannot open this source")
    assert api_rows(web, mia_key["secret"], source_id)[0] == 404

    # Share it with her (view) from the source page.
    admin.goto(f"/sources/{source_id}", label="source-before-share")
    page.get_by_label("Share with", exact=True).select_option(label="mia@acme.test")
    page.get_by_label("Permission", exact=True).select_option("view")
    with page.expect_navigation():
        page.get_by_role("button", name="Share", exact=True).click()
    admin.snap("shared")
    expect(page.get_by_role("table", name="Shared with")).to_contain_text("mia@acme.test")

    # Without a policy, her key sees every row.
    preview_as(admin, source_id, mia_key["id"], "mia-key-no-policy")
    assert preview_rows(admin) == SALES
    assert api_rows(web, mia_key["secret"], source_id) == (200, SALES)

    # A policy from the column picker: region = EU, assigned to Mia.
    policy_id = new_policy(admin, "EU only", "region", ["EU"])
    picks = page.get_by_role("group", name="Row filter 1", exact=True).get_by_role(
        "group", name="Values of region in your data"
    )
    assert picks.locator("input").evaluate_all("els => els.map(e => e.value)") == ["APAC", "EU", "US"]
    expect(picks.get_by_label("EU", exact=True)).to_be_checked()
    page.get_by_label("Assign to a person").select_option(label="mia@acme.test")
    with page.expect_navigation():
        page.get_by_role("button", name="Assign", exact=True).click()
    admin.snap("policy-assigned")
    expect(page.get_by_role("table", name="People this policy is assigned to directly")).to_contain_text(
        "mia@acme.test"
    )

    eu = [r for r in SALES if r[1] == "EU"]
    preview_as(admin, source_id, mia_key["id"], "mia-key-eu")
    assert preview_rows(admin) == eu
    expect(page.locator("[data-total-count]")).to_have_text("3")
    assert where_text(admin) == "\"region\" IN ('EU')"
    expect(page.locator("[data-effective]")).to_have_text("Filtered")
    assert api_rows(web, mia_key["secret"], source_id) == (200, eu)
    # The admin, as themselves, still sees every row.
    preview_as(admin, source_id, "me", "admin-me")
    assert preview_rows(admin) == SALES

    # Edit the policy in the UI: EU and US. The next preview and the next API call follow.
    admin.goto(f"/settings/security/access-policies/{policy_id}", label="policy-edit")
    row_filter = page.get_by_role("group", name="Row filter 1", exact=True)
    expect(row_filter.get_by_label("Column")).to_have_value("region")
    row_filter.get_by_label("US", exact=True).check()
    with page.expect_navigation():
        page.get_by_role("button", name="Save changes").click()
    admin.snap("policy-saved")
    expect(page.get_by_role("status")).to_contain_text("saved")
    eu_us = [r for r in SALES if r[1] in ("EU", "US")]
    preview_as(admin, source_id, mia_key["id"], "mia-key-eu-us")
    assert preview_rows(admin) == eu_us
    assert where_text(admin) == "\"region\" IN ('EU', 'US')"
    assert api_rows(web, mia_key["secret"], source_id) == (200, eu_us)

    # The policies list, and its "what would this person see" preview.
    admin.goto("/settings/security/access-policies", label="policies-list")
    listed = page.locator(f'tr[data-policy-id="{policy_id}"]')
    expect(listed).to_contain_text("EU only")
    expect(listed).to_contain_text("region IN (EU, US)")
    expect(listed).to_contain_text("Auto")
    page.get_by_label("Person", exact=True).select_option(label="mia@acme.test")
    page.get_by_label("Source", exact=True).select_option(label="Sales 2024")
    with page.expect_navigation():
        page.get_by_role("button", name="Preview", exact=True).click()
    admin.snap("policies-user-preview")
    assert preview_rows(admin) == eu_us
    assert where_text(admin) == "\"region\" IN ('EU', 'US')"
    expect(page.locator("[data-effective]")).to_have_text("Filtered")
    expect(page.locator(".reasons")).to_contain_text("EU only")

    # Unshared again: the key cannot open the source, in the preview and through the API.
    admin.goto(f"/sources/{source_id}", label="source-before-unshare")
    with page.expect_navigation():
        page.get_by_role("button", name="Remove mia@acme.test").click()
    admin.snap("unshared")
    preview_as(admin, source_id, mia_key["id"], "mia-key-unshared-again")
    expect(page.locator("[data-preview-refused]")).to_contain_text("This key cannot open this source")
    assert api_rows(web, mia_key["secret"], source_id)[0] == 404

    # Every change was audited as the admin, like its API twin.
    actions = {e["action"] for e in web.srv.audit_events(actor_id=web.srv.admin_user_id)}
    assert {
        "file.upload",
        "source.created",
        "source.shared",
        "source.unshared",
        "policy.created",
        "policy.user_assigned",
        "policy.updated",
    } <= actions, actions
    updated = web.srv.audit_events(action="policy.updated")
    assert updated[0]["target_id"] == policy_id and updated[0]["ip_address"] == "127.0.0.1"


def test_policy_through_a_group_applies(ui_factory, web):
    gus, gus_key = member_with_key(web, "gus@acme.test")
    with admin_api(web) as api:
        created = api.post(
            "/sources",
            json={
                "name": "Staff",
                "rows": [{"name": "Ann", "dept": "ops"}, {"name": "Ben", "dept": "eng"}, {"name": "Cy", "dept": "ops"}],
            },
        )
        assert created.status_code == 201, created.text
        source_id = created.json()["id"]
        assert api.post(f"/sources/{source_id}/org-share", json={"enabled": True}).status_code == 200
    everyone = [["Ann", "ops"], ["Ben", "eng"], ["Cy", "ops"]]
    ops = [["Ann", "ops"], ["Cy", "ops"]]

    admin = ui_factory("admin")
    page = admin.page
    admin.sign_in(web.admin_email, web.admin_password)
    new_policy(admin, "Ops staff", "dept", ["ops"], explicit_source="Staff")
    expect(page.get_by_label("Explicit")).to_be_checked()

    # A group, its member, and the policy assigned to it.
    admin.goto("/settings/security/groups", label="groups")
    page.get_by_label("Name", exact=True).fill("Operations")
    page.get_by_label("Description (optional)").fill("The ops team")
    with page.expect_navigation():
        page.get_by_role("button", name="Create group").click()
    admin.snap("group-created")
    group_url = page.url.split("?")[0]
    page.get_by_label("Add a member").select_option(label="gus@acme.test")
    with page.expect_navigation():
        page.get_by_role("button", name="Add member").click()
    admin.snap("member-added")
    page.get_by_label("Assign a policy").select_option(label="Ops staff")
    with page.expect_navigation():
        page.get_by_role("button", name="Assign policy").click()
    admin.snap("group-policy-assigned")
    expect(page.get_by_role("table", name="Members")).to_contain_text("gus@acme.test")
    expect(page.get_by_role("table", name="Access policies of the group")).to_contain_text("Ops staff")

    preview_as(admin, source_id, gus_key["id"], "gus-key-via-group")
    assert preview_rows(admin) == ops
    assert where_text(admin) == "\"dept\" IN ('ops')"
    assert api_rows(web, gus_key["secret"], source_id) == (200, ops)

    # Rename the group; then take Gus out of it: all rows again.
    admin.goto(group_url, label="group")
    page.get_by_label("Name", exact=True).fill("Operations team")
    with page.expect_navigation():
        page.get_by_role("button", name="Save name and description").click()
    admin.snap("group-renamed")
    expect(page.get_by_role("heading", level=1)).to_have_text("Operations team")
    with page.expect_navigation():
        page.get_by_role("button", name="Remove gus@acme.test from the group").click()
    admin.snap("member-removed")
    preview_as(admin, source_id, gus_key["id"], "gus-key-no-group")
    assert preview_rows(admin) == everyone
    assert api_rows(web, gus_key["secret"], source_id) == (200, everyone)

    # Delete the group (confirmation dialog).
    admin.goto(group_url, label="group-before-delete")
    page.get_by_role("button", name="Delete group").click()
    dialog = page.get_by_role("dialog", name="Delete group?")
    expect(dialog).to_be_visible()
    admin.snap("delete-group-dialog")
    with page.expect_navigation():
        dialog.get_by_role("button", name="Delete group").click()
    admin.snap("group-deleted")
    expect(page.get_by_role("status")).to_contain_text("The group was deleted")
    expect(page.locator("tr[data-group-id]", has_text="Operations team")).to_have_count(0)


def test_deny_by_default_empties_a_policyless_key(ui_factory, web):
    nora, nora_key = member_with_key(web, "nora@acme.test")
    with admin_api(web) as api:
        created = api.post(
            "/sources", json={"name": "Inventory", "rows": [{"sku": "A1", "qty": 3}, {"sku": "B2", "qty": 5}]}
        )
        source_id = created.json()["id"]
        api.post(f"/sources/{source_id}/org-share", json={"enabled": True})
        # Under deny-by-default the admin needs a policy too: a filterless one (every row of every source).
        everything = api.post("/access/policies", json={"name": "Admins see everything", "row_filters": []}).json()[
            "id"
        ]
        api.post(f"/access/policies/{everything}/users", json={"user_ids": [web.srv.admin_user_id]})
    admin = ui_factory("admin")
    page = admin.page
    admin.sign_in(web.admin_email, web.admin_password)
    preview_as(admin, source_id, nora_key["id"], "nora-key-allow")
    assert preview_rows(admin) == [["A1", "3"], ["B2", "5"]]
    try:
        admin.goto("/settings/security", label="admin-controls")
        deny = page.get_by_label("Deny by default")
        expect(deny).not_to_be_checked()
        deny.check()
        with page.expect_navigation():
            page.get_by_role("button", name="Save").click()
        admin.snap("deny-on")
        expect(page.get_by_label("Deny by default")).to_be_checked()
        expect(page.get_by_label("Allow qk_ API key creation")).to_be_checked()  # untouched

        preview_as(admin, source_id, nora_key["id"], "nora-key-denied")
        assert preview_rows(admin) == []
        expect(page.locator("[data-total-count]")).to_have_text("0")
        assert where_text(admin) == "FALSE"
        expect(page.locator("[data-effective]")).to_have_text("None")
        expect(page.locator(".reasons")).to_contain_text("denies by default")
        assert api_rows(web, nora_key["secret"], source_id) == (200, [])
        expect(page.locator("article.preview .notice")).to_have_count(0)  # the admin is not restricted
        preview_as(admin, source_id, "me", "admin-me-denied-but-has-policy")
        assert preview_rows(admin) == [["A1", "3"], ["B2", "5"]]

        admin.goto("/settings/security", label="admin-controls-again")
        page.get_by_label("Deny by default").uncheck()
        with page.expect_navigation():
            page.get_by_role("button", name="Save").click()
        preview_as(admin, source_id, nora_key["id"], "nora-key-allowed-again")
        assert preview_rows(admin) == [["A1", "3"], ["B2", "5"]]
        assert api_rows(web, nora_key["secret"], source_id) == (200, [["A1", "3"], ["B2", "5"]])
    finally:
        with admin_api(web) as api:
            api.patch("/org/settings", json={"deny_by_default": False})
            api.delete(f"/access/policies/{everything}")
    changes = [
        e["details"]
        for e in web.srv.audit_events(action="org.settings_updated")
        if "deny_by_default" in (e["details"] or {})
    ]
    assert [c["deny_by_default"]["new"] for c in changes][-2:] in ([True, False], [False, True])


def test_members_get_403_on_policies_and_404_on_sources_not_shared(ui_factory, web):
    otto, otto_key = member_with_key(web, "otto@acme.test")
    with admin_api(web) as api:
        private = api.post("/sources", json={"name": "Board minutes", "rows": [{"topic": "secret"}]}).json()["id"]
        shared = api.post("/sources", json={"name": "Handbook", "rows": [{"chapter": 1}]}).json()["id"]
        api.post(f"/sources/{shared}/shares", json={"user_id": otto["id"], "permission": "view"})
        policy = api.post("/access/policies", json={"name": "Otto test", "row_filters": []}).json()["id"]
        admin_key_id = api.get("/keys", params={"limit": 1}).json()["data"][0]["id"]

    member = ui_factory("member")
    page = member.page
    member.sign_in("otto@acme.test", PASSWORD)
    member.goto("/sources", label="member-sources")
    expect(page.locator(f'tr[data-source-id="{shared}"]')).to_contain_text("Handbook")
    expect(page.locator(f'tr[data-source-id="{private}"]')).to_have_count(0)
    assert "Board minutes" not in page.content()

    # Their own source page: the preview offers their own keys only, and no sharing controls.
    member.goto(f"/sources/{shared}", label="member-shared-source")
    offered = page.get_by_label("See the data as").locator("option").evaluate_all("os => os.map(o => o.value)")
    assert offered == ["me", otto_key["id"]]
    expect(page.get_by_role("heading", name="Sharing")).to_have_count(0)
    preview_as(member, shared, otto_key["id"], "member-own-key")
    assert preview_rows(member) == [["1"]]

    member.expect_status(403, 404)
    for path in (
        "/settings/security/access-policies",
        "/settings/security/access-policies/new",
        f"/settings/security/access-policies/{policy}",
        "/settings/security/groups",
    ):
        member.goto(path, status=403, label=f"member-{path}")
        expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    for path in (f"/sources/{private}", f"/sources/{shared}?view_as={admin_key_id}"):
        member.goto(path, status=404, label=f"member-{path}")
        assert "Board minutes" not in page.content() and "secret" not in page.content()

    # Forged changes with a valid CSRF token are refused too.
    member.goto("/sources", label="member-sources-again")
    csrf = member.csrf()
    refused = [
        ("/settings/security/access-policies", {"name": "sneaky", "binding": "auto"}, 403),
        (f"/settings/security/access-policies/{policy}/delete", {}, 403),
        (f"/settings/security/access-policies/{policy}/users", {"user_id": otto["id"]}, 403),
        ("/settings/security/groups", {"name": "sneaky"}, 403),
        (f"/sources/{private}/shares", {"user_id": otto["id"], "permission": "view"}, 404),
        (f"/sources/{shared}/org-share", {"enabled": "on", "permission": "edit"}, 403),
    ]
    for path, form, status in refused:
        response = member.context.request.post(path, form={"csrf_token": csrf, **form}, max_redirects=0)
        assert response.status == status, (path, response.status)
        assert response.headers["content-type"].startswith("text/html")
    # And no token at all is refused before anything else.
    response = member.context.request.post(f"/sources/{shared}/org-share", form={"enabled": "on"}, max_redirects=0)
    assert response.status == 403 and "security token" in response.text()
    with admin_api(web) as api:
        assert api.get(f"/access/policies/{policy}").json()["user_ids"] == []
        assert [g for g in api.get("/access/groups").json()["data"] if g["name"] == "sneaky"] == []
        assert api.get(f"/sources/{shared}").json()["org_shared"] is False


def test_bad_input_is_a_4xx_page_never_a_500(ui, web):
    ui.sign_in(web.admin_email, web.admin_password)
    ui.expect_status(400, 403, 404, 409)
    with admin_api(web) as api:
        source_id = api.post("/sources", json={"name": "Tiny", "rows": [{"a": "x"}]}).json()["id"]
        revoked = api.post("/keys", json={"name": "Old key", "preset": "data_access"}).json()["id"]
        api.delete(f"/keys/{revoked}")
    # A revoked key, and a key whose creator is deactivated, are refused with a clear message.
    preview_as(ui, source_id, revoked, "revoked-key")
    expect(ui.page.locator("[data-preview-refused]")).to_contain_text("This key has been revoked")
    _, ivy_key = member_with_key(web, "ivy@acme.test")
    web.srv.cli("users", "deactivate", "--org", web.org_id, "--email", "ivy@acme.test")
    preview_as(ui, source_id, ivy_key["id"], "inactive-creator-key")
    expect(ui.page.locator("[data-preview-refused]")).to_contain_text("created this key is deactivated")

    # The filter rows of the policy form: add one (keyboard focus moves to it), pick a column, remove it.
    page = ui.page
    ui.goto("/settings/security/access-policies/new", label="new-policy-rows")
    expect(page.get_by_role("group", name="Row filter 2", exact=True)).to_have_count(0)
    page.get_by_role("button", name="Add another filter").click()
    second = page.get_by_role("group", name="Row filter 2", exact=True)
    expect(second).to_be_visible()
    expect(second.get_by_label("Column")).to_be_focused()
    second.get_by_label("Column").select_option("a")
    expect(second.get_by_role("group", name="Values of a in your data").get_by_label("x", exact=True)).to_be_visible()
    ui.snap("second-filter-row")
    second.get_by_role("button", name="Remove this filter").click()
    expect(page.get_by_role("group", name="Row filter 2", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Add another filter")).to_be_focused()

    ui.goto("/settings/security/access-policies", label="policies-for-token")
    csrf = ui.csrf()
    cases = [
        ("/settings/security/access-policies", {"name": "", "binding": "auto"}, 400, "Give the policy a name"),
        ("/settings/security/access-policies", {"name": "x", "binding": "explicit"}, 400, "at least one source"),
        (
            "/settings/security/access-policies",
            {"name": "x", "binding": "auto", "column_0": "a"},
            400,
            "at least one allowed value",
        ),
        (
            "/settings/security/access-policies",
            {"name": "x", "binding": "auto", "values_0": "v"},
            400,
            "Choose the column",
        ),
        ("/settings/security/access-policies", {"name": "x" * 5000, "binding": "auto"}, 400, "too long"),
        ("/settings/security/groups", {"name": ""}, 400, "Give the group a name"),
        ("/settings/security/groups/grp_nope/members", {"user_id": "u"}, 404, "No group"),
        ("/sources/upload", {}, 400, "Choose a file"),
        (f"/sources/{source_id}/shares", {"user_id": "user_nope", "permission": "view"}, 404, "not an active member"),
        (f"/sources/{source_id}/org-share", {"enabled": "on", "permission": "owner"}, 400, "Choose View or Edit"),
        ("/settings/security/access-policies", {"name": "x", "binding": "auto"}, 403, "security token"),
    ]
    for path, form, status, message in cases:
        data = form if message == "security token" else {"csrf_token": csrf, **form}
        response = ui.context.request.post(path, form=data, max_redirects=0)
        assert response.status == status, (path, form, response.status)
        assert message in response.text(), (path, message)
    # A duplicate name is a 409 that keeps the form filled in.
    ui.context.request.post(
        "/settings/security/access-policies", form={"csrf_token": csrf, "name": "Unique", "binding": "auto"}
    )
    response = ui.context.request.post(
        "/settings/security/access-policies",
        form={"csrf_token": csrf, "name": "Unique", "binding": "auto", "description": "typed"},
    )
    assert response.status == 409 and "already exists" in response.text() and "typed" in response.text()
    # A non-table file is refused.
    response = ui.context.request.post(
        "/sources/upload",
        multipart={"csrf_token": csrf, "file": {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}},
    )
    assert response.status == 400 and "is not a table" in response.text()
    for path in (
        "/sources/src_nope",
        f"/sources/{source_id}?view_as=key_nope",
        f"/sources/{source_id}?page=0",
        "/settings/security/access-policies/pol_nope",
        "/settings/security/groups/grp_nope",
        "/settings/security/access-policies?user_id=user_nope&source_id=" + source_id,
        "/settings/security/access-policies?user_id=" + web.srv.admin_user_id + "&source_id=src_nope",
    ):
        response = ui.context.request.get(path)
        assert 400 <= response.status < 500, (path, response.status)
        assert response.headers["content-type"].startswith("text/html")
