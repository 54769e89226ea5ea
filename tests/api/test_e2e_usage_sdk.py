"""Usage and the AI features tidegate does not have, through the official Querri SDK
(querri 2.1.0) and its CLI, against a real `tidegate serve` process.

Nothing here imports tidegate: the server is a subprocess, the clients are the SDK's own.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from querri import APIError, AuthenticationError, NotFoundError, PermissionError, ValidationError
from server import running_server

pytestmark = pytest.mark.slow

ROWS = [{"region": r, "amount": n} for n, r in enumerate(["US", "US", "EU", "EU", "APAC"])]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("e2e-usage")) as srv:
        yield srv


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def member_key(server, email: str, preset: str = "full_access") -> str:
    out = server.cli(
        "keys", "create", "--org", server.org_id, "--user", email, "--name", unique("m"), "--preset", preset, "--json"
    )
    return json.loads(out.stdout)["secret"]


def test_usage_through_the_sdk_matches_the_requests_made(server):
    key_a_id, key_a = server.new_admin_key()
    key_b_id, key_b = server.new_admin_key()
    admin = server.sdk(key_a)
    other = server.sdk(key_b)
    source = admin.sources.create_data_source(name=unique("sales"), rows=ROWS)
    before = raw_usage(server, key_a, "/usage")

    # key a: 4 pages of 2 rows; key b: 3 queries of 1 row and 1 CSV export of 5 rows.
    for page in (1, 2, 1, 2):
        assert len(admin.sources.source_data(source.id, page=page, page_size=2).data) == 2
    for _ in range(3):
        assert other.sources.query(sql="SELECT sum(amount) AS s FROM data", source_id=source.id).data == [{"s": 10}]
    with server.client(key_b) as http:
        assert http.get(f"/sources/{source.id}/data", params={"format": "csv"}).text.count("\n") == 6

    report = admin.usage.org_usage(period="current_month")
    assert report.period == "current_month" and report.org_id == server.org_id
    assert report.total_ai_messages == 0 and report.active_user_count >= 1 and report.project_count == 0
    assert report.period_start == datetime.now(UTC).strftime("%Y-%m-01T00:00:00Z")
    raw = raw_usage(server, key_a, "/usage")  # tidegate's own fields, beside the SDK's
    keys = {k["key_id"]: k for k in raw["keys"]}
    assert (keys[key_a_id]["rows_read"], keys[key_a_id]["rows_exported"]) == (8, 0)
    assert (keys[key_b_id]["requests"], keys[key_b_id]["rows_read"], keys[key_b_id]["rows_exported"]) == (4, 3, 5)
    assert keys[key_a_id]["bytes_out"] > 0
    sources = {s["source_id"]: s for s in raw["sources"]}
    assert (sources[source.id]["requests"], sources[source.id]["rows_read"], sources[source.id]["rows_exported"]) == (
        8,
        11,
        5,
    )
    assert raw["rows_read"] - before["rows_read"] == 11 and raw["rows_exported"] - before["rows_exported"] == 5

    # The user these keys act for: the admin, with a request count for today.
    mine = admin.usage.user_usage(server.admin_user_id)
    assert mine.user_id == server.admin_user_id and mine.ai_messages == 0 and mine.period == "current_month"
    today = datetime.now(UTC).date().isoformat()
    counts = {d.date: d.count for d in mine.daily_breakdown}
    assert counts[today] >= 4 + 3 + 1 + 1
    assert sum(counts.values()) == raw_usage(server, key_a, f"/usage/users/{server.admin_user_id}")["requests"] - 1

    for period in ("last_month", "last_30_days"):
        assert admin.usage.org_usage(period=period).period == period
    with pytest.raises(ValidationError) as bad:
        admin.usage.org_usage(period="forever")
    assert bad.value.code == "invalid_period"
    with pytest.raises(NotFoundError):
        admin.usage.user_usage("usr_nobody")


def raw_usage(server, key: str, path: str) -> dict:
    with server.client(key) as http:
        resp = http.get(path)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_members_are_refused_usage(server):
    _, admin_key = server.new_admin_key()
    admin = server.sdk(admin_key)
    member = admin.users.create(email=f"{unique('member')}@example.com", role="member")
    reader = server.sdk(member_key(server, member.email))
    with pytest.raises(PermissionError):
        reader.usage.org_usage()
    with pytest.raises(PermissionError):
        reader.usage.user_usage(member.id)
    refused = server.querri("--json", "usage", "org", key=member_key(server, member.email), check=False)
    assert refused.returncode == 1 and "403" in refused.stdout + refused.stderr


def test_usage_with_the_cli(server):
    _, admin_key = server.new_admin_key()
    org = json.loads(server.querri("--json", "usage", "org", "--period", "last_30_days", key=admin_key).stdout)
    assert org["period"] == "last_30_days" and org["total_ai_messages"] == 0 and org["active_user_count"] >= 1
    user = json.loads(server.querri("--json", "usage", "user", server.admin_user_id, key=admin_key).stdout)
    assert user["user_id"] == server.admin_user_id and user["ai_messages"] == 0
    assert sum(d["count"] for d in user["daily_breakdown"]) >= 1  # (the CLI prints the SDK's fields only)
    human = server.querri("usage", "user", server.admin_user_id, "--period", "current_month", key=admin_key)
    assert "Period" in human.stdout and "current_month" in human.stdout
    bad = server.querri("--json", "usage", "org", "--period", "forever", key=admin_key, check=False)
    assert bad.returncode == 1 and "invalid_period" in bad.stdout
    missing = server.querri("--json", "usage", "user", "usr_nobody", key=admin_key, check=False)
    assert missing.returncode == 3


def test_the_ai_features_are_501_through_the_sdk_and_cli(server):
    _, admin_key = server.new_admin_key()
    admin = server.sdk(admin_key)
    source = admin.sources.create_data_source(name=unique("s"), rows=ROWS)
    calls = [
        lambda: admin.projects.chats.create("prj_x", name="c"),
        lambda: admin.projects.chats.list("prj_x"),
        lambda: admin.projects.chats.get("prj_x", "chat_1"),
        lambda: admin.projects.chats.cancel("prj_x", "chat_1"),
        lambda: admin.projects.chats.delete("prj_x", "chat_1"),
        lambda: list(admin.views.list()),
        lambda: admin.views.get("v1"),
        lambda: admin.views.delete("v1"),
        lambda: admin.sources.ask(source.id, question="top 10?"),
    ]
    for call in calls:
        with pytest.raises(APIError) as refused:
            call()
        assert (refused.value.status, refused.value.code) == (501, "not_implemented")
    # Without a valid key: 401 first.
    stranger = server.sdk("qk_" + "x" * 38)
    with pytest.raises(AuthenticationError):
        stranger.views.get("v1")
    with pytest.raises(AuthenticationError):
        stranger.sources.ask(source.id, question="?")
    anonymous = httpx.post(server.url + "/api/v1/library/search", json={}, headers={"X-Tenant-ID": server.org_id})
    assert anonymous.status_code == 401

    for args in (
        ("chat", "list", "prj_x"),
        ("view", "list"),
        ("library", "health"),
        ("source", "ask", source.id, "top 10?"),
    ):
        out = server.querri("--json", *args, key=admin_key, check=False)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        error = json.loads(out.stdout or out.stderr)
        assert error["error"] == "not_implemented" and error["status"] == "501", (args, error)
