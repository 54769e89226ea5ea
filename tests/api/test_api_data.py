"""Governed data over HTTP: visibility, row-level security on every way out, attacks."""

from __future__ import annotations

import csv
import io

import pyarrow.parquet as pq
import pytest

ROWS = [
    {"region": "US", "tier": "gold", "amount": 10},
    {"region": "US", "tier": "silver", "amount": 20},
    {"region": "EU", "tier": "gold", "amount": 30},
    {"region": "EU", "tier": "silver", "amount": 40},
    {"region": "APAC", "tier": "gold", "amount": 50},
]


@pytest.fixture
def world(client, org):
    """An admin's source shared with a member who holds a `region = US` policy."""
    member = org.add_user("member@example.com")
    source = client.post("/api/v1/sources", json={"name": "sales", "rows": ROWS}, headers=org.headers()).json()["id"]
    client.post(
        f"/api/v1/sources/{source}/shares", json={"user_id": member, "permission": "view"}, headers=org.headers()
    )
    policy = client.post(
        "/api/v1/access/policies",
        json={"name": "us", "row_filters": [{"column": "REGION", "values": ["US"]}]},
        headers=org.headers(),
    ).json()["id"]
    client.post(f"/api/v1/access/policies/{policy}/users", json={"user_ids": [member]}, headers=org.headers())
    key = org.key_for(member, scopes=["data:read", "admin:sources:read"])
    return {"member": member, "source": source, "policy": policy, "key": key}


def regions(rows):
    return sorted({r["region"] for r in rows})


def test_every_way_out_is_filtered(client, org, world):
    h, src = org.headers(world["key"]), world["source"]
    page = client.get(f"/api/v1/sources/{src}/data", headers=h).json()
    assert (
        regions(page["data"]) == ["US"] and page["total_count"] == 2 and page["columns"] == ["region", "tier", "amount"]
    )
    alias = client.get(f"/api/v1/data/sources/{src}/data", headers=h).json()
    assert alias["data"] == page["data"]
    q = client.post(
        f"/api/v1/sources/{src}/query", json={"sql": "SELECT count(*) AS n, sum(amount) AS s FROM data"}, headers=h
    ).json()
    assert q["data"] == [{"n": 2, "s": 30}] and q["total_rows"] == 1
    q2 = client.post(
        "/api/v1/data/query", json={"source_id": src, "sql": "SELECT DISTINCT region FROM data"}, headers=h
    ).json()
    assert q2["data"] == [{"region": "US"}]
    exported = list(
        csv.DictReader(io.StringIO(client.get(f"/api/v1/sources/{src}/data", params={"format": "csv"}, headers=h).text))
    )
    assert regions(exported) == ["US"] and len(exported) == 2
    parquet = pq.read_table(
        io.BytesIO(client.get(f"/api/v1/sources/{src}/data", params={"format": "parquet"}, headers=h).content)
    )
    assert sorted(set(parquet.column("region").to_pylist())) == ["US"]
    assert client.get(f"/api/v1/sources/{src}", headers=h).json()["row_count"] == 2
    assert client.get(f"/api/v1/sources/{src}", headers=h).json()["access_controlled"] is True
    listed = client.get("/api/v1/sources", headers=h).json()["data"]
    assert [s["row_count"] for s in listed if s["id"] == src] == [2]
    values = client.get(f"/api/v1/sources/{src}/columns/region/values", headers=h).json()["data"]
    assert values == ["US"]
    # The admin, with no policy, sees everything.
    assert client.get(f"/api/v1/sources/{src}/data", headers=org.headers()).json()["total_count"] == 5


def test_policy_edit_is_seen_by_the_very_next_request(client, org, world):
    h, src = org.headers(world["key"]), world["source"]
    assert client.get(f"/api/v1/sources/{src}/data", headers=h).json()["total_count"] == 2
    client.patch(
        f"/api/v1/access/policies/{world['policy']}",
        json={"row_filters": [{"column": "region", "values": ["US", "EU"]}]},
        headers=org.headers(),
    )
    assert regions(client.get(f"/api/v1/sources/{src}/data", headers=h).json()["data"]) == ["EU", "US"]
    client.delete(f"/api/v1/access/policies/{world['policy']}/users/{world['member']}", headers=org.headers())
    assert client.get(f"/api/v1/sources/{src}/data", headers=h).json()["total_count"] == 5
    client.patch("/api/v1/org/settings", json={"deny_by_default": True}, headers=org.headers())
    assert client.get(f"/api/v1/sources/{src}/data", headers=h).json()["total_count"] == 0


def test_group_policy_and_direct_policy_merge(client, org, world):
    h, src = org.headers(world["key"]), world["source"]
    eu = client.post(
        "/api/v1/access/policies",
        json={"name": "eu", "row_filters": [{"column": "region", "values": ["EU"]}]},
        headers=org.headers(),
    ).json()["id"]
    group = client.post("/api/v1/access/groups", json={"name": "emea"}, headers=org.headers()).json()["id"]
    client.post(f"/api/v1/access/groups/{group}/policies", json={"policy_ids": [eu]}, headers=org.headers())
    client.post(f"/api/v1/access/groups/{group}/users", json={"user_ids": [world["member"]]}, headers=org.headers())
    assert regions(client.get(f"/api/v1/sources/{src}/data", headers=h).json()["data"]) == ["EU", "US"]
    gold = client.post(
        "/api/v1/access/policies",
        json={"name": "gold", "row_filters": [{"column": "tier", "values": ["gold"]}]},
        headers=org.headers(),
    ).json()["id"]
    client.post(f"/api/v1/access/policies/{gold}/users", json={"user_ids": [world["member"]]}, headers=org.headers())
    rows = client.get(f"/api/v1/sources/{src}/data", headers=h).json()["data"]
    assert sorted((r["region"], r["tier"]) for r in rows) == [("EU", "gold"), ("US", "gold")]


def test_demoted_or_removed_member_key_follows(client, org, world):
    h, src = org.headers(world["key"]), world["source"]
    client.delete(f"/api/v1/sources/{src}/shares/{world['member']}", headers=org.headers())
    assert client.get(f"/api/v1/sources/{src}/data", headers=h).status_code == 404
    assert src not in [s["id"] for s in client.get("/api/v1/sources", headers=h).json()["data"]]
    client.delete(f"/api/v1/users/{world['member']}", headers=org.headers())
    assert client.get(f"/api/v1/sources/{src}/data", headers=h).status_code == 401


def test_key_restrictions_narrow(client, org, world):
    src = world["source"]
    other = client.post("/api/v1/sources", json={"name": "other", "rows": ROWS}, headers=org.headers()).json()["id"]
    eu = client.post(
        "/api/v1/access/policies",
        json={"name": "eu-key", "row_filters": [{"column": "region", "values": ["EU"]}]},
        headers=org.headers(),
    ).json()["id"]
    scoped = org.key_for(
        org.admin_id,
        scopes=["data:read", "admin:sources:read"],
        source_scope={"mode": "selected", "source_ids": [src]},
        access_policy_ids=[eu],
    )
    h = org.headers(scoped)
    assert regions(client.get(f"/api/v1/sources/{src}/data", headers=h).json()["data"]) == ["EU"]
    assert client.get(f"/api/v1/sources/{other}/data", headers=h).status_code == 404
    assert client.get(f"/api/v1/sources/{other}", headers=h).status_code == 404
    assert [s["id"] for s in client.get("/api/v1/sources", headers=h).json()["data"]] == [src]
    # Bound to the member: the admin's key sees only what the member sees.
    bound = org.key_for(org.admin_id, scopes=["data:read"], bound_user_id=world["member"])
    assert regions(client.get(f"/api/v1/sources/{src}/data", headers=org.headers(bound)).json()["data"]) == ["US"]
    assert client.get(f"/api/v1/sources/{other}/data", headers=org.headers(bound)).status_code == 404
    # Key policy AND creator policy: US AND EU = nothing.
    both = org.key_for(world["member"], scopes=["data:read"], access_policy_ids=[eu])
    assert client.get(f"/api/v1/sources/{src}/data", headers=org.headers(both)).json()["total_count"] == 0


def test_other_org_sources_are_unreachable(client, make_org):
    a, b = make_org(), make_org()
    src = client.post("/api/v1/sources", json={"name": "secret", "rows": ROWS}, headers=a.headers()).json()["id"]
    for path in (
        f"/api/v1/sources/{src}",
        f"/api/v1/sources/{src}/data",
        f"/api/v1/data/sources/{src}/data",
        f"/api/v1/sources/{src}/columns/region/values",
    ):
        assert client.get(path, headers=b.headers()).status_code == 404, path
    assert (
        client.post(
            "/api/v1/data/query", json={"source_id": src, "sql": "select * from data"}, headers=b.headers()
        ).status_code
        == 404
    )
    assert client.post(f"/api/v1/sources/{src}/rows", json={"rows": ROWS}, headers=b.headers()).status_code == 404
    assert client.delete(f"/api/v1/sources/{src}", headers=b.headers()).status_code == 404
    assert client.get(f"/api/v1/sources/{src}", headers=a.headers()).json()["row_count"] == 5


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM sources",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('x.parquet')",
        "SELECT * FROM glob('/*')",
        "ATTACH 'x.db'",
        "COPY data TO '/tmp/x.csv'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 1",
        "PRAGMA database_list",
        "SELECT * FROM data; SELECT 1",
        "DROP TABLE data",
        "SELECT getenv('HOME')",
        "SELECT * FROM main.data",
        "SELECT * FROM duckdb_tables()",
        "SELECT current_setting('threads')",
        "WITH x AS (SELECT * FROM 'other.parquet') SELECT * FROM x",
    ],
)
def test_forbidden_queries_are_400_invalid_query(client, org, world, sql):
    r = client.post(f"/api/v1/sources/{world['source']}/query", json={"sql": sql}, headers=org.headers(world["key"]))
    assert r.status_code == 400, (sql, r.text)
    assert r.json()["error"]["code"] == "invalid_query"


def test_sql_cannot_escape_the_filter(client, org, world):
    h, src = org.headers(world["key"]), world["source"]
    for sql in [
        "SELECT * FROM data WHERE 1=1 OR region <> 'US'",
        "SELECT * FROM data UNION ALL SELECT * FROM data",
        "WITH d AS (SELECT * FROM data) SELECT * FROM d WHERE region = 'EU'",
    ]:
        r = client.post(f"/api/v1/sources/{src}/query", json={"sql": sql}, headers=h)
        assert r.status_code == 200, r.text
        assert set(regions(r.json()["data"])) <= {"US"}


def test_injection_through_policy_values_and_columns(client, org, world):
    hostile = client.post(
        "/api/v1/access/policies",
        json={"name": "hostile", "row_filters": [{"column": "region", "values": ["US' OR '1'='1", 'x") OR 1=1 --']}]},
        headers=org.headers(),
    ).json()["id"]
    user = org.add_user("victim@example.com")
    client.post(f"/api/v1/sources/{world['source']}/shares", json={"user_id": user}, headers=org.headers())
    client.post(f"/api/v1/access/policies/{hostile}/users", json={"user_ids": [user]}, headers=org.headers())
    h = org.headers(org.key_for(user, scopes=["data:read"]))
    assert client.get(f"/api/v1/sources/{world['source']}/data", headers=h).json()["total_count"] == 0
    r = client.get(f"/api/v1/sources/{world['source']}/columns/region%22%20OR%201=1/values", headers=h)
    assert r.status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        {"page": 0},
        {"page": -1},
        {"page_size": 0},
        {"page_size": 10_001},
        {"page_size": -5},
        {"page": "1; DROP"},
        {"format": "xml"},
        {"page": 10**12},
        {"page": 100_000_001},
        {"page": "1.5"},
        {"page": " "},
        {"page": ""},
        {"page_size": "1e3"},
        {"page": "+3"},
        {"page": "0x10"},
        {"page_size": "1_000"},
        {"page": "\u0663"},
        {"page_size": "\uff15"},
        {"page": "1" * 13},
        {"page": "2", "page_size": "abc"},
        {"page": "\x00"},
        {"format": "JSON"},
        {"format": " json"},
        {"format": ""},
        {"format": "csv\x00"},
    ],
)
def test_bad_paging_is_400(client, org, world, params):
    r = client.get(f"/api/v1/sources/{world['source']}/data", params=params, headers=org.headers(world["key"]))
    assert r.status_code == 400, (params, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "code", "message"}, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "invalid_parameters"
    offending = next(name for name, value in params.items() if not (name == "page" and value == "2"))
    assert body["error"]["message"].startswith(offending), body["error"]["message"]


@pytest.mark.parametrize(
    "params, page, page_size",
    [
        ({}, 1, 100),
        ({"page": "2", "page_size": "2"}, 2, 2),
        ({"page": "002"}, 2, 100),
        ({"page_size": "10000"}, 1, 10_000),
        ({"page": "100000000"}, 100_000_000, 100),
    ],
)
def test_good_paging_is_read_as_given(client, org, world, params, page, page_size):
    r = client.get(f"/api/v1/sources/{world['source']}/data", params=params, headers=org.headers(world["key"]))
    assert r.status_code == 200, r.text
    assert (r.json()["page"], r.json()["page_size"]) == (page, page_size)


def test_openapi_still_documents_the_data_read_parameters(client):
    spec = client.get("/api/openapi.json").json()
    for path in ("/api/v1/sources/{source_id}/data", "/api/v1/data/sources/{source_id}/data"):
        operation = spec["paths"][path]["get"]
        params = {(p["name"], p["in"]): p for p in operation["parameters"]}
        assert set(params) == {
            ("source_id", "path"),
            ("page", "query"),
            ("page_size", "query"),
            ("format", "query"),
            ("raw", "query"),
        }
        assert params["source_id", "path"]["required"] is True
        assert (
            params["page", "query"]["schema"]["type"] == "integer" and params["page", "query"]["schema"]["minimum"] == 1
        )
        assert params["page_size", "query"]["schema"]["maximum"] == 10_000
        assert params["format", "query"]["schema"]["enum"] == ["json", "csv", "parquet"]
        assert params["raw", "query"]["schema"]["enum"] == ["0", "1"]  # CSV formula neutralization opt-out
        assert not any(p["required"] for (_, where), p in params.items() if where == "query")


def test_huge_page_is_empty_not_an_error(client, org, world):
    r = client.get(
        f"/api/v1/sources/{world['source']}/data",
        params={"page": 1000, "page_size": 10_000},
        headers=org.headers(world["key"]),
    )
    assert r.status_code == 200 and r.json()["data"] == [] and r.json()["total_count"] == 2


def test_writes(client, org, world):
    src = world["source"]
    r = client.post(
        f"/api/v1/sources/{src}/rows",
        json={"rows": [{"region": "LATAM", "tier": "gold", "amount": 60}]},
        headers=org.headers(),
    )
    assert r.status_code == 200 and r.json()["row_count"] == 6
    r = client.post(
        f"/api/v1/sources/{src}/rows",
        json={"rows": [{"region": "X", "tier": "gold", "amount": "lots"}]},
        headers=org.headers(),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "type_mismatch"
    assert "amount" in r.json()["error"]["message"] and "row 1" in r.json()["error"]["message"]
    assert client.get(f"/api/v1/sources/{src}", headers=org.headers()).json()["row_count"] == 6
    r = client.put(f"/api/v1/sources/{src}/data", json={"rows": [{"region": "US", "n": 1}]}, headers=org.headers())
    assert r.status_code == 200 and r.json()["columns"] == ["region", "n"] and r.json()["row_count"] == 1
    # A view-only member cannot write; a data:read key cannot write.
    assert (
        client.post(f"/api/v1/sources/{src}/rows", json={"rows": []}, headers=org.headers(world["key"])).status_code
        == 403
    )


def test_filtered_editor_cannot_replace_or_add_invisible_rows(client, org, world):
    src = world["source"]
    client.post(
        f"/api/v1/sources/{src}/shares", json={"user_id": world["member"], "permission": "edit"}, headers=org.headers()
    )
    writer = org.headers(org.key_for(world["member"], scopes=["data:read", "data:write"]))
    r = client.put(
        f"/api/v1/sources/{src}/data", json={"rows": [{"region": "US", "tier": "x", "amount": 1}]}, headers=writer
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "row_filter_restricts_write"
    r = client.post(
        f"/api/v1/sources/{src}/rows", json={"rows": [{"region": "EU", "tier": "x", "amount": 1}]}, headers=writer
    )
    assert r.status_code == 403
    r = client.post(
        f"/api/v1/sources/{src}/rows", json={"rows": [{"region": "US", "tier": "x", "amount": 1}]}, headers=writer
    )
    assert r.status_code == 200
    assert client.get(f"/api/v1/sources/{src}", headers=org.headers()).json()["row_count"] == 6


def test_reads_by_key_are_audited_with_rows_and_policies(client, org, world):
    h, src = org.headers(world["key"]), world["source"]
    r = client.get(f"/api/v1/sources/{src}/data", headers=h)
    client.post(f"/api/v1/sources/{src}/query", json={"sql": "select * from data"}, headers=h)
    client.get(f"/api/v1/sources/{src}/data", params={"format": "csv"}, headers=h)
    events = client.get("/api/v1/audit/events", params={"target_id": src, "limit": 100}, headers=org.headers()).json()[
        "data"
    ]
    by_action = {e["action"]: e for e in events if e["actor_type"] == "api_key"}
    assert {"data.read", "data.query", "data.export"} <= set(by_action)
    read = next(e for e in events if e["request_id"] == r.headers["x-request-id"])
    assert read["details"]["rows_returned"] == 2 and read["details"]["policy_ids"] == [world["policy"]]
    assert read["details"]["source_id"] == src
    assert read["details"]["operation"] == "read_data" and read["id"] == "evt_" + r.headers["x-request-id"][4:]
    assert by_action["data.export"]["details"]["rows_returned"] == 2
    assert by_action["data.query"]["details"]["operation"] == "query_source"


def test_head_on_a_data_read_is_405_and_reads_nothing(client, org, world):
    """read_data is a plain Starlette route, which also routes HEAD to it; HEAD is refused
    before anything is read or counted, as FastAPI routes refuse it."""
    src = world["source"]
    for path in (f"/api/v1/sources/{src}/data", f"/api/v1/data/sources/{src}/data"):
        r = client.head(path, headers=org.headers(world["key"]))
        assert r.status_code == 405
    r = client.request("HEAD", "/api/v1/keys", headers=org.headers(world["key"]))
    assert r.status_code == 405  # the same as any FastAPI route
    events = client.get("/api/v1/audit/events", params={"target_id": src, "limit": 100}, headers=org.headers()).json()[
        "data"
    ]
    assert not [e for e in events if e["method"] == "HEAD"]


def test_private_until_shared_and_org_share(client, org):
    alice, bob = org.add_user("alice@example.com"), org.add_user("bob@example.com")
    alice_key = org.key_for(alice, scopes=["data:read", "data:write", "admin:sources:read", "admin:permissions:write"])
    bob_key = org.key_for(bob, scopes=["data:read", "admin:sources:read"])
    src = client.post("/api/v1/sources", json={"name": "alice's", "rows": ROWS}, headers=org.headers(alice_key)).json()[
        "id"
    ]
    assert client.get(f"/api/v1/sources/{src}", headers=org.headers(bob_key)).status_code == 404
    assert client.get(f"/api/v1/sources/{src}", headers=org.headers()).status_code == 200  # admins see every source
    r = client.post(
        f"/api/v1/sources/{src}/org-share", json={"enabled": True, "permission": "view"}, headers=org.headers(alice_key)
    )
    assert r.json()["org_shared"] is True
    assert client.get(f"/api/v1/sources/{src}", headers=org.headers(bob_key)).status_code == 200
    # Bob cannot share or delete alice's source.
    assert client.delete(f"/api/v1/sources/{src}", headers=org.headers(bob_key)).status_code in (403,)
    client.post(f"/api/v1/sources/{src}/org-share", json={"enabled": False}, headers=org.headers(alice_key))
    assert client.get(f"/api/v1/sources/{src}", headers=org.headers(bob_key)).status_code == 404


def test_member_cannot_create_connector_sources(client, org):
    member_key = org.key_for(org.add_user("m@example.com"))
    r = client.post(
        "/api/v1/sources",
        json={
            "name": "pg",
            "connector_id": "postgresql",
            "config": {"host": "127.0.0.1", "database": "test", "user": "root"},
        },
        headers=org.headers(member_key),
    )
    assert r.status_code == 403


def test_connectors_listed(client, org):
    ids = [c["id"] for c in client.get("/api/v1/connectors", headers=org.headers()).json()["data"]]
    assert {"postgresql", "sqlite"} <= set(ids)


# -- the rendered-page cache (engine.page_json) -------------------------------------------------


def page_of(client, org, src, key=None, **params):
    r = client.get(f"/api/v1/sources/{src}/data", params=params, headers=org.headers(key))
    assert r.status_code == 200, r.text
    return r.json()


def test_pages_reflect_appends_and_replacements(client, org, world):
    h_member, src = world["key"], world["source"]
    # Read (and cache) every page, including an empty one past the end.
    before = [page_of(client, org, src, page=p, page_size=2) for p in (1, 2, 3, 4)]
    assert [len(p["data"]) for p in before] == [2, 2, 1, 0] and before[0]["total_count"] == 5
    assert page_of(client, org, src, h_member)["total_count"] == 2
    added = [
        {"region": "US", "tier": "bronze", "amount": 60},
        {"region": "LATAM", "tier": "gold", "amount": 70},
        {"region": "US", "tier": "gold", "amount": 80},
    ]
    r = client.post(f"/api/v1/sources/{src}/rows", json={"rows": added}, headers=org.headers())
    assert r.status_code == 200 and r.json()["row_count"] == 8
    after = [page_of(client, org, src, page=p, page_size=2) for p in (1, 2, 3, 4)]
    assert [p["total_count"] for p in after] == [8] * 4
    assert [r for p in after for r in p["data"]] == ROWS + added  # the empty page 4 now holds rows
    member = page_of(client, org, src, h_member)
    assert member["total_count"] == 4 and [r["amount"] for r in member["data"]] == [10, 20, 60, 80]
    # A replacement is seen the same way.
    r = client.put(
        f"/api/v1/sources/{src}/data",
        json={"rows": [{"region": "US", "tier": "x", "amount": 1}]},
        headers=org.headers(),
    )
    assert r.status_code == 200
    assert page_of(client, org, src, page=1, page_size=2)["data"] == [{"region": "US", "tier": "x", "amount": 1}]
    assert page_of(client, org, src, page=2, page_size=2) == {
        "data": [],
        "total_count": 1,
        "page": 2,
        "page_size": 2,
        "columns": ["region", "tier", "amount"],
    }
    assert page_of(client, org, src, h_member)["total_count"] == 1


def test_same_page_different_filters_never_share_a_rendered_page(client, org, world):
    src = world["source"]
    eu_member = org.add_user("eu-member@example.com")
    client.post(f"/api/v1/sources/{src}/shares", json={"user_id": eu_member}, headers=org.headers())
    eu = client.post(
        "/api/v1/access/policies",
        json={"name": "eu", "row_filters": [{"column": "region", "values": ["EU"]}]},
        headers=org.headers(),
    ).json()["id"]
    client.post(f"/api/v1/access/policies/{eu}/users", json={"user_ids": [eu_member]}, headers=org.headers())
    callers = {
        "admin": (None, ["US", "US", "EU", "EU", "APAC"]),
        "US member": (world["key"], ["US", "US"]),
        "EU member": (org.key_for(eu_member, scopes=["data:read"]), ["EU", "EU"]),
        # The same user as "admin", narrowed by a policy on the key itself.
        "admin, EU key": (org.key_for(org.admin_id, scopes=["data:read"], access_policy_ids=[eu]), ["EU", "EU"]),
        # The US member's key narrowed to EU: US AND EU, nothing.
        "US member, EU key": (org.key_for(world["member"], scopes=["data:read"], access_policy_ids=[eu]), []),
    }
    order = list(callers)
    for round_ in range(3):
        for name in order if round_ % 2 == 0 else order[::-1]:
            key, expected = callers[name]
            for params in ({}, {"page": 1, "page_size": 100}):
                page = page_of(client, org, src, key, **params)
                assert [r["region"] for r in page["data"]] == expected, (round_, name, params)
                assert page["total_count"] == len(expected)


def test_page_and_page_size_are_part_of_the_rendered_page(client, org, world):
    src = world["source"]
    seen = {}
    for page_size in (1, 2, 3):
        for page in (1, 2, 3):
            seen[page, page_size] = page_of(client, org, src, page=page, page_size=page_size)["data"]
    for (page, page_size), rows in seen.items():
        start = (page - 1) * page_size
        assert rows == ROWS[start : start + page_size], (page, page_size)
