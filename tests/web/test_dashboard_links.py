"""Dashboard share links: the API that manages them and the /links/<token> page they open.

Member links need sign-in and show each viewer their own rows; public links exist only
while the organization allows them, render with their policies' access (never more than
their creator's), stop when the setting is switched off; revoked or expired links are 404.
The token is shown once and never stored, logged or audited.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from analysis_world import SALES, make_project, share

from tidegate.catalog.analysis import ShareLink
from tidegate.core.redaction import redact_secrets
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs
from tidegate.web.sessions import SESSION_COOKIE, start_session

API = "/api/v1"


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def error_of(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def number_on(html: str) -> str:
    found = re.findall(r"data-widget-number>([^<]*)<", html)
    assert len(found) == 1, html
    return found[0].strip()


@pytest.fixture
def world(client, org):
    """As in test_api_dashboards: `sales` shared with members us and eu (region policies);
    the admin's project and dashboard (one number widget: the total) shared with both."""
    h = org.headers()
    us, eu = org.add_user("us@example.com"), org.add_user("eu@example.com")
    source = ok(client.post(f"{API}/sources", json={"name": "sales", "rows": SALES}, headers=h), 201)["id"]
    policies = {}
    for user, region in ((us, "US"), (eu, "EU")):
        ok(client.post(f"{API}/sources/{source}/shares", json={"user_id": user, "permission": "view"}, headers=h))
        policies[region] = ok(
            client.post(
                f"{API}/access/policies",
                json={"name": f"only-{region}", "row_filters": [{"column": "region", "values": [region]}]},
                headers=h,
            ),
            201,
        )["id"]
        ok(client.post(f"{API}/access/policies/{policies[region]}/users", json={"user_ids": [user]}, headers=h))
    url = org.settings.database_url
    project, (step,) = make_project(
        url, org.id, org.admin_id, {"sales": source}, [("total", "SELECT sum(amount)::BIGINT AS total FROM sales")]
    )
    dashboard = ok(client.post(f"{API}/dashboards", json={"name": "Sales"}, headers=h))["id"]
    body = {"title": "Revenue", "project_id": project, "step_id": step, "kind": "number", "y": "total"}
    ok(client.post(f"{API}/dashboards/{dashboard}/widgets", json=body, headers=h))
    for user in (us, eu):
        share(url, org.id, "project", project, user, org.admin_id)
    return {"us": us, "eu": eu, "project": project, "step": step, "dashboard": dashboard, "policies": policies}


def sign_in(client, org, user_id: str) -> None:
    with session_scope(org.settings.database_url) as session:
        user = orgs.get_user(session, org.id, user_id)
        token = start_session(session, org.settings.session_key, user, ip=None, user_agent=None)
    client.cookies.set(SESSION_COOKIE, token)


def sign_out(client) -> None:
    client.cookies.clear()


def new_link(client, org, dashboard: str, **body) -> dict:
    return ok(client.post(f"{API}/dashboards/{dashboard}/links", json=body, headers=org.headers()))


def public_links(client, org, enabled: bool) -> None:
    r = client.patch(f"{API}/org/settings", json={"public_share_links_enabled": enabled}, headers=org.headers())
    assert ok(r)["public_share_links_enabled"] is enabled


def path_of(link: dict) -> str:
    return "/links/" + link["token"]


def test_a_member_link_needs_sign_in_and_shows_each_viewer_their_rows(client, org, world):
    link = new_link(client, org, world["dashboard"], expires_in_days=7)
    assert link["token"].startswith("dl_") and len(link["token"]) == 46
    assert link["url"].endswith(path_of(link)) and link["token_prefix"] == link["token"][:12]
    assert (link["public"], link["policy_ids"], link["status"]) == (False, [], "active")

    r = client.get(path_of(link), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")

    # The dashboard itself was never shared with `us`: the link opens it, with us's rows.
    sign_in(client, org, world["us"])
    assert client.get(f"/dashboards/{world['dashboard']}").status_code == 404
    assert number_on(client.get(path_of(link)).text) == "30"
    sign_in(client, org, world["eu"])
    assert number_on(client.get(path_of(link)).text) == "70"
    sign_in(client, org, org.admin_id)
    assert number_on(client.get(path_of(link)).text) == "150"

    # Another organization's member: not theirs to open.
    other = org.__class__(**{**org.__dict__})
    with session_scope(org.settings.database_url) as session:
        created = orgs.create_organization(session, "elsewhere", "boss@elsewhere.example", None)
        stranger = created.admin.id
        other.id = created.org.id
    sign_in(client, other, stranger)
    assert client.get(path_of(link)).status_code == 404


def test_links_list_without_secrets_and_revoke(client, org, world):
    dash = world["dashboard"]
    link = new_link(client, org, dash)
    listed = ok(client.get(f"{API}/dashboards/{dash}/links", headers=org.headers()))["data"]
    assert [entry["id"] for entry in listed] == [link["id"]]
    assert "token" not in listed[0] and link["token"] not in str(listed)
    # Owner only: a viewer of the dashboard may not list or create links.
    share(org.settings.database_url, org.id, "dashboard", dash, world["us"], org.admin_id)
    us_key = org.key_for(world["us"])
    assert error_of(client.get(f"{API}/dashboards/{dash}/links", headers=org.headers(us_key)))[0] == 403
    assert error_of(client.post(f"{API}/dashboards/{dash}/links", json={}, headers=org.headers(us_key)))[0] == 403

    revoked = ok(client.delete(f"{API}/dashboards/{dash}/links/{link['id']}", headers=org.headers()))
    assert revoked == {"id": link["id"], "dashboard_id": dash, "revoked": True}
    assert ok(client.get(f"{API}/dashboards/{dash}/links", headers=org.headers()))["data"][0]["status"] == "revoked"
    sign_in(client, org, org.admin_id)
    assert client.get(path_of(link)).status_code == 404
    assert error_of(client.delete(f"{API}/dashboards/{dash}/links/lnk_nope", headers=org.headers())) == (
        404,
        "link_not_found",
    )


def test_an_expired_link_is_404(client, org, world):
    link = new_link(client, org, world["dashboard"], expires_in_days=1)
    sign_in(client, org, world["us"])
    assert client.get(path_of(link)).status_code == 200
    with session_scope(org.settings.database_url) as session:
        session.get(ShareLink, link["id"]).expires_at = utcnow() - timedelta(seconds=1)
    assert client.get(path_of(link)).status_code == 404
    assert (
        ok(client.get(f"{API}/dashboards/{world['dashboard']}/links", headers=org.headers()))["data"][0]["status"]
        == "expired"
    )
    assert client.get("/links/dl_" + "x" * 43).status_code == 404
    assert client.get("/links/not-a-token").status_code == 404


def test_public_links_follow_the_org_setting_and_their_policies(client, org, world):
    dash, us_policy = world["dashboard"], world["policies"]["US"]
    # Off (the default): refused.
    assert error_of(
        client.post(
            f"{API}/dashboards/{dash}/links", json={"public": True, "policy_ids": [us_policy]}, headers=org.headers()
        )
    ) == (403, "public_links_disabled")
    public_links(client, org, True)
    for body, code in (
        ({"public": True}, "policy_ids_required"),
        ({"public": True, "policy_ids": []}, "policy_ids_required"),
        ({"public": True, "policy_ids": ["pol_nope"]}, "policy_not_found"),
        ({"public": False, "policy_ids": [us_policy]}, "policy_ids_public_only"),
    ):
        r = client.post(f"{API}/dashboards/{dash}/links", json=body, headers=org.headers())
        assert r.status_code in (400, 404) and r.json()["error"]["code"] == code, r.text
    link = new_link(client, org, dash, public=True, policy_ids=[us_policy])
    assert link["public"] is True and link["policy_ids"] == [us_policy]

    sign_out(client)
    page = client.get(path_of(link))
    assert page.status_code == 200 and number_on(page.text) == "30"  # the US policy's rows only
    assert "Sign out" not in page.text  # nobody is signed in on a public page

    # Switched off: every public link stops at once; on again, it works again.
    public_links(client, org, False)
    assert client.get(path_of(link)).status_code == 404
    public_links(client, org, True)
    assert client.get(path_of(link)).status_code == 200

    ok(client.delete(f"{API}/dashboards/{dash}/links/{link['id']}", headers=org.headers()))
    assert client.get(path_of(link)).status_code == 404


def test_a_public_link_never_shows_more_than_its_creator_may_see(client, org, world):
    """`eu` (region = EU) owns a dashboard and links it publicly with the US policy: the
    link shows EU AND US, nothing; with the EU policy, EU's rows."""
    public_links(client, org, True)
    eu = org.headers(org.key_for(world["eu"]))
    dash = ok(client.post(f"{API}/dashboards", json={"name": "eu's"}, headers=eu))["id"]
    body = {"title": "Revenue", "project_id": world["project"], "step_id": world["step"], "kind": "number"}
    ok(client.post(f"{API}/dashboards/{dash}/widgets", json=body, headers=eu))
    wide = ok(
        client.post(
            f"{API}/dashboards/{dash}/links", json={"public": True, "policy_ids": [world["policies"]["US"]]}, headers=eu
        )
    )
    same = ok(
        client.post(
            f"{API}/dashboards/{dash}/links", json={"public": True, "policy_ids": [world["policies"]["EU"]]}, headers=eu
        )
    )
    assert number_on(client.get(path_of(wide)).text) in ("–", "None", "")
    assert number_on(client.get(path_of(same)).text) == "70"
    # Its creator deactivated: the link stops.
    with session_scope(org.settings.database_url) as session:
        orgs.get_user(session, org.id, world["eu"]).is_active = False
    assert client.get(path_of(same)).status_code == 404


def test_link_tokens_never_reach_the_audit_log(client, org, world):
    public_links(client, org, True)
    link = new_link(client, org, world["dashboard"], public=True, policy_ids=[world["policies"]["US"]])
    client.get(path_of(link))
    client.delete(f"{API}/dashboards/{world['dashboard']}/links/{link['token']}", headers=org.headers())
    client.app.state.journal.flush()
    events = ok(client.get(f"{API}/audit/events", params={"limit": 100}, headers=org.headers()))["data"]
    assert events and link["token"] not in str(events)
    viewed = [e for e in events if e["action"] == "dashboard.viewed"]
    assert viewed and viewed[0]["details"]["link_id"] == link["id"]
    assert any(e["action"] == "dashboard.link_created" for e in events)


def test_the_token_format_is_redacted_wherever_a_path_is_logged():
    token = "dl_" + "A1b2-_" * 7 + "x"
    assert redact_secrets(f"/links/{token}") == "/links/dl_[redacted]"
    assert redact_secrets("/dashboards/dash_01abc/links/lnk_01abc") == "/dashboards/dash_01abc/links/lnk_01abc"


def test_admins_switch_public_links_in_settings_security(client, org, world):
    sign_in(client, org, org.admin_id)
    page = client.get("/settings/security")
    assert page.status_code == 200 and 'name="public_share_links_enabled"' in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    form = {"csrf_token": token, "api_key_creation_enabled": "on", "max_keys_per_user": "100"}
    form["user_rate_limit_per_minute"] = "100000"
    saved = client.post("/settings/security/admin-controls", data={**form, "public_share_links_enabled": "on"})
    assert saved.status_code == 200, saved.text  # (followed the redirect)
    assert ok(client.get(f"{API}/org/settings", headers=org.headers()))["public_share_links_enabled"] is True
    link = new_link(client, org, world["dashboard"], public=True, policy_ids=[world["policies"]["EU"]])
    sign_out(client)
    assert number_on(client.get(path_of(link)).text) == "70"
    sign_in(client, org, org.admin_id)
    form["csrf_token"] = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/settings/security").text).group(1)
    off = client.post("/settings/security/admin-controls", data=form)  # the switch unchecked: off
    assert off.status_code == 200, off.text[-3000:]
    assert ok(client.get(f"{API}/org/settings", headers=org.headers()))["public_share_links_enabled"] is False
    sign_out(client)
    assert client.get(path_of(link)).status_code == 404


def test_a_narrower_key_cannot_make_a_public_link_wider_than_itself(client, org, world):
    public_links(client, org, True)
    us, eu = world["policies"]["US"], world["policies"]["EU"]
    dash = world["dashboard"]

    def create(key: str, policy_ids: list[str]):
        body = {"public": True, "policy_ids": policy_ids}
        return client.post(f"{API}/dashboards/{dash}/links", json=body, headers=org.headers(key))

    own_policies = org.key_for(org.admin_id, access_policy_ids=[us])
    assert error_of(create(own_policies, [eu])) == (403, "public_link_exceeds_key")
    assert error_of(create(own_policies, [us, eu])) == (403, "public_link_exceeds_key")
    link = ok(create(own_policies, [us]))
    assert number_on(client.get(path_of(link)).text) == "30"
    source = ok(client.get(f"{API}/sources", headers=org.headers()))["data"][0]["id"]
    scoped = org.key_for(org.admin_id, source_scope={"mode": "selected", "source_ids": [source]})
    assert error_of(create(scoped, [us])) == (403, "public_link_exceeds_key")
    bound = org.key_for(org.admin_id, bound_user_id=org.admin_id)
    assert error_of(create(bound, [us])) == (403, "public_link_exceeds_key")
    # A key without narrowing of its own makes any link its creator may.
    assert ok(create(org.key_for(org.admin_id), [eu]))["policy_ids"] == [eu]


# -- the dashboard pages (signed in) -----------------------------------------------------------


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_dashboard_pages_show_each_viewer_their_own(client, org, world):
    dash = world["dashboard"]
    private = ok(client.post(f"{API}/dashboards", json={"name": "Admin only"}, headers=org.headers()))["id"]
    share(org.settings.database_url, org.id, "dashboard", dash, world["us"], org.admin_id)
    sign_in(client, org, world["us"])
    listing = client.get("/dashboards")
    assert listing.status_code == 200 and f"/dashboards/{dash}" in listing.text and private not in listing.text
    shown = client.get(f"/dashboards/{dash}")
    assert shown.status_code == 200 and number_on(shown.text) == "30"
    assert "Add widget" not in shown.text and "Create link" not in shown.text  # a viewer: no forms
    assert client.get(f"/dashboards/{private}").status_code == 404
    # A viewer's forged change is refused, nothing changes.
    refused = client.post(f"/dashboards/{dash}/filters", data={"csrf_token": csrf_of(shown.text), "filters": "a = b"})
    assert refused.status_code == 403
    # Their own dashboard, made in the page.
    made = client.post("/dashboards", data={"csrf_token": csrf_of(listing.text), "name": "Mine"})
    assert made.status_code == 200 and "Dashboard created." in made.text

    sign_in(client, org, org.admin_id)
    page = client.get(f"/dashboards/{dash}")
    assert number_on(page.text) == "150" and "Add widget" in page.text and "Create link" in page.text
    bad = client.post(f"/dashboards/{dash}/filters", data={"csrf_token": csrf_of(page.text), "filters": "region US"})
    assert bad.status_code == 400 and "Line 1" in bad.text
    saved = client.post(
        f"/dashboards/{dash}/filters", data={"csrf_token": csrf_of(page.text), "filters": "region = EU"}
    )
    assert saved.status_code == 200 and "Filters saved." in saved.text
    filters = ok(client.get(f"{API}/dashboards/{dash}", headers=org.headers()))["filters"]
    assert filters == [{"column": "region", "values": ["EU"]}]
