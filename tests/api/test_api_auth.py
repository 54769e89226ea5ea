"""Authentication, tenant binding, scopes, IP allowlists, rate limits, live permissions."""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta

from sqlalchemy import select, update

from tidegate.credentials.keyformat import generate_key
from tidegate.credentials.models import ApiKey
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope


def error_of(response):
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"type", "code", "message"} <= set(body["error"])
    return body["error"]


def test_valid_key_works(client, org):
    r = client.get("/api/v1/keys", headers=org.headers())
    assert r.status_code == 200
    assert r.headers["x-request-id"].startswith("req_")


def test_missing_authorization_is_401(client, org):
    r = client.get("/api/v1/keys", headers={"X-Tenant-ID": org.id})
    assert r.status_code == 401
    assert error_of(r)["code"] == "missing_credentials"


def test_missing_tenant_is_401(client, org):
    r = client.get("/api/v1/keys", headers={"Authorization": f"Bearer {org.admin_key}"})
    assert r.status_code == 401
    assert error_of(r)["code"] == "missing_tenant"


def test_non_bearer_scheme_is_401(client, org):
    r = client.get("/api/v1/keys", headers={"Authorization": f"Basic {org.admin_key}", "X-Tenant-ID": org.id})
    assert r.status_code == 401
    assert error_of(r)["code"] == "invalid_authorization"


def test_malformed_and_unknown_keys_are_401(client, org):
    mistyped = org.admin_key[:-1] + ("A" if org.admin_key[-1] != "A" else "B")
    for token in [mistyped, generate_key(), "qk_short", "not-a-key"]:
        r = client.get("/api/v1/keys", headers={"Authorization": f"Bearer {token}", "X-Tenant-ID": org.id})
        assert r.status_code == 401, token
        assert error_of(r)["code"] == "invalid_api_key"


def test_other_tenant_cannot_tell_whether_a_key_exists(client, make_org):
    a, b = make_org(), make_org()
    wrong_tenant = client.get("/api/v1/keys", headers={"Authorization": f"Bearer {a.admin_key}", "X-Tenant-ID": b.id})
    unknown_key = client.get("/api/v1/keys", headers={"Authorization": f"Bearer {generate_key()}", "X-Tenant-ID": b.id})
    assert wrong_tenant.status_code == unknown_key.status_code == 401
    assert error_of(wrong_tenant) == error_of(unknown_key)
    # Even a revoked key of org A looks unknown from org B, not "revoked".
    key_id = client.get("/api/v1/keys", headers=a.headers()).json()["data"][0]["id"]
    extra = a.key_for(a.admin_id)
    client.delete(f"/api/v1/keys/{key_id}", headers=a.headers(extra))
    r = client.get("/api/v1/keys", headers={"Authorization": f"Bearer {a.admin_key}", "X-Tenant-ID": b.id})
    assert error_of(r) == error_of(unknown_key)


def test_revoked_key_refused_on_next_request(client, org):
    victim = org.key_for(org.admin_id, name="victim")
    assert client.get("/api/v1/keys", headers=org.headers(victim)).status_code == 200
    victim_id = next(
        k["id"] for k in client.get("/api/v1/keys", headers=org.headers()).json()["data"] if k["name"] == "victim"
    )
    r = client.delete(f"/api/v1/keys/{victim_id}", headers=org.headers())
    assert r.status_code == 200
    assert r.json()["id"] == victim_id and r.json()["status"] == "revoked"
    r = client.get("/api/v1/keys", headers=org.headers(victim))
    assert r.status_code == 401
    assert error_of(r)["code"] == "api_key_revoked"


def test_expired_key_is_401(client, org):
    soon = org.key_for(org.admin_id, name="soon", expires_in_days=1)
    assert client.get("/api/v1/keys", headers=org.headers(soon)).status_code == 200
    with session_scope(org.settings.database_url) as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.name == "soon", ApiKey.org_id == org.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    r = client.get("/api/v1/keys", headers=org.headers(soon))
    assert r.status_code == 401
    assert error_of(r)["code"] == "api_key_expired"


def test_scope_not_granted_is_403_naming_the_scope(client, org):
    data_key = org.key_for(org.admin_id, scopes=["data:read"])
    r = client.get("/api/v1/keys", headers=org.headers(data_key))
    assert r.status_code == 403
    err = error_of(r)
    assert err["code"] == "insufficient_scope"
    assert "admin:keys:manage" in err["message"]
    r = client.get("/api/v1/audit/events", headers=org.headers(data_key))
    assert r.status_code == 403 and "admin:audit:read" in error_of(r)["message"]


def test_ip_allowlist(client, org):
    outside = org.key_for(org.admin_id, ip_allowlist=["10.0.0.0/8", "2001:db8::/32"])
    r = client.get("/api/v1/keys", headers=org.headers(outside))
    assert r.status_code == 403
    assert error_of(r)["code"] == "ip_not_allowed"
    # A client cannot talk its way in with a forged X-Forwarded-For: no proxy is trusted.
    r = client.get("/api/v1/keys", headers={**org.headers(outside), "X-Forwarded-For": "10.1.2.3"})
    assert r.status_code == 403
    inside = org.key_for(org.admin_id, ip_allowlist=["127.0.0.1"])
    assert client.get("/api/v1/keys", headers=org.headers(inside)).status_code == 200


def test_rate_limit_429_with_retry_after(client, org):
    limited = org.key_for(org.admin_id, rate_limit_per_minute=3)
    statuses = [client.get("/api/v1/keys", headers=org.headers(limited)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    r = client.get("/api/v1/keys", headers=org.headers(limited))
    assert r.status_code == 429
    assert error_of(r)["code"] == "rate_limit_exceeded"
    # Exact for the sliding window counter, which can need up to two windows to free a slot.
    assert 1 <= int(r.headers["retry-after"]) <= 120
    # Other keys are not affected.
    assert client.get("/api/v1/keys", headers=org.headers()).status_code == 200


def test_demoting_creator_removes_permissions_on_next_request(client, org):
    second_admin = org.add_user("second@example.com", role="admin")
    key = org.key_for(second_admin)  # full access for an admin
    assert client.get("/api/v1/users", headers=org.headers(key)).status_code == 200
    r = client.patch(f"/api/v1/users/{second_admin}", json={"role": "member"}, headers=org.headers())
    assert r.status_code == 200 and r.json()["role"] == "member"
    r = client.get("/api/v1/users", headers=org.headers(key))
    assert r.status_code == 403
    assert error_of(r)["code"] == "insufficient_scope"
    # What a member may still do keeps working.
    assert client.get("/api/v1/keys", headers=org.headers(key)).status_code == 200
    # Promote again: the key's own scopes come back, live.
    client.patch(f"/api/v1/users/{second_admin}", json={"role": "admin"}, headers=org.headers())
    assert client.get("/api/v1/users", headers=org.headers(key)).status_code == 200


def test_deactivating_creator_refuses_their_keys(client, org):
    member = org.add_user("member@example.com")
    key = org.key_for(member)
    assert client.get("/api/v1/keys", headers=org.headers(key)).status_code == 200
    assert client.delete(f"/api/v1/users/{member}", headers=org.headers()).status_code == 200
    r = client.get("/api/v1/keys", headers=org.headers(key))
    assert r.status_code == 401
    assert error_of(r)["code"] == "api_key_owner_inactive"


def test_database_copy_does_not_yield_a_usable_key(client, org, settings):
    from fastapi.testclient import TestClient

    from tidegate.api.app import create_app

    secret = org.key_for(org.admin_id, name="copied")
    with session_scope(settings.database_url) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.name == "copied", ApiKey.org_id == org.id))
        stored = {c.name: getattr(row, c.key) for c in ApiKey.__table__.columns}
    assert secret not in repr(stored)
    assert stored["key_prefix"] == secret[:12]
    if settings.database_url.startswith("sqlite"):
        # Read by another process: closing a descriptor of the database file in this one
        # would drop every POSIX lock SQLite holds on it here (sqlite.org/howtocorrupt.html),
        # and a later writer elsewhere could then delete the WAL under our connections.
        path = settings.database_url.removeprefix("sqlite:///")
        raw = subprocess.run(
            ["cat", path, *([path + "-wal"] if os.path.exists(path + "-wal") else [])], capture_output=True, check=True
        ).stdout
        assert len(raw) > 4096 and secret.encode() not in raw
    # The stored hash is not itself a credential.
    r = client.get("/api/v1/keys", headers={"Authorization": f"Bearer {stored['secret_hash']}", "X-Tenant-ID": org.id})
    assert r.status_code == 401
    # A server with the same database but without our pepper cannot verify the key.
    other = type(settings)(**{**settings.__dict__, "pepper": b"x" * 64})
    with TestClient(create_app(other), client=("127.0.0.1", 1)) as stranger:
        r = stranger.get("/api/v1/keys", headers=org.headers(secret))
        assert r.status_code == 401
    assert client.get("/api/v1/keys", headers=org.headers(secret)).status_code == 200


def test_request_id_on_every_response(client, org):
    responses = [
        client.get("/api/v1/keys", headers=org.headers()),
        client.get("/api/v1/keys"),
        client.get("/api/v1/nowhere"),
        client.post("/api/v1/keys", headers=org.headers(), json={"name": 5}),
        client.get("/healthz"),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids) and len(set(ids)) == len(ids)
