"""Live connector sources over HTTP (issue 13 §4): create, read as a filtered key, rows
changed behind our back, /query, export, writes refused, live <-> snapshot, source down."""

from __future__ import annotations

import time

import psycopg

from tests.data.test_live import POSTGRES_ATTACKS, allow, allowed, source_db  # noqa: F401  (module fixtures)
from tests.security.test_security_sandbox import ATTACKS
from tidegate.data import live
from tidegate.data.live_dialect import unavailable


def test_over_http_a_live_source_end_to_end(client, org, source_db, allowed):  # noqa: F811
    allow(source_db)  # create_app configured the process from its settings (nothing allowed)
    with psycopg.connect(source_db["url"], autocommit=True) as conn:
        conn.execute("DELETE FROM sales")
        conn.execute("INSERT INTO sales VALUES ('EU', 1), ('US', 2)")
    body = {"name": "live sales", "connector_id": "postgresql", "config": {**source_db["config"], "table": "sales"}}
    r = client.post("/api/v1/sources", json=body, headers=org.headers())
    assert r.status_code == 201, r.text
    created = r.json()
    src = created["id"]
    assert created["mode"] == "live" and created["row_count"] == 2 and created["columns"] == ["region", "amount"]
    member = org.add_user("live-member@example.com")
    client.post(f"/api/v1/sources/{src}/shares", json={"user_id": member, "permission": "view"}, headers=org.headers())
    policy = client.post(
        "/api/v1/access/policies",
        json={"name": "us", "row_filters": [{"column": "region", "values": ["US"]}]},
        headers=org.headers(),
    ).json()["id"]
    client.post(f"/api/v1/access/policies/{policy}/users", json={"user_ids": [member]}, headers=org.headers())
    h = org.headers(org.key_for(member, scopes=["data:read", "admin:sources:read"]))

    page = client.get(f"/api/v1/sources/{src}/data", headers=h).json()
    assert page["data"] == [{"region": "US", "amount": 2}] and page["total_count"] == 1
    with psycopg.connect(source_db["url"], autocommit=True) as conn:
        conn.execute("INSERT INTO sales VALUES ('US', 7), ('EU', 8)")
    page = client.get(f"/api/v1/sources/{src}/data", headers=h).json()
    assert sorted(r["amount"] for r in page["data"]) == [2, 7] and page["total_count"] == 2
    q = client.post(f"/api/v1/sources/{src}/query", json={"sql": "SELECT sum(amount) AS s FROM data"}, headers=h)
    assert q.status_code == 200 and q.json()["data"] == [{"s": 9}], q.text
    bad = client.post(f"/api/v1/sources/{src}/query", json={"sql": "SELECT version() FROM data"}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_query"
    csv_text = client.get(f"/api/v1/sources/{src}/data", params={"format": "csv"}, headers=h).text
    assert "EU" not in csv_text and csv_text.count("US") == 2
    # A project step over the live source: recomputed from the source on every read, never
    # served from the step cache after rows changed there.
    project = client.post("/api/v1/projects", json={"name": "live", "user_id": org.admin_id}, headers=org.headers())
    pid = project.json()["id"]
    client.post(f"/api/v1/projects/{pid}/sources", json={"source_id": src, "run": False}, headers=org.headers())
    step = client.post(
        f"/api/v1/projects/{pid}/steps",
        json={"name": "totals", "sql": "SELECT count(*) AS n FROM live_sales"},
        headers=org.headers(),
    )
    assert step.status_code == 201, step.text

    def step_total():
        r = client.get(f"/api/v1/projects/{pid}/steps/{step.json()['id']}/data", headers=org.headers())
        assert r.status_code == 200, r.text
        return r.json()["data"][0]["n"]

    assert step_total() == 4
    with psycopg.connect(source_db["url"], autocommit=True) as conn:
        conn.execute("INSERT INTO sales VALUES ('EU', 10)")
    assert step_total() == 5
    with psycopg.connect(source_db["url"], autocommit=True) as conn:
        conn.execute("DELETE FROM sales WHERE amount = 10")

    write = client.post(f"/api/v1/sources/{src}/rows", json={"rows": [{"region": "US"}]}, headers=org.headers())
    assert write.status_code == 400 and write.json()["error"]["code"] == "live_source_read_only"

    r = client.patch(f"/api/v1/sources/{src}", json={"config": {"mode": "snapshot"}}, headers=org.headers())
    assert r.status_code == 200, r.text
    got = client.get(f"/api/v1/sources/{src}", headers=org.headers()).json()
    assert got["mode"] == "snapshot" and got["row_count"] == 4 and "mode" not in (got["config"] or {})
    with psycopg.connect(source_db["url"], autocommit=True) as conn:
        conn.execute("INSERT INTO sales VALUES ('US', 9)")
    assert client.get(f"/api/v1/sources/{src}", headers=org.headers()).json()["row_count"] == 4  # a copy now
    bad = client.patch(f"/api/v1/sources/{src}", json={"config": {"mode": "sometimes"}}, headers=org.headers())
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_connector_config"

    r = client.patch(f"/api/v1/sources/{src}", json={"config": {"mode": "live"}}, headers=org.headers())
    assert r.status_code == 200
    assert client.get(f"/api/v1/sources/{src}", headers=org.headers()).json()["row_count"] == 5

    # The source database goes away, then comes back: 503 meanwhile, no restart needed.
    dialect = type(live.dialect_of("postgresql"))
    real_connect = dialect.connect

    def cut(self, config, secret, timeout):
        raise unavailable(f"{config['host']}:{config['port']}")

    live.close_pools()
    dialect.connect = cut
    try:
        r = client.get(f"/api/v1/sources/{src}/data", headers=h)
        assert r.status_code == 503 and r.json()["error"]["code"] == "source_unavailable" and r.headers["Retry-After"]
        listed = client.get(f"/api/v1/sources/{src}", headers=org.headers())
        assert listed.status_code == 200 and listed.json()["status"] == "unavailable"
    finally:
        dialect.connect = real_connect
    assert client.get(f"/api/v1/sources/{src}/data", headers=h).status_code == 200

    # A representative subset of the sandbox attacks, through the API, as the filtered key.
    for sql in [*list(ATTACKS.values())[::40], *POSTGRES_ATTACKS[:12]]:
        r = client.post(f"/api/v1/sources/{src}/query", json={"sql": sql}, headers=h)
        if r.status_code == 200:
            assert "EU" not in r.text and "do-not-leak" not in r.text, (sql, r.text)
        else:
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_query", (sql, r.text)

    # A slow source: 504 with the envelope, within the timeout (2 s here).
    slow_config = {**source_db["config"], "query": "SELECT region, amount FROM sales, pg_sleep(10) AS s"}
    slow = client.post("/api/v1/sources", json={**body, "name": "slow", "config": slow_config}, headers=org.headers())
    assert slow.status_code == 201, slow.text
    assert slow.json()["status"] == "unavailable"  # its count timed out: shown, marked
    started = time.monotonic()
    r = client.get(f"/api/v1/sources/{slow.json()['id']}/data", headers=org.headers())
    assert r.status_code == 504 and r.json()["error"]["code"] == "source_timeout", r.text
    assert time.monotonic() - started < 4

    down = {**body, "name": "down", "config": {**body["config"], "port": 1}}
    r = client.post("/api/v1/sources", json=down, headers=org.headers())
    assert r.status_code == 503 and r.json()["error"]["code"] == "source_unavailable"
    assert r.headers["Retry-After"]
