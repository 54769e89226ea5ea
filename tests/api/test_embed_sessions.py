"""Embed sessions over HTTP: lifecycle, acting as the user live, origins, the org switch."""

from __future__ import annotations

import pytest

from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs

ROWS = [
    {"region": "US", "amount": 10},
    {"region": "US", "amount": 20},
    {"region": "EU", "amount": 30},
    {"region": "APAC", "amount": 50},
]


def sessions_url(suffix: str = "") -> str:
    return "/api/v1/embed/sessions" + suffix


def as_session(token: str, **extra) -> dict[str, str]:
    return {"X-Embed-Session": token, **extra}


@pytest.fixture
def world(client, org):
    """An org-shared source; a member `ext-1` with a `region = US` policy."""
    h = org.headers()
    source = client.post("/api/v1/sources", json={"name": "sales", "rows": ROWS}, headers=h).json()["id"]
    client.post(f"/api/v1/sources/{source}/org-share", json={"permission": "view"}, headers=h)
    user = client.put("/api/v1/users/external/ext-1", json={"email": "ext1@example.com"}, headers=h).json()
    policy = client.post(
        "/api/v1/access/policies",
        json={"name": "us", "source_ids": [source], "row_filters": [{"column": "region", "values": ["US"]}]},
        headers=h,
    ).json()["id"]
    r = client.put(f"/api/v1/access/users/{user['id']}/policies", json={"policy_ids": [policy]}, headers=h)
    assert r.status_code == 200, r.text
    return {"source": source, "user": user["id"], "policy": policy}


def new_session(client, org, user_id: str, key: str | None = None, **body) -> dict:
    r = client.post(sessions_url(), json={"user_id": user_id, **body}, headers=org.headers(key))
    assert r.status_code == 201, r.text
    return r.json()


def settings(client, org, **changes) -> dict:
    r = client.patch("/api/v1/org/settings", json=changes, headers=org.headers())
    assert r.status_code == 200, r.text
    return r.json()


def error_of(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_a_session_reads_only_its_users_rows(client, org, world):
    created = new_session(client, org, "ext-1")  # an external id works as the user id
    assert created["session_token"].startswith("es_") and len(created["session_token"]) == 46
    assert created["user_id"] == world["user"] and created["expires_in"] == 3600
    h, src = as_session(created["session_token"]), world["source"]
    page = client.get(f"/api/v1/sources/{src}/data", headers=h).json()
    assert sorted(r["region"] for r in page["data"]) == ["US", "US"] and page["total_count"] == 2
    q = client.post(f"/api/v1/sources/{src}/query", json={"sql": "SELECT sum(amount) AS s FROM data"}, headers=h)
    assert q.json()["data"] == [{"s": 30}]
    assert [s["id"] for s in client.get("/api/v1/sources", headers=h).json()["data"]] == [src]
    # The key's admin still sees every row.
    assert client.get(f"/api/v1/sources/{src}/data", headers=org.headers()).json()["total_count"] == 4


def test_a_session_holds_no_management_scopes(client, org, world):
    h = as_session(new_session(client, org, "ext-1")["session_token"])
    assert error_of(client.post(sessions_url(), json={"user_id": "ext-1"}, headers=h)) == (403, "insufficient_scope")
    assert error_of(client.get("/api/v1/keys", headers=h)) == (403, "insufficient_scope")
    # Even an admin's session cannot mint sessions or manage keys.
    admin = as_session(new_session(client, org, org.admin_id)["session_token"])
    assert error_of(client.get(sessions_url(), headers=admin)) == (403, "insufficient_scope")
    assert error_of(client.get("/api/v1/keys", headers=admin)) == (403, "insufficient_scope")
    assert client.get("/api/v1/users", headers=admin).status_code == 200  # the rest of the admin's role


@pytest.mark.parametrize("ttl,expected", [(None, 3600), (1, 900), (899, 900), (900, 900), (5000, 5000), (10**9, 86400)])
def test_ttl_is_clamped(client, org, world, ttl, expected):
    body = {} if ttl is None else {"ttl": ttl}
    assert new_session(client, org, "ext-1", **body)["expires_in"] == expected


def test_refresh_ends_the_old_token_at_once(client, org, world):
    old = new_session(client, org, "ext-1", ttl=1200, origin="https://app.example.com")
    r = client.post(sessions_url("/refresh"), json={"session_token": old["session_token"]}, headers=org.headers())
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["session_token"] != old["session_token"] and new["user_id"] == old["user_id"]
    assert new["origin"] == "https://app.example.com" and new["expires_in"] == 1200
    src = world["source"]
    assert error_of(client.get(f"/api/v1/sources/{src}/data", headers=as_session(old["session_token"]))) == (
        401,
        "embed_session_revoked",
    )
    assert client.get(f"/api/v1/sources/{src}/data", headers=as_session(new["session_token"])).status_code == 200
    again = client.post(sessions_url("/refresh"), json={"session_token": old["session_token"]}, headers=org.headers())
    assert error_of(again) == (401, "embed_session_revoked")
    bad = client.post(sessions_url("/refresh"), json={"session_token": "es_nope"}, headers=org.headers())
    assert error_of(bad) == (401, "invalid_embed_session")


def test_list_shows_prefixes_and_revoke_accepts_them(client, org, world):
    tokens = [new_session(client, org, "ext-1")["session_token"] for _ in range(3)]
    r = client.get(sessions_url(), params={"limit": 500}, headers=org.headers())
    assert r.status_code == 200
    listed = r.json()["data"]
    assert len(listed) == 3 and all(s["user_id"] == world["user"] for s in listed)
    assert sorted(s["session_token"] for s in listed) == sorted(t[:16] for t in tokens)
    assert not any(t in r.text or t[16:] in r.text for t in tokens)
    assert client.get(sessions_url(), params={"limit": 2}, headers=org.headers()).json()["has_more"] is True
    # DELETE by the listed prefix, by the id, and by the token itself.
    by_prefix, by_id = listed[0], listed[1]
    for ref in (by_prefix["session_token"], by_id["id"], tokens[0]):
        r = client.delete(sessions_url(f"/{ref}"), headers=org.headers())
        assert r.status_code == 200 and r.json()["revoked"] is True, r.text
    assert client.get(sessions_url(), headers=org.headers()).json()["data"] == []
    for token in tokens:
        assert client.get("/api/v1/sources", headers=as_session(token)).status_code == 401
    assert error_of(client.delete(sessions_url("/es_unknown"), headers=org.headers())) == (
        404,
        "embed_session_not_found",
    )
    assert client.get(sessions_url(), params={"limit": 0}, headers=org.headers()).status_code == 400


def test_origin_rules(client, org, world):
    # No allowlist: any origin (normalized), or none.
    assert new_session(client, org, "ext-1", origin="HTTPS://App.Example.com/")["origin"] == "https://app.example.com"
    r = client.post(sessions_url(), json={"user_id": "ext-1", "origin": "javascript:alert(1)"}, headers=org.headers())
    assert error_of(r) == (400, "invalid_origin")
    settings(client, org, embed_allowed_origins=["https://app.example.com"])
    r = client.post(sessions_url(), json={"user_id": "ext-1"}, headers=org.headers())
    assert error_of(r) == (400, "origin_required")
    r = client.post(sessions_url(), json={"user_id": "ext-1", "origin": "https://evil.example"}, headers=org.headers())
    assert error_of(r) == (400, "origin_not_allowed")
    token = new_session(client, org, "ext-1", origin="https://app.example.com")["session_token"]
    ok = client.get("/api/v1/sources", headers=as_session(token, Origin="https://app.example.com"))
    assert ok.status_code == 200
    assert client.get("/api/v1/sources", headers=as_session(token)).status_code == 200  # (no Origin: a server)
    other = client.get("/api/v1/sources", headers=as_session(token, Origin="https://evil.example"))
    assert error_of(other) == (403, "origin_not_allowed")
    # An origin removed from the list stops its sessions at once.
    settings(client, org, embed_allowed_origins=["https://other.example.com"])
    gone = client.get("/api/v1/sources", headers=as_session(token, Origin="https://app.example.com"))
    assert error_of(gone) == (403, "origin_not_allowed")


def test_embeds_off_refuses_create_and_use_at_once(client, org, world):
    token = new_session(client, org, "ext-1")["session_token"]
    assert settings(client, org, embeds_enabled=False)["embeds_enabled"] is False
    assert error_of(client.post(sessions_url(), json={"user_id": "ext-1"}, headers=org.headers())) == (
        403,
        "embeds_disabled",
    )
    assert error_of(client.get("/api/v1/sources", headers=as_session(token))) == (403, "embeds_disabled")
    # The refused use is audited as the session's user.
    events = client.get("/api/v1/audit/events", params={"limit": 5}, headers=org.headers()).json()["data"]
    refused = [e for e in events if e.get("status") == 403 and e["actor_id"] == world["user"]]
    assert refused and refused[0]["details"]["auth_method"] == "embed_session"
    settings(client, org, embeds_enabled=True)
    assert client.get("/api/v1/sources", headers=as_session(token)).status_code == 200


def test_a_deactivated_user_is_401_on_the_next_request(client, org, world):
    token = new_session(client, org, "ext-1")["session_token"]
    assert client.get("/api/v1/sources", headers=as_session(token)).status_code == 200
    assert client.delete(f"/api/v1/users/{world['user']}", headers=org.headers()).status_code == 200
    assert error_of(client.get("/api/v1/sources", headers=as_session(token))) == (401, "embed_session_user_inactive")


def test_a_demoted_user_loses_scopes_on_the_next_request(client, org, world):
    r = client.patch(f"/api/v1/users/{world['user']}", json={"role": "admin"}, headers=org.headers())
    assert r.status_code == 200, r.text
    token = new_session(client, org, "ext-1")["session_token"]
    assert client.get("/api/v1/users", headers=as_session(token)).status_code == 200
    client.patch(f"/api/v1/users/{world['user']}", json={"role": "member"}, headers=org.headers())
    assert error_of(client.get("/api/v1/users", headers=as_session(token))) == (403, "insufficient_scope")


def test_a_revoked_creating_key_ends_its_sessions(client, org, world):
    key = org.key_for(org.admin_id, name="embedder")
    token = new_session(client, org, "ext-1", key=key)["session_token"]
    assert client.get("/api/v1/sources", headers=as_session(token)).status_code == 200
    key_id = next(
        k["id"] for k in client.get("/api/v1/keys", headers=org.headers()).json()["data"] if k["name"] == "embedder"
    )
    assert client.delete(f"/api/v1/keys/{key_id}", headers=org.headers()).status_code == 200
    assert error_of(client.get("/api/v1/sources", headers=as_session(token))) == (401, "embed_session_key_revoked")
    # Nor listed, nor refreshed into a new session.
    assert client.get(sessions_url(), headers=org.headers()).json()["data"] == []
    r = client.post(sessions_url("/refresh"), json={"session_token": token}, headers=org.headers())
    assert error_of(r) == (401, "embed_session_key_revoked")


def test_a_session_never_exceeds_its_key(client, org, world):
    # A key that may only read data: even an admin's session reads data and nothing else.
    key = org.key_for(org.admin_id, scopes=["data:read", "embed:session:create"])
    h = as_session(new_session(client, org, "ext-1", key=key)["session_token"])
    assert client.get(f"/api/v1/sources/{world['source']}/data", headers=h).json()["total_count"] == 2
    admin = as_session(new_session(client, org, org.admin_id, key=key)["session_token"])
    assert client.get(f"/api/v1/sources/{world['source']}/data", headers=admin).json()["total_count"] == 4
    assert error_of(client.get("/api/v1/users", headers=admin)) == (403, "insufficient_scope")
    # A key limited to other sources: the session sees none of this one.
    other = client.post("/api/v1/sources", json={"name": "other", "rows": ROWS}, headers=org.headers()).json()["id"]
    narrow = org.key_for(org.admin_id, source_scope={"mode": "selected", "source_ids": [other]})
    h = as_session(new_session(client, org, "ext-1", key=narrow)["session_token"])
    assert client.get(f"/api/v1/sources/{world['source']}/data", headers=h).status_code == 404


def test_sessions_of_one_key_act_as_different_users(client, org, world):
    h = org.headers()
    eu = client.put("/api/v1/users/external/ext-eu", json={"email": "eu@example.com"}, headers=h).json()["id"]
    policy = client.post(
        "/api/v1/access/policies",
        json={"name": "eu", "row_filters": [{"column": "region", "values": ["EU"]}]},
        headers=h,
    ).json()["id"]
    client.put(f"/api/v1/access/users/{eu}/policies", json={"policy_ids": [policy]}, headers=h)
    src = world["source"]
    us_token = new_session(client, org, "ext-1")["session_token"]
    eu_token = new_session(client, org, "ext-eu")["session_token"]
    for token, region in ((us_token, "US"), (eu_token, "EU"), (us_token, "US")):
        rows = client.get(f"/api/v1/sources/{src}/data", headers=as_session(token)).json()["data"]
        assert {r["region"] for r in rows} == {region}


def test_session_use_is_audited_as_the_user_with_the_key(client, org, world):
    token = new_session(client, org, "ext-1")["session_token"]
    client.get(f"/api/v1/sources/{world['source']}/data", headers=as_session(token))
    events = client.get("/api/v1/audit/events", params={"limit": 100}, headers=org.headers()).json()["data"]
    used = [e for e in events if (e.get("details") or {}).get("auth_method") == "embed_session"]
    assert used, events
    event = used[0]
    assert event["actor_id"] == world["user"] and event["actor_type"] == "user"
    assert event["key_id"] and event["details"]["created_by_key_id"] == event["key_id"]
    actions = {e["action"] for e in events}
    assert "embed_session.created" in actions
    assert token not in str(events) and token[16:] not in str(events)


def test_ui_config_is_public_and_validated(client, org):
    empty = {"chrome": {}, "theme": {}, "privacy": {}}
    assert client.get("/api/embed/ui-config", params={"org": org.id}).json() == empty
    assert client.get("/api/embed/ui-config", params={"org": "org_unknown"}).json() == empty
    assert client.get("/api/embed/ui-config").json() == empty
    config = {"chrome": {"header": False}, "theme": {"primary": "#123456"}, "privacy": {"hide_emails": True}}
    assert settings(client, org, embed_ui_config=config)["embed_ui_config"] == config
    assert client.get("/api/embed/ui-config", params={"org": org.id}).json() == config
    for bad in (
        {"chrome": []},
        {"colors": {}},
        {"theme": {"x": "y" * 20_000}},
        {"theme": {"a": {"b": {"c": {"d": {}}}}}},
    ):
        r = client.patch("/api/v1/org/settings", json={"embed_ui_config": bad}, headers=org.headers())
        assert error_of(r) == (400, "invalid_ui_config"), bad
    r = client.patch("/api/v1/org/settings", json={"embed_allowed_origins": ["not an origin"]}, headers=org.headers())
    assert error_of(r) == (400, "invalid_origin")


def test_ui_config_is_rate_limited_per_ip(client, org, monkeypatch):
    from tidegate.api import embed

    monkeypatch.setattr(embed, "UI_CONFIG_PER_IP_PER_MINUTE", 3)
    monkeypatch.setattr(embed, "client_ip", lambda request: f"198.51.100.{org.id[-2:]}")  # (fresh counters)
    responses = [client.get("/api/embed/ui-config", params={"org": org.id}) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 3 + [429] * 2
    assert responses[-1].json()["error"]["code"] == "rate_limit_exceeded" and responses[-1].headers["Retry-After"]
    monkeypatch.setattr(embed, "client_ip", lambda request: f"198.51.101.{org.id[-2:]}")  # another address
    assert client.get("/api/embed/ui-config", params={"org": org.id}).status_code == 200


def test_the_operator_service_changes_embed_settings(org):
    with session_scope(org.settings.database_url) as session:
        organization = orgs.get_org(session, org.id)
        orgs.update_settings(
            session,
            None,
            organization,
            api_key_creation_enabled=None,
            embeds_enabled=False,
            embed_allowed_origins=["https://a.example.com:8443"],
        )
    with session_scope(org.settings.database_url) as session:
        organization = orgs.get_org(session, org.id)
        assert organization.embeds_enabled is False
        assert organization.embed_allowed_origins == ["https://a.example.com:8443"]
