"""Key hygiene: GET /keys/{id}/insights after a scripted usage history (scopes, sources and
client addresses over 30 and 90 days, and the least-privilege suggestion, applied by PATCH,
widening refused); a new client address reported once; only served requests count as a use;
expiry reminders once per key; the organization's unused-key threshold. One app per database
for the module (organizations isolate)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import Org, new_org
from tidegate.api.app import create_app
from tidegate.audit.models import AuditEvent
from tidegate.audit.record import event_row
from tidegate.config import Settings
from tidegate.credentials import reminders
from tidegate.credentials.models import ApiKey, KeyAddress
from tidegate.credentials.usage import record_key_use
from tidegate.db.engine import session_scope
from tidegate.ids import id_floor, new_ulid

ROWS = [{"region": r, "amount": n} for n, r in enumerate(["US", "EU", "APAC"])]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def settings(request, tmp_path_factory) -> Settings:
    return Settings(
        home=tmp_path_factory.mktemp("insights"),
        database_url=request.getfixturevalue(f"{request.param}_url"),
        redis_url=None,
        pepper=secrets.token_hex(32).encode(),
        session_key=secrets.token_hex(32).encode(),
        # The test client is the proxy: X-Forwarded-For sets each request's client address.
        trusted_proxies=("127.0.0.1/32",),
    )


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as test_client:
        yield test_client


@pytest.fixture
def org(settings) -> Org:
    return new_org(settings)


def key_id_of(org: Org, secret: str) -> str:
    with session_scope(org.settings.database_url) as session:
        return session.scalar(select(ApiKey.id).where(ApiKey.org_id == org.id, ApiKey.key_prefix == secret[:12]))


def call(client, org, method, path, key=None, ip="10.0.0.1", **kwargs):
    headers = {**org.headers(key), "X-Forwarded-For": ip}
    return client.request(method, f"/api/v1{path}", headers=headers, **kwargs)


def source(client, org, name: str) -> str:
    r = call(client, org, "POST", "/sources", json={"name": name, "rows": ROWS})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def insights(client, org, key_id: str, key=None) -> dict:
    r = call(client, org, "GET", f"/keys/{key_id}/insights", key)
    assert r.status_code == 200, r.text
    return r.json()


def past_event(org: Org, key_id: str, days_ago: float, scopes: list[list[str]], status: int = 200, **details) -> None:
    """A request event as the middleware writes it, `days_ago` days back (its id too)."""
    when = datetime.now(UTC) - timedelta(days=days_ago)
    event_id = id_floor("evt", int(when.timestamp() * 1000))[:-16] + new_ulid()[10:]
    with session_scope(org.settings.database_url) as session:
        session.add(
            AuditEvent(
                **event_row(
                    id=event_id,
                    timestamp=when,
                    org_id=org.id,
                    actor_type="api_key",
                    actor_id=key_id,
                    key_id=key_id,
                    action="api.request",
                    method="GET",
                    path="/api/v1/old",
                    status=status,
                    ip_address="10.9.9.9",
                    details={"operation": "old", "scopes": scopes, **details},
                )
            )
        )


def by(items: list[dict], field: str) -> dict[str, dict]:
    return {item[field]: item for item in items}


def test_insights_after_a_scripted_usage_history_and_the_suggestion_applied(client, org):
    sales, stock = source(client, org, "sales"), source(client, org, "stock")
    secret = org.key_for(
        org.admin_id,
        ["data:read", "admin:sources:read", "admin:users:read", "admin:projects:read", "admin:audit:read"],
        name="BI",
    )
    key_id = key_id_of(org, secret)
    for page in (1, 2, 3):  # data:read, from 10.0.0.1
        r = call(client, org, "GET", f"/sources/{sales}/data", secret, params={"page": page, "page_size": 1})
        assert r.status_code == 200
    r = call(client, org, "POST", f"/sources/{stock}/query", secret, ip="10.0.0.2", json={"sql": "SELECT 1 AS x"})
    assert r.status_code == 200, r.text
    # Source metadata: allowed by admin:sources:read OR data:read (the key holds both).
    assert call(client, org, "GET", f"/sources/{sales}", secret).status_code == 200
    # Refused (no admin:keys:manage): not a use of any scope; its address is counted as refused.
    assert call(client, org, "GET", "/keys", secret, ip="10.0.0.3").status_code == 403
    past_event(org, key_id, 45, [["admin:projects:read"]])  # within 90 days, not 30
    past_event(org, key_id, 100, [["admin:users:read"]])  # outside the window
    past_event(org, key_id, 10, [["admin:audit:read"]], status=404)  # refused: not a use

    found = insights(client, org, key_id)
    assert found["key_id"] == key_id
    assert found["requests_30d"] == 3 + 1 + 1 + 1 + 1 and found["requests_90d"] == 8
    assert found["refused_90d"] == 2
    scopes = by(found["scopes"], "scope")
    assert set(scopes) == {
        "data:read",
        "admin:sources:read",
        "admin:users:read",
        "admin:projects:read",
        "admin:audit:read",
    }
    assert scopes["data:read"]["requests_30d"] == scopes["data:read"]["requests_90d"] == 5
    assert scopes["admin:sources:read"]["requests_90d"] == 1
    assert scopes["admin:projects:read"]["requests_30d"] == 0 and scopes["admin:projects:read"]["requests_90d"] == 1
    assert scopes["admin:projects:read"]["last_used_at"] is not None
    for unused in ("admin:users:read", "admin:audit:read"):
        assert scopes[unused]["requests_90d"] == 0 and scopes[unused]["last_used_at"] is None
    sources = by(found["sources"], "source_id")
    assert set(sources) == {sales, stock}
    assert sources[sales]["name"] == "sales" and sources[sales]["requests_90d"] == 4
    assert sources[stock]["name"] == "stock" and sources[stock]["requests_30d"] == 1
    ips = by(found["client_ips"], "ip")
    assert set(ips) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}  # (the inserted old events were never shipped)
    assert (ips["10.0.0.1"]["requests"], ips["10.0.0.1"]["refused"]) == (4, 0)
    assert (ips["10.0.0.3"]["requests"], ips["10.0.0.3"]["refused"]) == (1, 1)
    assert ips["10.0.0.1"]["first_seen"] <= ips["10.0.0.1"]["last_seen"]

    suggestion = found["suggestion"]
    # data:read covers the reads, the query and the metadata read; projects for the 45-day-old one.
    assert suggestion["scopes"] == ["admin:projects:read", "data:read"]
    assert suggestion["removes"] == ["admin:audit:read", "admin:sources:read", "admin:users:read"]
    assert suggestion["applicable"] is True
    assert suggestion["source_scope"] == {"mode": "selected", "source_ids": sorted([sales, stock])}
    assert suggestion["source_scope_changes"] is True

    assert suggestion["patch"] == {
        "scopes": ["admin:projects:read", "data:read"],
        "source_scope": {"mode": "selected", "source_ids": sorted([sales, stock])},
    }

    # Applied in one PATCH: the key keeps working for what it did, and loses the rest.
    other = source(client, org, "other")
    r = call(client, org, "PATCH", f"/keys/{key_id}", json=suggestion["patch"])
    assert r.status_code == 200 and r.json()["scopes"] == ["admin:projects:read", "data:read"]
    assert r.json()["source_scope"] == {"mode": "selected", "source_ids": sorted([sales, stock])}
    assert call(client, org, "GET", f"/sources/{sales}/data", secret).status_code == 200
    assert call(client, org, "GET", f"/sources/{sales}", secret).status_code == 200
    assert call(client, org, "GET", f"/sources/{other}/data", secret).status_code in (403, 404)
    assert call(client, org, "GET", "/users", secret).status_code == 403
    # Widening back is refused, and changes nothing.
    r = call(client, org, "PATCH", f"/keys/{key_id}", json={"scopes": ["data:read", "admin:users:read"]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "scope_widening_not_allowed"
    assert call(client, org, "GET", f"/keys/{key_id}").json()["scopes"] == ["admin:projects:read", "data:read"]
    # Now nothing to remove.
    after = insights(client, org, key_id)["suggestion"]
    assert after["applicable"] is False and after["removes"] == [] and after["patch"] is None
    assert after["source_scope_changes"] is False


def test_the_suggestion_prefers_the_resources_own_scope_and_keeps_what_a_key_grants(client, org):
    sales = source(client, org, "sales")
    # Only source metadata: admin:sources:read alone covers it (the check's own scope).
    meta = org.key_for(org.admin_id, ["admin:sources:read", "data:read"], name="meta")
    assert call(client, org, "GET", f"/sources/{sales}", meta).status_code == 200
    assert insights(client, org, key_id_of(org, meta))["suggestion"]["scopes"] == ["admin:sources:read"]
    # A key that creates keys needs every scope it grants (it cannot delegate more than it holds).
    maker = org.key_for(org.admin_id, ["admin:keys:manage", "data:read", "admin:users:read"], name="maker")
    r = call(client, org, "POST", "/keys", maker, json={"name": "child", "scopes": ["data:read"]})
    assert r.status_code == 201, r.text
    suggestion = insights(client, org, key_id_of(org, maker))["suggestion"]
    assert suggestion["scopes"] == ["admin:keys:manage", "data:read"] and suggestion["removes"] == ["admin:users:read"]
    # A key that creates sources keeps its source restriction as it is.
    writer = org.key_for(org.admin_id, ["data:write", "data:read", "admin:sources:read"], name="writer")
    r = call(client, org, "POST", "/sources", writer, json={"name": "made", "rows": ROWS})
    assert r.status_code == 201, r.text
    suggestion = insights(client, org, key_id_of(org, writer))["suggestion"]
    assert suggestion["source_scope"] == {"mode": "all"} and suggestion["source_scope_changes"] is False
    assert "creates sources" in suggestion["reason"]
    # Never used: nothing to apply.
    idle = insights(client, org, key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="idle")))
    assert idle["requests_90d"] == 0 and idle["scopes"] == [
        {"scope": "data:read", "requests_30d": 0, "requests_90d": 0, "last_used_at": None}
    ]
    assert idle["suggestion"]["applicable"] is False and idle["suggestion"]["scopes"] == []
    assert "revoke" in idle["suggestion"]["reason"]


def test_insights_are_for_the_keys_creator_and_admins_only(client, org):
    member = org.add_user(f"m-{secrets.token_hex(3)}@example.com")
    member_key = org.key_for(member, name="member key")
    member_key_id = key_id_of(org, member_key)
    admin_key_id = key_id_of(org, org.admin_key)
    # The member sees their own key's insights, not the admin's (404, as for GET /keys/{id}).
    assert call(client, org, "GET", f"/keys/{member_key_id}/insights", member_key).status_code == 200
    r = call(client, org, "GET", f"/keys/{admin_key_id}/insights", member_key)
    assert r.status_code == 404 and r.json()["error"]["code"] == "api_key_not_found"
    # An admin sees every key's; a key without admin:keys:manage none; another org's: 404.
    assert call(client, org, "GET", f"/keys/{member_key_id}/insights").status_code == 200
    reader = org.key_for(org.admin_id, ["data:read"], name="reader")
    r = call(client, org, "GET", f"/keys/{admin_key_id}/insights", reader)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    other = new_org(org.settings)
    assert call(client, other, "GET", f"/keys/{member_key_id}/insights").status_code == 404


def new_ip_events(client, org, key_id: str) -> list[dict]:
    r = call(client, org, "GET", "/audit/events", params={"action": "api_key.used_from_new_ip", "target_id": key_id})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_a_new_client_address_is_reported_once_and_the_first_is_not(client, org):
    secret = org.key_for(org.admin_id, ["data:read"], name="ip watcher")
    key_id = key_id_of(org, secret)
    for _ in range(2):
        assert call(client, org, "GET", "/sources", secret, ip="192.0.2.1").status_code == 200
    assert new_ip_events(client, org, key_id) == []  # the first address is where its holder put it
    assert call(client, org, "GET", "/sources", secret, ip="192.0.2.2").status_code == 200
    (event,) = new_ip_events(client, org, key_id)
    assert event["target_type"] == "api_key" and event["actor_type"] == "system"
    assert event["details"]["ip"] == "192.0.2.2" and event["details"]["key_prefix"] == secret[:12]
    assert event["details"]["known_ips"] == 1 and event["details"]["first_seen"]
    assert secret not in str(event)
    for _ in range(3):
        call(client, org, "GET", "/sources", secret, ip="192.0.2.2")
    assert len(new_ip_events(client, org, key_id)) == 1  # once per (key, address)
    with session_scope(org.settings.database_url) as session:
        row = session.get(KeyAddress, (key_id, "192.0.2.2"))
        assert (row.requests, row.refused, row.new_for_key) == (4, 0, True)
        assert session.get(KeyAddress, (key_id, "192.0.2.1")).new_for_key is False

    # The same events shipped twice (a shipper killed before deleting its segment): still once.
    event_rows = [
        event_row(
            org_id=org.id,
            actor_type="api_key",
            actor_id=key_id,
            key_id=key_id,
            action="api.request",
            method="GET",
            path="/api/v1/sources",
            status=200,
            ip_address="192.0.2.3",
        )
    ]
    for _ in range(2):
        with session_scope(org.settings.database_url) as session:
            record_key_use(session, event_rows)
    assert [e["details"]["ip"] for e in new_ip_events(client, org, key_id)] == ["192.0.2.3", "192.0.2.2"]

    # A refused request from a new address is reported too (someone presented the secret there).
    client.delete(f"/api/v1/keys/{key_id}", headers=org.headers())
    assert call(client, org, "GET", "/sources", secret, ip="198.51.100.7").status_code == 401
    assert new_ip_events(client, org, key_id)[0]["details"]["ip"] == "198.51.100.7"


def test_a_refused_request_does_not_count_as_the_keys_last_use(client, org):
    secret = org.key_for(org.admin_id, ["data:read"], name="last use")
    key_id = key_id_of(org, secret)
    assert call(client, org, "GET", "/sources", secret, ip="203.0.113.1").status_code == 200
    client.app.state.journal.flush()
    used = call(client, org, "GET", f"/keys/{key_id}").json()
    assert used["last_used_ip"] == "203.0.113.1" and used["last_used_at"] is not None
    # Refused for a missing scope, then after revocation: neither moves "last used".
    assert call(client, org, "GET", "/users", secret, ip="203.0.113.2").status_code == 403
    assert call(client, org, "DELETE", f"/keys/{key_id}").status_code == 200
    assert call(client, org, "GET", "/sources", secret, ip="203.0.113.3").status_code == 401
    client.app.state.journal.flush()
    after = call(client, org, "GET", f"/keys/{key_id}").json()
    assert (after["last_used_at"], after["last_used_ip"]) == (used["last_used_at"], "203.0.113.1")


def expiring_events(client, org) -> list[dict]:
    r = call(client, org, "GET", "/audit/events", params={"action": "api_key.expiring_soon"})
    return r.json()["data"]


def test_expiry_reminders_are_emitted_once_per_key_entering_the_last_week(client, org):
    soon = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="soon", expires_in_days=5))
    key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="later", expires_in_days=30))
    retiring = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="retiring", expires_in_days=30))
    r = call(client, org, "POST", f"/keys/{retiring}/rotate", json={"grace_period_seconds": 3600})
    assert r.status_code == 201  # retiring on schedule, its replacement in use: not reported
    revoked = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="gone", expires_in_days=2))
    call(client, org, "DELETE", f"/keys/{revoked}")

    url = org.settings.database_url
    with session_scope(url) as session:
        first = reminders.remind(session)
    assert soon in first and retiring not in first and revoked not in first
    with session_scope(url) as session:
        assert soon not in reminders.remind(session)  # once
    # The periodic job (a cluster job) runs a round: still nothing new for this key.
    reminders.PeriodicReminders(url, interval=0).round()
    mine = expiring_events(client, org)
    assert [e["target_id"] for e in mine] == [soon]
    assert mine[0]["details"]["name"] == "soon" and mine[0]["details"]["expires_at"]
    # "later" (and the rotated key's replacement) enter the window 23 days from now: reported then, once.
    in_24_days = datetime.now(UTC) + timedelta(days=24)
    with session_scope(url) as session:
        assert len(reminders.remind(session, in_24_days)) >= 2
    with session_scope(url) as session:
        assert reminders.remind(session, in_24_days) == []
    names = sorted(e["details"]["name"] for e in expiring_events(client, org))
    assert names == ["later", f"retiring (rotated {datetime.now(UTC).date().isoformat()})", "soon"]


def test_the_unused_key_threshold_is_an_org_setting_and_flags_keys(client, org):
    assert call(client, org, "GET", "/org/settings").json()["unused_key_days"] == 90
    for bad, code in ((0, "invalid_unused_key_days"), (3651, "invalid_unused_key_days"), ("30", "invalid_parameters")):
        r = call(client, org, "PATCH", "/org/settings", json={"unused_key_days": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == code
    assert call(client, org, "GET", "/org/settings").json()["unused_key_days"] == 90
    stale = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="stale"))
    used = org.key_for(org.admin_id, ["data:read"], name="used")
    with session_scope(org.settings.database_url) as session:
        session.get(ApiKey, stale).created_at = datetime.now(UTC) - timedelta(days=40)
        session.get(ApiKey, key_id_of(org, used)).created_at = datetime.now(UTC) - timedelta(days=40)
    call(client, org, "GET", "/sources", used)
    client.app.state.journal.flush()
    assert call(client, org, "GET", f"/keys/{stale}").json()["unused"] is False  # 40 < 90
    r = call(client, org, "PATCH", "/org/settings", json={"unused_key_days": 30})
    assert r.status_code == 200 and r.json()["unused_key_days"] == 30
    assert call(client, org, "GET", f"/keys/{stale}").json()["unused"] is True
    listed = by(call(client, org, "GET", "/keys", params={"limit": 100}).json()["data"], "name")
    assert listed["stale"]["unused"] is True and listed["used"]["unused"] is False
    changed = call(client, org, "GET", "/audit/events", params={"action": "org.settings_updated"}).json()["data"]
    assert changed[0]["details"] == {"unused_key_days": {"old": 90, "new": 30}}


def test_patch_source_scope_narrows_only(client, org):
    a, b, c = source(client, org, "a"), source(client, org, "b"), source(client, org, "c")
    secret = org.key_for(org.admin_id, ["data:read"], name="narrowing")
    key_id = key_id_of(org, secret)

    def patch(body):
        return call(client, org, "PATCH", f"/keys/{key_id}", json=body)

    # Every source -> two of them; then one of those.
    r = patch({"source_scope": {"mode": "selected", "source_ids": [b, a]}})
    assert r.status_code == 200 and r.json()["source_scope"] == {"mode": "selected", "source_ids": sorted([a, b])}
    assert call(client, org, "GET", f"/sources/{c}/data", secret).status_code in (403, 404)
    assert patch({"source_scope": {"mode": "selected", "source_ids": [a]}}).status_code == 200
    # Widening: another source, or every source: 403, nothing changes.
    for body in ({"mode": "selected", "source_ids": [a, c]}, {"mode": "all"}):
        r = patch({"source_scope": body})
        assert r.status_code == 403 and r.json()["error"]["code"] == "source_scope_widening_not_allowed"
    # Malformed: 400; a refused source_scope with valid scopes in the same PATCH changes neither.
    r = patch({"source_scope": {"mode": "selected", "source_ids": []}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_source_scope"
    r = patch({"scopes": ["data:read"], "name": "renamed", "source_scope": {"mode": "all"}})
    assert r.status_code == 403
    got = call(client, org, "GET", f"/keys/{key_id}").json()
    assert got["source_scope"] == {"mode": "selected", "source_ids": [a]} and got["name"] == "narrowing"
    assert call(client, org, "GET", f"/sources/{a}/data", secret).status_code == 200
    assert call(client, org, "GET", f"/sources/{b}/data", secret).status_code in (403, 404)
    events = call(client, org, "GET", "/audit/events", params={"action": "api_key.source_scope_narrowed"}).json()
    mine = [e for e in events["data"] if e["target_id"] == key_id]
    assert [e["details"]["new"]["source_ids"] for e in mine] == [[a], sorted([a, b])]
    assert mine[-1]["details"]["old"] is None


def test_postgresql_wire_statements_count_for_every_source_they_read(client, org):
    sales, stock = source(client, org, "sales"), source(client, org, "stock")
    secret = org.key_for(org.admin_id, ["data:read", "admin:users:read"], name="bi over the wire")
    key_id = key_id_of(org, secret)
    # As pgwire.session.audit_event writes them: a join of both tables, then one of one.
    past_event(org, key_id, 1, [["data:read"]], source_ids=[sales, stock], tables=["sales", "stock"])
    past_event(org, key_id, 2, [["data:read"]], source_ids=[sales], tables=["sales"])
    found = insights(client, org, key_id)
    sources = by(found["sources"], "source_id")
    assert (sources[sales]["requests_30d"], sources[stock]["requests_30d"]) == (2, 1)
    assert found["suggestion"]["patch"] == {
        "scopes": ["data:read"],
        "source_scope": {"mode": "selected", "source_ids": sorted([sales, stock])},
    }
