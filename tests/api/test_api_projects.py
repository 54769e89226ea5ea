"""Projects over HTTP: CRUD, steps under the READER's access, sources, runs, sharing, scopes."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tidegate.catalog.analysis import Dashboard, Project, ProjectRun, ProjectSource, ResourceShare, Step
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope

ROWS = [
    {"region": "US", "amount": 10},
    {"region": "US", "amount": 20},
    {"region": "EU", "amount": 30},
    {"region": "APAC", "amount": 50},
]
V1 = "/api/v1"


def error_of(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def policy_for(client, org, user: str, source: str, region: str) -> str:
    h = org.headers()
    policy = ok(
        client.post(
            f"{V1}/access/policies",
            json={
                "name": f"only-{region}-{user[-6:]}",
                "source_ids": [source],
                "row_filters": [{"column": "region", "values": [region]}],
            },
            headers=h,
        ),
        201,
    )["id"]
    ok(client.put(f"{V1}/access/users/{user}/policies", json={"policy_ids": [policy]}, headers=h))
    return policy


@pytest.fixture
def world(client, org):
    """An admin's org-shared source `sales`; members us (region US) and eu (region EU); the
    admin's project with `sales` attached and a step `totals` over it."""
    h = org.headers()
    source = ok(client.post(f"{V1}/sources", json={"name": "sales", "rows": ROWS}, headers=h), 201)["id"]
    ok(client.post(f"{V1}/sources/{source}/org-share", json={"permission": "view"}, headers=h))
    us, eu = org.add_user("us@example.com"), org.add_user("eu@example.com")
    policy_for(client, org, us, source, "US")
    policy_for(client, org, eu, source, "EU")
    project = ok(client.post(f"{V1}/projects", json={"name": "Revenue", "user_id": org.admin_id}, headers=h), 201)
    added = ok(
        client.post(f"{V1}/projects/{project['id']}/sources", json={"source_id": source, "run": False}, headers=h)
    )
    step = ok(
        client.post(
            f"{V1}/projects/{project['id']}/steps",
            json={
                "name": "totals",
                "sql": "SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY region",
            },
            headers=h,
        ),
        201,
    )
    return {
        "source": source,
        "us": us,
        "eu": eu,
        "project": project["id"],
        "load_step": added["step_id"],
        "step": step["id"],
        "us_key": org.key_for(us),
        "eu_key": org.key_for(eu),
    }


def step_rows(client, org, world, key=None, headers=None) -> list[dict]:
    r = client.get(f"{V1}/projects/{world['project']}/steps/{world['step']}/data", headers=headers or org.headers(key))
    return ok(r)["data"]


def share(client, org, project: str, user: str, permission: str = "view"):
    return client.post(
        f"{V1}/projects/{project}/shares", json={"user_id": user, "permission": permission}, headers=org.headers()
    )


# -- CRUD and ownership ------------------------------------------------------------------------


def test_create_get_list_update_delete(client, org, world):
    h, pid = org.headers(), world["project"]
    got = ok(client.get(f"{V1}/projects/{pid}", headers=h))
    assert (got["name"], got["status"], got["step_count"], got["created_by"]) == ("Revenue", "idle", 2, org.admin_id)
    assert [s["name"] for s in got["steps"]] == ["load_sales", "totals"]
    assert [s["order"] for s in got["steps"]] == [0, 1] and got["sources"][0]["name"] == "sales"
    assert got["steps"][1]["status"] == "complete" and got["steps"][1]["headers"] == ["region", "total"]

    listed = ok(client.get(f"{V1}/projects", params={"user_id": org.admin_id}, headers=h))
    assert [p["id"] for p in listed["data"]] == [pid] and listed["has_more"] is False
    assert ok(client.get(f"{V1}/projects", params={"user_id": world["us"]}, headers=h))["data"] == []
    assert ok(client.get(f"{V1}/projects", params={"user_id": "nobody"}, headers=h))["data"] == []

    updated = ok(client.put(f"{V1}/projects/{pid}", json={"description": "Q3"}, headers=h))
    assert (updated["name"], updated["description"]) == ("Revenue", "Q3")
    ok(share(client, org, pid, world["us"]))
    ok(client.post(f"{V1}/projects/{pid}/run", json={}, headers=h))

    assert ok(client.delete(f"{V1}/projects/{pid}", headers=h)) == {"id": pid, "deleted": True}
    assert error_of(client.get(f"{V1}/projects/{pid}", headers=h)) == (404, "project_not_found")
    with session_scope(org.settings.database_url) as session:
        for model, column in (
            (Step, Step.project_id),
            (ProjectSource, ProjectSource.project_id),
            (ProjectRun, ProjectRun.project_id),
            (ResourceShare, ResourceShare.resource_id),
        ):
            assert session.scalar(select(func.count()).select_from(model).where(column == pid)) == 0, model


def test_a_member_creates_only_their_own_projects_an_admin_for_anyone(client, org, world):
    us_h = org.headers(world["us_key"])
    mine = ok(client.post(f"{V1}/projects", json={"name": "Mine", "user_id": world["us"]}, headers=us_h), 201)
    assert mine["created_by"] == world["us"]
    # Private to its owner, but admins see every project of their organization.
    assert ok(client.get(f"{V1}/projects/{mine['id']}", headers=org.headers()))["created_by"] == world["us"]
    assert error_of(client.get(f"{V1}/projects/{mine['id']}", headers=org.headers(world["eu_key"])))[0] == 404
    refused = client.post(f"{V1}/projects", json={"name": "Theirs", "user_id": world["eu"]}, headers=us_h)
    assert error_of(refused) == (403, "project_owner_forbidden")
    for_eu = ok(
        client.post(f"{V1}/projects", json={"name": "For EU", "user_id": world["eu"]}, headers=org.headers()), 201
    )
    assert for_eu["created_by"] == world["eu"]
    # The owner sees it; the admin who made it too (admins see all); the US member does not.
    assert ok(client.get(f"{V1}/projects/{for_eu['id']}", headers=org.headers(world["eu_key"])))["id"] == for_eu["id"]
    assert error_of(client.get(f"{V1}/projects/{for_eu['id']}", headers=us_h)) == (404, "project_not_found")
    missing = client.post(f"{V1}/projects", json={"name": "X", "user_id": "nobody"}, headers=org.headers())
    assert error_of(missing) == (404, "user_not_found")
    assert (
        client.post(f"{V1}/projects", json={"name": "", "user_id": org.admin_id}, headers=org.headers()).status_code
        == 400
    )


def test_private_until_shared_and_permissions(client, org, world):
    pid, us_h = world["project"], org.headers(world["us_key"])
    assert error_of(client.get(f"{V1}/projects/{pid}", headers=us_h)) == (404, "project_not_found")
    assert error_of(client.get(f"{V1}/projects/{pid}/steps", headers=us_h)) == (404, "project_not_found")
    assert pid not in {p["id"] for p in ok(client.get(f"{V1}/projects", headers=us_h))["data"]}
    ok(share(client, org, pid, world["us"]))
    assert pid in {p["id"] for p in ok(client.get(f"{V1}/projects", headers=us_h))["data"]}
    # view: reads, but cannot change, run or share it.
    add = client.post(f"{V1}/projects/{pid}/steps", json={"name": "x", "sql": "SELECT 1 AS one"}, headers=us_h)
    assert error_of(add) == (403, "project_permission_denied")
    assert error_of(client.post(f"{V1}/projects/{pid}/run", headers=us_h)) == (403, "project_permission_denied")
    reshare = client.post(f"{V1}/projects/{pid}/shares", json={"user_id": world["eu"]}, headers=us_h)
    assert error_of(reshare) == (403, "project_permission_denied")
    ok(share(client, org, pid, world["us"], "edit"))
    ok(client.post(f"{V1}/projects/{pid}/steps", json={"name": "x", "sql": "SELECT 1 AS one"}, headers=us_h), 201)
    assert error_of(client.delete(f"{V1}/projects/{pid}", headers=us_h)) == (403, "project_permission_denied")


# -- the reader's access ---------------------------------------------------------------------


def test_each_reader_sees_their_own_rows_of_one_shared_project(client, org, world):
    pid = world["project"]
    ok(share(client, org, pid, world["us"]))
    ok(share(client, org, pid, world["eu"]))
    admin_rows = step_rows(client, org, world)
    assert admin_rows == [{"region": "APAC", "total": 50}, {"region": "EU", "total": 30}, {"region": "US", "total": 30}]
    assert step_rows(client, org, world, world["us_key"]) == [{"region": "US", "total": 30}]
    assert step_rows(client, org, world, world["eu_key"]) == [{"region": "EU", "total": 30}]
    # The summaries are the reader's too.
    us_steps = ok(client.get(f"{V1}/projects/{pid}/steps", headers=org.headers(world["us_key"])))["data"]
    assert [(s["name"], s["status"], s["num_rows"]) for s in us_steps] == [
        ("load_sales", "complete", 2),
        ("totals", "complete", 1),
    ]
    admin_steps = ok(client.get(f"{V1}/projects/{pid}/steps", headers=org.headers()))["data"]
    assert [s["num_rows"] for s in admin_steps] == [4, 3]


def test_a_key_sees_no_more_than_its_creator_and_a_session_its_user(client, org, world):
    pid = world["project"]
    ok(share(client, org, pid, world["us"]))
    # A key of the US member restricted further to EU rows by its own policy sees nothing.
    eu_policy = ok(
        client.post(
            f"{V1}/access/policies",
            json={"name": "key-eu", "row_filters": [{"column": "region", "values": ["EU"]}]},
            headers=org.headers(),
        ),
        201,
    )["id"]
    narrow_key = org.key_for(world["us"], access_policy_ids=[eu_policy])
    assert step_rows(client, org, world, narrow_key) == []
    # An embed session made by the admin's key acts as its user: the US member's rows.
    token = ok(client.post(f"{V1}/embed/sessions", json={"user_id": world["us"]}, headers=org.headers()), 201)[
        "session_token"
    ]
    assert step_rows(client, org, world, headers={"X-Embed-Session": token}) == [{"region": "US", "total": 30}]
    # The EU member's session cannot open the project (not shared with them).
    eu_token = ok(client.post(f"{V1}/embed/sessions", json={"user_id": world["eu"]}, headers=org.headers()), 201)[
        "session_token"
    ]
    r = client.get(f"{V1}/projects/{pid}/steps/{world['step']}/data", headers={"X-Embed-Session": eu_token})
    assert error_of(r) == (404, "project_not_found")


def test_step_data_pages_and_is_audited_with_its_row_count(client, org, world):
    h = org.headers()
    page = ok(
        client.get(
            f"{V1}/projects/{world['project']}/steps/{world['load_step']}/data",
            params={"page": 2, "page_size": 3},
            headers=h,
        )
    )
    assert (page["total_count"], page["page"], page["page_size"], len(page["data"])) == (4, 2, 3, 1)
    assert page["columns"] == ["region", "amount"]
    events = ok(client.get(f"{V1}/audit/events", params={"action": "project.step_data.read"}, headers=h))["data"]
    assert (
        events and events[0]["details"]["rows_returned"] == 1 and events[0]["details"]["step_id"] == world["load_step"]
    )
    assert events[0]["details"]["source_ids"] == [world["source"]]
    nope = client.get(f"{V1}/projects/{world['project']}/steps/stp_missing/data", headers=h)
    assert error_of(nope) == (404, "step_not_found")


# -- steps -----------------------------------------------------------------------------------


def revision_and_steps(org, pid) -> tuple[int, int]:
    with session_scope(org.settings.database_url) as session:
        project = session.get(Project, pid)
        count = session.scalar(select(func.count()).select_from(Step).where(Step.project_id == pid))
        return project.revision, count


def test_bad_sql_is_a_400_with_its_position_and_nothing_is_saved(client, org, world):
    pid, h = world["project"], org.headers()
    before = revision_and_steps(org, pid)
    bad = client.post(
        f"{V1}/projects/{pid}/steps", json={"name": "bad", "sql": "SELECT region FROM sales WHERE"}, headers=h
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_step_sql"
    message = bad.json()["error"]["message"]
    assert "line" in message or "position" in message, message
    unknown = client.post(f"{V1}/projects/{pid}/steps", json={"name": "bad", "sql": "SELECT * FROM nope"}, headers=h)
    assert error_of(unknown) == (400, "unknown_table") and "nope" in unknown.json()["error"]["message"]
    files = client.post(
        f"{V1}/projects/{pid}/steps", json={"name": "bad", "sql": "SELECT * FROM read_csv('/etc/passwd')"}, headers=h
    )
    assert files.status_code == 400
    dup = client.post(f"{V1}/projects/{pid}/steps", json={"name": "TOTALS", "sql": "SELECT 1 AS one"}, headers=h)
    assert error_of(dup) == (409, "name_taken")
    badname = client.post(f"{V1}/projects/{pid}/steps", json={"name": "1abc", "sql": "SELECT 1 AS one"}, headers=h)
    assert error_of(badname) == (400, "invalid_step_name")
    assert revision_and_steps(org, pid) == before


def test_steps_read_earlier_steps_and_edits_bump_the_revision(client, org, world):
    pid, h = world["project"], org.headers()
    rev = revision_and_steps(org, pid)[0]
    top = ok(
        client.post(
            f"{V1}/projects/{pid}/steps",
            json={"name": "top", "sql": "SELECT region FROM totals WHERE total > 40"},
            headers=h,
        ),
        201,
    )
    assert top["dependencies"] == [world["step"]] and top["order"] == 2
    data = ok(client.get(f"{V1}/projects/{pid}/steps/{top['id']}/data", headers=h))["data"]
    assert data == [{"region": "APAC"}]
    changed = ok(
        client.patch(
            f"{V1}/projects/{pid}/steps/{top['id']}",
            json={"sql": "SELECT region FROM totals WHERE total < 40 ORDER BY region"},
            headers=h,
        )
    )
    assert changed["sql"].endswith("ORDER BY region")
    assert ok(client.get(f"{V1}/projects/{pid}/steps/{top['id']}/data", headers=h))["data"] == [
        {"region": "EU"},
        {"region": "US"},
    ]
    # A step another reads cannot be deleted, nor renamed; the last one can.
    assert error_of(client.delete(f"{V1}/projects/{pid}/steps/{world['step']}", headers=h)) == (409, "step_in_use")
    assert error_of(
        client.patch(f"{V1}/projects/{pid}/steps/{world['step']}", json={"name": "renamed"}, headers=h)
    ) == (409, "step_in_use")
    # New SQL that no longer reads `totals`: no longer depends on it.
    other = ok(
        client.patch(f"{V1}/projects/{pid}/steps/{top['id']}", json={"sql": "SELECT region FROM sales"}, headers=h)
    )
    assert other["dependencies"] == []
    bad = client.patch(f"{V1}/projects/{pid}/steps/{top['id']}", json={"sql": "SELEC x"}, headers=h)
    assert bad.status_code == 400
    assert ok(client.delete(f"{V1}/projects/{pid}/steps/{top['id']}", headers=h)) == {"id": top["id"], "deleted": True}
    assert revision_and_steps(org, pid)[0] == rev + 4


def test_deleting_a_source_a_step_reads_reports_an_error_without_crashing(client, org, world):
    pid, h = world["project"], org.headers()
    ok(client.delete(f"{V1}/sources/{world['source']}", headers=h))
    steps = ok(client.get(f"{V1}/projects/{pid}/steps", headers=h))["data"]
    assert [s["status"] for s in steps] == ["error", "error"]
    assert all(s["message"] and s["has_data"] is False for s in steps)
    assert world["source"] in steps[0]["message"] or "deleted" in steps[0]["message"]
    r = client.get(f"{V1}/projects/{pid}/steps/{world['step']}/data", headers=h)
    assert error_of(r) == (400, "step_failed")
    assert ok(client.get(f"{V1}/projects/{pid}", headers=h))["steps"][1]["status"] == "error"
    ok(client.post(f"{V1}/projects/{pid}/run", headers=h))
    status = wait_for_run(client, h, pid)
    assert status["status"] == "error" and status["message"]


def test_detaching_a_source_makes_its_steps_report_an_error(client, org, world):
    pid, h = world["project"], org.headers()
    attached = ok(client.get(f"{V1}/projects/{pid}", headers=h))["sources"][0]
    assert ok(client.delete(f"{V1}/projects/{pid}/sources/{attached['id']}", headers=h))["deleted"] is True
    steps = ok(client.get(f"{V1}/projects/{pid}/steps", headers=h))["data"]
    assert [s["status"] for s in steps] == ["error", "error"] and "sales" in steps[0]["message"]
    assert error_of(client.delete(f"{V1}/projects/{pid}/sources/{attached['id']}", headers=h)) == (
        404,
        "project_source_not_found",
    )
    # The source itself is untouched.
    assert ok(client.get(f"{V1}/sources/{world['source']}", headers=h))["row_count"] == 4


def test_add_a_file_as_a_source(client, org, world):
    h, pid = org.headers(), world["project"]
    upload = client.post(
        f"{V1}/files/upload", files={"file": ("Q3 sales.csv", b"region,amount\nUS,5\nEU,7\n", "text/csv")}, headers=h
    )
    file_id = ok(upload, upload.status_code)["id"]
    added = ok(client.post(f"{V1}/projects/{pid}/sources", json={"file_id": file_id}, headers=h))
    assert added["name"] == "q3_sales" and added["status"] == "running" and added["step_id"]
    rows = ok(client.get(f"{V1}/projects/{pid}/steps/{added['step_id']}/data", headers=h))["data"]
    assert rows == [{"region": "US", "amount": 5}, {"region": "EU", "amount": 7}]
    again = ok(
        client.post(f"{V1}/projects/{pid}/sources", json={"source_id": added["source_id"], "run": False}, headers=h)
    )
    assert again["name"] == "q3_sales_2" and again["status"] == "added"
    both = client.post(
        f"{V1}/projects/{pid}/sources", json={"file_id": file_id, "source_id": added["source_id"]}, headers=h
    )
    assert error_of(both) == (400, "invalid_source")
    wait_for_run(client, h, pid)


# -- runs ------------------------------------------------------------------------------------


def wait_for_run(client, headers, pid, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # (polled at most 2 times a second: the test keys are limited to 60 requests a minute)
        status = ok(client.get(f"{V1}/projects/{pid}/run/status", headers=headers))
        if not status["is_running"]:
            return status
        time.sleep(0.5)
    raise AssertionError("run did not finish")


def test_a_run_completes_and_reports_its_status(client, org, world):
    h, pid = org.headers(), world["project"]
    assert ok(client.get(f"{V1}/projects/{pid}/run/status", headers=h))["status"] == "idle"
    started = ok(client.post(f"{V1}/projects/{pid}/run", json={"user_id": org.admin_id}, headers=h))
    assert started["run_id"].startswith("api_") and started["status"] == "submitted" and started["id"] == pid
    status = wait_for_run(client, h, pid)
    assert (status["status"], status["is_running"], status["run_id"]) == ("complete", False, started["run_id"])
    assert ok(client.get(f"{V1}/projects/{pid}", headers=h))["status"] == "complete"
    assert ok(client.post(f"{V1}/projects/{pid}/run/cancel", headers=h))["cancelled"] is False


def test_a_member_runs_only_as_themselves(client, org, world):
    pid = world["project"]
    ok(share(client, org, pid, world["us"], "edit"))
    us_h = org.headers(world["us_key"])
    assert error_of(client.post(f"{V1}/projects/{pid}/run", json={"user_id": world["eu"]}, headers=us_h)) == (
        403,
        "run_as_forbidden",
    )
    ok(client.post(f"{V1}/projects/{pid}/run", json={"user_id": world["us"]}, headers=us_h))
    assert wait_for_run(client, us_h, pid)["status"] == "complete"


def test_cancel_interrupts_a_long_step(client, org, world):
    h, pid = org.headers(), world["project"]
    ok(
        client.post(
            f"{V1}/projects/{pid}/steps",
            json={
                "name": "slow",
                "sql": "SELECT sum(a.amount * b.amount * c.amount * d.amount * e.amount) AS s FROM sales a, sales b, sales c, sales d, sales e, sales f, sales g, sales h, sales i, sales j, sales k, sales l, sales m, sales n, sales o",
            },
            headers=h,
        ),
        201,
    )
    ok(client.post(f"{V1}/projects/{pid}/run", headers=h))
    time.sleep(1.0)
    assert ok(client.get(f"{V1}/projects/{pid}/run/status", headers=h))["status"] == "running"
    assert error_of(client.post(f"{V1}/projects/{pid}/run", headers=h)) == (409, "run_in_progress")
    started = time.monotonic()
    assert ok(client.post(f"{V1}/projects/{pid}/run/cancel", headers=h))["cancelled"] is True
    status = wait_for_run(client, h, pid, timeout=5)
    assert status["status"] == "idle" and time.monotonic() - started < 3
    with session_scope(org.settings.database_url) as session:
        run = session.scalar(select(ProjectRun).where(ProjectRun.project_id == pid))
        assert run.status == "cancelled" and run.finished_at is not None
    events = ok(client.get(f"{V1}/audit/events", params={"target_id": pid, "limit": 100}, headers=h))["data"]
    by_action = {e["action"]: e for e in events}
    assert by_action["project.run_started"]["details"]["run_id"] == run.id
    assert by_action["project.run_cancelled"]["details"]["run_id"] == run.id


def test_a_run_whose_process_died_reads_as_interrupted(client, org, world):
    pid, h = world["project"], org.headers()
    with session_scope(org.settings.database_url) as session:
        session.add(
            ProjectRun(
                id="api_stale000001",
                project_id=pid,
                started_by=org.admin_id,
                status="running",
                started_at=utcnow() - timedelta(hours=2),
            )
        )
    status = ok(client.get(f"{V1}/projects/{pid}/run/status", headers=h))
    assert (status["status"], status["is_running"]) == ("error", False) and "interrupted" in status["message"]
    ok(client.post(f"{V1}/projects/{pid}/run", headers=h))  # a stale run does not block a new one
    assert wait_for_run(client, h, pid)["status"] == "complete"


# -- shares ----------------------------------------------------------------------------------


def test_project_shares_list_grant_revoke_and_audit(client, org, world):
    pid, h = world["project"], org.headers()
    grant = ok(share(client, org, pid, world["us"], "edit"))
    assert grant == {
        "user_id": world["us"],
        "permission": "edit",
        "resource_type": "project",
        "resource_id": pid,
        "granted_by": org.admin_id,
        "created_at": grant["created_at"],
    }
    listed = ok(client.get(f"{V1}/projects/{pid}/shares", headers=h))
    assert [(s["user_id"], s["permission"]) for s in listed["data"]] == [(world["us"], "edit")]
    assert error_of(share(client, org, pid, world["eu"], "admin")) == (400, "invalid_permission")
    assert error_of(share(client, org, pid, "nobody")) == (404, "user_not_found")
    revoked = ok(client.delete(f"{V1}/projects/{pid}/shares/{world['us']}", headers=h))
    assert revoked == {
        "user_id": world["us"],
        "resource_type": "project",
        "resource_id": pid,
        "revoked": True,
        "deleted": True,
    }
    assert ok(client.get(f"{V1}/projects/{pid}/shares", headers=h))["data"] == []
    assert error_of(client.get(f"{V1}/projects/{pid}", headers=org.headers(world["us_key"]))) == (
        404,
        "project_not_found",
    )
    actions = {
        e["action"]
        for e in ok(client.get(f"{V1}/audit/events", params={"target_id": pid, "limit": 100}, headers=h))["data"]
    }
    assert {
        "project.created",
        "project.source_added",
        "project.step_created",
        "project.shared",
        "project.unshared",
    } <= actions


def test_dashboard_shares(client, org, world):
    h = org.headers()
    with session_scope(org.settings.database_url) as session:
        session.add(Dashboard(id="dash_test0001", org_id=org.id, name="Board", created_by=org.admin_id, filters=[]))
    us_h = org.headers(world["us_key"])
    assert error_of(client.get(f"{V1}/dashboards/dash_test0001/shares", headers=us_h)) == (404, "dashboard_not_found")
    grant = ok(client.post(f"{V1}/dashboards/dash_test0001/shares", json={"user_id": world["us"]}, headers=h))
    assert (grant["resource_type"], grant["permission"]) == ("dashboard", "view")
    assert [s["user_id"] for s in ok(client.get(f"{V1}/dashboards/dash_test0001/shares", headers=h))["data"]] == [
        world["us"]
    ]
    # Shared for view: the US member is not its owner, so may not manage its shares.
    assert error_of(client.get(f"{V1}/dashboards/dash_test0001/shares", headers=us_h)) == (
        403,
        "dashboard_permission_denied",
    )
    gone = ok(client.delete(f"{V1}/dashboards/dash_test0001/shares/{world['us']}", headers=h))
    assert gone["revoked"] is True and gone["resource_type"] == "dashboard"


# -- scopes ----------------------------------------------------------------------------------


def test_scopes_gate_every_route(client, org, world):
    pid = world["project"]
    read_only = org.headers(org.key_for(org.admin_id, scopes=["admin:projects:read"]))
    no_projects = org.headers(org.key_for(org.admin_id, scopes=["data:read"]))
    assert client.get(f"{V1}/projects/{pid}", headers=read_only).status_code == 200
    for method, path, body in (
        ("post", "/projects", {"name": "x", "user_id": org.admin_id}),
        ("put", f"/projects/{pid}", {"name": "y"}),
        ("delete", f"/projects/{pid}", None),
        ("post", f"/projects/{pid}/steps", {"name": "s", "sql": "SELECT 1 AS one"}),
        ("post", f"/projects/{pid}/run", None),
        ("post", f"/projects/{pid}/run/cancel", None),
        ("post", f"/projects/{pid}/sources", {"source_id": world["source"]}),
        ("post", f"/projects/{pid}/shares", {"user_id": world["us"]}),
    ):
        r = client.request(method, V1 + path, json=body, headers=read_only)
        assert r.status_code == 403, (method, path, r.text)
    for path in (
        "/projects",
        f"/projects/{pid}",
        f"/projects/{pid}/steps",
        f"/projects/{pid}/run/status",
        f"/projects/{pid}/shares",
    ):
        assert client.get(V1 + path, headers=no_projects).status_code == 403, path


def test_a_source_the_reader_may_not_open_fails_their_step_only(client, org, world):
    """A private source of the admin in a project shared with a member: the admin reads the
    step, the member gets an error naming why, never the admin's rows."""
    h, pid = org.headers(), world["project"]
    private = ok(
        client.post(f"{V1}/sources", json={"name": "salaries", "rows": [{"who": "a", "pay": 1}]}, headers=h), 201
    )
    added = ok(client.post(f"{V1}/projects/{pid}/sources", json={"source_id": private["id"], "run": False}, headers=h))
    ok(share(client, org, pid, world["us"]))
    assert ok(client.get(f"{V1}/projects/{pid}/steps/{added['step_id']}/data", headers=h))["data"] == [
        {"who": "a", "pay": 1}
    ]
    us_h = org.headers(world["us_key"])
    refused = client.get(f"{V1}/projects/{pid}/steps/{added['step_id']}/data", headers=us_h)
    assert error_of(refused) == (400, "step_failed") and "pay" not in refused.text
    summaries = {s["name"]: s for s in ok(client.get(f"{V1}/projects/{pid}/steps", headers=us_h))["data"]}
    assert summaries["load_salaries"]["status"] == "error" and summaries["load_salaries"]["num_rows"] is None
    assert summaries["totals"]["status"] == "complete"  # what does not read it still works
