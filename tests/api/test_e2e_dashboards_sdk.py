"""Dashboards through the official Querri SDK (2.1.0) and its CLI, against a real
`tidegate serve` process; and the viewer's-access rule over real HTTP.

Projects and steps are written straight into the server's database (tests/analysis_world):
the widgets only need them to exist.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from analysis_world import SALES, make_project, share
from querri import NotFoundError, PermissionError
from server import Server, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("e2e-dashboards")) as srv:
        yield srv


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def database_url(server: Server) -> str:
    return server.env.get("TIDEGATE_DATABASE_URL") or f"sqlite:///{server.home / 'tidegate.db'}"


def member_key(server: Server, email: str) -> str:
    out = server.cli(
        "keys",
        "create",
        "--org",
        server.org_id,
        "--user",
        email,
        "--name",
        "member",
        "--preset",
        "full_access",
        "--json",
    )
    return json.loads(out.stdout)["secret"]


def test_sdk_dashboards_lifecycle(server):
    _, secret = server.new_admin_key()
    admin = server.sdk(secret)
    name = unique("sales")
    created = admin.dashboards.create(name=name, description="by region")
    assert created.id.startswith("dash_") and created.name == name and created.description == "by region"
    assert created.widget_count == 0 and created.widgets == [] and created.filters == []
    assert created.created_by == server.admin_user_id and created.created_at

    got = admin.dashboards.get(created.id)
    assert (got.id, got.name, got.widgets, got.filters) == (created.id, name, [], [])
    assert created.id in {d.id for d in admin.dashboards.list(limit=1)}  # pages through every dashboard

    updated = admin.dashboards.update(created.id, name=name + "!", description="new")
    assert (updated.id, updated.updated) == (created.id, True)
    again = admin.dashboards.get(created.id)
    assert (again.name, again.description) == (name + "!", "new")

    started = admin.dashboards.refresh(created.id)
    assert (started.id, started.status, started.project_count) == (created.id, "refreshing", 0)
    deadline = time.monotonic() + 20
    while (status := admin.dashboards.refresh_status(created.id)).status != "idle":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert (status.id, status.project_count) == (created.id, 0)

    admin.dashboards.delete(created.id)
    with pytest.raises(NotFoundError):
        admin.dashboards.get(created.id)
    admin.close()


def test_two_members_see_their_own_numbers_on_one_shared_dashboard(server):
    """The SDK reads the dashboard; the widget's data (a tidegate extension) over HTTP."""
    _, secret = server.new_admin_key()
    admin = server.sdk(secret)
    source = admin.sources.create_data_source(name=unique("sales"), rows=SALES)
    members = {}
    for region in ("US", "EU"):
        user = admin.users.create(email=f"{unique(region.lower())}@example.com", role="member")
        admin.sharing.share_source(source.id, user_id=user.id, permission="view")
        policy = admin.policies.create(name=unique(region), row_filters=[{"column": "region", "values": [region]}])
        admin.policies.assign_users(policy.id, user_ids=[user.id])
        members[region] = user
    url = database_url(server)
    project, (step,) = make_project(
        url,
        server.org_id,
        server.admin_user_id,
        {"sales": source.id},
        [("total", "SELECT sum(amount) AS total FROM sales")],
    )
    dashboard = admin.dashboards.create(name=unique("shared"))
    with server.client(secret) as http:
        body = {"title": "Revenue", "project_id": project, "step_id": step, "kind": "number", "y": "total"}
        widget = http.post(f"/dashboards/{dashboard.id}/widgets", json=body).json()
    for user in members.values():
        share(url, server.org_id, "project", project, user.id, server.admin_user_id)
        share(url, server.org_id, "dashboard", dashboard.id, user.id, server.admin_user_id)

    def total(key: str) -> float:
        with server.client(key) as http:
            page = http.get(f"/dashboards/{dashboard.id}/widgets/{widget['id']}/data")
        assert page.status_code == 200 and page.json()["error"] is None, page.text
        return float(page.json()["data"][0]["total"])

    keys = {region: member_key(server, user.email) for region, user in members.items()}
    assert total(secret) == 150
    assert total(keys["US"]) == 30
    assert total(keys["EU"]) == 70
    for key in keys.values():
        reader = server.sdk(key)
        seen = reader.dashboards.get(dashboard.id)
        assert seen.widget_count == 1 and seen.widgets[0]["id"] == widget["id"]
        with pytest.raises(PermissionError):  # shared for view: not theirs to change
            reader.dashboards.update(dashboard.id, name="mine now")
        reader.close()
    admin.close()


def test_querri_cli_dashboard_commands(server):
    _, secret = server.new_admin_key()

    def querri_json(*args: str):
        return json.loads(server.querri("--json", "dashboard", *args, key=secret).stdout)

    name = unique("cli")
    new = querri_json("new", "--name", name, "--description", "made by the CLI")
    assert new["name"] == name and new["description"] == "made by the CLI" and new["widget_count"] == 0
    assert new["id"] in {d["id"] for d in querri_json("list")}
    got = querri_json("get", new["id"])
    assert got["id"] == new["id"] and got["widgets"] == [] and got["filters"] == []
    assert querri_json("update", new["id"], "--name", name + "-2") == {"id": new["id"], "updated": True}
    assert querri_json("get", new["id"])["name"] == name + "-2"
    assert querri_json("refresh", new["id"])["status"] == "refreshing"
    waited = querri_json("refresh", new["id"], "--wait")
    assert waited["status"] == "idle" and waited["id"] == new["id"]
    assert querri_json("refresh-status", new["id"]) == {"id": new["id"], "status": "idle", "project_count": 0}
    assert querri_json("delete", new["id"]) == {"id": new["id"], "deleted": True}
    missing = server.querri("--json", "dashboard", "get", new["id"], key=secret, check=False)
    assert missing.returncode != 0 and "dashboard_not_found" in missing.stdout + missing.stderr


def test_raw_http_refresh_takes_no_body_and_lists_are_cursor_pages(server):
    _, secret = server.new_admin_key()
    with httpx.Client(base_url=server.url + "/api/v1", headers=server.headers(secret)) as http:
        ids = [http.post("/dashboards", json={"name": unique("p")}).json()["id"] for _ in range(3)]
        first = http.get("/dashboards", params={"limit": 2}).json()
        assert set(first) == {"data", "has_more", "next_cursor"} and first["has_more"] is True
        r = http.post(f"/dashboards/{ids[0]}/refresh")  # no body, no content type
        assert r.status_code == 200 and r.json()["status"] == "refreshing"


def test_an_embed_session_reads_dashboards_through_the_sdk_user_client(server):
    """`client.as_user(session).dashboards`: list, get and refresh_status as the session's
    user (the dashboards shared with them), and nothing that writes."""
    _, secret = server.new_admin_key()
    client = server.sdk(secret)
    ext = unique("viewer")
    session = client.embed.get_session(user={"external_id": ext, "email": f"{ext}@example.com"})
    shared = client.dashboards.create(name=unique("shared"))
    private = client.dashboards.create(name=unique("private"))
    share(database_url(server), server.org_id, "dashboard", shared.id, session["user_id"], server.admin_user_id)
    with client.as_user(session) as user_client:
        assert [d.id for d in user_client.dashboards.list()] == [shared.id]
        assert user_client.dashboards.get(shared.id).name == shared.name
        assert user_client.dashboards.refresh_status(shared.id).status == "idle"
        with pytest.raises(NotFoundError):
            user_client.dashboards.get(private.id)
    headers = {"X-Embed-Session": session["session_token"]}
    with httpx.Client(base_url=server.url + "/api/v1", headers=headers) as http:
        for response in (
            http.post("/dashboards", json={"name": "x"}),
            http.patch(f"/dashboards/{shared.id}", json={"name": "x"}),
            http.post(f"/dashboards/{shared.id}/refresh"),
            http.delete(f"/dashboards/{shared.id}"),
        ):
            assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_scope"
    client.close()


def test_dashboard_sharing_through_the_sdk_and_the_cli(server):
    """sharing.*_dashboard* and `querri share dashboard add|list|remove`, end to end: private
    until shared, the member's widget reads their rows, and a revoke closes it again."""
    _, secret = server.new_admin_key()
    admin = server.sdk(secret)
    source = admin.sources.create_data_source(name=unique("sales"), rows=SALES)
    user = admin.users.create(email=f"{unique('m')}@example.com", role="member")
    admin.sharing.share_source(source.id, user_id=user.id, permission="view")
    policy = admin.policies.create(name=unique("us"), row_filters=[{"column": "region", "values": ["US"]}])
    admin.policies.assign_users(policy.id, user_ids=[user.id])
    key = member_key(server, user.email)
    member = server.sdk(key)
    with server.client(secret) as http:  # a project through the API, its step reading the source
        project = http.post("/projects", json={"name": unique("p"), "user_id": server.admin_user_id}).json()["id"]
        http.post(f"/projects/{project}/sources", json={"source_id": source.id, "name": "sales", "run": False})
        step = http.post(
            f"/projects/{project}/steps", json={"name": "total", "sql": "SELECT sum(amount) AS total FROM sales"}
        ).json()["id"]
    admin.sharing.share_project(project, user_id=user.id, permission="view")
    dashboard = admin.dashboards.create(name=unique("shared"))
    with server.client(secret) as http:
        body = {"title": "Revenue", "project_id": project, "step_id": step, "kind": "number", "y": "total"}
        widget = http.post(f"/dashboards/{dashboard.id}/widgets", json=body).json()["id"]

    with pytest.raises(NotFoundError):  # private until shared
        member.dashboards.get(dashboard.id)
    grant = admin.sharing.share_dashboard(dashboard.id, user_id=user.id, permission="view")
    assert (grant.user_id, grant.permission, grant.resource_type, grant.resource_id) == (
        user.id,
        "view",
        "dashboard",
        dashboard.id,
    )
    assert [(s.user_id, s.permission) for s in admin.sharing.list_dashboard_shares(dashboard.id)] == [(user.id, "view")]
    assert member.dashboards.get(dashboard.id).widget_count == 1
    with server.client(key) as http:
        page = http.get(f"/dashboards/{dashboard.id}/widgets/{widget}/data").json()
    assert float(page["data"][0]["total"]) == 30  # the member's rows (US), not the admin's 150
    revoked = admin.sharing.revoke_dashboard_share(dashboard.id, user.id)
    assert (revoked["user_id"], revoked["resource_type"], revoked["revoked"]) == (user.id, "dashboard", True)
    with pytest.raises(NotFoundError):
        member.dashboards.get(dashboard.id)

    def q(*args: str, check: bool = True):
        return server.querri("--json", "share", "dashboard", *args, key=secret, check=check)

    q("add", dashboard.id, "--user-id", user.id, "--permission", "edit")
    assert [(s["user_id"], s["permission"]) for s in json.loads(q("list", dashboard.id).stdout)] == [(user.id, "edit")]
    member.dashboards.update(dashboard.id, name="renamed by an editor")
    assert admin.dashboards.get(dashboard.id).name == "renamed by an editor"
    q("remove", dashboard.id, user.id)
    assert json.loads(q("list", dashboard.id).stdout) == []
    with pytest.raises(NotFoundError):
        member.dashboards.get(dashboard.id)
    refused = server.querri(
        "--json", "share", "dashboard", "add", dashboard.id, "--user-id", user.id, key=key, check=False
    )
    assert refused.returncode != 0  # a member may not share what is not theirs
    member.close()
    admin.close()
