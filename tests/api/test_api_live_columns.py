"""Column rules on a live source (issue 14 §1): the SQL sent to the source database selects
the projection (hidden columns absent, masked ones masked there), so pages, exports, distinct
values and /query (whose `data` is that projection, fenced) never carry a real value."""

from __future__ import annotations

import csv
import io

import psycopg
from columns_world import SECRETS, assert_no_secret

from tests.data.test_live import allow, allowed, source_db  # noqa: F401  (module fixtures)

PEOPLE_SQL = """
DROP TABLE IF EXISTS people;
CREATE TABLE people (name text, email text, salary int, region text, hired date);
INSERT INTO people VALUES
  ('Ann', 'ann@example.com', 150000, 'EU', '2020-01-05'),
  ('Amy', 'amy@example.org', 90000, 'US', '2021-03-01'),
  ('Bob', 'bob@example.net', 120000, 'EU', '2019-07-12');
"""


def test_a_live_source_under_column_rules(client, org, source_db, allowed):  # noqa: F811
    allow(source_db)
    with psycopg.connect(source_db["url"], autocommit=True) as conn:
        conn.execute(PEOPLE_SQL)
    h = org.headers()
    body = {"name": "live people", "connector_id": "postgresql", "config": {**source_db["config"], "table": "people"}}
    r = client.post("/api/v1/sources", json=body, headers=h)
    assert r.status_code == 201, r.text
    src = r.json()["id"]
    member = org.add_user("live-columns@example.com")
    client.post(f"/api/v1/sources/{src}/shares", json={"user_id": member, "permission": "view"}, headers=h)
    rules = [
        {"column": "salary", "action": "hide"},
        {"column": "email", "action": "mask"},
        {"column": "hired", "action": "mask"},
    ]
    policy = client.post(
        "/api/v1/access/policies",
        json={"name": "live-cols", "row_filters": [{"column": "region", "values": ["EU"]}], "column_rules": rules},
        headers=h,
    ).json()["id"]
    client.post(f"/api/v1/access/policies/{policy}/users", json={"user_ids": [member]}, headers=h)
    mh = org.headers(org.key_for(member, scopes=["data:read", "admin:sources:read"]))

    page = client.get(f"/api/v1/sources/{src}/data", headers=mh).json()
    assert page["columns"] == ["name", "email", "region", "hired"]
    assert page["data"] == [
        {"name": "Ann", "email": "a***", "region": "EU", "hired": None},
        {"name": "Bob", "email": "b***", "region": "EU", "hired": None},
    ]
    meta = client.get(f"/api/v1/sources/{src}", headers=mh).json()
    assert meta["columns"] == ["name", "email", "region", "hired"] and "salary" not in meta["column_types"]

    text = client.get(f"/api/v1/sources/{src}/data", params={"format": "csv"}, headers=mh).text
    assert_no_secret(text)
    assert list(csv.DictReader(io.StringIO(text)))[0] == {"name": "Ann", "email": "a***", "region": "EU", "hired": ""}

    def run(sql):
        r = client.post(f"/api/v1/sources/{src}/query", json={"sql": sql}, headers=mh)
        return r.status_code, r.json()

    status, hidden = run("SELECT sum(salary) AS s FROM data")
    assert status == 400 and hidden["error"]["code"] == "invalid_query"
    assert_no_secret(str(hidden))
    assert run("SELECT count(*) AS n FROM data WHERE email = 'ann@example.com'")[1]["data"] == [{"n": 0}]
    assert run("SELECT min(email) AS lo, max(hired) AS hi FROM data")[1]["data"] == [{"lo": "a***", "hi": None}]
    assert run("SELECT count(DISTINCT email) AS n FROM data")[1]["data"] == [{"n": 2}]
    status, everything = run("SELECT * FROM data")
    assert status == 200 and everything["columns"] == ["name", "email", "region", "hired"]
    assert not any(secret in str(everything) for secret in SECRETS)

    values = client.get(f"/api/v1/sources/{src}/columns/email/values", headers=mh).json()["data"]
    assert values == ["a***", "b***"]
    assert client.get(f"/api/v1/sources/{src}/columns/salary/values", headers=mh).status_code == 400
    # A key of the member's with its own policy masking the region too (a filter column):
    # still filtered on the real value, shown masked; numbers would be nulls the same way.
    own = client.post(
        "/api/v1/access/policies",
        json={"name": "live-own", "column_rules": [{"column": "region", "action": "mask"}]},
        headers=h,
    ).json()["id"]
    kh = org.headers(org.key_for(member, scopes=["data:read"], access_policy_ids=[own]))
    rows = client.get(f"/api/v1/sources/{src}/data", headers=kh).json()["data"]
    assert [(r["name"], r["region"]) for r in rows] == [("Ann", "E***"), ("Bob", "E***")]
    # The admin, whom no rule reaches, reads the source as it is.
    full = client.get(f"/api/v1/sources/{src}/data", headers=h).json()
    assert full["data"][0]["email"] == "ann@example.com" and full["data"][0]["salary"] == 150000
