"""Projects and their sharing through the official Querri SDK (2.1.0) and its CLI, against a
real `tidegate serve` process. Nothing here imports tidegate."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from querri import NotFoundError, PermissionError
from server import Server, running_server

pytestmark = pytest.mark.slow

ROWS = [
    {"region": "US", "amount": 10},
    {"region": "US", "amount": 20},
    {"region": "EU", "amount": 30},
    {"region": "APAC", "amount": 50},
]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("e2e-projects")) as srv:
        # The querri CLI names the owner of `project new` and the runner of `project run` so.
        srv.env["QUERRI_USER_ID"] = srv.admin_user_id
        yield srv


@pytest.fixture(scope="module")
def world(server: Server):
    """The admin's org-shared `sales` source; a member limited to region US with a key."""
    _, secret = server.new_admin_key()
    admin = server.sdk(secret)
    with server.client(secret) as http:
        source = http.post("/sources", json={"name": "sales", "rows": ROWS}).json()["id"]
        http.post(f"/sources/{source}/org-share", json={"permission": "view"}).raise_for_status()
    member = admin.users.create(email=f"{unique('m')}@example.com", role="member")
    admin.policies.setup(name=unique("us"), sources=[source], row_filters={"region": ["US"]}, users=[member.id])
    # The member's own key, made through the operator CLI.
    out = server.cli(
        "keys",
        "create",
        "--json",
        "--org",
        server.org_id,
        "--user",
        member.email,
        "--name",
        "m",
        "--preset",
        "full_access",
    )
    return {
        "secret": secret,
        "admin": admin,
        "source": source,
        "member": member,
        "member_key": json.loads(out.stdout)["secret"],
    }


def add_step(server: Server, key: str, project_id: str, name: str, sql: str) -> httpx.Response:
    with server.client(key) as http:
        return http.post(f"/projects/{project_id}/steps", json={"name": name, "sql": sql})


def wait_idle(sdk, project_id: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = sdk.projects.run_status(project_id)
        if not status.is_running:
            return status
        time.sleep(0.2)
    raise AssertionError("run did not finish")


def test_sdk_projects_steps_runs_and_sharing(server: Server, world, tmp_path):
    admin, secret = world["admin"], world["secret"]
    project = admin.projects.create(name=unique("Revenue"), user_id=server.admin_user_id, description="Q3")
    assert project.id.startswith("prj_") and project.status == "idle" and project.created_by == server.admin_user_id
    assert project.id in {p.id for p in admin.projects.list(limit=200)}
    assert [p.id for p in admin.projects.list(user_id=world["member"].id)] == []
    assert admin.projects.update(project.id, name="Renamed").name == "Renamed"

    # A file through the SDK: uploaded, added as a source, read by a step.
    path = tmp_path / "q3 sales.csv"
    path.write_text("region,amount\nUS,5\nEU,7\n")
    uploaded = admin.files.upload(str(path))
    added = admin.projects.add_source(project.id, uploaded.id, run=False)
    assert added.project_id == project.id and added.step_id.startswith("stp_")
    with server.client(secret) as http:
        attached = http.post(f"/projects/{project.id}/sources", json={"source_id": world["source"], "run": False})
        assert attached.status_code == 200, attached.text
    totals = add_step(
        server, secret, project.id, "totals", "SELECT region, sum(amount) AS total FROM sales GROUP BY 1 ORDER BY 1"
    )
    assert totals.status_code == 201, totals.text

    steps = admin.projects.list_steps(project.id)
    assert [s.name for s in steps] == ["load_q3_sales", "load_sales", "totals"]
    assert all(s.status == "complete" and s.has_data for s in steps)
    assert (steps[2].num_rows, steps[2].num_cols, steps[2].headers) == (3, 2, ["region", "total"])
    page = admin.projects.get_step_data(project.id, steps[0].id, page=1, page_size=1)
    assert (
        page.total_rows == 2 and page.data == [{"region": "US", "amount": 5}] and page.columns == ["region", "amount"]
    )
    detail = admin.projects.get(project.id)
    assert detail.step_count == 3 and [s.id for s in detail.steps or []] == [s.id for s in steps]

    run = admin.projects.run(project.id, user_id=server.admin_user_id)
    assert run.run_id.startswith("api_") and run.status == "submitted"
    assert wait_idle(admin, project.id).status == "complete"
    assert admin.projects.run_cancel(project.id).cancelled is False  # nothing running

    # Private until shared; then the member reads only their rows of the same step.
    member = server.sdk(world["member_key"])
    with pytest.raises(NotFoundError):
        member.projects.get(project.id)
    grant = admin.sharing.share_project(project.id, user_id=world["member"].id, permission="view")
    assert (grant.user_id, grant.permission, grant.resource_type, grant.resource_id) == (
        world["member"].id,
        "view",
        "project",
        project.id,
    )
    assert [(s.user_id, s.permission) for s in admin.sharing.list_project_shares(project.id)] == [
        (world["member"].id, "view")
    ]
    mine = member.projects.get_step_data(project.id, totals.json()["id"])
    assert mine.data == [{"region": "US", "total": 30}]
    assert admin.projects.get_step_data(project.id, totals.json()["id"]).total_rows == 3
    with pytest.raises(PermissionError):
        member.projects.update(project.id, name="mine now")
    revoked = admin.sharing.revoke_project_share(project.id, world["member"].id)
    assert revoked == {
        "user_id": world["member"].id,
        "resource_type": "project",
        "resource_id": project.id,
        "revoked": True,
        "deleted": True,
    }
    with pytest.raises(NotFoundError):
        member.projects.list_steps(project.id)

    admin.projects.delete(project.id)
    with pytest.raises(NotFoundError):
        admin.projects.get(project.id)


def test_sdk_run_cancel_interrupts_a_long_step(server: Server, world):
    admin, secret = world["admin"], world["secret"]
    project = admin.projects.create(name=unique("Slow"), user_id=server.admin_user_id)
    with server.client(secret) as http:
        http.post(
            f"/projects/{project.id}/sources", json={"source_id": world["source"], "run": False}
        ).raise_for_status()
    joins = ", ".join(f"sales t{i}" for i in range(24))  # 4**24 rows: minutes, even on an idle machine
    slow = add_step(server, secret, project.id, "slow", f"SELECT sum(t0.amount * t1.amount) AS s FROM {joins}")
    assert slow.status_code == 201, slow.text
    admin.projects.run(project.id, user_id=server.admin_user_id)
    time.sleep(1.0)
    assert admin.projects.run_status(project.id).is_running
    started = time.monotonic()
    cancelled = admin.projects.run_cancel(project.id)
    assert cancelled.cancelled is True, admin.projects.run_status(project.id)
    status = wait_idle(admin, project.id, timeout=10)
    assert status.status == "idle" and time.monotonic() - started < 5


def test_cli_project_step_and_share_commands(server: Server, world):
    secret = world["secret"]

    def q(*args: str, key: str | None = None, check: bool = True):
        return server.querri("--json", *args, key=key or secret, check=check)

    name = unique("cli")
    created = json.loads(q("project", "new", name, "-d", "from the CLI").stdout)
    pid = created["id"]
    assert created["name"] == name and created["description"] == "from the CLI"
    assert pid in {p["id"] for p in json.loads(q("project", "list").stdout)}
    assert json.loads(q("project", "get", pid).stdout)["id"] == pid
    assert json.loads(q("project", "update", pid, "--name", name + "-2").stdout)["name"] == name + "-2"

    with server.client(secret) as http:
        http.post(f"/projects/{pid}/sources", json={"source_id": world["source"], "run": False}).raise_for_status()
    steps = json.loads(q("step", "list", pid).stdout)
    assert [s["name"] for s in steps] == ["load_sales"] and steps[0]["num_rows"] == 4
    data = json.loads(q("step", "data", pid, steps[0]["id"], "--page-size", "2").stdout)
    assert data["total_rows"] == 4 and len(data["data"]) == 2

    finished = json.loads(q("project", "run", pid, "--wait", "--timeout", "60").stdout)
    assert finished["status"] == "complete" and finished["is_running"] is False
    assert json.loads(q("project", "run-status", pid).stdout)["status"] == "complete"
    assert json.loads(q("project", "run-cancel", pid).stdout)["cancelled"] is False

    member_id = world["member"].id
    q("share", "project", "add", pid, "--user-id", member_id, "--permission", "edit")
    listed = json.loads(q("share", "project", "list", pid).stdout)
    assert [(s["user_id"], s["permission"]) for s in listed] == [(member_id, "edit")]
    # The member (edit) reads the step under their own access: US rows only.
    member_data = json.loads(q("step", "data", pid, steps[0]["id"], key=world["member_key"]).stdout)
    assert {r["region"] for r in member_data["data"]} == {"US"}
    q("share", "project", "remove", pid, member_id)
    assert json.loads(q("share", "project", "list", pid).stdout) == []
    refused = q("project", "get", pid, key=world["member_key"], check=False)
    assert refused.returncode != 0

    q("project", "delete", pid)
    assert q("project", "get", pid, check=False).returncode != 0


def test_scopes_refuse_with_403(server: Server, world):
    with server.client(world["secret"]) as http:
        key = http.post("/keys", json={"name": "read-only", "scopes": ["admin:projects:read"]}).json()["secret"]
        no_perm = http.post(
            "/keys", json={"name": "no-perm", "scopes": ["admin:projects:write", "admin:projects:read"]}
        ).json()["secret"]
    read_only = server.sdk(key)
    assert list(read_only.projects.list()) is not None
    with pytest.raises(PermissionError):
        read_only.projects.create(name="x", user_id=server.admin_user_id)
    project = world["admin"].projects.create(name=unique("Scoped"), user_id=server.admin_user_id)
    with pytest.raises(PermissionError):
        server.sdk(no_perm).sharing.share_project(project.id, user_id=world["member"].id)
    with pytest.raises(PermissionError):
        server.sdk(no_perm).sharing.list_project_shares(project.id)


def test_a_run_started_on_one_worker_is_reported_and_cancelled_by_another(tmp_path_factory):
    """Run state lives in the database: every worker process reports it, and a cancel served
    by another process than the run's stops the run's query within about a second."""
    from server import WorkerPool

    with running_server(tmp_path_factory.mktemp("runs-multi"), workers=2) as srv:
        pool = WorkerPool(srv, 2)
        try:
            h = srv.headers()
            with srv.client() as http:
                source = http.post("/sources", json={"name": "sales", "rows": ROWS}).json()["id"]
                project = http.post("/projects", json={"name": "slow", "user_id": srv.admin_user_id}).json()["id"]
                http.post(f"/projects/{project}/sources", json={"source_id": source, "run": False}).raise_for_status()
                joins = ", ".join(f"sales t{i}" for i in range(24))  # 4**24 rows: minutes, even on an idle machine
                step = http.post(
                    f"/projects/{project}/steps",
                    json={"name": "slow", "sql": f"SELECT sum(t0.amount) AS s FROM {joins}"},
                )
                assert step.status_code == 201, step.text
            base = f"/api/v1/projects/{project}"
            status, _, started = pool.request(0, "POST", base + "/run", h, {})
            assert status == 200 and started["status"] == "submitted", started
            time.sleep(1.0)
            for worker in (0, 1):
                status, _, state = pool.request(worker, "GET", base + "/run/status", h)
                assert (status, state["status"], state["run_id"]) == (200, "running", started["run_id"]), state
            status, _, cancelled = pool.request(1, "POST", base + "/run/cancel", h)
            assert status == 200 and cancelled["cancelled"] is True
            stopped_at = time.monotonic() + 5
            while time.monotonic() < stopped_at:
                _, _, state = pool.request(0, "GET", base + "/run/status", h)
                if not state["is_running"]:
                    break
                time.sleep(0.2)
            assert state["status"] == "idle"
            # The run's own process is free again: a new run starts and finishes on it.
            with srv.client() as http:
                http.delete(f"{base.removeprefix('/api/v1')}/steps/{step.json()['id']}").raise_for_status()
            status, _, again = pool.request(0, "POST", base + "/run", h, {})
            assert status == 200, again
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                _, _, state = pool.request(1, "GET", base + "/run/status", h)
                if not state["is_running"]:
                    break
                time.sleep(0.2)
            assert state["status"] == "complete", state
        finally:
            pool.close()
