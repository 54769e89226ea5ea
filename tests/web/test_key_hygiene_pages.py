"""Key hygiene in the web UI, over plain HTTP (no browser): the API Keys page flags unused,
expiring, rotating and replacement keys and keys used from a new IP (and lists what needs
attention); a key's activity page shows its insights, and "Apply suggestion" narrows its
scopes (CSRF-checked, narrowing only)."""

from __future__ import annotations

import html
import re
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import Org, new_org
from tidegate.api.app import create_app
from tidegate.config import Settings
from tidegate.credentials.models import ApiKey
from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs
from tidegate.web.sessions import SESSION_COOKIE, start_session


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def settings(request, tmp_path_factory) -> Settings:
    return Settings(
        home=tmp_path_factory.mktemp("hygiene-pages"),
        database_url=request.getfixturevalue(f"{request.param}_url"),
        redis_url=None,
        pepper=secrets.token_hex(32).encode(),
        session_key=secrets.token_hex(32).encode(),
        trusted_proxies=("127.0.0.1/32",),  # X-Forwarded-For sets the client address
    )


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as test_client:
        yield test_client


@pytest.fixture
def org(settings, client) -> Org:
    client.cookies.clear()
    return new_org(settings)


def sign_in(client, org: Org, user_id: str) -> None:
    with session_scope(org.settings.database_url) as session:
        user = orgs.get_user(session, org.id, user_id)
        token = start_session(session, org.settings.session_key, user, ip=None, user_agent=None)
    client.cookies.set(SESSION_COOKIE, token)


def key_id_of(org: Org, secret: str) -> str:
    with session_scope(org.settings.database_url) as session:
        return session.scalar(select(ApiKey.id).where(ApiKey.org_id == org.id, ApiKey.key_prefix == secret[:12]))


def api(client, org, method, path, key=None, ip="10.0.0.1", **kwargs):
    return client.request(method, f"/api/v1{path}", headers={**org.headers(key), "X-Forwarded-For": ip}, **kwargs)


def row_of(page: str, key_id: str) -> str:
    match = re.search(rf'<tr data-key-id="{key_id}">(.*?)</tr>', page, re.S)
    assert match, f"no row for {key_id}"
    return html.unescape(match.group(1))


def flags_of(page: str, key_id: str) -> dict[str, str]:
    return dict(re.findall(r'data-flag="([^"]+)"[^>]*>([^<]*)<', row_of(page, key_id)))


def test_the_keys_page_flags_unused_expiring_rotating_and_new_ip_keys(client, org):
    stale = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="stale"))
    with session_scope(org.settings.database_url) as session:
        session.get(ApiKey, stale).created_at = datetime.now(UTC) - timedelta(days=120)
    soon = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="soon", expires_in_days=5))
    fine = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="fine", expires_in_days=30))
    old = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="old"))
    rotated = api(client, org, "POST", f"/keys/{old}/rotate", json={"grace_period_seconds": 3600}).json()
    roaming_secret = org.key_for(org.admin_id, ["data:read"], name="roaming")
    roaming = key_id_of(org, roaming_secret)
    assert api(client, org, "GET", "/sources", roaming_secret, ip="10.0.0.1").status_code == 200
    assert api(client, org, "GET", "/sources", roaming_secret, ip="10.0.0.2").status_code == 200

    sign_in(client, org, org.admin_id)
    client.app.state.journal.flush()
    page = client.get("/settings/api-keys")
    assert page.status_code == 200
    text = page.text
    assert flags_of(text, stale) == {"unused": "Unused 120 days"}
    assert flags_of(text, soon) == {"expiring": "Expires in 5 days"}
    assert flags_of(text, fine) == {}
    assert flags_of(text, old) == {"rotating": "Rotating — expires in 59 min"}
    assert flags_of(text, rotated["id"]) == {"replacement": f"Replaces {rotated['replaced_key']['key_prefix']}…"}
    assert flags_of(text, roaming) == {"new-ip": "New IP 10.0.0.2"}
    # The rotating key is not offered for rotation again (its replacement is).
    assert f"/settings/api-keys/{old}/rotate" not in row_of(text, old)
    assert f"/settings/api-keys/{rotated['id']}/rotate" in row_of(text, rotated["id"])
    # The attention list: the expiring key and the new address (not the rotating key, not the first address).
    attention = html.unescape(re.search(r'<section[^>]*id="key-attention".*?</section>', text, re.S).group(0))
    assert re.findall(r'data-attention="([^"]+)" data-key-id="([^"]+)"', attention) == [
        ("expiring", soon),
        ("new-ip", roaming),
    ]
    assert "10.0.0.2" in attention and "10.0.0.1" not in attention

    # The organization's threshold: 30 days flags the 40-day-old unused key too.
    forty = key_id_of(org, org.key_for(org.admin_id, ["data:read"], name="forty"))
    with session_scope(org.settings.database_url) as session:
        session.get(ApiKey, forty).created_at = datetime.now(UTC) - timedelta(days=40)
    assert flags_of(client.get("/settings/api-keys").text, forty) == {}
    api(client, org, "PATCH", "/org/settings", json={"unused_key_days": 30})
    assert flags_of(client.get("/settings/api-keys").text, forty) == {"unused": "Unused 40 days"}

    # A member sees only their own keys' flags and attention items.
    member = org.add_user(f"m-{secrets.token_hex(3)}@example.com")
    sign_in(client, org, member)
    mine = client.get("/settings/api-keys").text
    assert soon not in mine and 'id="key-attention"' not in mine


def test_the_activity_page_shows_insights_and_applies_the_suggestion_narrowing_only(client, org):
    source = api(client, org, "POST", "/sources", json={"name": "sales", "rows": [{"a": 1}]}).json()["id"]
    secret = org.key_for(org.admin_id, ["data:read", "admin:users:read", "admin:audit:read"], name="bi")
    key_id = key_id_of(org, secret)
    for ip in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        assert api(client, org, "GET", f"/sources/{source}/data", secret, ip=ip).status_code == 200
    sign_in(client, org, org.admin_id)
    page = client.get(f"/audit/keys/{key_id}")
    assert page.status_code == 200
    text = html.unescape(page.text)
    scope_row = re.search(r'<tr data-scope="data:read">(.*?)</tr>', text, re.S).group(1)
    assert re.search(r'data-col="n30">3<', scope_row) and re.search(r'data-col="n90">3<', scope_row)
    assert re.search(rf'<tr data-source-id="{source}">.*?sales.*?data-col="n90">3<', text, re.S)
    assert re.search(r'<tr data-ip="10.0.0.1">.*?data-col="requests">2<', text, re.S)
    assert re.findall(r"<code data-suggested-scope>([^<]+)</code>", text) == ["data:read"]
    assert re.findall(r"<code data-removed-scope>([^<]+)</code>", text) == ["admin:audit:read", "admin:users:read"]
    assert re.findall(r'data-suggested-source="([^"]+)">([^<]+)<', text) == [(source, "sales")]
    form = re.search(r'<form method="post" action="([^"]+)" id="apply-suggestion-form">(.*?)</form>', text, re.S)
    assert form and form.group(1) == f"/settings/api-keys/{key_id}/apply-suggestion"
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.group(2)).group(1)
    scopes = re.findall(r'name="scopes" value="([^"]+)"', form.group(2))
    assert scopes == ["data:read"]
    assert re.findall(r'name="source_ids" value="([^"]+)"', form.group(2)) == [source]

    # Without the CSRF token: refused, nothing changes.
    forged = client.post(form.group(1), data={"scopes": scopes}, follow_redirects=False)
    assert forged.status_code == 403
    # A scope the key does not hold: refused as widening, nothing changes.
    widened = client.post(
        form.group(1), data={"csrf_token": token, "scopes": ["data:read", "admin:org:write"]}, follow_redirects=False
    )
    assert widened.status_code == 403 and "only be narrowed" in html.unescape(widened.text)
    current = api(client, org, "GET", f"/keys/{key_id}").json()["scopes"]
    assert current == ["admin:audit:read", "admin:users:read", "data:read"]

    applied = client.post(
        form.group(1), data={"csrf_token": token, "scopes": scopes, "source_ids": [source]}, follow_redirects=False
    )
    assert applied.status_code == 303 and applied.headers["location"] == f"/audit/keys/{key_id}?notice=narrowed"
    got = api(client, org, "GET", f"/keys/{key_id}").json()
    assert got["scopes"] == ["data:read"] and got["source_scope"] == {"mode": "selected", "source_ids": [source]}
    assert api(client, org, "GET", f"/sources/{source}/data", secret).status_code == 200
    assert api(client, org, "GET", "/users", secret).status_code == 403
    narrowed = api(client, org, "GET", "/audit/events", params={"action": "api_key.scopes_narrowed"}).json()["data"]
    assert narrowed[0]["target_id"] == key_id and narrowed[0]["actor_type"] == "user"
    after = client.get(f"/audit/keys/{key_id}")
    assert 'id="apply-suggestion-form"' not in after.text and 'data-applicable="false"' in after.text


def test_another_organizations_key_cannot_be_narrowed_from_the_web(client, org, settings):
    other = new_org(settings)
    theirs = key_id_of(other, other.key_for(other.admin_id, ["data:read", "admin:users:read"], name="theirs"))
    sign_in(client, org, org.admin_id)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/settings/api-keys").text).group(1)
    r = client.post(
        f"/settings/api-keys/{theirs}/apply-suggestion", data={"csrf_token": token, "scopes": ["data:read"]}
    )
    assert r.status_code == 404
    with session_scope(settings.database_url) as session:
        assert sorted(session.get(ApiKey, theirs).scopes) == ["admin:users:read", "data:read"]


def test_the_security_page_sets_the_unused_key_threshold(client, org):
    sign_in(client, org, org.admin_id)
    page = client.get("/settings/security")
    assert 'name="unused_key_days"' in page.text and 'value="90"' in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    form = {"csrf_token": token, "api_key_creation_enabled": "on", "max_keys_per_user": "100"}
    form["user_rate_limit_per_minute"] = "100000"
    refused = client.post("/settings/security/admin-controls", data={**form, "unused_key_days": "0"})
    assert refused.status_code == 400 and "Enter a whole number of days between 1 and 3,650." in refused.text
    assert api(client, org, "GET", "/org/settings").json()["unused_key_days"] == 90  # nothing saved
    saved = client.post("/settings/security/admin-controls", data={**form, "unused_key_days": "45"})
    assert saved.status_code == 200  # (followed the redirect)
    assert api(client, org, "GET", "/org/settings").json()["unused_key_days"] == 45
    # Left empty: unchanged.
    client.post("/settings/security/admin-controls", data={**form, "unused_key_days": ""})
    assert api(client, org, "GET", "/org/settings").json()["unused_key_days"] == 45
