"""/keys: creation rules, visibility, listing, rename, revoke; no escalation; bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tidegate.core.scopes import ALL_SCOPES, DATA_ACCESS_SCOPES, ROLE_PERMISSIONS


def key_count(client, org) -> int:
    return len(client.get("/api/v1/keys", params={"limit": 100}, headers=org.headers()).json()["data"])


def create(client, org, key=None, **body):
    body.setdefault("name", "k")
    return client.post("/api/v1/keys", json=body, headers=org.headers(key))


def test_create_returns_secret_once(client, org):
    r = create(client, org, name="BI tool", scopes=["data:read", "admin:sources:read"], expires_in_days=30)
    assert r.status_code == 201
    body = r.json()
    secret = body["secret"]
    assert secret.startswith("qk_") and body["key_prefix"] == secret[:12]
    assert body["scopes"] == ["admin:sources:read", "data:read"]
    assert body["status"] == "active" and body["rate_limit_per_minute"] == 60
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    assert r.headers["cache-control"] == "no-store"
    # Never again: not in get, not in list.
    got = client.get(f"/api/v1/keys/{body['id']}", headers=org.headers())
    listed = client.get("/api/v1/keys", headers=org.headers())
    assert "secret" not in got.json() and secret not in got.text
    assert secret not in listed.text
    # And the key works.
    assert client.get("/api/v1/sources", headers=org.headers(secret)).status_code in (200, 404)


def test_presets(client, org):
    data = create(client, org, preset="data_access").json()
    assert set(data["scopes"]) == DATA_ACCESS_SCOPES
    full = create(client, org, preset="full_access").json()
    assert set(full["scopes"]) == ALL_SCOPES


def test_member_full_access_preset_is_what_the_member_holds(client, org):
    member = org.add_user("m@example.com")
    member_key = org.key_for(member)
    r = create(client, org, member_key, preset="full_access")
    assert r.status_code == 201
    assert set(r.json()["scopes"]) == ROLE_PERMISSIONS["member"]


@pytest.mark.parametrize(
    "body,code",
    [
        ({"scopes": ["data:read", "data:destroy"]}, "invalid_scope"),
        ({"scopes": []}, "invalid_scopes"),
        ({}, "invalid_scopes"),
        ({"scopes": ["data:read"], "preset": "data_access"}, "invalid_scopes"),
        ({"preset": "everything"}, "invalid_preset"),
        ({"scopes": ["data:read"], "rate_limit_per_minute": 0}, "invalid_rate_limit"),
        ({"scopes": ["data:read"], "rate_limit_per_minute": 10_001}, "invalid_rate_limit"),
        ({"scopes": ["data:read"], "expires_in_days": 0}, "invalid_expiry"),
        ({"scopes": ["data:read"], "expires_in_days": -5}, "invalid_expiry"),
        ({"scopes": ["data:read"], "ip_allowlist": ["not-an-ip"]}, "invalid_ip_allowlist"),
        ({"scopes": ["data:read"], "ip_allowlist": ["10.0.0.0/33"]}, "invalid_ip_allowlist"),
        ({"scopes": ["data:read"], "source_scope": {"mode": "some"}}, "invalid_source_scope"),
        ({"scopes": ["data:read"], "source_scope": {"mode": "selected", "source_ids": []}}, "invalid_source_scope"),
        ({"scopes": ["data:read"], "bound_user_id": "user_nobody"}, "invalid_bound_user"),
        ({"scopes": ["data:read"], "access_policy_ids": ["pol_nobody"]}, "invalid_policy_ids"),
        ({"scopes": ["data:read"], "name": "   "}, "invalid_name"),
        ({"scopes": ["data:read"], "surprise": 1}, "invalid_parameters"),
        ({"scopes": "data:read"}, "invalid_parameters"),
        ({"scopes": ["data:read"], "expires_in_days": "soon"}, "invalid_parameters"),
    ],
)
def test_bad_input_is_400_and_changes_nothing(client, org, body, code):
    before = key_count(client, org)
    r = create(client, org, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    assert key_count(client, org) == before


def test_malformed_json_is_400(client, org):
    r = client.post("/api/v1/keys", content=b"{not json", headers={**org.headers(), "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_parameters"


def test_unknown_scope_message_names_it(client, org):
    r = create(client, org, scopes=["data:destroy"])
    assert "data:destroy" in r.json()["error"]["message"]


def test_valid_options_are_stored(client, org):
    other = org.add_user("bound@example.com")
    policy = client.post(
        "/api/v1/access/policies",
        json={"name": "eu", "row_filters": [{"column": "region", "values": ["EU"]}]},
        headers=org.headers(),
    ).json()["id"]
    # Asked by a key with the highest rate limit: a child may not exceed its parent's.
    fast = org.key_for(org.admin_id, rate_limit_per_minute=10_000)
    r = create(
        client,
        org,
        fast,
        scopes=["data:read"],
        rate_limit_per_minute=10_000,
        ip_allowlist=["10.1.2.3", "10.0.0.0/8"],
        source_scope={"mode": "selected", "source_ids": ["src_b", "src_a"]},
        access_policy_ids=[policy],
        bound_user_id=other,
    )
    assert r.status_code == 201, r.text
    got = client.get(f"/api/v1/keys/{r.json()['id']}", headers=org.headers()).json()
    assert got["rate_limit_per_minute"] == 10_000
    assert got["ip_allowlist"] == ["10.1.2.3/32", "10.0.0.0/8"]
    assert got["source_scope"] == {"mode": "selected", "source_ids": ["src_a", "src_b"]}
    assert got["access_policy_ids"] == [policy] and got["bound_user_id"] == other


def test_member_cannot_grant_scopes_they_lack(client, org):
    member = org.add_user("m@example.com")
    member_key = org.key_for(member)
    before = key_count(client, org)
    r = create(client, org, member_key, scopes=["data:read", "admin:users:write"])
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_scope"
    assert "admin:users:write" in r.json()["error"]["message"]
    r = create(client, org, member_key, scopes=["*"])
    assert r.status_code == 403
    assert key_count(client, org) == before


def test_key_cannot_mint_a_stronger_key(client, org):
    """A key that may manage keys can only hand out what it holds itself."""
    manager = org.key_for(org.admin_id, scopes=["admin:keys:manage"])
    r = create(client, org, manager, scopes=["admin:users:write"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    r = create(client, org, manager, preset="full_access")
    assert r.status_code == 403
    r = create(client, org, manager, scopes=["admin:keys:manage"])
    assert r.status_code == 201


def test_members_see_and_manage_only_their_own_keys(client, org):
    alice, bob = org.add_user("alice@example.com"), org.add_user("bob@example.com")
    alice_key, bob_key = org.key_for(alice, name="alice's"), org.key_for(bob, name="bob's")
    alice_list = client.get("/api/v1/keys", headers=org.headers(alice_key)).json()["data"]
    assert {k["name"] for k in alice_list} == {"alice's"}
    bob_key_id = client.get("/api/v1/keys", headers=org.headers(bob_key)).json()["data"][0]["id"]
    assert client.get(f"/api/v1/keys/{bob_key_id}", headers=org.headers(alice_key)).status_code == 404
    assert client.delete(f"/api/v1/keys/{bob_key_id}", headers=org.headers(alice_key)).status_code == 404
    assert (
        client.patch(f"/api/v1/keys/{bob_key_id}", json={"name": "x"}, headers=org.headers(alice_key)).status_code
        == 404
    )
    assert client.get("/api/v1/keys", headers=org.headers(bob_key)).status_code == 200  # untouched
    admin_view = client.get("/api/v1/keys", params={"limit": 100}, headers=org.headers()).json()["data"]
    assert {"alice's", "bob's"} <= {k["name"] for k in admin_view}


def test_other_orgs_keys_are_invisible(client, make_org):
    a, b = make_org(), make_org()
    a_key_id = client.get("/api/v1/keys", headers=a.headers()).json()["data"][0]["id"]
    assert client.get(f"/api/v1/keys/{a_key_id}", headers=b.headers()).status_code == 404
    assert client.delete(f"/api/v1/keys/{a_key_id}", headers=b.headers()).status_code == 404
    assert client.get("/api/v1/keys", headers=a.headers()).status_code == 200


def test_cursor_pagination_and_filters(client, org):
    for i in range(5):
        create(client, org, name=f"pipeline-{i}", scopes=["data:read"])
    create(client, org, name="other", scopes=["data:read"])
    seen, after = [], None
    while True:
        params = {"limit": 2, "search": "pipeline"} | ({"after": after} if after else {})
        page = client.get("/api/v1/keys", params=params, headers=org.headers()).json()
        seen += [k["name"] for k in page["data"]]
        assert len(page["data"]) <= 2
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        after = page["next_cursor"]
    assert sorted(seen) == [f"pipeline-{i}" for i in range(5)]
    prefix = client.get("/api/v1/keys", params={"search": "other"}, headers=org.headers()).json()["data"][0][
        "key_prefix"
    ]
    by_prefix = client.get("/api/v1/keys", params={"search": prefix}, headers=org.headers()).json()["data"]
    assert [k["name"] for k in by_prefix] == ["other"]
    # LIKE metacharacters are matched literally.
    assert client.get("/api/v1/keys", params={"search": "%"}, headers=org.headers()).json()["data"] == []


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": -1}, {"limit": "x"}, {"status": "zombie"}])
def test_bad_list_parameters(client, org, params):
    r = client.get("/api/v1/keys", params=params, headers=org.headers())
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_status_filter(client, org):
    from sqlalchemy import update

    from tidegate.credentials.models import ApiKey
    from tidegate.db.base import utcnow
    from tidegate.db.engine import session_scope

    revoked = create(client, org, name="revoked", scopes=["data:read"]).json()["id"]
    expired = create(client, org, name="expired", scopes=["data:read"], expires_in_days=1).json()["id"]
    client.delete(f"/api/v1/keys/{revoked}", headers=org.headers())
    with session_scope(org.settings.database_url) as session:
        session.execute(update(ApiKey).where(ApiKey.id == expired).values(expires_at=utcnow() - timedelta(hours=1)))

    def names(status):
        return {
            k["name"]
            for k in client.get("/api/v1/keys", params={"status": status}, headers=org.headers()).json()["data"]
        }

    assert names("revoked") == {"revoked"}
    assert names("expired") == {"expired"}
    assert "revoked" not in names("active") and "expired" not in names("active")
    assert client.get(f"/api/v1/keys/{expired}", headers=org.headers()).json()["status"] == "expired"


def test_rename(client, org):
    key_id = create(client, org, name="old", scopes=["data:read"]).json()["id"]
    r = client.patch(f"/api/v1/keys/{key_id}", json={"name": "new"}, headers=org.headers())
    assert r.status_code == 200 and r.json()["name"] == "new"
    assert client.patch(f"/api/v1/keys/{key_id}", json={"name": ""}, headers=org.headers()).status_code == 400
    # Scopes can only narrow (tests/api/test_api_key_rotation.py); "*" widens.
    widened = client.patch(f"/api/v1/keys/{key_id}", json={"scopes": ["*"]}, headers=org.headers())
    assert widened.status_code == 403 and widened.json()["error"]["code"] == "scope_widening_not_allowed"
    assert client.get(f"/api/v1/keys/{key_id}", headers=org.headers()).json()["scopes"] == ["data:read"]


def test_revoke_is_idempotent(client, org):
    key_id = create(client, org, scopes=["data:read"]).json()["id"]
    first = client.delete(f"/api/v1/keys/{key_id}", headers=org.headers())
    second = client.delete(f"/api/v1/keys/{key_id}", headers=org.headers())
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == {"id": key_id, "status": "revoked", "deleted": True}
    assert client.delete("/api/v1/keys/key_nope", headers=org.headers()).status_code == 404


def test_creation_switched_off_by_admin(client, org):
    existing = org.key_for(org.admin_id, name="existing")
    r = client.patch("/api/v1/org/settings", json={"api_key_creation_enabled": False}, headers=org.headers())
    assert r.status_code == 200 and r.json()["api_key_creation_enabled"] is False
    before = key_count(client, org)
    r = create(client, org, scopes=["data:read"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "api_key_creation_disabled"
    assert key_count(client, org) == before
    assert client.get("/api/v1/keys", headers=org.headers(existing)).status_code == 200
    client.patch("/api/v1/org/settings", json={"api_key_creation_enabled": True}, headers=org.headers())
    assert create(client, org, scopes=["data:read"]).status_code == 201


def test_org_settings_are_admin_only(client, org):
    member = org.add_user("m@example.com")
    member_key = org.key_for(member)
    assert client.get("/api/v1/org/settings", headers=org.headers(member_key)).status_code == 403
    r = client.patch("/api/v1/org/settings", json={"api_key_creation_enabled": False}, headers=org.headers(member_key))
    assert r.status_code == 403
    assert client.get("/api/v1/org/settings", headers=org.headers()).json()["api_key_creation_enabled"] is True
    r = client.patch("/api/v1/org/settings", json={"api_key_creation_enabled": "maybe"}, headers=org.headers())
    assert r.status_code == 400
