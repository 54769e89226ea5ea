"""The Notifications panel in a browser: a leaked key reported to the real server shows up
(through the server's own notifications worker) as a count in the navigation and a row in
the panel; opening the panel clears the count; members see neither."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.slow


def test_a_leak_report_appears_in_the_panel_with_a_count(ui_factory, web):
    with web.api() as api:
        leaked = api.post("/keys", json={"name": "pasted in a gist", "scopes": ["data:read"]}).json()
    answer = httpx.post(
        f"{web.url}/api/v1/keys/leaks",
        json=[
            {"token": leaked["secret"], "type": "tidegate_api_key", "url": "https://gist.example/abc", "source": "gist"}
        ],
    )
    assert answer.json()[0]["label"] == "true_positive"

    admin = ui_factory("admin")
    admin.sign_in(web.admin_email, web.admin_password)
    page = admin.page
    count = page.locator("#notification-count")
    deadline = time.monotonic() + 20  # the worker scans every 5 s
    while count.count() == 0 and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
    expect(count).to_have_text(re.compile(r"^\d+$"))
    page.get_by_role("link", name=re.compile("^Notifications")).click()
    page.wait_for_url("**/notifications")
    admin.snap("notifications")
    row = page.locator("#notifications tr[data-type='api_key.leak_reported']").first
    expect(row).to_contain_text("pasted in a gist")
    expect(row).to_contain_text("https://gist.example/abc")
    expect(page.locator("body")).not_to_contain_text(leaked["secret"])
    expect(page.locator("#notification-count")).to_have_count(0)


def test_members_have_no_notifications_panel(ui_factory, web):
    web.add_user("notify-member@acme.test", "member", password="member-password-123")
    ui = ui_factory("member")
    ui.sign_in("notify-member@acme.test", "member-password-123")
    expect(ui.page.get_by_role("link", name=re.compile("^Notifications"))).to_have_count(0)
    ui.goto("/notifications", status=403)
