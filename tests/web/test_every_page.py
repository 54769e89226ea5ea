"""Every signed-in page, in one browser session, at 1280 px and on a 390 px phone: no
horizontal overflow, every row action inside the viewport, and axe-core with zero
violations. Then the pictures and the forms: the audit and key-activity charts carry the
totals the API reports, the create-key form puts its errors at the fields, and an upload
shows its progress.

axe-core comes from the npm registry (package.json, devDependencies) and is copied to
build/axe.min.js by the Makefile; Playwright injects it as an init script, so the pages'
Content-Security-Policy stays on.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tidegate.core.scopes import Scope

pytestmark = pytest.mark.slow

AXE = Path(__file__).resolve().parents[2] / "build" / "axe.min.js"
WIDTHS = (1280, 390)
ROWS = [{"region": r, "amount": n * 1000, "customer": f"customer-{n}"} for n, r in enumerate(["US", "EU", "APAC"] * 4)]

# The page's width against the viewport's, and every row action outside the viewport.
LAYOUT_JS = """() => {
  const width = window.innerWidth;
  const actions = Array.from(document.querySelectorAll('tbody .actions :is(a, button, summary)'))
    .filter(el => el.checkVisibility());  // links inside a closed "…" menu are not shown: its summary is
  const hidden = actions.filter(el => {
    const box = el.getBoundingClientRect();
    return box.width === 0 || box.left < 0 || box.right > width + 0.5;
  }).map(el => el.outerHTML.slice(0, 160));
  return {scrollWidth: document.documentElement.scrollWidth, width, hidden, actions: actions.length};
}"""
AXE_JS = """async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ') + ' :: ' + n.failureSummary)}));
}"""


def _need_axe():
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make setup` (npm ci copies axe-core there)", pytrace=False)


@pytest.fixture(scope="module")
def world(web) -> dict:
    """A bit of everything, so that every page has rows to lay out: a source shared with a
    member, a policy and a group, a project, a dashboard, keys used and refused."""
    member = web.add_user("member-everywhere@acme.test", password="member-password-1")
    with web.api() as api:
        source = api.post("/sources", json={"name": "Quarterly revenue by region and customer", "rows": ROWS})
        source_id = source.json()["id"]
        api.post(
            f"/sources/{source_id}/shares", json={"user_id": member["id"], "permission": "view"}
        ).raise_for_status()
        policy = api.post(
            "/access/policies",
            json={"name": "Only the US region", "row_filters": [{"column": "region", "values": ["US"]}]},
        ).json()["id"]
        api.post(f"/access/policies/{policy}/users", json={"user_ids": [member["id"]]}).raise_for_status()
        group = api.post("/access/groups", json={"name": "North America sales"}).json()["id"]
        api.post(f"/access/groups/{group}/users", json={"user_ids": [member["id"]]}).raise_for_status()
        project = api.post("/projects", json={"name": "Revenue review", "user_id": web.srv.admin_user_id}).json()["id"]
        dashboard = api.post("/dashboards", json={"name": "Revenue at a glance"}).json()["id"]
        created = api.post(
            "/keys",
            json={
                "name": "A reporting integration with a rather long descriptive name",
                "preset": "data_access",
                "expires_in_days": 45,
            },
        ).json()
        revoked = api.post("/keys", json={"name": "Retired key", "preset": "data_access"}).json()["id"]
        private = api.post("/sources", json={"name": "Board minutes", "rows": [{"topic": "secret"}]}).json()["id"]
        api.delete(f"/keys/{revoked}").raise_for_status()
    with web.api(created["secret"]) as used:
        for _ in range(3):
            assert used.get(f"/sources/{source_id}/data").status_code == 200
        assert used.get("/keys").status_code == 403  # refused: no admin:keys:manage
    return {
        "member": member,
        "source": source_id,
        "policy": policy,
        "group": group,
        "project": project,
        "dashboard": dashboard,
        "key": created["id"],
        "revoked": revoked,
        "private": private,
    }


def signed_in_pages(world: dict) -> list[str]:
    return [
        "/settings/api-keys",
        f"/settings/api-keys/{world['key']}/revoke",
        f"/settings/api-keys/{world['key']}/rotate",
        "/settings/people",
        f"/settings/people/{world['member']['id']}/deactivate",
        "/settings/security",
        "/settings/security/access-policies",
        "/settings/security/access-policies/new",
        f"/settings/security/access-policies/{world['policy']}",
        f"/settings/security/access-policies/{world['policy']}/delete",
        "/settings/security/groups",
        f"/settings/security/groups/{world['group']}",
        f"/settings/security/groups/{world['group']}/delete",
        "/settings/security/embeds",
        "/sources",
        f"/sources/{world['source']}",
        "/projects",
        f"/projects/{world['project']}",
        "/dashboards",
        f"/dashboards/{world['dashboard']}",
        "/audit",
        f"/audit/keys/{world['key']}",
        "/usage",
    ]


def test_every_page_fits_shows_its_actions_and_passes_axe(ui_factory, web, world):
    _need_axe()
    ui = ui_factory()
    ui.context.add_init_script(path=str(AXE))
    ui.sign_in(web.admin_email, web.admin_password)
    problems = []
    for width in WIDTHS:
        ui.page.set_viewport_size({"width": width, "height": 900})
        for path in signed_in_pages(world):
            ui.goto(path, label=f"{width}-{path}")
            layout = ui.page.evaluate(LAYOUT_JS)
            if layout["scrollWidth"] > layout["width"]:
                problems.append(f"{width}px {path}: page is {layout['scrollWidth']} px wide")
            if layout["hidden"]:
                problems.append(f"{width}px {path}: row actions off-screen: {layout['hidden'][:3]}")
            violations = ui.page.evaluate(AXE_JS)
            if violations:
                problems.append(f"{width}px {path}: axe: {json.dumps(violations, indent=1)}")
    assert not problems, "\n".join(problems)


def chart_data(page, canvas: str) -> dict:
    """What Chart.js drew: its labels and each dataset's label and values."""
    expect(page.locator(canvas)).to_have_attribute("data-drawn", "true")
    return page.evaluate(
        "(selector) => { const c = document.querySelector(selector).chart;"
        " return {labels: c.data.labels, sets: Object.fromEntries(c.data.datasets.map(d => [d.label, d.data]))}; }",
        canvas,
    )


def test_charts_carry_the_totals_the_api_reports(ui_factory, web, world):
    ui = ui_factory()
    ui.sign_in(web.admin_email, web.admin_password)
    page = ui.page
    today = datetime.now(UTC).date().isoformat()

    # The key's activity: requests per day, accepted and refused, as the audit API lists them.
    ui.goto(f"/audit/keys/{world['key']}", label="key-activity")
    drawn = chart_data(page, "#key-chart")
    made = web.srv.audit_events(key_id=world["key"])
    statuses = [e["status"] for e in made if e["method"]]
    assert sum(drawn["sets"]["Accepted"]) == sum(1 for s in statuses if s < 400) == 3
    assert sum(drawn["sets"]["Refused"]) == sum(1 for s in statuses if s >= 400) == 1
    assert drawn["labels"][-1] == today and len(drawn["labels"]) in (31, 32)
    assert drawn["sets"]["Accepted"][-1] == 3 and drawn["sets"]["Refused"][-1] == 1
    expect(page.locator("[data-chart-accepted]")).to_have_text("3")
    expect(page.locator("[data-chart-refused]")).to_have_text("1")
    top_source = page.locator("table[data-top=sources] tbody tr")
    expect(top_source).to_have_count(1)
    expect(top_source.get_by_role("link", name="Quarterly revenue by region and customer")).to_have_attribute(
        "href", f"/sources/{world['source']}"
    )
    expect(top_source.locator("td").first).to_have_text("3")
    expect(page.locator("table[data-top=ips] tbody tr")).to_contain_text("127.0.0.1")

    # Times in the viewer's zone, named, with UTC on hover: a viewer in Tokyo.
    page.context.new_cdp_session(page).send("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Tokyo"})
    ui.goto(f"/audit/keys/{world['key']}", label="key-activity-tokyo")
    expires = page.locator("hgroup time[data-local]")
    utc_text = expires.get_attribute("title")
    assert utc_text.endswith(" UTC")
    expect(expires).to_contain_text("GMT+9")
    utc_moment = datetime.strptime(utc_text, "%Y-%m-%d %H:%M UTC").replace(tzinfo=UTC)
    tokyo_hour = (utc_moment.hour + 9) % 24
    assert f"{tokyo_hour % 12 or 12:02d}:{utc_moment.minute:02d}" in expires.inner_text(), expires.inner_text()

    # The audit log: events per day for the filters, as many as the API lists.
    for query, api_filters in (
        (f"key_id={world['key']}", [{"key_id": world["key"]}, {"target_id": world["key"]}]),
        ("action=api_key.created", [{"action": "api_key.created"}]),
    ):
        ui.goto(f"/audit?{query}", label=f"audit-chart-{query}")
        drawn = chart_data(page, "#audit-chart")
        listed = {e["id"] for filters in api_filters for e in web.srv.audit_events(**filters)}
        assert sum(drawn["sets"]["Events"]) == len(listed) > 0, (query, drawn, len(listed))
        assert drawn["labels"][-1] == today
        expect(page.locator("[data-chart-total]")).to_have_text(f"{len(listed):,}")
    # A policy's events name it, linked, instead of its raw id.
    ui.goto("/audit?action=policy.created", label="audit-policy-created")
    target = page.locator('tr[data-action="policy.created"]').first.get_by_role("link", name="Only the US region")
    expect(target).to_have_attribute("href", f"/settings/security/access-policies/{world['policy']}")


def test_create_form_puts_plain_errors_at_their_fields(ui_factory, web, world):
    ui = ui_factory()
    ui.sign_in(web.admin_email, web.admin_password)
    page = ui.page
    ui.expect_status(400)
    page.get_by_role("button", name="Create API Key").click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    expiration = dialog.get_by_label("Expiration", exact=True)
    expect(expiration).to_have_value("90")  # 90 days unless chosen otherwise
    warning = dialog.locator("#never-expires-warning")
    expect(warning).to_be_hidden()
    expiration.select_option("never")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("keeps working until someone revokes it")
    expiration.select_option("90")
    expect(warning).to_be_hidden()
    # Scopes in plain words, only those that exist.
    dialog.locator("input[name=access][value=custom]").check()
    offered = dialog.locator("input[name=scopes]").evaluate_all("boxes => boxes.map(b => b.value)")
    assert set(offered) == {s.value for s in Scope}
    expect(dialog.locator("label", has=page.locator('input[value="admin:keys:manage"]'))).to_contain_text(
        "Create, rotate and revoke API keys"
    )
    dialog.locator("input[name=access][value=data_access]").check()

    # A rate limit out of range: the message sits under the field, in plain words, announced.
    dialog.get_by_label("Name").fill("Out of range")
    dialog.locator("summary", has_text="Advanced").click()
    dialog.get_by_label("Rate limit (requests per minute)").fill("0")
    with page.expect_navigation():
        dialog.get_by_role("button", name="Create", exact=True).click()
    ui.snap("rate-limit-error")
    dialog = page.get_by_role("dialog", name="Create API Key")
    field = dialog.get_by_label("Rate limit (requests per minute)")
    expect(field).to_have_attribute("aria-invalid", "true")
    error = dialog.locator("#error-rate_limit")
    expect(error).to_have_text("Enter a rate limit between 1 and 10,000 requests per minute.")
    expect(error).to_have_attribute("role", "alert")
    assert "error-rate_limit" in field.get_attribute("aria-describedby").split()
    expect(field).to_be_focused()
    expect(dialog.locator("#create-error")).to_have_count(0)  # not at the top of the dialog
    assert "rate_limit_per_minute" not in page.content()  # never the API's field name
    expect(dialog.get_by_label("Name")).to_have_value("Out of range")

    # A date in the past: at the date field, in the words of the calendar, not a format.
    field.fill("60")
    dialog.get_by_label("Expiration", exact=True).select_option("date")
    dialog.get_by_label("Expiration date").fill("2001-01-01")
    with page.expect_navigation():
        dialog.get_by_role("button", name="Create", exact=True).click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    date_field = dialog.get_by_label("Expiration date")
    expect(date_field).to_have_attribute("aria-invalid", "true")
    expect(dialog.locator("#error-expiration")).to_have_text(
        "Pick an expiration date between tomorrow and ten years from now."
    )
    expect(date_field).to_be_focused()
    expect(dialog.get_by_label("Expiration", exact=True)).not_to_have_attribute("aria-invalid", "true")


def test_source_restriction_offers_and_accepts_only_openable_sources(ui_factory, web, world):
    _need_axe()
    member = ui_factory("member")
    member.context.add_init_script(path=str(AXE))
    member.sign_in(world["member"]["email"], "member-password-1")
    page = member.page
    # A member's sources are filtered by their policy: the "filtered" badge reads (axe, contrast).
    for path in ("/sources", f"/sources/{world['source']}"):
        member.goto(path, label=f"member-{path}")
        expect(page.locator(".badge-filtered").first).to_be_visible()
        assert page.evaluate(AXE_JS) == [], path
    member.goto("/settings/api-keys", label="member-keys")
    member.expect_status(400)
    page.get_by_role("button", name="Create API Key").click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    offered = dialog.locator("input[name=source_ids]").evaluate_all("boxes => boxes.map(b => b.value)")
    assert offered == [world["source"]]  # shared with them; never the admin's private one
    expect(dialog.get_by_label("Quarterly revenue by region and customer")).to_have_count(1)

    base = {"csrf_token": member.csrf(), "name": "Restricted", "access": "data_access", "expiration": "30"}
    for refused in ("src_doesnotexist", world["private"]):  # unknown, and existing but not theirs
        response = member.context.request.post("/settings/api-keys", form={**base, "source_ids": refused})
        assert response.status == 400, refused
        assert f"You cannot restrict a key to {refused}: no source you may open has that id." in response.text()
        assert 'aria-invalid="true" aria-describedby="error-sources' in response.text()
    with web.api() as api:
        names = [k["name"] for k in api.get("/keys", params={"limit": 100}).json()["data"]]
    assert "Restricted" not in names

    # The picker, ticked: the key is restricted to that source, shown by name, linked.
    dialog.get_by_label("Name").fill("Restricted")
    dialog.locator("summary", has_text="Advanced").click()
    dialog.get_by_label("Quarterly revenue by region and customer").check()
    with page.expect_navigation():
        dialog.get_by_role("button", name="Create", exact=True).click()
    secret = page.get_by_label("Your new API key").input_value()
    page.get_by_role("button", name="I have copied the key").click()
    row = member.key_row(secret[:12])
    row.locator("details.scopes summary").click()
    expect(row.get_by_role("link", name="Quarterly revenue by region and customer")).to_have_attribute(
        "href", f"/sources/{world['source']}"
    )
    with web.api(secret) as api:
        assert api.get(f"/sources/{world['source']}/data").status_code == 200
        assert api.get(f"/sources/{world['private']}/data").status_code in (403, 404)

    # Why they see what they see: policies and sources by name, never raw ids.
    member.goto(f"/sources/{world['source']}", label="member-source")
    page.locator("details.reasons summary").click()
    why = page.locator("details.reasons ul")
    expect(why).to_contain_text("“Only the US region” applies: region IN ('US')")
    assert not re.search(r"\b(pol|src|user)_[0-9a-z]{26}", why.inner_text()), why.inner_text()
    assert why.locator(f'[title="{world["policy"]}"]').count() == 1  # the id stays on hover
    expect(why.get_by_role("link", name="“Only the US region”")).to_have_count(0)  # members cannot open policies


def test_secret_dialog_focuses_copy_and_asks_before_escape_closes_it(ui_factory, web, world):
    ui = ui_factory()
    ui.sign_in(web.admin_email, web.admin_password)
    page = ui.page
    page.get_by_role("button", name="Create API Key").click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    dialog.get_by_label("Name").fill("Escape hatch")
    with page.expect_navigation():
        dialog.get_by_role("button", name="Create", exact=True).click()
    secret_dialog = page.locator("dialog#new-key-dialog")
    expect(secret_dialog).to_be_visible()
    expect(page.get_by_role("button", name="Copy API key")).to_be_focused()

    page.keyboard.press("Escape")
    confirm = secret_dialog.locator("#new-key-confirm")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("Have you copied it?")
    expect(secret_dialog).to_be_visible()  # still open, the secret still there
    ui.snap("escape-asks")
    confirm.get_by_role("button", name="No, go back").click()
    expect(confirm).to_be_hidden()
    expect(page.get_by_role("button", name="Copy API key")).to_be_focused()

    page.keyboard.press("Escape")
    expect(confirm).to_be_visible()
    expect(confirm.get_by_role("button", name="Yes, close")).to_be_focused()
    page.keyboard.press("Enter")
    expect(secret_dialog).to_have_count(0)


def test_keys_list_sorts_filters_and_pages_both_ways(ui_factory, web, world):
    _, admin_secret = web.srv.new_admin_key()
    with web.api(admin_secret) as api:
        for n in range(52):
            api.post("/keys", json={"name": f"bulk {n:02d}", "preset": "data_access"}).raise_for_status()
        everything = api.get("/keys", params={"limit": 100}).json()["data"]
    ui = ui_factory()
    ui.sign_in(web.admin_email, web.admin_password)
    page = ui.page

    def names() -> list[str]:
        return page.locator("tr[data-key-id] th .truncate").all_inner_texts()

    ui.goto("/settings/api-keys", label="keys-newest-first")
    assert names()[:2] == ["bulk 51", "bulk 50"]  # newest first
    expect(page.get_by_label("Sort by")).to_be_hidden()
    expect(page.locator("th[data-sort=created]")).to_have_attribute("aria-sort", "descending")
    expect(page.locator("tr[data-key-id]")).to_have_count(50)
    pager = page.get_by_role("navigation", name="Key list pages")
    expect(pager).to_contain_text(f"Page 1 of 2 · {len(everything)} keys")
    with page.expect_navigation():
        pager.get_by_role("link", name="Next").click()
    second = names()
    assert len(second) == len(everything) - 50 and "bulk 51" not in second
    with page.expect_navigation():
        page.get_by_role("navigation", name="Key list pages").get_by_role("link", name="Previous").click()
    assert names()[:2] == ["bulk 51", "bulk 50"]

    # Sorting by name, then the other way.
    with page.expect_navigation():
        page.locator("th[data-sort=name] a").click()
    expect(page.locator("th[data-sort=name]")).to_have_attribute("aria-sort", "ascending")
    shown = names()
    names_first = shown[0]
    # (the database's collation decides where capitals go: SQLite's binary, PostgreSQL's locale)
    collation = str.casefold if shown == sorted(shown, key=str.casefold) else None
    assert shown == sorted(shown, key=collation)
    with page.expect_navigation():
        page.locator("th[data-sort=name] a").click()
    expect(page.locator("th[data-sort=name]")).to_have_attribute("aria-sort", "descending")
    shown = names()
    assert shown == sorted(shown, key=collation, reverse=True) and shown[0] != names_first
    assert max(shown, key=collation) == max((k["name"] for k in everything), key=collation)

    # By last use, either way: keys never used come last (NULLS LAST on both databases).
    last_used = page.locator("tr[data-key-id] td[data-label='Last used']")
    for order in ("descending", "ascending"):
        with page.expect_navigation():
            page.locator("th[data-sort=last_used] a").click()
        expect(page.locator("th[data-sort=last_used]")).to_have_attribute("aria-sort", order)
        cells = last_used.all_inner_texts()
        assert "Never" not in cells[0] and "Never" in cells[-1], (order, cells[:3], cells[-3:])

    # Filtered by status: only the revoked key, and the filter stays in the search form.
    page.get_by_label("Status").select_option("revoked")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    assert names() == ["Retired key"]
    expect(page.get_by_label("Status")).to_have_value("revoked")

    # On a phone (cards, no column headers) the search form sorts.
    page.set_viewport_size({"width": 390, "height": 900})
    ui.goto("/settings/api-keys", label="keys-phone")
    expect(page.get_by_label("Sort by")).to_be_visible()  # (hidden on wide screens: the headers sort)
    page.get_by_label("Sort by").select_option("name")
    page.get_by_label("Order").select_option("asc")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    expect(page.locator("th[data-sort=name]")).to_have_attribute("aria-sort", "ascending")
    assert names() == sorted(names(), key=collation)


# Every text the upload status says, and whether the button was disabled when it said it.
WATCH_UPLOAD_JS = """() => {
  window.__said = [];
  const status = document.getElementById('upload-status');
  const button = document.querySelector('#upload-form button[type=submit]');
  new MutationObserver(() => window.__said.push([status.textContent, button.disabled]))
    .observe(status, {childList: true, characterData: true, subtree: true});
}"""


def test_upload_shows_progress_disables_the_button_and_says_the_outcome(ui_factory, web, world):
    rows = 40_000
    body = "id,region,amount\n" + "".join(f"{n},{('US', 'EU')[n % 2]},{n * 7}\n" for n in range(rows))
    ui = ui_factory()
    ui.sign_in(web.admin_email, web.admin_password)
    page = ui.page
    ui.goto("/sources", label="sources-before-upload")
    page.get_by_text("Upload a file").click()

    # Refused (not a table): the reason in place, at the form, and the form usable again.
    ui.expect_status(400)
    page.get_by_label("File", exact=True).set_input_files(
        {"name": "notes.bin", "mimeType": "application/octet-stream", "buffer": bytes(range(256)) * 40}
    )
    page.get_by_role("button", name="Upload and create source").click()
    expect(page.locator("#upload-error")).to_be_visible()
    expect(page.locator("#upload-error")).to_have_attribute("role", "alert")
    assert page.url.endswith("/sources")
    expect(page.get_by_role("button", name="Upload and create source")).to_be_enabled()

    page.get_by_label("File", exact=True).set_input_files(
        {"name": "orders.csv", "mimeType": "text/csv", "buffer": body.encode()}
    )
    page.get_by_label("Source name (optional)").fill("Uploaded orders")
    page.evaluate(WATCH_UPLOAD_JS)
    button = page.get_by_role("button", name="Upload and create source")
    button.click()
    status = page.locator("#upload-status")
    expect(status).to_contain_text(f"Done: {rows:,} rows in Uploaded orders.")
    said = page.evaluate("window.__said")
    texts = [text for text, _ in said]
    assert any(t.startswith("Uploaded ") and " of " in t for t in texts), texts  # bytes, as they go
    assert all(disabled for _, disabled in said), said  # never clickable twice meanwhile
    assert page.locator("#upload-progress").is_visible()
    page.wait_for_url("**/sources/src_*")
    expect(page.get_by_role("status")).to_have_text(f"The file was uploaded and the source created: {rows:,} rows.")
    with web.api() as api:
        created = [
            s for s in api.get("/sources", params={"limit": 100}).json()["data"] if s["name"] == "Uploaded orders"
        ]
    assert len(created) == 1  # one click, one source


def test_paged_lists_go_both_ways(ui_factory, web, world):
    """Dashboards (paged by id) and the audit log (newest first): Next, then Previous, lands
    on the first page again, and the pages do not overlap."""
    _, admin_secret = web.srv.new_admin_key()
    with web.api(admin_secret) as api:
        for n in range(101):  # more than a page (100)
            api.post("/dashboards", json={"name": f"Board {n:03d}"}).raise_for_status()
    ui = ui_factory()
    ui.sign_in(web.admin_email, web.admin_password)
    page = ui.page
    for path, rows, label in (
        ("/dashboards", "tr[data-dashboard-id]", "Dashboard list pages"),
        ("/audit", "tr[data-event-id]", "Audit log pages"),
    ):
        ui.goto(path, label=f"{path}-first")
        first = page.locator(rows).evaluate_all("rows => rows.map(r => r.outerHTML.slice(0, 80))")
        pager = page.get_by_role("navigation", name=label)
        expect(pager.get_by_role("link", name="Previous")).to_have_count(0)  # the first page
        with page.expect_navigation():
            pager.get_by_role("link", name="Next").click()
        second = page.locator(rows).evaluate_all("rows => rows.map(r => r.outerHTML.slice(0, 80))")
        assert second and not set(first) & set(second), path
        with page.expect_navigation():
            page.get_by_role("navigation", name=label).get_by_role("link", name="Previous").click()
        again = page.locator(rows).evaluate_all("rows => rows.map(r => r.outerHTML.slice(0, 80))")
        assert again == first, path
        expect(page.get_by_role("navigation", name=label).get_by_role("link", name="Previous")).to_have_count(0)


def test_a_refused_policy_form_marks_the_row_it_is_about_and_passes_axe(ui_factory, web, world):
    _need_axe()
    ui = ui_factory()
    ui.context.add_init_script(path=str(AXE))
    ui.sign_in(web.admin_email, web.admin_password)
    ui.goto("/settings/security/access-policies/new", label="policy-new-for-refusal")
    page = ui.page
    page.locator("#policy-name").fill("Refused at its row")
    page.get_by_role("group", name="Row filter 1", exact=True).get_by_label("Column").select_option("region")
    ui.expect_status(400)
    with page.expect_navigation():
        page.get_by_role("button", name="Create policy").click()
    ui.snap("policy-refused-at-row")
    values = page.get_by_role("group", name="Row filter 1", exact=True).get_by_label(
        "Other allowed values, one per line"
    )
    expect(values).to_have_attribute("aria-invalid", "true")
    expect(values).to_have_accessible_description("Choose or type at least one allowed value.")
    expect(values).to_be_focused()
    expect(page.locator("#form-error")).to_have_count(0)  # not (also) at the top
    expect(page.locator("#policy-name")).to_have_value("Refused at its row")
    violations = page.evaluate(AXE_JS)
    assert not violations, json.dumps(violations, indent=1)
