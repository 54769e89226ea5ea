"""Issue 14 §1: column rules reach what is computed from sources too: project steps,
dashboard widgets and embed sessions read a source under the READER's column rules."""

from __future__ import annotations

import pytest
from analysis_world import make_project, share
from columns_world import PEOPLE, api, assert_no_secret, create_policy, create_source

V1 = "/api/v1"


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture
def world(client, org):
    """The admin's org-shared `people`; the analyst's policy hides salary and masks email; a
    project of the admin's reading people (shared with the analyst) and a dashboard on it."""
    h = org.headers()
    source = create_source(client, org)
    analyst = org.add_user("analyst@example.com")
    policy = create_policy(
        client,
        org,
        name="hr",
        column_rules=[{"column": "salary", "action": "hide"}, {"column": "email", "action": "mask"}],
    )
    ok(client.post(api(f"/access/policies/{policy}/users"), json={"user_ids": [analyst]}, headers=h))
    project, (star, payroll, by_email) = make_project(
        org.settings.database_url,
        org.id,
        org.admin_id,
        {"people": source},
        [
            ("everything", "SELECT * FROM people ORDER BY name"),
            ("payroll", "SELECT sum(salary) AS total FROM people"),
            ("by_email", "SELECT email, count(*) AS n FROM people GROUP BY email ORDER BY email"),
        ],
    )
    dashboard = ok(client.post(f"{V1}/dashboards", json={"name": "People"}, headers=h))["id"]
    share(org.settings.database_url, org.id, "project", project, analyst, org.admin_id)
    share(org.settings.database_url, org.id, "dashboard", dashboard, analyst, org.admin_id)
    return {
        "source": source,
        "analyst": analyst,
        "key": org.key_for(analyst),
        "project": project,
        "star": star,
        "payroll": payroll,
        "by_email": by_email,
        "dashboard": dashboard,
    }


def step_data(client, org, world, step, key=None):
    return client.get(f"{V1}/projects/{world['project']}/steps/{step}/data", headers=org.headers(key))


def test_project_steps_read_under_the_readers_column_rules(client, org, world):
    admin = ok(step_data(client, org, world, world["star"]))
    assert "salary" in admin["data"][0] and admin["data"][0]["email"] == "amy@example.org"
    mine = ok(step_data(client, org, world, world["star"], world["key"]))
    assert [sorted(row) for row in mine["data"]] == [["email", "hired", "name", "region"]] * 3
    assert [row["email"] for row in mine["data"]] == ["a***", "a***", "b***"]
    assert_no_secret(str(mine))
    grouped = ok(step_data(client, org, world, world["by_email"], world["key"]))
    assert grouped["data"] == [{"email": "a***", "n": 2}, {"email": "b***", "n": 1}]
    # A step that needs the hidden column fails for this reader, and says nothing of its values.
    failed = step_data(client, org, world, world["payroll"], world["key"])
    assert failed.status_code == 400, failed.text
    assert_no_secret(failed.text)
    assert ok(step_data(client, org, world, world["payroll"]))["data"] == [{"total": sum(p["salary"] for p in PEOPLE)}]


def test_dashboard_widgets_read_under_the_readers_column_rules(client, org, world):
    h = org.headers()
    body = {"title": "people", "project_id": world["project"], "step_id": world["star"], "kind": "table"}
    widget = ok(client.post(f"{V1}/dashboards/{world['dashboard']}/widgets", json=body, headers=h))["id"]
    payroll_body = {"title": "payroll", "project_id": world["project"], "step_id": world["payroll"], "kind": "number"}
    payroll = ok(client.post(f"{V1}/dashboards/{world['dashboard']}/widgets", json=payroll_body, headers=h))["id"]

    def data(widget_id, key=None):
        url = f"{V1}/dashboards/{world['dashboard']}/widgets/{widget_id}/data"
        return ok(client.get(url, headers=org.headers(key)))

    mine = data(widget, world["key"])
    assert "salary" not in mine["columns"] and [row["email"] for row in mine["data"]] == ["a***", "a***", "b***"]
    assert_no_secret(str(mine))
    total = data(payroll, world["key"])
    assert total["error"] and not total["data"]
    assert_no_secret(str(total))
    assert data(payroll)["data"] == [{"total": 360000}]


def test_embed_sessions_read_under_their_users_and_their_keys_creators_rules(client, org, world):
    h = org.headers()
    user = ok(client.put(f"{V1}/users/external/ext-1", json={"email": "ext1@example.com"}, headers=h))["id"]
    masker = create_policy(client, org, name="ext-mask", column_rules=[{"column": "name", "action": "mask"}])
    ok(client.post(api(f"/access/policies/{masker}/users"), json={"user_ids": [user]}, headers=h))
    created = client.post(f"{V1}/embed/sessions", json={"user_id": "ext-1"}, headers=h)
    assert created.status_code == 201, created.text
    session = {"X-Embed-Session": created.json()["session_token"]}
    page = ok(client.get(f"{V1}/sources/{world['source']}/data", headers=session))
    assert [row["name"] for row in page["data"]] == ["A***", "A***", "B***"]
    assert page["data"][0]["email"] == "ann@example.com" and "salary" in page["columns"]  # only the user's rules
    q = client.post(f"{V1}/sources/{world['source']}/query", json={"sql": "SELECT name FROM data"}, headers=session)
    assert ok(q)["data"] == [{"name": "A***"}, {"name": "A***"}, {"name": "B***"}]

    # The key's creator (the admin) now hides salary: the session reads with both rule sets.
    hider = create_policy(client, org, name="admin-hide", column_rules=[{"column": "salary", "action": "hide"}])
    ok(client.post(api(f"/access/policies/{hider}/users"), json={"user_ids": [org.admin_id]}, headers=h))
    page = ok(client.get(f"{V1}/sources/{world['source']}/data", headers=session))
    assert "salary" not in page["columns"] and page["data"][0]["name"] == "A***"
    assert_no_secret(str(page["data"][0].get("salary", "")))
    meta = ok(client.get(f"{V1}/sources/{world['source']}", headers=session))
    assert "salary" not in meta["columns"]
