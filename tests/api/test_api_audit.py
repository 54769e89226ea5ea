"""Audit: lifecycle events, request events, filters, pagination, isolation, no secrets."""

from __future__ import annotations

import errno
import json
import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from tidegate.audit import journal as journal_module


def events(client, org, key=None, **params):
    r = client.get("/api/v1/audit/events", params={"limit": 100} | params, headers=org.headers(key))
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_key_lifecycle_is_audited(client, org):
    created = client.post("/api/v1/keys", json={"name": "bi", "scopes": ["data:read"]}, headers=org.headers()).json()
    client.patch(f"/api/v1/keys/{created['id']}", json={"name": "bi-2"}, headers=org.headers())
    client.delete(f"/api/v1/keys/{created['id']}", headers=org.headers())
    mine = events(client, org, target_id=created["id"])
    actions = [e["action"] for e in mine]
    assert {"api_key.created", "api_key.renamed", "api_key.revoked"} <= set(actions)
    renamed = next(e for e in mine if e["action"] == "api_key.renamed")
    assert renamed["details"] == {"old": "bi", "new": "bi-2"}
    admin_key_id = next(e["actor_id"] for e in mine if e["action"] == "api_key.revoked")
    assert admin_key_id.startswith("key_")
    assert all(e["actor_type"] == "api_key" for e in mine)


def test_every_request_with_a_key_is_audited(client, org):
    key = org.key_for(org.admin_id, name="reader", scopes=["admin:users:read"])
    ok = client.get(f"/api/v1/users/{org.admin_id}", headers={**org.headers(key), "User-Agent": "pytest-agent/1"})
    denied = client.get("/api/v1/keys", headers=org.headers(key))
    assert ok.status_code == 200 and denied.status_code == 403
    key_id = next(e for e in events(client, org, action="api_key.created") if e["details"]["name"] == "reader")[
        "target_id"
    ]
    requests = events(client, org, key_id=key_id, action="api.request")
    by_request = {e["request_id"]: e for e in requests}
    first = by_request[ok.headers["x-request-id"]]
    assert first["method"] == "GET" and first["path"] == f"/api/v1/users/{org.admin_id}"
    assert first["status"] == 200 and first["target_type"] == "user" and first["target_id"] == org.admin_id
    assert first["ip_address"] == "127.0.0.1" and first["user_agent"] == "pytest-agent/1"
    assert first["actor_type"] == "api_key" and first["actor_id"] == key_id
    assert by_request[denied.headers["x-request-id"]]["status"] == 403


def test_refused_keys_are_still_audited(client, org):
    key = org.key_for(org.admin_id, name="soon-revoked")
    key_id = next(e for e in events(client, org, action="api_key.created") if e["details"]["name"] == "soon-revoked")[
        "target_id"
    ]
    client.delete(f"/api/v1/keys/{key_id}", headers=org.headers())
    refused = client.get("/api/v1/keys", headers=org.headers(key))
    assert refused.status_code == 401
    statuses = [e["status"] for e in events(client, org, key_id=key_id, action="api.request")]
    assert 401 in statuses


def test_last_used_is_recorded(client, org):
    key = org.key_for(org.admin_id, name="used")
    before = [k for k in client.get("/api/v1/keys", headers=org.headers()).json()["data"] if k["name"] == "used"][0]
    assert before["last_used_at"] is None
    client.get("/api/v1/keys", headers=org.headers(key))
    client.app.state.journal.flush()
    after = client.get(f"/api/v1/keys/{before['id']}", headers=org.headers()).json()
    assert after["last_used_at"] is not None and after["last_used_ip"] == "127.0.0.1"


def test_filters_and_cursor(client, org):
    for _ in range(5):
        client.get("/api/v1/keys", headers=org.headers())
    all_events = events(client, org, action="api.request")
    assert len(all_events) >= 5
    ids = [e["id"] for e in all_events]
    assert ids == sorted(ids, reverse=True)  # newest first
    seen, after = [], None
    while True:
        page = client.get(
            "/api/v1/audit/events",
            params={"limit": 2, "action": "api.request"} | ({"after": after} if after else {}),
            headers=org.headers(),
        ).json()
        seen += [e["id"] for e in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert len(seen) == len(set(seen)) >= 5
    newest = all_events[0]["timestamp"]
    assert events(client, org, since="2999-01-01") == []
    assert events(client, org, until="2000-01-01") == []
    assert events(client, org, start_date=newest[:10], action="api.request")
    assert events(client, org, actor_id="key_nobody") == []


@pytest.mark.parametrize("params", [{"since": "yesterday"}, {"end_date": "2026-13-45"}, {"limit": 0}, {"limit": 1000}])
def test_bad_filters_are_400(client, org, params):
    r = client.get("/api/v1/audit/events", params=params, headers=org.headers())
    assert r.status_code == 400


def test_audit_is_org_isolated_and_admin_only(client, make_org):
    a, b = make_org(), make_org()
    client.get("/api/v1/keys", headers=a.headers())
    assert all(e["id"] for e in events(client, b))
    a_ids = {e["id"] for e in events(client, a)}
    assert a_ids and not (a_ids & {e["id"] for e in events(client, b)})
    member = a.add_user("m@example.com")
    r = client.get("/api/v1/audit/events", headers=a.headers(a.key_for(member)))
    assert r.status_code == 403


def test_no_secret_in_audit_or_journal(client, org, settings):
    created = client.post("/api/v1/keys", json={"name": "s", "scopes": ["data:read"]}, headers=org.headers()).json()
    secret = created["secret"]
    client.get("/api/v1/keys", headers=org.headers(secret))
    client.get("/api/v1/keys?token=" + secret, headers=org.headers())
    # Before shipping, the journal files must not hold it either.
    journal_text = b"".join(p.read_bytes() for p in settings.audit_dir.glob("*.jsonl"))
    assert secret.encode() not in journal_text
    everything = json.dumps(events(client, org))
    assert secret not in everything and org.admin_key not in everything


# -- no audit, no access; a dependency down is a 503 ---------------------------------------------


def _disk_full(fd, data):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("path", ["/data", "/data?format=csv", "/data?format=parquet", ""])
def test_a_request_whose_event_cannot_be_journaled_is_refused_before_any_data(client, org, monkeypatch, path):
    rows = [{"secret_region": "ZZTOP", "n": i} for i in range(50)]
    created = client.post("/api/v1/sources", json={"name": "guarded", "rows": rows}, headers=org.headers())
    assert created.status_code == 201
    url = f"/api/v1/sources/{created.json()['id']}{path}"
    monkeypatch.setattr(journal_module, "_write_all", _disk_full)
    refused = client.get(url, headers=org.headers())
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "audit_unavailable"
    assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]["retry_after"] >= 1
    assert refused.headers["x-request-id"].startswith("req_")
    assert b"ZZTOP" not in refused.content and b"guarded" not in refused.content
    monkeypatch.undo()
    served = client.get(url, headers=org.headers())
    assert served.status_code == 200
    assert b"ZZTOP" in served.content or path == ""  # (the source itself, not its rows)
    statuses = {e["request_id"]: e["status"] for e in events(client, org)}
    assert statuses[served.headers["x-request-id"]] == 200
    assert refused.headers["x-request-id"] not in statuses  # refused, so nothing was read to record


def test_a_committed_change_whose_journal_fails_is_recorded_in_the_database_not_refused(client, org, monkeypatch):
    """A 503 after the change committed would invite a retry that repeats it (rows appended twice)."""
    created = client.post("/api/v1/sources", json={"name": "ledger", "rows": [{"n": 0}]}, headers=org.headers())
    source = created.json()["id"]
    monkeypatch.setattr(journal_module, "_write_all", _disk_full)
    appended = client.post(f"/api/v1/sources/{source}/rows", json={"rows": [{"n": 1}]}, headers=org.headers())
    assert appended.status_code == 200, appended.text
    # A read that fails to journal is still refused: it changed nothing, so a retry is harmless.
    assert client.get(f"/api/v1/sources/{source}/data", headers=org.headers()).status_code == 503
    monkeypatch.undo()
    served = client.get(f"/api/v1/sources/{source}/data", headers=org.headers()).json()
    assert sorted(row["n"] for row in served["data"]) == [0, 1]  # appended once
    statuses = {e["request_id"]: e["status"] for e in events(client, org)}
    assert statuses[appended.headers["x-request-id"]] == 200  # its event went to the database


def test_a_committed_change_is_refused_only_if_neither_journal_nor_database_takes_its_event(client, org, monkeypatch):
    created = client.post("/api/v1/sources", json={"name": "ledger", "rows": [{"n": 0}]}, headers=org.headers())
    source = created.json()["id"]
    monkeypatch.setattr(journal_module, "_write_all", _disk_full)
    monkeypatch.setattr(journal_module, "_insert_events", _database_down)
    refused = client.post(f"/api/v1/sources/{source}/rows", json={"rows": [{"n": 1}]}, headers=org.headers())
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "audit_unavailable"
    # A refused (4xx) change changed nothing: it is refused too rather than recorded elsewhere.
    bad = client.post(f"/api/v1/sources/{source}/rows", json={"rows": "nope"}, headers=org.headers())
    assert bad.status_code == 503


def _database_down(*args, **kwargs):
    raise OperationalError("SELECT 1", {}, psycopg_like_refusal())


def psycopg_like_refusal():
    import psycopg

    return psycopg.OperationalError("connection failed: Connection refused")


def test_a_database_outage_is_a_503_with_retry_after_and_still_audited(client, org, monkeypatch):
    monkeypatch.setattr("tidegate.api.keys.service.list_keys", _database_down)
    down = client.get("/api/v1/keys", headers=org.headers())
    assert down.status_code == 503, down.text
    assert down.json()["error"] == {
        "type": "api_error",
        "code": "database_unavailable",
        "message": down.json()["error"]["message"],
        "retry_after": 2,
    }
    assert down.headers["retry-after"] == "2"
    monkeypatch.undo()
    assert client.get("/api/v1/keys", headers=org.headers()).status_code == 200
    statuses = {e["request_id"]: e["status"] for e in events(client, org)}
    assert statuses[down.headers["x-request-id"]] == 503


@pytest.mark.parametrize(
    "message, status",
    [("database is locked", 503), ("database or disk is full", 503), ("no such table: api_keys", 500)],
)
def test_sqlite_outages_are_503_but_sqlite_bugs_stay_500(settings, org, monkeypatch, message, status):
    from fastapi.testclient import TestClient

    from tidegate.api.app import create_app

    def failing(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))

    monkeypatch.setattr("tidegate.api.keys.service.list_keys", failing)
    with TestClient(create_app(settings), raise_server_exceptions=False) as plain:
        response = plain.get("/api/v1/keys", headers=org.headers())
    assert response.status_code == status, response.text
    assert ("retry-after" in response.headers) == (status == 503)


def test_a_database_outage_on_a_web_page_is_a_503_page(client, org, monkeypatch):
    from tidegate.web import common

    monkeypatch.setattr(common, "current_viewer", _database_down)
    page = client.get("/settings/api-keys")
    assert page.status_code == 503 and page.headers["retry-after"] == "2"
    assert "text/html" in page.headers["content-type"] and "unavailable" in page.text.lower()
