"""Embed sessions through the official SDK (querri 2.1.0) and its CLI, against `tidegate serve`.

Nothing here imports tidegate: the server is a subprocess, the clients are the SDK's own.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from querri import AuthenticationError
from server import running_server

pytestmark = pytest.mark.slow

ROWS = [
    {"region": "US", "amount": 10},
    {"region": "US", "amount": 20},
    {"region": "EU", "amount": 30},
    {"region": "APAC", "amount": 50},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("e2e-embed")) as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(server):
    _, secret = server.new_admin_key()
    return secret


@pytest.fixture(scope="module")
def source(server, admin):
    with server.client(admin) as http:
        created = http.post("/sources", json={"name": "sales", "rows": ROWS})
        assert created.status_code == 201, created.text
        source_id = created.json()["id"]
        assert http.post(f"/sources/{source_id}/org-share", json={"permission": "view"}).status_code == 200
    return source_id


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def regions(page) -> list[str]:
    return sorted(row["region"] for row in page.data)


def test_get_session_inline_access_twice_and_as_user(server, admin, source):
    client = server.sdk(admin)
    ext = unique("cust")
    user = {"external_id": ext, "email": f"{ext}@example.com", "first_name": "Ada"}
    access = {"sources": [source], "filters": {"region": "US"}}
    first = client.embed.get_session(user=user, access=access, origin="https://app.example.com", ttl=1800)
    assert first["session_token"].startswith("es_") and first["expires_in"] == 1800
    assert first["external_id"] == ext
    second = client.embed.get_session(user=user, access=access, origin="https://app.example.com", ttl=1800)
    # The same user and the same sdk_auto_ policy; a new session.
    assert second["user_id"] == first["user_id"] and second["session_token"] != first["session_token"]
    auto = [p for p in client.policies.list() if p.name.startswith("sdk_auto_")]
    assert len(auto) == 1
    with server.client(admin) as http:
        detail = http.get(f"/access/policies/{auto[0].id}")
    assert detail.status_code == 200 and first["user_id"] in detail.text

    for session in (first, second):
        with client.as_user(session) as user_client:
            assert [s["id"] for s in user_client.sources.list()] == [source]
            assert regions(user_client.sources.source_data(source)) == ["US", "US"]
            result = user_client.sources.query(sql="SELECT sum(amount) AS s FROM data", source_id=source)
            assert result.data == [{"s": 30}]


def test_get_session_with_policy_ids_and_lifecycle(server, admin, source):
    client = server.sdk(admin)
    policy = client.policies.create(name=unique("eu"), row_filters=[{"column": "region", "values": ["EU"]}])
    ext = unique("cust")
    session = client.embed.get_session(
        user={"external_id": ext, "email": f"{ext}@example.com"}, access={"policy_ids": [policy.id]}
    )
    assert session["expires_in"] == 3600
    with client.as_user(session) as user_client:
        assert regions(user_client.sources.source_data(source)) == ["EU"]

    # refresh: a new token, the old one dead at once.
    refreshed = client.embed.refresh_session(session_token=session["session_token"])
    assert refreshed.user_id == session["user_id"] and refreshed.session_token != session["session_token"]
    with client.as_user(session) as stale, pytest.raises(AuthenticationError):
        stale.sources.source_data(source)
    with client.as_user(refreshed.model_dump()) as fresh:
        assert regions(fresh.sources.source_data(source)) == ["EU"]

    # list: prefixes only; revoke_user_sessions ends every session of the user.
    another = client.embed.create_session(user_id=session["user_id"])
    listed = client.embed.list_sessions(limit=200)
    mine = [s for s in listed.data if s.user_id == session["user_id"]]
    assert len(mine) == 2
    assert not any(s.session_token in (refreshed.session_token, another.session_token) for s in listed.data)
    assert {s.session_token for s in mine} == {refreshed.session_token[:16], another.session_token[:16]}
    assert client.embed.revoke_user_sessions(session["user_id"]) == 2
    for token in (refreshed.session_token, another.session_token):
        with client.as_user({"session_token": token}) as gone, pytest.raises(AuthenticationError):
            gone.sources.list().data  # noqa: B018  (the request)

    # revoke by token.
    last = client.embed.create_session(user_id=session["user_id"])
    assert client.embed.revoke_session(session_token=last.session_token).revoked is True


def test_a_session_cannot_manage_sessions_or_keys(server, admin, source):
    client = server.sdk(admin)
    session = client.embed.get_session(user={"external_id": unique("c"), "email": f"{unique('c')}@example.com"})
    with httpx.Client(base_url=server.url + "/api/v1", headers={"X-Embed-Session": session["session_token"]}) as http:
        assert http.post("/embed/sessions", json={"user_id": session["user_id"]}).status_code == 403
        assert http.get("/keys").status_code == 403
        assert http.get("/sources").status_code == 200


def test_ui_config_through_the_sdk(server, admin):
    client = server.sdk(admin)
    assert client.embed.get_ui_config("org_unknown") == {"chrome": {}, "theme": {}, "privacy": {}}
    with server.client(admin) as http:
        r = http.patch("/org/settings", json={"embed_ui_config": {"theme": {"primary": "#0a0"}}})
        assert r.status_code == 200, r.text
    assert client.embed.get_ui_config(server.org_id)["theme"] == {"primary": "#0a0"}


def test_querri_cli_session_commands(server, admin, source):
    def querri_json(*args: str):
        out = server.querri("--json", *args, key=admin)
        return json.loads(out.stdout)

    ext = unique("cli")
    got = querri_json(
        "session",
        "get",
        "--user",
        json.dumps({"external_id": ext, "email": f"{ext}@example.com"}),
        "--access",
        json.dumps({"sources": [source], "filters": {"region": ["APAC"]}}),
    )
    assert got["session_token"].startswith("es_") and got["external_id"] == ext
    listed = querri_json("session", "list", "--limit", "200")
    rows = listed["data"] if isinstance(listed, dict) else listed
    assert got["session_token"][:16] in {s["session_token"] for s in rows}
    assert got["session_token"] not in json.dumps(listed)
    refreshed = querri_json("session", "refresh", "--token", got["session_token"])
    assert refreshed["session_token"] != got["session_token"]
    revoked = querri_json("session", "revoke", "--token", refreshed["session_token"])
    assert revoked["revoked"] is True
    new = querri_json("session", "new", "--user-id", got["user_id"], "--ttl", "900")
    assert new["expires_in"] == 900
    # No token in the server's logs (the access log included: DELETE by token logs the route).
    logs = server.logs()
    for token in (got["session_token"], refreshed["session_token"], new["session_token"]):
        assert token not in logs and token[16:] not in logs


def test_revocation_is_seen_by_every_worker_at_once(tmp_path_factory):
    """Two worker processes: after a revoke, deactivation or switch-off, no request in any
    worker is served with the session (nothing is cached per process)."""
    with running_server(tmp_path_factory.mktemp("e2e-embed-workers"), workers=2) as srv:
        _, secret = srv.new_admin_key()
        client = srv.sdk(secret)
        tokens = [
            client.embed.get_session(user={"external_id": f"w{i}", "email": f"w{i}@example.com"})["session_token"]
            for i in range(2)
        ]

        def statuses(token: str) -> set[int]:
            codes = set()
            for _ in range(20):  # fresh connections: spread over both workers
                with httpx.Client(base_url=srv.url + "/api/v1", headers={"X-Embed-Session": token}) as http:
                    codes.add(http.get("/sources").status_code)
            return codes

        assert statuses(tokens[0]) == {200}
        client.embed.revoke_session(session_token=tokens[0])
        assert statuses(tokens[0]) == {401}
        assert statuses(tokens[1]) == {200}
        with srv.client(secret) as http:
            assert http.patch("/org/settings", json={"embeds_enabled": False}).status_code == 200
        assert statuses(tokens[1]) == {403}
