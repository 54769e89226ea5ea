"""The Usage page (admins): requests and rows per day drawn by Chart.js, top keys and top
sources with the numbers of the requests actually made, a period selector; members get 403."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.slow

ROWS = [{"region": r, "amount": n} for n, r in enumerate(["US", "US", "EU", "EU", "APAC", "APAC"])]


def test_usage_page_shows_the_chart_and_the_top_keys_and_sources(ui_factory, web):
    with web.api() as api:
        source = api.post("/sources", json={"name": "usage-sales", "rows": ROWS}).json()["id"]
        for page in (1, 2, 3):  # 3 reads of 2 rows
            assert len(api.get(f"/sources/{source}/data", params={"page": page, "page_size": 2}).json()["data"]) == 2
        assert api.get(f"/sources/{source}/data", params={"format": "csv"}).status_code == 200  # 6 rows exported
    expected = None
    with web.api() as api:
        expected = api.get("/usage").json()
    key = next(k for k in expected["keys"] if k["key_id"] == web.srv.admin_key_id)

    admin = ui_factory("admin")
    admin.sign_in(web.admin_email, web.admin_password)
    page = admin.page
    page.get_by_role("link", name="Usage").click()
    page.wait_for_url("**/usage")
    expect(page.locator("#usage-chart")).to_have_attribute("data-drawn", "true")  # Chart.js drew it
    admin.snap("usage")
    chart = page.evaluate(
        "() => { const c = document.getElementById('usage-chart').chart;"
        " return {labels: c.data.labels, sets: c.data.datasets.map(d => [d.label, d.data])}; }"
    )
    today = datetime.now(UTC).date().isoformat()
    assert chart["labels"][-1] == today and chart["labels"][0] == expected["period_start"][:10]
    sets = {label: dict(zip(chart["labels"], values, strict=True)) for label, values in chart["sets"]}
    assert sets["Rows read"][today] >= 6 and sets["Rows exported"][today] >= 6
    assert sets["Requests"][today] >= 4

    source_row = page.locator(f"#top-sources tr[data-source-id='{source}']")
    expect(source_row).to_contain_text("usage-sales")
    expect(source_row.locator("[data-col=requests]")).to_have_text("4")
    expect(source_row.locator("[data-col=rows_read]")).to_have_text("6")
    expect(source_row.locator("[data-col=rows_exported]")).to_have_text("6")
    key_row = page.locator(f"#top-keys tr[data-key-id='{web.srv.admin_key_id}']")
    expect(key_row.locator("[data-col=rows_read]")).to_have_text(str(key["rows_read"]))
    expect(key_row.locator("[data-col=rows_exported]")).to_have_text(str(key["rows_exported"]))

    # Last month: nothing of today's.
    page.get_by_label("Period", exact=True).select_option("last_month")
    with page.expect_navigation():
        page.get_by_role("button", name="Show").click()
    admin.snap("usage-last-month")
    assert "period=last_month" in page.url
    expect(page.locator(f"#top-sources tr[data-source-id='{source}']")).to_have_count(0)
    labels = json.loads(page.locator("#usage-chart-data").text_content())["labels"]
    assert today not in labels and labels[-1] < today[:8] + "01"

    # A bad period is a 400 page, not a crash.
    admin.goto("/usage?period=forever", status=400, label="usage-bad-period")
    expect(page.locator("main")).to_contain_text("period must be one of")


def test_members_do_not_see_the_usage_page(ui, web):
    web.add_user("usage-member@acme.test", password="member-password-1")
    ui.sign_in("usage-member@acme.test", "member-password-1")
    expect(ui.page.get_by_role("link", name="Usage")).to_have_count(0)
    ui.goto("/usage", status=403, label="member-usage-refused")
