"""Scheduled syncs of snapshot connector sources (`sync_interval_minutes`): due sources are
synced, not-due ones are not, and two schedulers racing (two nodes) sync a source once."""

from __future__ import annotations

import sqlite3
import threading
from datetime import timedelta

import pytest

from tidegate.data import connectors, scheduled_sync
from tidegate.db.base import utcnow


@pytest.fixture
def shop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("external")  # outside tidegate's home
    path = folder / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sales (region TEXT, amount INTEGER)")
        conn.executemany("INSERT INTO sales VALUES (?, ?)", [("EU", 1), ("US", 2)])
    connectors.configure(sqlite_dirs=[folder])
    yield path
    connectors.configure(sqlite_dirs=[])


def rows_of(client, org, src):
    return client.get(f"/api/v1/sources/{src}", headers=org.headers()).json()["row_count"]


def test_due_snapshots_are_synced_once_across_schedulers(client, org, settings, shop):
    config = {"path": str(shop), "table": "sales", "mode": "snapshot", "sync_interval_minutes": 5}
    r = client.post(
        "/api/v1/sources", json={"name": "shop", "connector_id": "sqlite", "config": config}, headers=org.headers()
    )
    assert r.status_code == 201, r.text
    src = r.json()["id"]
    assert r.json()["mode"] == "snapshot" and r.json()["sync_interval_minutes"] == 5
    assert "sync_interval_minutes" not in r.json()["config"]
    with sqlite3.connect(shop) as conn:
        conn.execute("INSERT INTO sales VALUES ('US', 3)")

    # Not due yet: nothing happens.
    assert scheduled_sync.run_due(settings.database_url, settings.session_key) == []
    assert rows_of(client, org, src) == 2

    later = utcnow() + timedelta(minutes=6)
    synced: list[list[str]] = []

    def node():
        synced.append(scheduled_sync.run_due(settings.database_url, settings.session_key, now=lambda: later))

    nodes = [threading.Thread(target=node) for _ in range(3)]
    for t in nodes:
        t.start()
    for t in nodes:
        t.join()
    assert sorted(s for ids in synced for s in ids) == [src]  # exactly one of them synced it
    assert rows_of(client, org, src) == 3
    assert scheduled_sync.run_due(settings.database_url, settings.session_key, now=lambda: later) == []

    events = client.get("/api/v1/audit/events", params={"action": "source.synced"}, headers=org.headers())
    assert events.status_code == 200, events.text
    assert sum(1 for e in events.json()["data"] if e.get("target_id") == src) == 1


def test_an_interval_is_for_snapshots_only_and_bounded(client, org, shop):
    for config, code in [
        ({"mode": "snapshot", "sync_interval_minutes": 1}, "invalid_connector_config"),
        ({"mode": "snapshot", "sync_interval_minutes": "5"}, "invalid_connector_config"),
        ({"mode": "live"}, "live_not_supported"),
    ]:
        body = {"name": "x", "connector_id": "sqlite", "config": {"path": str(shop), "table": "sales", **config}}
        r = client.post("/api/v1/sources", json=body, headers=org.headers())
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


def test_a_failing_source_is_marked_and_retried_at_its_interval(client, org, settings, shop):
    config = {"path": str(shop), "table": "sales", "mode": "snapshot", "sync_interval_minutes": 5}
    src = client.post(
        "/api/v1/sources", json={"name": "shop", "connector_id": "sqlite", "config": config}, headers=org.headers()
    ).json()["id"]
    shop.unlink()
    later = utcnow() + timedelta(minutes=6)
    assert scheduled_sync.run_due(settings.database_url, settings.session_key, now=lambda: later) == [src]
    got = client.get(f"/api/v1/sources/{src}", headers=org.headers()).json()
    assert got["status"] == "error" and got["row_count"] == 2  # the last good copy stays
    assert scheduled_sync.run_due(settings.database_url, settings.session_key, now=lambda: later) == []


@pytest.mark.parametrize(
    ("policy", "code"),
    [
        ({"column_rules": [{"column": "amount", "action": "hide"}]}, "column_rules_restrict_write"),
        ({"row_filters": [{"column": "region", "values": ["EU"]}]}, "row_filter_restricts_write"),
    ],
)
def test_a_restricted_reader_cannot_redefine_a_connector_source(client, org, shop, policy, code):
    """A new table or query could rename a hidden column, or the filter's column, away from
    the policies: changing a connector's configuration is a replace, refused as one."""
    config = {"path": str(shop), "table": "sales", "mode": "snapshot"}
    r = client.post(
        "/api/v1/sources", json={"name": "shop", "connector_id": "sqlite", "config": config}, headers=org.headers()
    )
    assert r.status_code == 201, r.text
    src = r.json()["id"]
    made = client.post("/api/v1/access/policies", json={"name": f"restrict-{code}", **policy}, headers=org.headers())
    assert made.status_code == 201, made.text
    assigned = client.post(
        f"/api/v1/access/policies/{made.json()['id']}/users", json={"user_ids": [org.admin_id]}, headers=org.headers()
    )
    assert assigned.status_code < 300, assigned.text
    before = client.get(f"/api/v1/sources/{src}", headers=org.headers()).json()
    changed = client.patch(f"/api/v1/sources/{src}", json={"config": {"table": "sales"}}, headers=org.headers())
    assert changed.status_code == 403 and changed.json()["error"]["code"] == code, changed.text
    after = client.get(f"/api/v1/sources/{src}", headers=org.headers()).json()
    assert (after["mode"], after["config"], after["updated_at"]) == (
        before["mode"],
        before["config"],
        before["updated_at"],
    )
