"""Dashboards in Chromium: the admin builds one in the UI (widgets, filters, a share link);
two members with different access policies open the same dashboard, and the same link, and
each sees their own numbers; charts are drawn by Chart.js without console errors."""

from __future__ import annotations

import re

import pytest
from analysis_world import SALES, make_project, share
from playwright.sync_api import expect

PASSWORD = "member-password-1"


def database_url(web) -> str:
    return web.srv.env.get("TIDEGATE_DATABASE_URL") or f"sqlite:///{web.srv.home / 'tidegate.db'}"


@pytest.fixture(scope="module")
def world(web) -> dict:
    """`sales` shared with members us@ (region = US) and eu@ (region = EU); the admin's
    project with a total and a by-region step, shared with both."""
    _, secret = web.srv.new_admin_key()
    members = {}
    with web.api(secret) as api:
        source = api.post("/sources", json={"name": "dash sales", "rows": SALES}).json()["id"]
        for region in ("US", "EU"):
            user = web.add_user(f"{region.lower()}-dash@acme.test", password=PASSWORD)
            assert api.post(f"/sources/{source}/shares", json={"user_id": user["id"], "permission": "view"}).is_success
            policy = api.post(
                "/access/policies",
                json={"name": f"dash-{region}", "row_filters": [{"column": "region", "values": [region]}]},
            ).json()["id"]
            assert api.post(f"/access/policies/{policy}/users", json={"user_ids": [user["id"]]}).is_success
            members[region] = user
    url = database_url(web)
    admin_id = web.srv.admin_user_id
    project, steps = make_project(
        url,
        web.org_id,
        admin_id,
        {"sales": source},
        [
            ("total", "SELECT sum(amount)::BIGINT AS total FROM sales"),
            ("by_region", "SELECT region, sum(amount)::BIGINT AS amount FROM sales GROUP BY region ORDER BY region"),
        ],
    )
    for user in members.values():
        share(url, web.org_id, "project", project, user["id"], admin_id)
    return {"members": members, "project": project, "steps": steps}


def number_of(ui) -> str:
    return ui.page.locator("[data-widget-number]").inner_text().strip()


def test_two_people_see_different_numbers_on_the_same_dashboard(ui_factory, web, world):
    admin = ui_factory("admin")
    admin.sign_in(web.admin_email, web.admin_password)
    page = admin.page

    # Build it in the UI.
    admin.goto("/dashboards", label="dashboards")
    page.get_by_role("button", name="New dashboard").click()
    page.get_by_label("Name").fill("Revenue by region")
    with page.expect_navigation():
        page.get_by_role("button", name="Create dashboard").click()
    dashboard_id = re.search(r"/dashboards/(dash_[a-z0-9]+)", page.url).group(1)
    expect(page.get_by_text("Dashboard created.")).to_be_visible()
    for title, step, kind in (("Revenue", "analysis / total", "number"), ("By region", "analysis / by_region", "bar")):
        page.get_by_label("Title").fill(title)
        page.get_by_label("Project step").select_option(label=step)
        page.get_by_label("Kind").select_option(kind)
        with page.expect_navigation():
            page.get_by_role("button", name="Add widget").click()
    admin.snap("widgets")
    assert number_of(admin) == "150"
    canvas = page.locator("canvas[data-chart]")
    expect(canvas).to_have_count(1)
    page.wait_for_function("() => window.Chart && Chart.getChart(document.querySelector('canvas[data-chart]'))")

    # A member link, shown once.
    with page.expect_navigation():
        page.get_by_role("button", name="Create link").click()
    link_url = page.locator("[data-new-link]").input_value()
    assert "/links/dl_" in link_url
    admin.snap("link-created")
    for user in world["members"].values():
        share(database_url(web), web.org_id, "dashboard", dashboard_id, user["id"], web.srv.admin_user_id)

    # Each member: their own numbers, on the dashboard and through the link.
    for region, expected in (("US", "30"), ("EU", "70")):
        member = ui_factory(region.lower())
        member.sign_in(world["members"][region]["email"], PASSWORD)
        member.goto("/dashboards", label="list")
        member.page.get_by_role("link", name="Revenue by region").click()
        member.page.wait_for_load_state("load")
        member.snap("dashboard")
        assert number_of(member) == expected
        rows = member.page.locator("[data-widget-rows] tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text(region)
        # A viewer gets no editing forms.
        expect(member.page.get_by_role("button", name="Add widget")).to_have_count(0)
        member.goto("/links/" + link_url.split("/links/", 1)[1], label="link")
        assert number_of(member) == expected

    # Filters narrow the admin's widgets too.
    admin.goto(f"/dashboards/{dashboard_id}", label="again")
    page.get_by_label(re.compile("One filter a line")).fill("region = EU, APAC")
    with page.expect_navigation():
        page.get_by_role("button", name="Save filters").click()
    expect(page.get_by_text("Filters saved.")).to_be_visible()
    regions = page.locator("[data-widget-rows] tbody tr th, [data-widget-rows] tbody tr td:first-child")
    expect(regions).to_have_text(["APAC", "EU"])
    assert number_of(admin) == "150"  # no region column in the total: the filter does not apply


def test_a_public_link_made_in_the_ui_opens_without_sign_in(ui_factory, web, world):
    admin = ui_factory("admin")
    admin.sign_in(web.admin_email, web.admin_password)
    page = admin.page
    admin.goto("/settings/security", label="security")
    page.get_by_label("Allow public links (no sign-in)").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Save").click()
    admin.goto("/dashboards", label="dashboards")
    page.get_by_role("button", name="New dashboard").click()
    page.get_by_label("Name").fill("Public revenue")
    with page.expect_navigation():
        page.get_by_role("button", name="Create dashboard").click()
    page.get_by_label("Title").fill("Revenue")
    page.get_by_label("Project step").select_option(label="analysis / total")
    page.get_by_label("Kind").select_option("number")
    with page.expect_navigation():
        page.get_by_role("button", name="Add widget").click()
    page.get_by_label("Public (no sign-in)").check()
    page.get_by_label("dash-EU", exact=True).check()
    with page.expect_navigation():
        page.get_by_role("button", name="Create link").click()
    link_url = page.locator("[data-new-link]").input_value()
    admin.snap("public-link")
    expect(page.locator("[data-link-state]")).to_have_text(["active"])

    visitor = ui_factory("visitor")  # nobody signed in
    visitor.goto("/links/" + link_url.split("/links/", 1)[1], label="public-link")
    assert number_of(visitor) == "70"  # the EU policy's rows
    expect(visitor.page.get_by_role("button", name="Sign out")).to_have_count(0)

    # Revoked in the UI: the link is gone.
    page.get_by_role("button", name="Revoke").click()
    page.wait_for_url("**notice=link_revoked")
    visitor.goto("/links/" + link_url.split("/links/", 1)[1], status=404, label="revoked")
