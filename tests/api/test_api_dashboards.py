"""Dashboards over HTTP: CRUD as the SDK expects, privacy, widgets evaluated under the
READER's access, filters, error states, refresh, and what embed sessions may do."""

from __future__ import annotations

import time

import pytest
from analysis_world import SALES, delete_project, delete_step, make_project, share

from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs

API = "/api/v1"


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def error_of(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@pytest.fixture
def world(client, org):
    """The admin's `sales` source, shared with two members: `us` holds a region = US policy,
    `eu` a region = EU policy. A project (admin's) sums it; a dashboard (admin's) draws it.
    Project and dashboard are shared with both members."""
    h = org.headers()
    us, eu = org.add_user("us@example.com"), org.add_user("eu@example.com")
    source = ok(client.post(f"{API}/sources", json={"name": "sales", "rows": SALES}, headers=h), 201)["id"]
    for user in (us, eu):
        ok(client.post(f"{API}/sources/{source}/shares", json={"user_id": user, "permission": "view"}, headers=h))
    for user, region in ((us, "US"), (eu, "EU")):
        policy = ok(
            client.post(
                f"{API}/access/policies",
                json={"name": f"only-{region}", "row_filters": [{"column": "region", "values": [region]}]},
                headers=h,
            ),
            201,
        )["id"]
        ok(client.post(f"{API}/access/policies/{policy}/users", json={"user_ids": [user]}, headers=h))
    project, (rows_step, total_step) = make_project(
        org.settings.database_url,
        org.id,
        org.admin_id,
        {"sales": source},
        [
            ("by_region", "SELECT region, sum(amount) AS amount FROM sales GROUP BY region ORDER BY region"),
            ("total", "SELECT sum(amount) AS total FROM sales"),
        ],
    )
    dashboard = ok(client.post(f"{API}/dashboards", json={"name": "Sales", "description": "by region"}, headers=h))
    for user in (us, eu):
        share(org.settings.database_url, org.id, "project", project, user, org.admin_id)
        share(org.settings.database_url, org.id, "dashboard", dashboard["id"], user, org.admin_id)
    return {
        "us": us,
        "eu": eu,
        "us_key": org.key_for(us),
        "eu_key": org.key_for(eu),
        "source": source,
        "project": project,
        "rows_step": rows_step,
        "total_step": total_step,
        "dashboard": dashboard["id"],
    }


def add_widget(client, org, dashboard: str, project: str, step: str, kind: str = "number", **extra) -> dict:
    body = {"title": f"{kind} widget", "project_id": project, "step_id": step, "kind": kind, **extra}
    return ok(client.post(f"{API}/dashboards/{dashboard}/widgets", json=body, headers=org.headers()))


def widget_data(client, org, dashboard: str, widget: str, key: str | None = None, **params) -> dict:
    return ok(
        client.get(f"{API}/dashboards/{dashboard}/widgets/{widget}/data", params=params, headers=org.headers(key))
    )


# -- CRUD -----------------------------------------------------------------------------------


def test_dashboard_crud_as_the_sdk_reads_it(client, org):
    h = org.headers()
    created = ok(client.post(f"{API}/dashboards", json={"name": "Ops", "description": "d"}, headers=h))
    assert created["id"].startswith("dash_") and created["name"] == "Ops" and created["description"] == "d"
    assert (created["widget_count"], created["widgets"], created["filters"]) == (0, [], [])
    assert created["created_by"] == org.admin_id and created["created_at"].endswith("Z")

    got = ok(client.get(f"{API}/dashboards/{created['id']}", headers=h))
    assert got == created
    assert ok(client.patch(f"{API}/dashboards/{created['id']}", json={"name": "Ops 2"}, headers=h)) == {
        "id": created["id"],
        "updated": True,
    }
    assert ok(client.get(f"{API}/dashboards/{created['id']}", headers=h))["name"] == "Ops 2"

    # A cursor list; list items carry no widgets or filters.
    more = [ok(client.post(f"{API}/dashboards", json={"name": f"d{i}"}, headers=h))["id"] for i in range(3)]
    first = ok(client.get(f"{API}/dashboards", params={"limit": 2}, headers=h))
    assert first["has_more"] is True and len(first["data"]) == 2 and "widgets" not in first["data"][0]
    rest = ok(client.get(f"{API}/dashboards", params={"limit": 2, "after": first["next_cursor"]}, headers=h))
    listed = [d["id"] for d in first["data"] + rest["data"]]
    assert listed == sorted([created["id"], *more]) and rest["has_more"] is False

    assert ok(client.delete(f"{API}/dashboards/{created['id']}", headers=h)) == {"id": created["id"], "deleted": True}
    assert error_of(client.get(f"{API}/dashboards/{created['id']}", headers=h)) == (404, "dashboard_not_found")


def test_bad_input_is_refused_and_changes_nothing(client, org):
    h = org.headers()
    assert error_of(client.post(f"{API}/dashboards", json={"name": ""}, headers=h))[0] == 400
    assert error_of(client.post(f"{API}/dashboards", json={"name": "x" * 201}, headers=h))[0] == 400
    dash = ok(client.post(f"{API}/dashboards", json={"name": "A"}, headers=h))["id"]
    for filters in (
        [{"column": "region"}],
        [{"column": "region", "values": []}],
        [{"column": "region", "values": [1]}],
        [{"column": "", "values": ["US"]}],
        [{"column": "region", "values": ["US"]}, {"column": "REGION", "values": ["EU"]}],
        "region=US",
    ):
        r = client.patch(f"{API}/dashboards/{dash}", json={"name": "B", "filters": filters}, headers=h)
        assert r.status_code == 400, (filters, r.text)
    got = ok(client.get(f"{API}/dashboards/{dash}", headers=h))
    assert (got["name"], got["filters"]) == ("A", [])


def test_a_dashboard_is_private_to_its_creator_until_shared(client, org, world):
    h = org.headers()
    private = ok(client.post(f"{API}/dashboards", json={"name": "mine"}, headers=h))["id"]
    us = org.headers(world["us_key"])
    assert error_of(client.get(f"{API}/dashboards/{private}", headers=us)) == (404, "dashboard_not_found")
    listed = {d["id"] for d in ok(client.get(f"{API}/dashboards", headers=us))["data"]}
    assert listed == {world["dashboard"]}
    # Shared for view: the member reads it but may not change or delete it.
    assert error_of(client.patch(f"{API}/dashboards/{world['dashboard']}", json={"name": "x"}, headers=us)) == (
        403,
        "dashboard_permission_denied",
    )
    assert error_of(client.delete(f"{API}/dashboards/{world['dashboard']}", headers=us))[0] == 403
    # user_id: the caller's dashboards that user may open too.
    by_user = ok(client.get(f"{API}/dashboards", params={"user_id": world["us"]}, headers=h))["data"]
    assert [d["id"] for d in by_user] == [world["dashboard"]]
    # A member's own dashboard: admins see it too.
    theirs = ok(client.post(f"{API}/dashboards", json={"name": "theirs"}, headers=us))["id"]
    assert ok(client.get(f"{API}/dashboards/{theirs}", headers=h))["created_by"] == world["us"]


def test_scopes_gate_dashboards(client, org, world):
    reader = org.key_for(world["us"], scopes=["admin:dashboards:read"])
    h = org.headers(reader)
    assert ok(client.get(f"{API}/dashboards/{world['dashboard']}", headers=h))["id"] == world["dashboard"]
    assert error_of(client.post(f"{API}/dashboards", json={"name": "x"}, headers=h)) == (403, "insufficient_scope")
    assert error_of(client.post(f"{API}/dashboards/{world['dashboard']}/refresh", headers=h)) == (
        403,
        "insufficient_scope",
    )
    data_only = org.headers(org.key_for(world["us"], scopes=["data:read"]))
    assert error_of(client.get(f"{API}/dashboards", headers=data_only)) == (403, "insufficient_scope")


# -- widgets: the reader's access -------------------------------------------------------------


def test_two_readers_of_one_widget_see_their_own_numbers(client, org, world):
    dash = world["dashboard"]
    widget = add_widget(client, org, dash, world["project"], world["total_step"], y="total")
    assert widget["id"].startswith("wdg_") and widget["kind"] == "number" and widget["y"] == "total"
    assert ok(client.get(f"{API}/dashboards/{dash}", headers=org.headers()))["widget_count"] == 1

    def total(key: str | None) -> int:
        page = widget_data(client, org, dash, widget["id"], key)
        assert page["error"] is None and page["columns"] == ["total"], page
        return page["data"][0]["total"]

    assert total(None) == 150  # the admin: every row
    assert total(world["us_key"]) == 30
    assert total(world["eu_key"]) == 70

    # The table widget pages through the reader's rows.
    rows = add_widget(client, org, dash, world["project"], world["rows_step"], kind="bar", x="region", y="amount")
    page = widget_data(client, org, dash, rows["id"], world["eu_key"], page=1, page_size=10)
    assert page["data"] == [{"region": "EU", "amount": 70}] and page["total_rows"] == 1
    assert page["kind"] == "bar" and (page["x"], page["y"]) == ("region", "amount")


def test_widget_reads_are_audited_as_data_reads(client, org, world):
    dash = world["dashboard"]
    widget = add_widget(client, org, dash, world["project"], world["rows_step"], kind="table")
    widget_data(client, org, dash, widget["id"], world["us_key"])
    client.app.state.journal.flush()
    events = ok(client.get(f"{API}/audit/events", params={"action": "data.read", "limit": 100}, headers=org.headers()))[
        "data"
    ]
    mine = [e for e in events if e["target_id"] == widget["id"]]
    assert len(mine) == 1, events
    details = mine[0]["details"]
    assert details["rows_returned"] == 1 and details["source_ids"] == [world["source"]]
    assert details["dashboard_id"] == dash and details["step_id"] == world["rows_step"]
    assert len(details["policy_ids"]) == 1


def test_filters_narrow_every_widget_where_the_column_exists(client, org, world):
    dash, h = world["dashboard"], org.headers()
    rows = add_widget(client, org, dash, world["project"], world["rows_step"], kind="table")
    total = add_widget(client, org, dash, world["project"], world["total_step"])
    filters = [{"column": "REGION", "values": ["US", "APAC"]}]
    ok(client.patch(f"{API}/dashboards/{dash}", json={"filters": filters}, headers=h))
    assert ok(client.get(f"{API}/dashboards/{dash}", headers=h))["filters"] == filters
    assert [r["region"] for r in widget_data(client, org, dash, rows["id"])["data"]] == ["APAC", "US"]
    # The us member: their policy AND the filter.
    assert [r["region"] for r in widget_data(client, org, dash, rows["id"], world["us_key"])["data"]] == ["US"]
    # `total` has no region column: the filter does not apply to it.
    assert widget_data(client, org, dash, total["id"])["data"] == [{"total": 150}]
    # Two filters AND; a number compares as text.
    ok(
        client.patch(
            f"{API}/dashboards/{dash}",
            json={"filters": [*filters, {"column": "amount", "values": ["50"]}]},
            headers=h,
        )
    )
    assert widget_data(client, org, dash, rows["id"])["data"] == [{"region": "APAC", "amount": 50}]
    ok(client.patch(f"{API}/dashboards/{dash}", json={"filters": []}, headers=h))
    assert widget_data(client, org, dash, rows["id"])["total_rows"] == 3


def test_a_widget_needs_a_project_the_caller_can_open(client, org, world):
    us = org.headers(world["us_key"])
    own = ok(client.post(f"{API}/dashboards", json={"name": "own"}, headers=us))["id"]
    private_project, (step,) = make_project(
        org.settings.database_url, org.id, org.admin_id, {"sales": world["source"]}, [("s", "SELECT 1 AS one")]
    )
    body = {"title": "t", "project_id": private_project, "step_id": step, "kind": "table"}
    assert error_of(client.post(f"{API}/dashboards/{own}/widgets", json=body, headers=us)) == (
        404,
        "project_not_found",
    )
    body = {"title": "t", "project_id": world["project"], "step_id": step, "kind": "table"}
    assert error_of(client.post(f"{API}/dashboards/{own}/widgets", json=body, headers=us)) == (404, "step_not_found")
    body["step_id"], body["kind"] = world["total_step"], "pie"
    assert error_of(client.post(f"{API}/dashboards/{own}/widgets", json=body, headers=us)) == (
        400,
        "invalid_widget_kind",
    )
    assert ok(client.get(f"{API}/dashboards/{own}", headers=us))["widget_count"] == 0
    # A viewer of the shared dashboard cannot add widgets to it.
    body["kind"] = "number"
    assert error_of(client.post(f"{API}/dashboards/{world['dashboard']}/widgets", json=body, headers=us))[0] == 403


def test_widget_update_and_delete(client, org, world):
    dash, h = world["dashboard"], org.headers()
    widget = add_widget(client, org, dash, world["project"], world["total_step"])
    url = f"{API}/dashboards/{dash}/widgets/{widget['id']}"
    changed = ok(
        client.patch(url, json={"title": "Revenue", "kind": "table", "step_id": world["rows_step"]}, headers=h)
    )
    assert (changed["title"], changed["kind"], changed["step_id"]) == ("Revenue", "table", world["rows_step"])
    assert error_of(client.patch(url, json={"kind": "donut"}, headers=h)) == (400, "invalid_widget_kind")
    assert ok(client.delete(url, headers=h)) == {"id": widget["id"], "deleted": True}
    assert error_of(client.get(url + "/data", headers=h)) == (404, "widget_not_found")
    assert ok(client.get(f"{API}/dashboards/{dash}", headers=h))["widgets"] == []


def test_a_widget_whose_step_or_project_is_gone_reports_an_error(client, org, world):
    dash = world["dashboard"]
    widget = add_widget(client, org, dash, world["project"], world["total_step"])
    other = add_widget(client, org, dash, world["project"], world["rows_step"], kind="table")
    delete_step(org.settings.database_url, world["total_step"])
    page = widget_data(client, org, dash, widget["id"])
    assert page["error"]["code"] == "step_not_found" and page["data"] == [] and page["total_rows"] == 0
    assert widget_data(client, org, dash, other["id"])["error"] is None  # the others still draw

    ok(client.delete(f"{API}/sources/{world['source']}", headers=org.headers()))
    failed = widget_data(client, org, dash, other["id"])
    assert failed["error"] is not None and failed["data"] == []

    delete_project(org.settings.database_url, world["project"])
    gone = widget_data(client, org, dash, other["id"], world["us_key"])
    assert gone["error"]["code"] == "project_unavailable"


def test_a_reader_who_cannot_open_the_project_gets_an_error_state(client, org, world):
    dash = world["dashboard"]
    private_project, (step,) = make_project(
        org.settings.database_url, org.id, org.admin_id, {"sales": world["source"]}, [("s", "SELECT 1 AS one")]
    )
    widget = add_widget(client, org, dash, private_project, step)
    assert widget_data(client, org, dash, widget["id"])["data"] == [{"one": 1}]
    page = widget_data(client, org, dash, widget["id"], world["us_key"])
    assert page["error"]["code"] == "project_unavailable" and page["data"] == []


# -- refresh ----------------------------------------------------------------------------------


def test_refresh_evaluates_in_the_background_and_reports_its_status(client, org, world):
    dash, h = world["dashboard"], org.headers()
    add_widget(client, org, dash, world["project"], world["total_step"])
    add_widget(client, org, dash, world["project"], world["rows_step"], kind="table")
    status = ok(client.get(f"{API}/dashboards/{dash}/refresh/status", headers=h))
    assert status == {"id": dash, "status": "idle", "project_count": 1}
    started = ok(client.post(f"{API}/dashboards/{dash}/refresh", headers=h))  # no body
    assert started == {"id": dash, "status": "refreshing", "project_count": 1}
    deadline = time.monotonic() + 20
    while ok(client.get(f"{API}/dashboards/{dash}/refresh/status", headers=h))["status"] != "idle":
        assert time.monotonic() < deadline, "refresh never finished"
        time.sleep(0.05)
    # A viewer may refresh too (it computes only what they would see anyway).
    assert (
        ok(client.post(f"{API}/dashboards/{dash}/refresh", headers=org.headers(world["us_key"])))["project_count"] == 1
    )


# -- embed sessions: read-only ------------------------------------------------------------------


def test_an_embed_session_reads_dashboards_as_its_user_but_cannot_write(client, org, world):
    with session_scope(org.settings.database_url) as session:
        user = orgs.get_user(session, org.id, world["us"])
        user.external_id = "ext-us"
    r = client.post(f"{API}/embed/sessions", json={"user_id": "ext-us"}, headers=org.headers())
    assert r.status_code == 201, r.text
    h = {"X-Embed-Session": r.json()["session_token"]}
    dash = world["dashboard"]
    widget = add_widget(client, org, dash, world["project"], world["total_step"])
    assert [d["id"] for d in ok(client.get(f"{API}/dashboards", headers=h))["data"]] == [dash]
    assert ok(client.get(f"{API}/dashboards/{dash}", headers=h))["widget_count"] == 1
    assert ok(client.get(f"{API}/dashboards/{dash}/refresh/status", headers=h))["status"] == "idle"
    assert widget_data(client, org, dash, widget["id"], None, **{})["data"] == [{"total": 150}]
    page = ok(client.get(f"{API}/dashboards/{dash}/widgets/{widget['id']}/data", headers=h))
    assert page["data"] == [{"total": 30}]  # the session's user's rows
    for method, path in (
        ("post", f"{API}/dashboards"),
        ("patch", f"{API}/dashboards/{dash}"),
        ("delete", f"{API}/dashboards/{dash}"),
        ("post", f"{API}/dashboards/{dash}/refresh"),
    ):
        kwargs = {"json": {"name": "x"}} if method in ("post", "patch") and not path.endswith("refresh") else {}
        assert error_of(getattr(client, method)(path, headers=h, **kwargs)) == (403, "insufficient_scope"), path
