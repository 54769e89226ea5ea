"""Security regression suite for embed sessions (issue 10): each case tries to use a session
beyond what it is (a token that is malformed, unknown, expired, revoked, of another
organization; a session acting beyond its user or its key) and checks the precise refusal.
Runs on SQLite and PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tidegate.audit.models import AuditEvent
from tidegate.credentials.models import EmbedSession
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope

ROWS = [{"region": "US", "amount": 1}, {"region": "EU", "amount": 2}, {"region": "APAC", "amount": 3}]


def make_session(client, org, user_id: str, key: str | None = None, **body) -> dict:
    r = client.post("/api/v1/embed/sessions", json={"user_id": user_id, **body}, headers=org.headers(key))
    assert r.status_code == 201, r.text
    return r.json()


def use(client, token: str, path: str = "/api/v1/sources", **headers):
    return client.get(path, headers={"X-Embed-Session": token, **headers})


def refusal(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@pytest.fixture
def member(client, org):
    h = org.headers()
    source = client.post("/api/v1/sources", json={"name": "s", "rows": ROWS}, headers=h).json()["id"]
    client.post(f"/api/v1/sources/{source}/org-share", json={"permission": "view"}, headers=h)
    user = client.put("/api/v1/users/external/m-1", json={"email": "m1@example.com"}, headers=h).json()["id"]
    policy = client.post(
        "/api/v1/access/policies",
        json={"name": "us", "row_filters": [{"column": "region", "values": ["US"]}]},
        headers=h,
    ).json()["id"]
    client.put(f"/api/v1/access/users/{user}/policies", json={"policy_ids": [policy]}, headers=h)
    return {"user": user, "source": source}


@pytest.mark.parametrize(
    "token",
    [
        "",
        "es_",
        "es_short",
        "qk_" + "a" * 43,
        "es_" + "a" * 42,
        "es_" + "a" * 44,
        "es_" + "!" * 43,
        "es_" + "a" * 21 + " " + "a" * 21,
        "Bearer es_" + "a" * 43,
    ],
)
def test_malformed_tokens_are_401(client, org, member, token):
    assert refusal(use(client, token)) == (401, "invalid_embed_session")


def test_unknown_and_other_org_tokens_are_the_same_401(client, org, make_org, member):
    unknown = use(client, "es_" + "A" * 43)
    token = make_session(client, org, member["user"])["session_token"]
    other = make_org()
    # The session is its own credential: naming another tenant does not move it there.
    wrong_tenant = use(client, token, **{"X-Tenant-ID": other.id})
    assert refusal(unknown) == refusal(wrong_tenant) == (401, "invalid_embed_session")
    assert unknown.json()["error"]["message"] == wrong_tenant.json()["error"]["message"]
    # Another org's key can neither see, refresh nor revoke it.
    assert other.id not in use(client, token).text
    r = client.post("/api/v1/embed/sessions/refresh", json={"session_token": token}, headers=other.headers())
    assert refusal(r) == (401, "invalid_embed_session")
    r = client.delete(f"/api/v1/embed/sessions/{token}", headers=other.headers())
    assert refusal(r) == (404, "embed_session_not_found")
    assert client.get("/api/v1/embed/sessions", headers=other.headers()).json()["data"] == []
    assert use(client, token).status_code == 200
    # Another org's user cannot be the session's user.
    stranger = client.put("/api/v1/users/external/x", json={"email": "x@example.com"}, headers=other.headers())
    r = client.post("/api/v1/embed/sessions", json={"user_id": stranger.json()["id"]}, headers=org.headers())
    assert refusal(r) == (404, "user_not_found")


def test_expired_and_revoked_tokens_are_401(client, org, member):
    expired = make_session(client, org, member["user"])
    with session_scope(org.settings.database_url) as s:
        s.execute(
            update(EmbedSession)
            .where(EmbedSession.id == expired["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert refusal(use(client, expired["session_token"])) == (401, "embed_session_expired")
    assert expired["session_token"][:16] not in client.get("/api/v1/embed/sessions", headers=org.headers()).text
    revoked = make_session(client, org, member["user"])
    client.delete(f"/api/v1/embed/sessions/{revoked['id']}", headers=org.headers())
    assert refusal(use(client, revoked["session_token"])) == (401, "embed_session_revoked")


def test_the_session_header_wins_over_a_key(client, org, member):
    """A request carrying a session and a key acts as the session, never as the key."""
    token = make_session(client, org, member["user"])["session_token"]
    r = client.get(f"/api/v1/sources/{member['source']}/data", headers={"X-Embed-Session": token, **org.headers()})
    assert [row["region"] for row in r.json()["data"]] == ["US"]
    r = client.get("/api/v1/keys", headers={"X-Embed-Session": token, **org.headers()})
    assert refusal(r) == (403, "insufficient_scope")
    r = client.get("/api/v1/keys", headers={"X-Embed-Session": "es_bad", **org.headers()})
    assert refusal(r) == (401, "invalid_embed_session")


def test_a_member_session_cannot_write_or_administer(client, org, member):
    h = {"X-Embed-Session": make_session(client, org, member["user"])["session_token"]}
    assert refusal(client.get("/api/v1/users", headers=h)) == (403, "insufficient_scope")
    assert refusal(client.patch("/api/v1/org/settings", json={"embeds_enabled": True}, headers=h)) == (
        403,
        "insufficient_scope",
    )
    r = client.put(f"/api/v1/access/users/{member['user']}/policies", json={"policy_ids": []}, headers=h)
    assert refusal(r) == (403, "insufficient_scope")
    r = client.post("/api/v1/embed/sessions/refresh", json={"session_token": h["X-Embed-Session"]}, headers=h)
    assert refusal(r) == (403, "insufficient_scope")


def test_a_key_bound_to_a_user_makes_sessions_only_for_that_user(client, org, member):
    other = client.put("/api/v1/users/external/m-2", json={"email": "m2@example.com"}, headers=org.headers()).json()
    key = org.key_for(org.admin_id, bound_user_id=member["user"])
    assert make_session(client, org, member["user"], key=key)["user_id"] == member["user"]
    r = client.post("/api/v1/embed/sessions", json={"user_id": other["id"]}, headers=org.headers(key))
    assert refusal(r) == (403, "exceeds_parent_key")


def test_a_key_without_the_scope_cannot_make_sessions(client, org, member):
    key = org.key_for(org.admin_id, scopes=["data:read"])
    r = client.post("/api/v1/embed/sessions", json={"user_id": member["user"]}, headers=org.headers(key))
    assert refusal(r) == (403, "insufficient_scope")
    member_key = org.key_for(member["user"])  # a member does not hold embed:session:create
    r = client.post("/api/v1/embed/sessions", json={"user_id": member["user"]}, headers=org.headers(member_key))
    assert refusal(r) == (403, "insufficient_scope")


@pytest.mark.parametrize(
    "body,code",
    [
        ({}, "invalid_parameters"),
        ({"user_id": ""}, "invalid_parameters"),
        ({"user_id": "m-1", "ttl": "long"}, "invalid_parameters"),
        ({"user_id": "m-1", "origin": "ftp://x"}, "invalid_origin"),
        ({"user_id": "m-1", "origin": "https://a.example/path"}, "invalid_origin"),
        ({"user_id": "m-1", "origin": "https://user:pw@a.example"}, "invalid_origin"),
        ({"user_id": "m-1", "extra": 1}, "invalid_parameters"),
        ({"user_id": "m-1\x00"}, "invalid_parameters"),
    ],
)
def test_bad_create_bodies_are_400(client, org, member, body, code):
    r = client.post("/api/v1/embed/sessions", json=body, headers=org.headers())
    assert refusal(r) == (400, code)


def test_the_token_is_stored_only_as_a_keyed_hash_and_never_audited_or_logged(client, org, member, caplog):
    caplog.set_level(logging.DEBUG)
    created = make_session(client, org, member["user"])
    token = created["session_token"]
    use(client, token)
    refreshed = client.post("/api/v1/embed/sessions/refresh", json={"session_token": token}, headers=org.headers())
    new_token = refreshed.json()["session_token"]
    client.delete(f"/api/v1/embed/sessions/{new_token}", headers=org.headers())
    with session_scope(org.settings.database_url) as s:
        rows = s.scalars(select(EmbedSession).where(EmbedSession.org_id == org.id)).all()
        stored = json.dumps([{c.name: str(getattr(r, c.name)) for c in EmbedSession.__table__.columns} for r in rows])
        events = s.scalars(select(AuditEvent).where(AuditEvent.org_id == org.id)).all()
        audited = json.dumps([{c.name: str(getattr(e, c.name)) for c in AuditEvent.__table__.columns} for e in events])
    journal = "".join(p.read_text(errors="replace") for p in org.settings.home.rglob("*") if p.is_file())
    for secret in (token, new_token):
        server_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tidegate"))
        for where in (stored, audited, server_logs, journal):
            assert secret not in where and secret[16:] not in where
    listed = client.get("/api/v1/embed/sessions", headers=org.headers()).text
    assert token not in listed and new_token not in listed


def test_a_refused_revoke_never_audits_or_logs_the_token_in_its_path(client, org, member, caplog):
    """Refused before the handler runs (no scope, unknown key): the token in the DELETE path
    is redacted from the audit event (path and target) and from the access log alike."""
    caplog.set_level(logging.DEBUG)
    token = make_session(client, org, member["user"])["session_token"]
    no_scope = org.key_for(org.admin_id, scopes=["data:read"])
    refused = client.delete(f"/api/v1/embed/sessions/{token}", headers=org.headers(no_scope))
    assert refused.status_code == 403, refused.text
    unknown = client.delete(f"/api/v1/embed/sessions/{token}", headers={"X-Tenant-ID": org.id})
    assert unknown.status_code == 401, unknown.text
    assert use(client, token).status_code == 200  # still live: not revoked
    client.get("/api/v1/audit/events", headers=org.headers())  # ships the journal
    with session_scope(org.settings.database_url) as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.org_id == org.id)).all()
        audited = json.dumps([{c.name: str(getattr(e, c.name)) for c in AuditEvent.__table__.columns} for e in events])
    assert "/api/v1/embed/sessions/es_[redacted]" in audited  # the refused DELETE was recorded
    server_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tidegate"))
    journal = "".join(p.read_text(errors="replace") for p in org.settings.home.rglob("*") if p.is_file())
    for where in (audited, server_logs, journal):
        assert token not in where and token[16:] not in where
