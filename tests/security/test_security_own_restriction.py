"""A key never loosens what restricts it (access.policies.selfguard).

A key's rows are its own policies AND its creator's AND its bound user's, and policies on one
column OR their values. A key holding admin:policies:write tried to widen its own rows by
editing, deleting or adding policies, and by changing its creator's assignments and groups.
Each attempt must be refused (403 own_restriction), change nothing, and leave the key reading
exactly what it read before; the same change by a caller it does not restrict goes through.
"""

from __future__ import annotations

import pytest

from tidegate.access import policies
from tidegate.core.principal import Principal
from tidegate.core.scopes import preset_scopes
from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs

ROWS = [{"region": "EU", "n": 1}, {"region": "US", "n": 2}, {"region": "APAC", "n": 3}]


def regions(client, org, key, source_id) -> list[str]:
    r = client.get(f"/api/v1/sources/{source_id}/data", headers=org.headers(key))
    assert r.status_code == 200, r.text
    return sorted(row["region"] for row in r.json()["data"])


def refused(r) -> None:
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "own_restriction"


@pytest.fixture
def world(client, org):
    source = client.post("/api/v1/sources", json={"name": "sales", "rows": ROWS}, headers=org.headers()).json()["id"]

    def policy(name, region):
        body = {"name": name, "row_filters": [{"column": "region", "values": [region]}]}
        return client.post("/api/v1/access/policies", json=body, headers=org.headers()).json()["id"]

    eu, us, apac = policy("EU", "EU"), policy("US", "US"), policy("APAC", "APAC")
    # A second admin, unrestricted: the caller that may make the same changes.
    other_admin = org.add_user("other-admin@example.com", role="admin")
    other_key = org.key_for(other_admin, scopes=preset_scopes("full_access", "admin"))
    return {"source": source, "eu": eu, "us": us, "apac": apac, "other_key": other_key, "other_admin": other_admin}


def test_a_key_cannot_edit_or_delete_its_own_policy(client, org, world):
    key = org.key_for(org.admin_id, scopes=preset_scopes("full_access", "admin"), access_policy_ids=[world["eu"]])
    assert regions(client, org, key, world["source"]) == ["EU"]
    widen = {"row_filters": [{"column": "region", "values": ["EU", "US", "APAC"]}]}
    refused(client.patch(f"/api/v1/access/policies/{world['eu']}", json=widen, headers=org.headers(key)))
    refused(client.delete(f"/api/v1/access/policies/{world['eu']}", headers=org.headers(key)))
    assert regions(client, org, key, world["source"]) == ["EU"]
    # A policy that does not restrict it: allowed.
    ok = client.patch(f"/api/v1/access/policies/{world['apac']}", json={"description": "x"}, headers=org.headers(key))
    assert ok.status_code == 200, ok.text
    # The same widening by a caller it does not restrict goes through.
    assert (
        client.patch(
            f"/api/v1/access/policies/{world['eu']}", json=widen, headers=org.headers(world["other_key"])
        ).status_code
        == 200
    )
    assert regions(client, org, key, world["source"]) == ["APAC", "EU", "US"]


def test_a_key_cannot_change_its_creators_policies(client, org, world):
    assign = client.post(
        f"/api/v1/access/policies/{world['eu']}/users", json={"user_ids": [org.admin_id]}, headers=org.headers()
    )
    assert assign.status_code == 200, assign.text
    key = org.key_for(org.admin_id, scopes=preset_scopes("full_access", "admin"))  # restricted by its creator's EU
    assert regions(client, org, key, world["source"]) == ["EU"]
    # More policies OR their values: adding US to the creator widens the key.
    refused(
        client.post(
            f"/api/v1/access/policies/{world['us']}/users", json={"user_ids": [org.admin_id]}, headers=org.headers(key)
        )
    )
    refused(client.delete(f"/api/v1/access/policies/{world['eu']}/users/{org.admin_id}", headers=org.headers(key)))
    refused(
        client.put(f"/api/v1/access/users/{org.admin_id}/policies", json={"policy_ids": []}, headers=org.headers(key))
    )
    assert regions(client, org, key, world["source"]) == ["EU"]
    # Other users' assignments are not its restriction.
    member = org.add_user("member@example.com")
    ok = client.put(
        f"/api/v1/access/users/{member}/policies", json={"policy_ids": [world["us"]]}, headers=org.headers(key)
    )
    assert ok.status_code == 200, ok.text


def test_a_key_cannot_change_the_groups_that_restrict_it(client, org, world):
    group = client.post("/api/v1/access/groups", json={"name": "sales"}, headers=org.headers())
    assert group.status_code == 201, group.text
    group_id = group.json()["id"]
    for path, body in (("users", {"user_ids": [org.admin_id]}), ("policies", {"policy_ids": [world["eu"]]})):
        linked = client.post(f"/api/v1/access/groups/{group_id}/{path}", json=body, headers=org.headers())
        assert linked.status_code == 200, linked.text
    key = org.key_for(org.admin_id, scopes=preset_scopes("full_access", "admin"))
    assert regions(client, org, key, world["source"]) == ["EU"]
    refused(
        client.post(
            f"/api/v1/access/groups/{group_id}/policies", json={"policy_ids": [world["us"]]}, headers=org.headers(key)
        )
    )
    refused(client.delete(f"/api/v1/access/groups/{group_id}/policies/{world['eu']}", headers=org.headers(key)))
    refused(client.delete(f"/api/v1/access/groups/{group_id}/users/{org.admin_id}", headers=org.headers(key)))
    refused(client.delete(f"/api/v1/access/groups/{group_id}", headers=org.headers(key)))
    assert regions(client, org, key, world["source"]) == ["EU"]


def test_a_key_cannot_switch_off_the_deny_by_default_that_restricts_it(client, org, world):
    key = org.key_for(org.admin_id, scopes=preset_scopes("full_access", "admin"))
    on = client.patch("/api/v1/org/settings", json={"deny_by_default": True}, headers=org.headers(key))
    assert on.status_code == 200, on.text  # tightening is always allowed
    assert regions(client, org, key, world["source"]) == []
    refused(client.patch("/api/v1/org/settings", json={"deny_by_default": False}, headers=org.headers(key)))
    assert regions(client, org, key, world["source"]) == []
    # A person in the web UI (not a key) may.
    with session_scope(org.settings.database_url) as session:
        admin = orgs.get_user(session, org.id, org.admin_id)
        organization = orgs.get_org(session, org.id)
        policies.set_deny_by_default(session, Principal.for_user(org.id, admin.id, admin.role), organization, False)
    assert regions(client, org, key, world["source"]) == ["APAC", "EU", "US"]


def test_a_row_filtered_editor_cannot_replace_a_source_by_syncing_it(client, org, tmp_path):
    """A sync replaces every row, as a replace does: refused to an editor whose policies hide
    some rows (it would destroy rows they may not see), as `replace` already was."""
    import sqlite3

    from tidegate.data import connectors

    database = tmp_path / "shop.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE sales (region TEXT, n INTEGER)")
        conn.executemany("INSERT INTO sales VALUES (?, ?)", [("EU", 1), ("US", 2)])
    connectors.configure(sqlite_dirs=[tmp_path])
    try:
        created = client.post(
            "/api/v1/sources",
            json={"name": "shop", "connector_id": "sqlite", "config": {"path": str(database), "table": "sales"}},
            headers=org.headers(),
        )
        assert created.status_code == 201, created.text
        source = created.json()["id"]
        editor = org.add_user("editor@example.com")
        shared = client.post(
            f"/api/v1/sources/{source}/shares", json={"user_id": editor, "permission": "edit"}, headers=org.headers()
        )
        assert shared.status_code in (200, 201), shared.text
        eu = client.post(
            "/api/v1/access/policies",
            json={"name": "EU", "row_filters": [{"column": "region", "values": ["EU"]}]},
            headers=org.headers(),
        )
        assert eu.status_code == 201, eu.text
        assigned = client.post(
            f"/api/v1/access/policies/{eu.json()['id']}/users", json={"user_ids": [editor]}, headers=org.headers()
        )
        assert assigned.status_code == 200, assigned.text
        key = org.key_for(editor)
        synced = client.post(f"/api/v1/sources/{source}/sync", headers=org.headers(key))
        assert synced.status_code == 403, synced.text
        assert synced.json()["error"]["code"] == "row_filter_restricts_write"
        assert client.post(f"/api/v1/sources/{source}/sync", headers=org.headers()).status_code == 200
    finally:
        connectors.configure(sqlite_dirs=[])
