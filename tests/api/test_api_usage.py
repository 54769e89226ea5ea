"""GET /usage and GET /usage/users/{id}: numbers counted from the audit log match the
requests actually made, per key, per source and per day; periods; admins only. And the AI
features tidegate does not have: 501 not_implemented after a 401 for a bad credential.
SQLite and PostgreSQL (the `database_url` fixture)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tidegate.audit.models import AuditEvent
from tidegate.audit.record import event_row
from tidegate.db.engine import session_scope

ROWS = [{"region": r, "amount": n} for n, r in enumerate(["US", "US", "EU", "EU", "APAC", "APAC", "US"])]


def source(client, org, name: str, rows: list[dict]) -> str:
    resp = client.post("/api/v1/sources", json={"name": name, "rows": rows}, headers=org.headers())
    assert resp.status_code in (200, 201), resp.text
    return resp.json()["id"]


def usage(client, org, key: str | None = None, **params):
    resp = client.get("/api/v1/usage", params=params, headers=org.headers(key))
    assert resp.status_code == 200, resp.text
    return resp.json()


def by(items: list[dict], field: str) -> dict[str, dict]:
    return {item[field]: item for item in items}


def test_usage_counts_what_each_key_read_from_each_source(client, org):
    sales = source(client, org, "sales", ROWS)
    stock = source(client, org, "stock", ROWS[:3])
    analyst = org.add_user("analyst@example.com", role="admin")
    key_a = org.key_for(org.admin_id, name="key a")
    key_b = org.key_for(analyst, name="key b")
    before = usage(client, org)

    # key a: 3 pages of 2 rows of sales, 1 query returning 1 row; key b: 2 full reads of stock
    # and a CSV export of sales (7 rows); and one refused read (unknown source).
    sent = {key_a: 0, key_b: 0}
    for page in (1, 2, 3):
        r = client.get(
            f"/api/v1/sources/{sales}/data", params={"page": page, "page_size": 2}, headers=org.headers(key_a)
        )
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        sent[key_a] += len(r.content)
    r = client.post(
        f"/api/v1/sources/{sales}/query", json={"sql": "SELECT count(*) AS n FROM data"}, headers=org.headers(key_a)
    )
    assert r.json()["data"] == [{"n": 7}]
    sent[key_a] += len(r.content)
    for _ in range(2):
        r = client.get(f"/api/v1/sources/{stock}/data", headers=org.headers(key_b))
        assert len(r.json()["data"]) == 3
        sent[key_b] += len(r.content)
    export = client.get(f"/api/v1/sources/{sales}/data", params={"format": "csv"}, headers=org.headers(key_b))
    assert export.status_code == 200 and export.text.count("\n") == 8  # header + 7 rows
    assert client.get("/api/v1/sources/src_nope/data", headers=org.headers(key_b)).status_code == 404

    report = usage(client, org)
    assert report["period"] == "current_month" and report["org_id"] == org.id
    assert report["total_ai_messages"] == 0 and report["project_count"] == 0
    keys = by(report["keys"], "key_id")
    a = next(k for k in keys.values() if k["name"] == "key a")
    b = next(k for k in keys.values() if k["name"] == "key b")
    assert (a["requests"], a["rows_read"], a["rows_exported"], a["refused_requests"]) == (4, 7, 0, 0)
    assert (b["requests"], b["rows_read"], b["rows_exported"], b["refused_requests"]) == (4, 6, 7, 1)
    assert a["bytes_out"] == sent[key_a]
    # The streamed export has no Content-Length: its bytes are not counted (documented).
    refused_bytes = len(client.get("/api/v1/sources/src_nope/data", headers=org.headers(key_b)).content)
    assert b["bytes_out"] == sent[key_b] + refused_bytes
    assert a["key_prefix"] and key_a.startswith(a["key_prefix"])

    sources = by(report["sources"], "source_id")
    assert (sources[sales]["name"], sources[sales]["rows_read"], sources[sales]["rows_exported"]) == ("sales", 7, 7)
    assert (sources[sales]["requests"], sources[stock]["requests"], sources[stock]["rows_read"]) == (5, 2, 6)

    # Org totals grew by exactly these requests (plus the /usage call made in between).
    assert report["rows_read"] - before["rows_read"] == 13
    assert report["rows_exported"] - before["rows_exported"] == 7
    assert report["requests"] - before["requests"] == 4 + 4 + 1  # (+1: the first /usage request)
    today = datetime.now(UTC).date().isoformat()
    days = by(report["daily_breakdown"], "date")
    assert days[today]["rows_read"] == report["rows_read"] and days[today]["count"] == days[today]["requests"]
    assert report["daily_breakdown"][0]["date"] == report["period_start"][:10]
    assert report["active_user_count"] >= 2


def test_user_usage_counts_that_users_requests_per_day(client, org):
    sales = source(client, org, "sales", ROWS)
    member = org.add_user("m@example.com")
    member_key = org.key_for(member, scopes=["data:read"])
    for _ in range(3):
        assert client.get(f"/api/v1/sources/{sales}/data", headers=org.headers(member_key)).status_code in (200, 404)
    report = client.get(f"/api/v1/usage/users/{member}", headers=org.headers()).json()
    assert report["user_id"] == member and report["ai_messages"] == 0 and report["period"] == "current_month"
    today = datetime.now(UTC).date().isoformat()
    days = by(report["daily_breakdown"], "date")
    assert days[today]["count"] == 3 == report["requests"]
    assert sum(d["count"] for d in report["daily_breakdown"]) == 3
    assert [k["requests"] for k in report["keys"]] == [3]
    # The admin's own requests are not the member's.
    admin = client.get(f"/api/v1/usage/users/{org.admin_id}", headers=org.headers()).json()
    assert admin["requests"] >= 2 and member_key[:12] not in {k["key_prefix"] for k in admin["keys"]}


def test_embed_session_requests_count_for_the_sessions_user(client, org):
    sales = source(client, org, "sales", ROWS)
    client.post(f"/api/v1/sources/{sales}/org-share", json={"permission": "view"}, headers=org.headers())
    user = org.add_user("embedded@example.com")
    created = client.post("/api/v1/embed/sessions", json={"user_id": user}, headers=org.headers())
    assert created.status_code == 201, created.text
    session_headers = {"X-Embed-Session": created.json()["session_token"]}
    for _ in range(2):
        assert client.get(f"/api/v1/sources/{sales}/data", headers=session_headers).json()["total_count"] == 7
    theirs = client.get(f"/api/v1/usage/users/{user}", headers=org.headers()).json()
    assert (theirs["requests"], theirs["rows_read"]) == (2, 14)
    # Through the key that made the session: it is listed under that key.
    assert [k["name"] for k in theirs["keys"]] == ["admin key"]


def insert_event(org, when: datetime, *, rows: int, action: str = "data.read", source_id: str = "src_x") -> None:
    with session_scope(org.settings.database_url) as session:
        session.add(
            AuditEvent(
                **event_row(
                    org_id=org.id,
                    actor_type="api_key",
                    actor_id="key_past",
                    key_id="key_past",
                    action=action,
                    target_type="source",
                    target_id=source_id,
                    method="GET",
                    path=f"/api/v1/sources/{source_id}/data",
                    status=200,
                    timestamp=when,
                    details={"creator_user_id": org.admin_id, "source_id": source_id, "rows_returned": rows},
                )
            )
        )


def test_periods_count_events_in_their_own_window(client, org):
    now = datetime.now(UTC)
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    last_month_day = (month_start - timedelta(days=1)).replace(hour=12)  # last day of last month
    before_last_month = (last_month_day.replace(day=1) - timedelta(days=1)).replace(day=1, hour=12)
    insert_event(org, last_month_day, rows=11)
    insert_event(org, before_last_month, rows=100)  # in no period
    insert_event(org, max(month_start, now - timedelta(minutes=5)), rows=5)

    def past_key(period: str) -> int:
        report = usage(client, org, period=period)
        return by(report["keys"], "key_id").get("key_past", {"rows_read": 0})["rows_read"]

    assert past_key("current_month") == 5
    assert past_key("last_month") == 11
    assert past_key("last_30_days") == 5 + (11 if now - last_month_day <= timedelta(days=30) else 0)
    last = usage(client, org, period="last_month")
    assert last["period_start"] == last_month_day.strftime("%Y-%m-01T00:00:00Z")
    assert last["period_end"] == month_start.strftime("%Y-%m-%dT00:00:00Z")
    days = by(last["daily_breakdown"], "date")
    assert len(days) == last_month_day.day  # every day of last month, zeros included
    assert (days[last_month_day.date().isoformat()]["rows_read"], days[last_month_day.date().isoformat()]["count"]) == (
        11,
        1,
    )
    assert sum(d["count"] for d in last["daily_breakdown"]) == last["requests"] == 1
    assert by(last["sources"], "source_id")["src_x"]["name"] is None  # not a source of this org
    # The admin, whom the key acts for, has last month's request as their own.
    admin_last = client.get(
        f"/api/v1/usage/users/{org.admin_id}", params={"period": "last_month"}, headers=org.headers()
    ).json()
    assert admin_last["requests"] == 1 and admin_last["rows_read"] == 11
    assert last["active_user_count"] == 1


def test_bad_period_unknown_user_and_members(client, org):
    bad = client.get("/api/v1/usage", params={"period": "yesterday"}, headers=org.headers())
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_period"
    bad_user = client.get(f"/api/v1/usage/users/{org.admin_id}", params={"period": "x"}, headers=org.headers())
    assert bad_user.status_code == 400 and bad_user.json()["error"]["code"] == "invalid_period"
    missing = client.get("/api/v1/usage/users/usr_nobody", headers=org.headers())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "user_not_found"
    member = org.add_user("member@example.com")
    member_key = org.key_for(member)  # Full Access, as a member: no admin:usage:read
    for path in ("/api/v1/usage", f"/api/v1/usage/users/{member}"):
        refused = client.get(path, headers=org.headers(member_key))
        assert refused.status_code == 403, refused.text
    assert client.get("/api/v1/usage", headers={"X-Tenant-ID": org.id}).status_code == 401


def test_another_orgs_usage_is_not_counted_or_reachable(client, org, make_org):
    other = make_org()
    sales = source(client, other, "theirs", ROWS)
    for _ in range(2):
        client.get(f"/api/v1/sources/{sales}/data", headers=other.headers())
    mine = usage(client, org)
    assert sales not in {s["source_id"] for s in mine["sources"]}
    assert client.get(f"/api/v1/usage/users/{other.admin_id}", headers=org.headers()).status_code == 404


# -- the AI features: 501 ------------------------------------------------------------------

AI_ROUTES = [
    ("GET", "/projects/prj_x/chats"),
    ("POST", "/projects/prj_x/chats"),
    ("GET", "/projects/prj_x/chats/chat_1"),
    ("DELETE", "/projects/prj_x/chats/chat_1"),
    ("POST", "/projects/prj_x/chats/chat_1/stream"),
    ("POST", "/projects/prj_x/chats/chat_1/cancel"),
    ("GET", "/views"),
    ("POST", "/views"),
    ("GET", "/views/v1"),
    ("PATCH", "/views/v1"),
    ("DELETE", "/views/v1"),
    ("POST", "/views/run"),
    ("GET", "/views/runs/run_1"),
    ("POST", "/views/v1/preview"),
    ("POST", "/views/v1/chat"),
    ("POST", "/views/v1/generate-metadata"),
    ("POST", "/library/libraries"),
    ("GET", "/library/libraries"),
    ("GET", "/library/kpis/k1"),
    ("PATCH", "/library/nodes/n1"),
    ("DELETE", "/library/nodes/n1"),
    ("POST", "/library/search"),
    ("GET", "/library/health"),
    ("POST", "/sources/src_x/ask"),
]


@pytest.mark.parametrize(("method", "path"), AI_ROUTES)
def test_ai_features_answer_501_with_a_valid_key_and_401_without(client, org, method, path):
    body = {"prompt": "hi", "question": "top 10?"} if method in ("POST", "PATCH") else None
    resp = client.request(method, "/api/v1" + path, json=body, headers=org.headers())
    assert resp.status_code == 501, resp.text
    error = resp.json()["error"]
    assert error["code"] == "not_implemented" and error["type"] == "not_implemented_error"
    assert "does not do AI features" in error["message"]
    anonymous = client.request(method, "/api/v1" + path, json=body, headers={"X-Tenant-ID": org.id})
    assert anonymous.status_code == 401
    wrong = client.request(method, "/api/v1" + path, json=body, headers=org.headers("qk_" + "x" * 38))
    assert wrong.status_code == 401
