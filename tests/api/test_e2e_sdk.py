"""The official Querri SDK (querri 2.1.0) and its CLI against a real `tidegate serve` process.

Nothing here imports tidegate: the server is a subprocess, the clients are the SDK's own.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from querri import AuthenticationError, NotFoundError, PermissionError, RateLimitError
from server import Server, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("e2e-sdk")) as srv:
        yield srv


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def raw_get(server: Server, path: str, key: str | None = None, **params) -> httpx.Response:
    with server.client(key) as http:
        return http.get(path, params=params)


# -- the happy path, also run against PostgreSQL by test_processes.py ------------------------


def sdk_happy_path(server: Server) -> None:
    """Keys, users and audit through the SDK, end to end, on one running server."""
    _, admin_secret = server.new_admin_key()
    admin = server.sdk(admin_secret)

    # keys.create: the secret comes back once, qk_-prefixed, and the key is usable at once.
    created = admin.keys.create(name=unique("happy"), scopes=["data:read", "admin:keys:manage"])
    assert created.secret.startswith("qk_") and len(created.secret) == 41
    assert created.key_prefix == created.secret[:12]
    assert sorted(created.scopes) == ["admin:keys:manage", "data:read"]
    assert created.status == "active" and created.created_by == server.admin_user_id
    own = server.sdk(created.secret)
    assert created.id in {k.id for k in own.keys.list(limit=100)}

    fetched = admin.keys.get(created.id)
    assert (fetched.id, fetched.name, fetched.key_prefix) == (created.id, created.name, created.key_prefix)
    assert created.secret not in raw_get(server, f"/keys/{created.id}", admin_secret).text

    # users: create, get (by id and by external id), filter, update, get_or_create, unlink, delete.
    ext = unique("ext")
    email = f"{unique('u')}@example.com"
    user = admin.users.create(email=email, external_id=ext, first_name="Ada", role="member")
    assert (user.email, user.role, user.external_id, user.first_name) == (email, "member", ext, "Ada")
    assert admin.users.get(user.id).email == email
    assert admin.users.get(ext).id == user.id
    assert [u.id for u in admin.users.list(external_id=ext)] == [user.id]
    assert admin.users.update(user.id, role="admin").role == "admin"
    assert admin.users.get(user.id).role == "admin"

    ext2 = unique("ext")
    first = admin.users.get_or_create(external_id=ext2, email=f"{ext2}@example.com", first_name="Bo")
    again = admin.users.get_or_create(external_id=ext2, email="ignored@example.com", first_name="Other")
    assert first.created is True and again.created is False
    assert again.id == first.id and again.email == f"{ext2}@example.com" and again.first_name == "Bo"

    unlinked = admin.users.remove_external_id(ext2)
    assert (unlinked.external_id, unlinked.user_id, unlinked.deleted) == (ext2, first.id, True)
    assert list(admin.users.list(external_id=ext2)) == []
    assert admin.users.get(first.id).external_id is None

    deleted = admin.users.delete(user.id)
    assert deleted.id == user.id and deleted.deleted is True
    with pytest.raises(NotFoundError):
        admin.users.get(user.id)
    assert user.id not in {u.id for u in admin.users.list(limit=100)}

    # keys.delete revokes: the next call with that key is refused.
    result = admin.keys.delete(created.id)
    assert result["id"] == created.id and result["status"] == "revoked"
    with pytest.raises(AuthenticationError) as refused:
        own.keys.list().data
    assert refused.value.status == 401 and refused.value.code == "api_key_revoked"
    assert admin.keys.get(created.id).status == "revoked"

    # audit: creation, revocation and the key's own requests, attributed to the key.
    actions = {e.action for e in admin.audit.list(target_id=created.id, limit=100)}
    assert {"api_key.created", "api_key.revoked"} <= actions
    requests = list(admin.audit.list(actor_id=created.id, action="api.request", limit=100))
    assert requests and all(e.actor_id == created.id for e in requests)
    raw = server.audit_events(admin_secret, key_id=created.id, action="api.request")
    assert {e["status"] for e in raw} >= {200, 401}  # the refused request is audited too
    assert all(e["key_id"] == created.id and e["request_id"].startswith("req_") for e in raw)
    admin.close()
    own.close()


def test_sdk_happy_path(server):
    sdk_happy_path(server)


# -- keys -----------------------------------------------------------------------------------


def test_key_list_paginates_and_never_shows_secrets(server):
    admin_id, admin_secret = server.new_admin_key()
    admin = server.sdk(admin_secret)
    tag = unique("page")
    made = [admin.keys.create(name=f"{tag}-{i}", scopes=["data:read"]) for i in range(5)]
    secrets = [k.secret for k in made]
    assert len(set(secrets)) == 5

    first = admin.keys.list(limit=2)
    assert len(first.data) == 2 and first.has_more and first.next_cursor

    listed = list(admin.keys.list(limit=2))  # the SDK follows next_cursor page by page
    ids = [k.id for k in listed]
    assert len(ids) == len(set(ids)), "a key was listed twice across pages"
    assert {k.id for k in made} <= set(ids)
    assert {server.admin_key_id, admin_id} <= set(ids)
    assert len(ids) >= 7

    # Walk the same pages raw: no page, and no single-key read, carries a secret.
    after, pages = None, 0
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        resp = raw_get(server, "/keys", admin_secret, **params)
        assert resp.status_code == 200
        pages += 1
        assert "secret" not in resp.text
        assert not any(s in resp.text for s in secrets + [server.admin_key, admin_secret])
        body = resp.json()
        if not body["has_more"]:
            break
        after = body["next_cursor"]
    assert pages >= 3
    for key in made:
        resp = raw_get(server, f"/keys/{key.id}", admin_secret)
        assert resp.status_code == 200 and key.secret not in resp.text and "secret" not in resp.json()


def test_key_with_only_data_read_cannot_manage_keys(server):
    narrow = server.sdk().keys.create(name=unique("narrow"), scopes=["data:read"])
    with pytest.raises(PermissionError) as refused:
        server.sdk(narrow.secret).keys.list().data
    assert refused.value.status == 403
    assert refused.value.code == "insufficient_scope"
    assert refused.value.request_id and refused.value.request_id.startswith("req_")


def test_rate_limited_key_gets_rate_limit_error_with_retry_after(server):
    limited = server.sdk().keys.create(name=unique("limited"), scopes=["admin:keys:manage"], rate_limit_per_minute=2)
    assert limited.rate_limit_per_minute == 2
    client = server.sdk(limited.secret, max_retries=0)
    assert client.keys.get(limited.id).rate_limit_per_minute == 2
    assert client.keys.get(limited.id).id == limited.id
    with pytest.raises(RateLimitError) as refused:
        client.keys.get(limited.id)
    assert refused.value.status == 429
    assert refused.value.code == "rate_limit_exceeded"
    # Exact for the sliding window counter, which can need up to two windows to free a slot.
    assert refused.value.retry_after is not None and 1 <= refused.value.retry_after <= 120
    # Other keys are unaffected.
    assert server.sdk().keys.get(limited.id).id == limited.id


def test_unknown_key_and_wrong_tenant_are_authentication_errors(server):
    from querri import Querri

    created = server.sdk().keys.create(name=unique("tenant"), scopes=["admin:keys:manage"])
    wrong_tenant = Querri(api_key=created.secret, org_id="org_someoneelse", host=server.url, max_retries=0)
    with pytest.raises(AuthenticationError) as refused:
        wrong_tenant.keys.list().data
    assert refused.value.code == "invalid_api_key"
    tampered = created.secret[:-1] + ("A" if created.secret[-1] != "A" else "B")
    with pytest.raises(AuthenticationError):
        server.sdk(tampered).keys.list().data


# -- the querri CLI -----------------------------------------------------------------------


def test_querri_cli_keys_users_audit(server):
    admin_id, admin_secret = server.new_admin_key()

    def querri_json(*args: str):
        return json.loads(server.querri("--json", *args, key=admin_secret).stdout)

    keys = querri_json("key", "list")
    assert isinstance(keys, list) and server.admin_key_id in {k["id"] for k in keys}
    assert not any("secret" in k for k in keys)

    name = unique("cli")
    new = querri_json("key", "new", "--name", name, "--scopes", "data:read")
    assert new["name"] == name and new["scopes"] == ["data:read"]
    assert new["secret"].startswith("qk_") and new["key_prefix"] == new["secret"][:12]

    got = querri_json("key", "get", new["id"])
    assert got["id"] == new["id"] and got["status"] == "active" and "secret" not in got
    assert new["id"] in {k["id"] for k in querri_json("key", "list")}

    # The new key holds only data:read: the CLI reports the 403 and exits 1.
    refused = server.querri("--json", "key", "list", key=new["secret"], check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "insufficient_scope" in refused.stdout + refused.stderr

    deleted = querri_json("key", "delete", new["id"])
    assert deleted == {"id": new["id"], "deleted": True}
    assert querri_json("key", "get", new["id"])["status"] == "revoked"
    revoked = server.querri("--json", "key", "list", key=new["secret"], check=False)
    assert revoked.returncode == 2, revoked.stdout + revoked.stderr  # auth_failed
    assert json.loads(revoked.stdout or revoked.stderr)["error"] == "auth_failed"

    users = querri_json("user", "list")
    assert server.admin_email in {u["email"] for u in users}

    events = querri_json("audit", "list", "--target-id", new["id"])
    assert {"api_key.created", "api_key.revoked"} <= {e["action"] for e in events}
    recent = querri_json("audit", "list", "--limit", "100")
    assert any(e["action"] == "api.request" and e["actor_id"] == admin_id for e in recent)


def test_governed_data_end_to_end_with_the_sdk(server):
    """Issue 3's scenario, driven by the official SDK against the real server:
    an admin creates a source and a policy; a member holding that policy gets a Data Access
    key; the key sees exactly the member's rows in pages, query, CSV export and counts; the
    policy is edited and the very next request reflects it; the member is demoted, then
    removed, and the key follows."""
    _, admin_key = server.new_admin_key()
    admin = server.sdk(admin_key)
    rows = [
        {"region": "US", "amount": 1},
        {"region": "US", "amount": 2},
        {"region": "EU", "amount": 3},
        {"region": "APAC", "amount": 4},
    ]
    source = admin.sources.create_data_source(name=unique("sales"), rows=rows)
    assert source.row_count == 4
    member = admin.users.create(email=f"{unique('member')}@example.com", role="member")
    admin.sharing.share_source(source.id, user_id=member.id, permission="view")
    policy = admin.policies.create(name=unique("us"), row_filters=[{"column": "region", "values": ["US"]}])
    admin.policies.assign_users(policy.id, user_ids=[member.id])

    member_key = json.loads(
        server.cli(
            "keys",
            "create",
            "--org",
            server.org_id,
            "--user",
            member.email,
            "--name",
            "member data",
            "--preset",
            "data_access",
            "--json",
        ).stdout
    )
    reader = server.sdk(member_key["secret"])

    page = reader.sources.source_data(source.id, page=1, page_size=100)
    assert sorted(r["amount"] for r in page.data) == [1, 2] and page.total_rows == 2
    result = reader.sources.query(sql="SELECT count(*) AS n, sum(amount) AS s FROM data", source_id=source.id)
    assert result.data == [{"n": 2, "s": 3}]
    assert reader.sources.get(source.id)["row_count"] == 2
    exported = raw_get(server, f"/sources/{source.id}/data", member_key["secret"], format="csv").text
    assert exported.splitlines()[1:] == ['"US",1', '"US",2']
    resolved = admin.policies.resolve(user_id=member.id, source_id=source.id)
    assert resolved.effective_access == "filtered" and resolved.resolved_filters.row_filters == {"region": ["US"]}

    admin.policies.update(policy.id, row_filters=[{"column": "region", "values": ["US", "EU"]}])
    assert reader.sources.source_data(source.id).total_rows == 3

    admin.users.update(member.id, role="admin")  # promoted: admins see every source...
    assert reader.sources.source_data(source.id).total_rows == 3  # ...but their policy still filters
    admin.users.update(member.id, role="member")
    admin.users.delete(member.id)
    with pytest.raises(AuthenticationError):
        reader.sources.source_data(source.id)
