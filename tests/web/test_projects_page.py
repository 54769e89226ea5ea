"""The Projects page in Chromium: create a project, add a source and a step, run it, share
it; two members with different policies then see different rows of the same step."""

from __future__ import annotations

from playwright.sync_api import expect

PASSWORD = "member-password-1"
ROWS = [
    {"region": "US", "amount": 10},
    {"region": "US", "amount": 20},
    {"region": "EU", "amount": 30},
    {"region": "APAC", "amount": 50},
]


def data_rows(ui) -> list[list[str]]:
    return ui.page.locator("[data-step-data] [data-preview-rows] tbody tr:not(.empty)").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))"
    )


def member_limited_to(web, api, email: str, source: str, region: str) -> str:
    user = web.add_user(email, password=PASSWORD)
    policy = api.post(
        "/access/policies",
        json={
            "name": f"only-{region}",
            "source_ids": [source],
            "row_filters": [{"column": "region", "values": [region]}],
        },
    )
    assert policy.status_code == 201, policy.text
    assigned = api.put(f"/access/users/{user['id']}/policies", json={"policy_ids": [policy.json()["id"]]})
    assert assigned.status_code == 200, assigned.text
    return user["id"]


def test_projects_page_steps_run_share_and_each_reader_sees_their_rows(ui_factory, web):
    _, secret = web.srv.new_admin_key()
    with web.api(secret) as api:
        source = api.post("/sources", json={"name": "sales", "rows": ROWS}).json()["id"]
        api.post(f"/sources/{source}/org-share", json={"permission": "view"}).raise_for_status()
        member_limited_to(web, api, "us@acme.test", source, "US")
        member_limited_to(web, api, "eu@acme.test", source, "EU")

    admin = ui_factory("admin")
    admin.sign_in(web.admin_email, web.admin_password)
    page = admin.page
    page.get_by_role("link", name="Projects").first.click()
    page.wait_for_load_state("load")
    admin.snap("projects-empty")
    page.get_by_role("button", name="New project").click()
    page.get_by_label("Name").fill("Revenue")
    page.get_by_label("Description (optional)").fill("By region")
    with page.expect_navigation():
        page.get_by_role("button", name="Create project").click()
    expect(page.get_by_role("status")).to_contain_text("The project was created")
    expect(page.get_by_role("heading", level=1)).to_have_text("Revenue")
    project_url = page.url.split("?")[0]

    page.get_by_label("Add a source").select_option(label="sales")
    with page.expect_navigation():
        page.get_by_role("button", name="Add source").click()
    expect(page.get_by_role("status")).to_contain_text("The source was added")
    expect(page.locator("tr[data-step=load_sales] [data-step-rows]")).to_have_text("4")

    # Bad SQL: the error is shown, the form keeps what was typed, nothing is added.
    page.get_by_role("button", name="Add a step").click()
    page.get_by_label("Step name").fill("totals")
    page.get_by_label("SQL", exact=True).fill("SELECT region, sum(amount) AS total FROM nope GROUP BY region")
    with page.expect_navigation():
        page.get_by_role("button", name="Add step", exact=True).click()
    admin.expect_status(400)
    expect(page.get_by_role("alert").first).to_contain_text("nope")
    expect(page.locator("tr[data-step=totals]")).to_have_count(0)
    page.get_by_label("SQL", exact=True).fill(
        "SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY region"
    )
    with page.expect_navigation():
        page.get_by_role("button", name="Add step", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("The step was added")
    admin.snap("step-added")
    expect(page.locator("tr[data-step=totals] [data-step-status]")).to_contain_text("Complete")
    assert data_rows(admin) == [["APAC", "50"], ["EU", "30"], ["US", "30"]]

    with page.expect_navigation():
        page.get_by_role("button", name="Run every step").click()
    expect(page.get_by_role("status")).to_contain_text("The run started")
    for _ in range(50):
        admin.goto(project_url, label="run-status")
        if page.locator("[data-run-status]").get_attribute("data-run-status") != "running":
            break
    expect(page.locator("[data-run-status]")).to_have_attribute("data-run-status", "complete")

    for email in ("us@acme.test", "eu@acme.test"):
        page.get_by_label("Share with").select_option(label=email)
        with page.expect_navigation():
            page.get_by_role("button", name="Share", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("Sharing saved")
    admin.snap("shared")

    for email, expected in (("us@acme.test", [["US", "30"]]), ("eu@acme.test", [["EU", "30"]])):
        member = ui_factory(email.split("@")[0])
        member.sign_in(email, PASSWORD)
        member.goto("/projects", label="projects-list")
        with member.page.expect_navigation():
            member.page.get_by_role("link", name="Revenue").click()
        member.snap("project-as-member")
        assert data_rows(member) == expected
        # Shared for view: no run, no new steps, no sharing.
        expect(member.page.get_by_role("button", name="Run every step")).to_have_count(0)
        expect(member.page.get_by_role("button", name="Add a step")).to_have_count(0)
        expect(member.page.locator("#sharing")).to_have_count(0)

    # Someone it is not shared with gets the 404 page.
    web.add_user("other@acme.test", password=PASSWORD)
    other = ui_factory("other")
    other.sign_in("other@acme.test", PASSWORD)
    other.goto(project_url.replace(web.url, ""), status=404, label="not-shared")


def test_cancel_a_running_project_from_its_page(ui_factory, web):
    _, secret = web.srv.new_admin_key()
    with web.api(secret) as api:
        source = api.post("/sources", json={"name": "orders", "rows": ROWS}).json()["id"]
        project = api.post("/projects", json={"name": "Heavy", "user_id": web.srv.admin_user_id}).json()["id"]
        api.post(f"/projects/{project}/sources", json={"source_id": source, "run": False}).raise_for_status()
        # 4^20 rows to add up: far longer than the test.
        joins = ", ".join(f"orders t{i}" for i in range(20))
        product = " + ".join(f"t{i}.amount" for i in range(20))
        slow = api.post(
            f"/projects/{project}/steps", json={"name": "heavy", "sql": f"SELECT sum({product}) AS s FROM {joins}"}
        )
        assert slow.status_code == 201, slow.text
        api.post(f"/projects/{project}/run", json={}).raise_for_status()

    admin = ui_factory("admin")
    admin.sign_in(web.admin_email, web.admin_password)
    admin.goto(f"/projects/{project}", label="running")
    page = admin.page
    expect(page.locator("[data-run-status]")).to_have_attribute("data-run-status", "running")
    # The heavy step does not hold the page: it is shown as slow.
    expect(page.locator("tr[data-step=heavy] [data-step-status]")).to_contain_text("Slow")
    expect(page.locator("tr[data-step=load_orders] [data-step-rows]")).to_have_text("4")
    with page.expect_navigation():
        page.get_by_role("button", name="Cancel the run").click()
    expect(page.get_by_role("status")).to_contain_text("The run was cancelled")
    admin.snap("cancelled")
    expect(page.locator("[data-run-status]")).to_have_attribute("data-run-status", "idle")
    expect(page.get_by_role("button", name="Run every step")).to_be_enabled()
