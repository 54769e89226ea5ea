"""POST /keys/{id}/rotate and PATCH /keys/{id} scopes: the replacement, the grace period and its
Deprecation headers, who may rotate what, no secret anywhere after the one response, and
scopes that can only narrow. One app per database for the whole module (organizations isolate)."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Org, new_org
from tidegate.api.app import create_app
from tidegate.config import Settings
from tidegate.credentials.models import ApiKey
from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def settings(request, tmp_path_factory) -> Settings:
    return Settings(
        home=tmp_path_factory.mktemp("rotation"),
        database_url=request.getfixturevalue(f"{request.param}_url"),
        redis_url=None,
        pepper=secrets.token_hex(32).encode(),
        session_key=secrets.token_hex(32).encode(),
        trusted_proxies=(),
    )


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as test_client:
        yield test_client


@pytest.fixture
def org(settings) -> Org:
    return new_org(settings)


def key_id_of(org: Org, secret: str) -> str:
    prefix = secret[:12]
    with session_scope(org.settings.database_url) as session:
        return session.query(ApiKey.id).filter(ApiKey.org_id == org.id, ApiKey.key_prefix == prefix).one()[0]


def rotate(client, org, key_id, key=None, **body):
    return client.post(f"/api/v1/keys/{key_id}/rotate", json=body or None, headers=org.headers(key))


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def when(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def test_rotation_with_grace_keeps_the_old_key_working_with_deprecation_headers_then_refuses_it(client, org):
    old_secret = org.key_for(
        org.admin_id,
        ["data:read", "admin:sources:read"],
        name="BI tool",
        rate_limit_per_minute=37,
        ip_allowlist=["127.0.0.0/8"],
        expires_in_days=30,
    )
    old_id = key_id_of(org, old_secret)
    r = rotate(client, org, old_id, grace_period_seconds=3600)
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    new = r.json()
    assert new["secret"].startswith("qk_") and new["key_prefix"] == new["secret"][:12]
    assert new["id"] != old_id and new["rotated_from"] == old_id
    assert new["name"] == f"BI tool (rotated {today()})" and new["scopes"] == ["admin:sources:read", "data:read"]
    assert new["rate_limit_per_minute"] == 37 and new["ip_allowlist"] == ["127.0.0.0/8"]
    # The same lifetime, counted from now.
    assert abs(when(new["expires_at"]) - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    replaced = new["replaced_key"]
    assert replaced["id"] == old_id and replaced["rotated_to"] == new["id"] and replaced["status"] == "active"
    assert abs(when(replaced["expires_at"]) - (datetime.now(UTC) + timedelta(hours=1))) < timedelta(minutes=1)
    assert "secret" not in replaced

    # Both work; only the old one is told it is deprecated, and by what (prefix only).
    fresh = client.get("/api/v1/sources", headers=org.headers(new["secret"]))
    assert fresh.status_code == 200 and "deprecation" not in fresh.headers
    during = client.get("/api/v1/sources", headers=org.headers(old_secret))
    assert during.status_code == 200
    assert during.headers["x-tidegate-replaced-by"] == new["key_prefix"]
    assert new["secret"] not in str(during.headers) and new["secret"] not in during.text
    deprecated_at = int(during.headers["deprecation"].removeprefix("@"))
    assert abs(deprecated_at - datetime.now(UTC).timestamp()) < 60
    assert "GMT" in during.headers["sunset"]
    # Error responses of the old key carry it too (the caller is still told).
    refused = client.get("/api/v1/keys", headers=org.headers(old_secret))  # (no keys:manage)
    assert refused.status_code == 403 and refused.headers["x-tidegate-replaced-by"] == new["key_prefix"]

    # One replacement per key: the old key in its grace period is not rotated again.
    twice = rotate(client, org, old_id, grace_period_seconds=60)
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "api_key_already_rotated"

    # The grace period over: the ordinary expiry refusal.
    with session_scope(org.settings.database_url) as session:
        session.get(ApiKey, old_id).expires_at = datetime.now(UTC) - timedelta(seconds=1)
    after = client.get("/api/v1/sources", headers=org.headers(old_secret))
    assert after.status_code == 401 and after.json()["error"]["code"] == "api_key_expired"
    assert client.get("/api/v1/sources", headers=org.headers(new["secret"])).status_code == 200


def test_rotation_without_grace_revokes_at_once_and_is_linked_and_audited_without_secrets(client, org):
    old_secret = org.key_for(org.admin_id, ["data:read"], name="nightly")
    old_id = key_id_of(org, old_secret)
    r = rotate(client, org, old_id)  # no body: grace 0
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["replaced_key"]["status"] == "revoked"
    gone = client.get("/api/v1/sources", headers=org.headers(old_secret))
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "api_key_revoked"

    old_got = client.get(f"/api/v1/keys/{old_id}", headers=org.headers()).json()
    new_got = client.get(f"/api/v1/keys/{new['id']}", headers=org.headers()).json()
    assert old_got["rotated_to"] == new["id"] and old_got["rotated_at"] is not None
    assert new_got["rotated_from"] == old_id and "secret" not in new_got

    events = client.get("/api/v1/audit/events", params={"limit": 100}, headers=org.headers())
    assert events.status_code == 200
    actions = {(e["action"], e["target_id"]) for e in events.json()["data"]}
    assert {("api_key.rotated", old_id), ("api_key.revoked", old_id), ("api_key.created", new["id"])} <= actions
    assert new["secret"] not in events.text and old_secret not in events.text
    listed = client.get("/api/v1/keys", params={"limit": 100}, headers=org.headers())
    assert new["secret"] not in listed.text


@pytest.mark.parametrize(
    "body,code",
    [
        ({"grace_period_seconds": -1}, "invalid_grace_period"),
        ({"grace_period_seconds": 604801}, "invalid_grace_period"),
        ({"grace_period_seconds": "1h"}, "invalid_parameters"),
        ({"grace_period_seconds": True}, "invalid_parameters"),
        ({"grace": 10}, "invalid_parameters"),
    ],
)
def test_bad_grace_is_400_and_rotates_nothing(client, org, body, code):
    secret = org.key_for(org.admin_id, ["data:read"])
    key_id = key_id_of(org, secret)
    r = rotate(client, org, key_id, **body)
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    assert client.get(f"/api/v1/keys/{key_id}", headers=org.headers()).json()["rotated_to"] is None
    assert client.get("/api/v1/sources", headers=org.headers(secret)).status_code == 200


def test_a_revoked_or_expired_key_cannot_be_rotated(client, org):
    revoked_id = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="r"))
    client.delete(f"/api/v1/keys/{revoked_id}", headers=org.headers())
    r = rotate(client, org, revoked_id, grace_period_seconds=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "api_key_not_active"
    # An old key in its grace period has been rotated already: its replacement is the one to rotate.
    old_id = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="g"))
    assert rotate(client, org, old_id, grace_period_seconds=60).status_code == 201
    with session_scope(org.settings.database_url) as session:
        session.get(ApiKey, old_id).expires_at = datetime.now(UTC) - timedelta(seconds=1)
    r = rotate(client, org, old_id)
    assert r.status_code == 400 and r.json()["error"]["code"] == "api_key_not_active"


def test_only_the_creator_may_rotate_and_never_beyond_what_they_hold_now(client, org):
    member = org.add_user(f"m-{uuid.uuid4().hex[:6]}@example.com")
    member_key = org.key_for(member, name="member full access")
    member_key_id = key_id_of(org, member_key)
    # An admin can see and revoke it, but a replacement made by the admin would act as the admin.
    r = rotate(client, org, member_key_id)
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_key_owner"
    # Another member does not even see it.
    other = org.key_for(org.add_user(f"o-{uuid.uuid4().hex[:6]}@example.com"))
    assert rotate(client, org, member_key_id, other).status_code == 404
    # A key whose creator has since lost a scope (admin -> member) cannot be rotated into it.
    demoted = org.add_user(f"d-{uuid.uuid4().hex[:6]}@example.com", role="admin")
    admin_scoped_id = key_id_of(org, org.key_for(demoted, ["admin:users:read", "data:read"], name="a"))
    demoted_key = org.key_for(demoted, name="b")
    with session_scope(org.settings.database_url) as session:
        orgs.update_user(session, None, orgs.get_user(session, org.id, demoted), role="member")
    r = rotate(client, org, admin_scoped_id, demoted_key)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", r.text
    assert "admin:users:read" in r.json()["error"]["message"]
    own = rotate(client, org, member_key_id, member_key, grace_period_seconds=5)
    assert own.status_code == 201 and own.json()["rotated_from"] == member_key_id


def test_patch_scopes_narrows_and_refuses_widening(client, org):
    secret = org.key_for(org.admin_id, ["data:read", "admin:sources:read", "admin:files:read"])
    key_id = key_id_of(org, secret)
    url = f"/api/v1/keys/{key_id}"
    assert client.get("/api/v1/connectors", headers=org.headers(secret)).status_code == 200
    wide = client.patch(url, json={"scopes": ["data:read", "admin:users:write"]}, headers=org.headers())
    assert wide.status_code == 403 and wide.json()["error"]["code"] == "scope_widening_not_allowed"
    assert "admin:users:write" in wide.json()["error"]["message"]
    unknown = client.patch(url, json={"scopes": ["data:read", "data:destroy"]}, headers=org.headers())
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "invalid_scope"
    empty = client.patch(url, json={"scopes": []}, headers=org.headers())
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "invalid_scopes"
    nothing = client.patch(url, json={}, headers=org.headers())
    assert nothing.status_code == 400 and nothing.json()["error"]["code"] == "invalid_parameters"
    assert client.get(url, headers=org.headers()).json()["scopes"] == [
        "admin:files:read",
        "admin:sources:read",
        "data:read",
    ]

    narrowed = client.patch(url, json={"scopes": ["data:read"], "name": "reader"}, headers=org.headers())
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["scopes"] == ["data:read"] and narrowed.json()["name"] == "reader"
    # Applied at once: the key no longer lists connectors (admin:sources:read).
    refused = client.get("/api/v1/connectors", headers=org.headers(secret))
    assert refused.status_code == 403
    # And back is widening.
    back = client.patch(url, json={"scopes": ["data:read", "admin:sources:read"]}, headers=org.headers())
    assert back.status_code == 403 and back.json()["error"]["code"] == "scope_widening_not_allowed"
    events = client.get("/api/v1/audit/events", params={"target_id": key_id}, headers=org.headers()).json()["data"]
    narrowing = [e for e in events if e["action"] == "api_key.scopes_narrowed"]
    assert len(narrowing) == 1 and narrowing[0]["details"]["removed"] == ["admin:files:read", "admin:sources:read"]
    # A rename alone still works as before.
    assert client.patch(url, json={"name": "renamed"}, headers=org.headers()).json()["name"] == "renamed"


def test_a_full_access_wildcard_key_narrows_to_named_scopes(client, org):
    secret = org.key_for(org.admin_id, ["*"])
    key_id = key_id_of(org, secret)
    r = client.patch(f"/api/v1/keys/{key_id}", json={"scopes": ["data:read"]}, headers=org.headers())
    assert r.status_code == 200 and r.json()["scopes"] == ["data:read"]
    wide = client.patch(f"/api/v1/keys/{key_id}", json={"scopes": ["*"]}, headers=org.headers())
    assert wide.status_code == 403 and wide.json()["error"]["code"] == "scope_widening_not_allowed"


def test_a_key_rotating_itself_gets_a_replacement_in_its_place_that_outlives_it(client, org):
    secret = org.key_for(org.admin_id, ["admin:keys:manage", "data:read"], name="self", expires_in_days=10)
    key_id = key_id_of(org, secret)
    with_grace = rotate(client, org, key_id, secret, grace_period_seconds=300)
    assert with_grace.status_code == 201, with_grace.text
    new = with_grace.json()
    # Not its own child (that would die with it), and no lifetime beyond its own.
    assert new["parent_key_id"] is None and new["rotated_from"] == key_id
    old_expiry = client.get(f"/api/v1/keys/{key_id}", headers=org.headers()).json()
    assert when(new["expires_at"]) <= datetime.now(UTC) + timedelta(days=10, minutes=1)
    assert when(old_expiry["expires_at"]) < when(new["expires_at"])
    during = client.get("/api/v1/keys", headers=org.headers(secret))
    assert during.status_code == 200 and during.headers["x-tidegate-replaced-by"] == new["key_prefix"]

    at_once = rotate(client, org, new["id"], new["secret"])
    assert at_once.status_code == 201, at_once.text
    third = at_once.json()
    assert third["parent_key_id"] is None and third["replaced_key"]["status"] == "revoked"
    assert client.get("/api/v1/keys", headers=org.headers(third["secret"])).status_code == 200
    gone = client.get("/api/v1/keys", headers=org.headers(new["secret"]))
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "api_key_revoked"


def test_a_key_rotating_another_key_never_hands_out_more_than_itself(client, org):
    broad_id = key_id_of(org, org.key_for(org.admin_id, ["data:read", "admin:users:read"], name="broad"))
    narrow = org.key_for(org.admin_id, ["admin:keys:manage", "data:read"], name="narrow")
    r = rotate(client, org, broad_id, narrow)
    assert r.status_code == 403 and r.json()["error"]["code"] in ("insufficient_scope", "exceeds_parent_key")
    assert client.get(f"/api/v1/keys/{broad_id}", headers=org.headers()).json()["rotated_to"] is None


def test_the_replacement_is_named_with_one_rotation_suffix_within_the_name_limit(client, org):
    first = rotate(client, org, key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="  ETL  ")))
    assert first.status_code == 201 and first.json()["name"] == f"ETL (rotated {today()})"
    # Rotated again: the suffix is replaced, never stacked.
    again = rotate(client, org, first.json()["id"])
    assert again.status_code == 201 and again.json()["name"] == f"ETL (rotated {today()})"
    # An older date is replaced by today's.
    dated = org.key_for(org.admin_id, ["data:read"], name="Sync (rotated 2020-01-31)")
    assert rotate(client, org, key_id_of(org, dated)).json()["name"] == f"Sync (rotated {today()})"
    # Only a suffix at the end, in exactly that form, counts as one.
    odd = org.key_for(org.admin_id, ["data:read"], name="x (rotated 2020-01-31) y")
    assert rotate(client, org, key_id_of(org, odd)).json()["name"] == f"x (rotated 2020-01-31) y (rotated {today()})"
    # A name at the 200-character limit is cut to make room; the result is within the limit.
    long = org.key_for(org.admin_id, ["data:read"], name="n" * 200)
    name = rotate(client, org, key_id_of(org, long)).json()["name"]
    assert len(name) == 200 and name == "n" * (200 - len(f" (rotated {today()})")) + f" (rotated {today()})"
