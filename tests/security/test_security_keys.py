"""Security regression suite, issue 8 section 1: a key never exceeds the key that made it,
and what one person can hold is bounded (active keys, and one request rate shared by all
their keys). Each case tries to break the rule, through the API as an attacker holding a
restricted key would, and checks the refusal names what was exceeded and changes nothing.
Runs on SQLite and PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tidegate.access import ratelimit
from tidegate.api.app import create_app
from tidegate.audit.models import AuditEvent
from tidegate.credentials.models import ApiKey
from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs

ROWS = [
    {"region": "US", "tier": "gold", "amount": 1},
    {"region": "EU", "tier": "gold", "amount": 2},
    {"region": "EU", "tier": "silver", "amount": 3},
    {"region": "APAC", "tier": "gold", "amount": 4},
]
MANAGE_AND_READ = ["admin:keys:manage", "data:read", "admin:sources:read"]


def create(client, org, key, **body):
    body.setdefault("name", f"child-{uuid.uuid4().hex[:6]}")
    return client.post("/api/v1/keys", json=body, headers=org.headers(key))


def key_rows(org) -> int:
    with session_scope(org.settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.org_id == org.id))


def events(org, action: str, target_id: str | None = None) -> list[AuditEvent]:
    with session_scope(org.settings.database_url) as session:
        query = select(AuditEvent).where(AuditEvent.org_id == org.id, AuditEvent.action == action)
        if target_id:
            query = query.where(AuditEvent.target_id == target_id)
        return list(session.scalars(query))


def run_cli(org, *args: str):
    """The operator CLI in-process against this test's database (settings cache cleared)."""
    from typer.testing import CliRunner

    from tidegate.cli.main import app
    from tidegate.config import get_settings

    env = {
        "TIDEGATE_HOME": str(org.settings.home),
        "TIDEGATE_DATABASE_URL": org.settings.database_url,
        "TIDEGATE_PEPPER": org.settings.pepper.decode(),
        "TIDEGATE_SESSION_KEY": org.settings.session_key.decode(),
    }
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        get_settings.cache_clear()


def key_id_of(client, org, secret: str) -> str:
    prefix = secret[:12]
    keys = client.get("/api/v1/keys", params={"search": prefix}, headers=org.headers()).json()["data"]
    (key,) = [k for k in keys if k["key_prefix"] == prefix]
    return key["id"]


@pytest.fixture
def world(client, org):
    """Two sources, a member, two policies, and a parent key restricted in every dimension."""
    a = client.post("/api/v1/sources", json={"name": "a", "rows": ROWS}, headers=org.headers()).json()["id"]
    b = client.post("/api/v1/sources", json={"name": "b", "rows": ROWS}, headers=org.headers()).json()["id"]
    c = client.post("/api/v1/sources", json={"name": "c", "rows": ROWS}, headers=org.headers()).json()["id"]
    member = org.add_user(f"bound-{uuid.uuid4().hex[:6]}@example.com")
    eu = client.post(
        "/api/v1/access/policies",
        json={"name": "eu", "row_filters": [{"column": "region", "values": ["EU"]}]},
        headers=org.headers(),
    ).json()["id"]
    us = client.post(
        "/api/v1/access/policies",
        json={"name": "us", "row_filters": [{"column": "region", "values": ["US"]}]},
        headers=org.headers(),
    ).json()["id"]
    expires_in_days = 10
    parent = org.key_for(
        org.admin_id,
        scopes=MANAGE_AND_READ,
        access_policy_ids=[eu],
        source_scope={"mode": "selected", "source_ids": [a, b]},
        ip_allowlist=["127.0.0.0/24", "::1"],
        expires_in_days=expires_in_days,
        rate_limit_per_minute=500,
        name="restricted parent",
    )
    return {
        "a": a,
        "b": b,
        "c": c,
        "member": member,
        "eu": eu,
        "us": us,
        "parent": parent,
        "parent_id": key_id_of(client, org, parent),
    }


# -- 1. a child never exceeds its parent -------------------------------------------------------

BROADER = {
    "access_policy_ids: none": ("access_policy_ids", lambda w: {"access_policy_ids": []}),
    "access_policy_ids: another": ("access_policy_ids", lambda w: {"access_policy_ids": [w["us"]]}),
    # A superset widens: filters on the same column union (EU or US), so it is refused too.
    "access_policy_ids: superset": ("access_policy_ids", lambda w: {"access_policy_ids": [w["eu"], w["us"]]}),
    "source_scope: all": ("source_scope", lambda w: {"source_scope": {"mode": "all"}}),
    "source_scope: outside": (
        "source_scope",
        lambda w: {"source_scope": {"mode": "selected", "source_ids": [w["a"], w["c"]]}},
    ),
    "ip_allowlist: everywhere": ("ip_allowlist", lambda w: {"ip_allowlist": ["0.0.0.0/0"]}),
    "ip_allowlist: wider": ("ip_allowlist", lambda w: {"ip_allowlist": ["127.0.0.0/8"]}),
    "ip_allowlist: v6 elsewhere": ("ip_allowlist", lambda w: {"ip_allowlist": ["::/0"]}),
    "expires_in_days": ("expires_in_days", lambda w: {"expires_in_days": 11}),
    "rate_limit_per_minute": ("rate_limit_per_minute", lambda w: {"rate_limit_per_minute": 501}),
}


# (bound_user_id: test_bound_parent_binds_its_children; binding an unbound parent's child narrows it.)
@pytest.mark.parametrize("case", sorted(BROADER))
def test_restricted_key_cannot_mint_a_broader_child(client, org, world, case):
    field, body = BROADER[case]
    before = key_rows(org)
    r = create(client, org, world["parent"], scopes=["data:read"], **body(world))
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "exceeds_parent_key" and error["type"] == "permission_error"
    named = re.search(r"exceeds the parent key in: ([a-z_, ]+)\.", error["message"]).group(1).split(", ")
    assert named == [field], error["message"]
    assert key_rows(org) == before


def test_refusal_names_every_dimension_exceeded(client, org, world):
    """The bound user differs from the parent's only when the parent has none: here it has
    none, so five of the six dimensions can be exceeded at once."""
    r = create(
        client,
        org,
        world["parent"],
        scopes=["data:read"],
        access_policy_ids=[],
        source_scope={"mode": "all"},
        ip_allowlist=["0.0.0.0/0"],
        expires_in_days=3650,
        rate_limit_per_minute=10_000,
    )
    assert r.status_code == 403
    message = r.json()["error"]["message"]
    named = re.search(r"exceeds the parent key in: ([a-z_, ]+)\.", message).group(1).split(", ")
    assert named == ["access_policy_ids", "source_scope", "ip_allowlist", "expires_in_days", "rate_limit_per_minute"]


def test_bound_parent_binds_its_children(client, org, world):
    bound_parent = org.key_for(org.admin_id, scopes=MANAGE_AND_READ, bound_user_id=world["member"])
    other = org.add_user(f"other-{uuid.uuid4().hex[:6]}@example.com")
    r = create(client, org, bound_parent, scopes=["data:read"], bound_user_id=other)
    assert r.status_code == 403 and "bound_user_id" in r.json()["error"]["message"]
    inherited = create(client, org, bound_parent, scopes=["data:read"])
    assert inherited.status_code == 201 and inherited.json()["bound_user_id"] == world["member"]
    same = create(client, org, bound_parent, scopes=["data:read"], bound_user_id=world["member"])
    assert same.status_code == 201


def test_bad_input_is_still_400_before_the_parent_bound(client, org, world):
    r = create(client, org, world["parent"], scopes=["data:read"], rate_limit_per_minute=0)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_rate_limit"
    r = create(client, org, world["parent"], scopes=["data:read"], ip_allowlist=["nope"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_ip_allowlist"


def test_child_that_omits_everything_inherits_everything(client, org, world):
    r = create(client, org, world["parent"], scopes=["data:read", "admin:sources:read"])
    assert r.status_code == 201, r.text
    child = r.json()
    parent = client.get(f"/api/v1/keys/{world['parent_id']}", headers=org.headers()).json()
    assert child["parent_key_id"] == world["parent_id"] and parent["parent_key_id"] is None
    for field in (
        "access_policy_ids",
        "source_scope",
        "ip_allowlist",
        "bound_user_id",
        "expires_at",
        "rate_limit_per_minute",
    ):
        assert child[field] == parent[field], field
    # ...and reads exactly what the parent may: EU rows of sources a and b, nothing of c.
    h = org.headers(child["secret"])
    for src in (world["a"], world["b"]):
        rows = client.get(f"/api/v1/sources/{src}/data", headers=h).json()["data"]
        assert sorted(r["region"] for r in rows) == ["EU", "EU"]
        result = client.post(f"/api/v1/sources/{src}/query", json={"sql": "SELECT region FROM data"}, headers=h)
        assert sorted(r["region"] for r in result.json()["data"]) == ["EU", "EU"]
    assert client.get(f"/api/v1/sources/{world['c']}/data", headers=h).status_code == 404
    assert sorted(s["id"] for s in client.get("/api/v1/sources", headers=h).json()["data"]) == sorted(
        [world["a"], world["b"]]
    )
    created = events(org, "api_key.created", child["id"])
    assert len(created) == 1 and created[0].details["parent_key_id"] == world["parent_id"]


def test_child_within_the_parent_is_allowed_and_narrower(client, org, world):
    parent = client.get(f"/api/v1/keys/{world['parent_id']}", headers=org.headers()).json()
    r = create(
        client,
        org,
        world["parent"],
        scopes=["data:read"],
        access_policy_ids=[world["eu"]],
        source_scope={"mode": "selected", "source_ids": [world["a"]]},
        ip_allowlist=["127.0.0.1"],
        expires_in_days=5,
        rate_limit_per_minute=7,
    )
    assert r.status_code == 201, r.text
    child = r.json()
    assert child["source_scope"] == {"mode": "selected", "source_ids": [world["a"]]}
    assert child["ip_allowlist"] == ["127.0.0.1/32"] and child["rate_limit_per_minute"] == 7
    assert child["expires_at"] < parent["expires_at"]
    h = org.headers(child["secret"])
    assert client.get(f"/api/v1/sources/{world['b']}/data", headers=h).status_code == 404


def test_grandchild_is_bounded_by_the_child(client, org, world):
    child = create(
        client,
        org,
        world["parent"],
        scopes=["admin:keys:manage", "data:read"],
        source_scope={"mode": "selected", "source_ids": [world["a"]]},
        rate_limit_per_minute=50,
    ).json()
    r = create(
        client,
        org,
        child["secret"],
        scopes=["data:read"],
        source_scope={"mode": "selected", "source_ids": [world["a"], world["b"]]},
        rate_limit_per_minute=60,
    )
    assert r.status_code == 403
    assert "source_scope, rate_limit_per_minute" in r.json()["error"]["message"]
    grandchild = create(client, org, child["secret"], scopes=["data:read"]).json()
    assert grandchild["parent_key_id"] == child["id"] and grandchild["rate_limit_per_minute"] == 50


def test_unrestricted_parent_children_inherit_its_rate(client, org):
    """The fixture's admin key (no restrictions, default rate 60) may mint any narrower key."""
    r = create(client, org, None, scopes=["data:read"], ip_allowlist=["10.0.0.0/8"], expires_in_days=3)
    assert r.status_code == 201 and r.json()["rate_limit_per_minute"] == 60
    r = create(client, org, None, scopes=["data:read"], rate_limit_per_minute=61)
    assert r.status_code == 403 and "rate_limit_per_minute" in r.json()["error"]["message"]


def test_person_made_keys_have_no_parent(client, org):
    # Made by a person (the service as a signed-in user, as the web UI and the CLI do).
    secret = org.key_for(org.admin_id, scopes=["data:read"], rate_limit_per_minute=10_000)
    got = client.get(f"/api/v1/keys/{key_id_of(client, org, secret)}", headers=org.headers()).json()
    assert got["parent_key_id"] is None and got["rate_limit_per_minute"] == 10_000


# -- 2. revoking a key revokes every key it minted -----------------------------------------------


def test_revocation_cascades_to_grandchildren(client, org, world):
    child = create(client, org, world["parent"], scopes=["admin:keys:manage", "data:read"]).json()
    sibling = create(client, org, world["parent"], scopes=["data:read"]).json()
    grandchild = create(client, org, child["secret"], scopes=["data:read"]).json()
    bystander = org.key_for(org.admin_id, scopes=["data:read"])
    for secret in (child["secret"], sibling["secret"], grandchild["secret"], bystander):
        assert client.get("/api/v1/sources", headers=org.headers(secret)).status_code == 200

    r = client.delete(f"/api/v1/keys/{world['parent_id']}", headers=org.headers())
    assert r.status_code == 200
    # The very next request with any descendant is refused.
    for secret in (world["parent"], child["secret"], sibling["secret"], grandchild["secret"]):
        r = client.get("/api/v1/sources", headers=org.headers(secret))
        assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_revoked"
    assert client.get("/api/v1/sources", headers=org.headers(bystander)).status_code == 200
    # One audit event per revoked key, the descendants' saying why.
    assert len(events(org, "api_key.revoked", world["parent_id"])) == 1
    for descendant, parent_id in (
        (child, world["parent_id"]),
        (sibling, world["parent_id"]),
        (grandchild, child["id"]),
    ):
        (event,) = events(org, "api_key.revoked", descendant["id"])
        assert event.details["reason"] == "parent_revoked"
        assert event.details["parent_key_id"] == parent_id and event.details["revoked_with"] == world["parent_id"]
        assert client.get(f"/api/v1/keys/{descendant['id']}", headers=org.headers()).json()["status"] == "revoked"
    # Revoking again changes and records nothing.
    client.delete(f"/api/v1/keys/{world['parent_id']}", headers=org.headers())
    assert len(events(org, "api_key.revoked")) == 4


def test_revoking_a_child_leaves_its_parent(client, org, world):
    child = create(client, org, world["parent"], scopes=["admin:keys:manage", "data:read"]).json()
    grandchild = create(client, org, child["secret"], scopes=["data:read"]).json()
    client.delete(f"/api/v1/keys/{child['id']}", headers=org.headers(world["parent"]))
    assert client.get("/api/v1/sources", headers=org.headers(grandchild["secret"])).status_code == 401
    assert client.get("/api/v1/sources", headers=org.headers(world["parent"])).status_code == 200


def test_cli_revoke_cascades(client, org, world):
    child = create(client, org, world["parent"], scopes=["data:read"]).json()
    result = run_cli(org, "keys", "revoke", world["parent_id"], "--org", org.id, "--json")
    assert result.exit_code == 0, result.output
    assert client.get("/api/v1/sources", headers=org.headers(child["secret"])).status_code == 401
    (event,) = events(org, "api_key.revoked", child["id"])
    assert event.details["via"] == "cli" and event.details["reason"] == "parent_revoked"


# -- 3. at most max_keys_per_user active keys ------------------------------------------------------


def test_key_limit(client, org):
    r = client.patch("/api/v1/org/settings", json={"max_keys_per_user": 3}, headers=org.headers())
    assert r.status_code == 200 and r.json()["max_keys_per_user"] == 3
    first = create(client, org, None, scopes=["data:read"]).json()  # the admin key + 1
    create(client, org, None, scopes=["data:read"], expires_in_days=1)  # + 1 = 3
    before = key_rows(org)
    r = create(client, org, None, scopes=["data:read"])
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "key_limit_reached" and "3" in r.json()["error"]["message"]
    assert key_rows(org) == before
    # Through the service (the web UI and CLI path) too.
    with pytest.raises(Exception) as refused:
        org.key_for(org.admin_id, scopes=["data:read"])
    assert getattr(refused.value, "code", None) == "key_limit_reached"
    # Another person has their own count.
    member = org.add_user(f"m-{uuid.uuid4().hex[:6]}@example.com")
    org.key_for(member, scopes=["data:read"])
    # A revoked key no longer counts.
    client.delete(f"/api/v1/keys/{first['id']}", headers=org.headers())
    assert create(client, org, None, scopes=["data:read"]).status_code == 201
    assert create(client, org, None, scopes=["data:read"]).status_code == 409


def test_key_limit_holds_under_concurrency(settings, org):
    """Eight creations race for two free slots: exactly two succeed (count and insert are
    one atomic step per person), on SQLite and PostgreSQL."""
    with session_scope(settings.database_url) as session:
        orgs.update_settings(
            session, None, orgs.get_org(session, org.id), api_key_creation_enabled=None, max_keys_per_user=3
        )
    results, barrier = [], threading.Barrier(8)

    def attempt():
        barrier.wait()
        try:
            org.key_for(org.admin_id, scopes=["data:read"])
            results.append("created")
        except Exception as exc:  # noqa: BLE001
            results.append(getattr(exc, "code", repr(exc)))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["created"] * 2 + ["key_limit_reached"] * 6, results
    assert key_rows(org) == 3


# -- 4. one request ceiling per person, shared by all their keys -------------------------------------


def test_user_rate_ceiling_is_shared_across_keys(client, org):
    member = org.add_user(f"rate-{uuid.uuid4().hex[:6]}@example.com")
    one = org.key_for(member, scopes=["data:read"], rate_limit_per_minute=1000)
    two = org.key_for(member, scopes=["data:read"], rate_limit_per_minute=1000)
    r = client.patch("/api/v1/org/settings", json={"user_rate_limit_per_minute": 5}, headers=org.headers())
    assert r.status_code == 200 and r.json()["user_rate_limit_per_minute"] == 5
    statuses = [
        client.get("/api/v1/sources", headers=org.headers(key)).status_code for key in (one, two, one, two, one)
    ]
    assert statuses == [200] * 5
    for key in (one, two):
        r = client.get("/api/v1/sources", headers=org.headers(key))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "user_rate_limit_exceeded" and int(r.headers["Retry-After"]) >= 1
    # Another person's keys are not affected; the admin key still answers.
    other = org.add_user(f"rate2-{uuid.uuid4().hex[:6]}@example.com")
    assert (
        client.get("/api/v1/sources", headers=org.headers(org.key_for(other, scopes=["data:read"]))).status_code == 200
    )
    # Raising the ceiling applies from the next request.
    client.patch("/api/v1/org/settings", json={"user_rate_limit_per_minute": 100}, headers=org.headers())
    assert client.get("/api/v1/sources", headers=org.headers(one)).status_code == 200


def test_key_limit_code_is_distinct_from_user_ceiling():
    key_id, owner = f"key_{uuid.uuid4().hex}", f"user_{uuid.uuid4().hex}"
    ratelimit.enforce(None, key_id, 1, owner, 10)
    with pytest.raises(Exception) as refused:
        ratelimit.enforce(None, key_id, 1, owner, 10)
    assert refused.value.code == "rate_limit_exceeded"
    # The refused request was not counted for the owner: 9 more by another key fit.
    other = f"key_{uuid.uuid4().hex}"
    for _ in range(9):
        ratelimit.enforce(None, other, 100, owner, 10)
    with pytest.raises(Exception) as refused:
        ratelimit.enforce(None, other, 100, owner, 10)
    assert refused.value.code == "user_rate_limit_exceeded"


@pytest.mark.parametrize("redis", [True])
def test_user_ceiling_with_redis(redis):
    import redis as redis_client
    from server import REDIS_URL

    try:
        redis_client.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis unavailable: {exc}")
    owner = f"user_{uuid.uuid4().hex}"
    keys = [f"key_{uuid.uuid4().hex}" for _ in range(2)]
    for i in range(4):
        ratelimit.enforce(REDIS_URL, keys[i % 2], 100, owner, 4)
    for key in keys:
        with pytest.raises(Exception) as refused:
            ratelimit.enforce(REDIS_URL, key, 100, owner, 4)
        assert refused.value.code == "user_rate_limit_exceeded" and int(refused.value.headers["Retry-After"]) >= 1
    ratelimit.enforce(REDIS_URL, f"key_{uuid.uuid4().hex}", 100, f"user_{uuid.uuid4().hex}", 4)


# -- 5. the two settings: API validation, CLI, web Security page --------------------------------------


@pytest.mark.parametrize(
    "body,code",
    [
        ({"max_keys_per_user": 0}, "invalid_max_keys_per_user"),
        ({"max_keys_per_user": -1}, "invalid_max_keys_per_user"),
        ({"max_keys_per_user": 100_001}, "invalid_max_keys_per_user"),
        ({"user_rate_limit_per_minute": 0}, "invalid_user_rate_limit"),
        ({"user_rate_limit_per_minute": 100_000_001}, "invalid_user_rate_limit"),
        ({"max_keys_per_user": "5"}, "invalid_parameters"),
        ({"max_keys_per_user": True}, "invalid_parameters"),
        ({"user_rate_limit_per_minute": 1.5}, "invalid_parameters"),
        # One bad value refuses the whole update: the good one is not applied either.
        ({"max_keys_per_user": 7, "user_rate_limit_per_minute": 0}, "invalid_user_rate_limit"),
    ],
)
def test_settings_validation(client, org, body, code):
    before = client.get("/api/v1/org/settings", headers=org.headers()).json()
    assert before["max_keys_per_user"] == 100 and before["user_rate_limit_per_minute"] == 100_000
    r = client.patch("/api/v1/org/settings", json=body, headers=org.headers())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    assert client.get("/api/v1/org/settings", headers=org.headers()).json() == before
    assert events(org, "org.settings_updated") == []


def test_settings_are_audited(client, org):
    r = client.patch(
        "/api/v1/org/settings", json={"max_keys_per_user": 7, "user_rate_limit_per_minute": 900}, headers=org.headers()
    )
    assert r.status_code == 200
    (event,) = events(org, "org.settings_updated")
    assert event.details == {
        "max_keys_per_user": {"old": 100, "new": 7},
        "user_rate_limit_per_minute": {"old": 100_000, "new": 900},
    }


def test_cli_org_settings(org):
    import json

    ok = run_cli(
        org,
        "org",
        "settings",
        "--org",
        org.id,
        "--max-keys-per-user",
        "9",
        "--user-rate-limit-per-minute",
        "1234",
        "--json",
    )
    assert ok.exit_code == 0, ok.output
    payload = json.loads(ok.stdout)
    assert payload["max_keys_per_user"] == 9 and payload["user_rate_limit_per_minute"] == 1234
    bad = run_cli(org, "org", "settings", "--org", org.id, "--max-keys-per-user", "0", "--json")
    assert bad.exit_code == 1 and "invalid_max_keys_per_user" in bad.output
    # The key limit through the CLI: 9 allowed, the admin holds 1; fill up, then refused.
    with session_scope(org.settings.database_url) as session:
        admin_email = orgs.get_user(session, org.id, org.admin_id).email
    for _ in range(8):
        assert (
            run_cli(
                org,
                "keys",
                "create",
                "--org",
                org.id,
                "--user",
                admin_email,
                "--name",
                "k",
                "--preset",
                "data_access",
                "--json",
            ).exit_code
            == 0
        )
    refused = run_cli(
        org,
        "keys",
        "create",
        "--org",
        org.id,
        "--user",
        admin_email,
        "--name",
        "k",
        "--preset",
        "data_access",
        "--json",
    )
    assert refused.exit_code == 1 and "key_limit_reached" in refused.output


def _sign_in(client: TestClient, email: str, password: str) -> None:
    login = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    r = client.post(
        "/login", data={"csrf_token": token, "email": email, "password": password, "next": "/"}, follow_redirects=False
    )
    assert r.status_code in (302, 303), r.text


def test_web_security_page_shows_and_saves_the_settings(settings):
    email, password = f"web-{uuid.uuid4().hex[:8]}@example.com", "web-password-" + uuid.uuid4().hex[:8]
    with session_scope(settings.database_url) as session:
        org_id = orgs.create_organization(session, f"web-{uuid.uuid4().hex[:8]}", email, password).org.id
    with TestClient(create_app(settings), base_url="http://127.0.0.1", client=("127.0.0.1", 50000)) as web:
        _sign_in(web, email, password)
        page = web.get("/settings/security")
        assert page.status_code == 200
        assert 'name="max_keys_per_user"' in page.text and 'value="100"' in page.text
        assert 'name="user_rate_limit_per_minute"' in page.text and 'value="100000"' in page.text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        form = {"api_key_creation_enabled": "on", "max_keys_per_user": "12", "user_rate_limit_per_minute": "3000"}
        # Without the CSRF token: refused, nothing saved.
        assert web.post("/settings/security/admin-controls", data=form).status_code == 403
        # A bad value: 400, the form shows why, nothing saved.
        bad = web.post(
            "/settings/security/admin-controls", data={**form, "csrf_token": token, "user_rate_limit_per_minute": "0"}
        )
        assert bad.status_code == 400 and "requests per minute between 1 and 100,000,000" in bad.text
        bad = web.post(
            "/settings/security/admin-controls", data={**form, "csrf_token": token, "max_keys_per_user": "many"}
        )
        assert bad.status_code == 400 and "Enter a whole number of keys between 1 and 100,000." in bad.text
        with session_scope(settings.database_url) as session:
            org = orgs.get_org(session, org_id)
            assert (org.max_keys_per_user, org.user_rate_limit_per_minute) == (100, 100_000)
        saved = web.post(
            "/settings/security/admin-controls", data={**form, "csrf_token": token}, follow_redirects=False
        )
        assert saved.status_code in (302, 303)
        page = web.get("/settings/security")
        assert 'value="12"' in page.text and 'value="3000"' in page.text
        api = web.get("/api/v1/org/settings")  # no key: the API is for keys only
        assert api.status_code == 401
    with session_scope(settings.database_url) as session:
        org = orgs.get_org(session, org_id)
        assert (org.max_keys_per_user, org.user_rate_limit_per_minute) == (12, 3000)


# -- 6. rotation keeps the bound ----------------------------------------------------------------------


def test_rotating_a_child_keeps_it_a_child_within_the_parent(client, org, world):
    from tidegate.core.principal import Principal
    from tidegate.credentials import service

    child = create(client, org, world["parent"], scopes=["data:read"]).json()
    with session_scope(org.settings.database_url) as session:
        admin = orgs.get_user(session, org.id, org.admin_id)
        key = session.get(ApiKey, child["id"])
        parent = session.get(ApiKey, world["parent_id"])
        replacement = service.rotate_key(
            session,
            Principal.for_user(org.id, admin.id, admin.role),
            key,
            grace=timedelta(0),
            pepper=org.settings.pepper,
        ).key
        assert replacement.parent_key_id == world["parent_id"]
        assert replacement.expires_at <= parent.expires_at
        replacement_id = replacement.id
    client.delete(f"/api/v1/keys/{world['parent_id']}", headers=org.headers())
    assert client.get(f"/api/v1/keys/{replacement_id}", headers=org.headers()).json()["status"] == "revoked"


def test_rotation_grace_shortens_the_childrens_expiry(client, org, world):
    from tidegate.core.principal import Principal
    from tidegate.credentials import service

    child = create(client, org, world["parent"], scopes=["data:read"]).json()
    with session_scope(org.settings.database_url) as session:
        admin = orgs.get_user(session, org.id, org.admin_id)
        parent = session.get(ApiKey, world["parent_id"])
        service.rotate_key(
            session,
            Principal.for_user(org.id, admin.id, admin.role),
            parent,
            grace=timedelta(hours=1),
            pepper=org.settings.pepper,
        )
    got = client.get(f"/api/v1/keys/{child['id']}", headers=org.headers()).json()
    expires = datetime.fromisoformat(got["expires_at"].replace("Z", "+00:00"))
    assert expires <= datetime.now(UTC) + timedelta(hours=1, minutes=1)
    (event,) = events(org, "api_key.expiry_scheduled", child["id"])
    assert event.details["reason"] == "parent_rotation"


def test_web_revoke_cascades(settings):
    from tidegate.core.principal import Principal
    from tidegate.credentials import service

    email, password = f"webr-{uuid.uuid4().hex[:8]}@example.com", "web-password-" + uuid.uuid4().hex[:8]
    with session_scope(settings.database_url) as session:
        created = orgs.create_organization(session, f"webr-{uuid.uuid4().hex[:8]}", email, password)
        org_id, admin = created.org.id, created.admin
        parent = service.create_key(
            session,
            Principal.for_user(org_id, admin.id, admin.role),
            service.KeyRequest(name="parent", scopes=["admin:keys:manage", "data:read"]),
            pepper=settings.pepper,
        )
        parent_id, parent_secret = parent.key.id, parent.secret
    with TestClient(create_app(settings), base_url="http://127.0.0.1", client=("127.0.0.1", 50000)) as web:
        api = {"Authorization": f"Bearer {parent_secret}", "X-Tenant-ID": org_id}
        child = web.post("/api/v1/keys", json={"name": "child", "scopes": ["data:read"]}, headers=api).json()
        child_headers = {"Authorization": f"Bearer {child['secret']}", "X-Tenant-ID": org_id}
        assert web.get("/api/v1/sources", headers=child_headers).status_code == 200
        _sign_in(web, email, password)
        confirm = web.get(f"/settings/api-keys/{parent_id}/revoke")
        assert "also revokes the 1 active key" in confirm.text
        token = re.search(r'name="csrf_token" value="([^"]+)"', confirm.text).group(1)
        done = web.post(f"/settings/api-keys/{parent_id}/revoke", data={"csrf_token": token}, follow_redirects=False)
        assert done.status_code in (302, 303)
        r = web.get("/api/v1/sources", headers=child_headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_revoked"
    with session_scope(settings.database_url) as session:
        event = session.scalar(
            select(AuditEvent).where(AuditEvent.action == "api_key.revoked", AuditEvent.target_id == child["id"])
        )
        assert event.details["via"] == "web" and event.details["reason"] == "parent_revoked"
