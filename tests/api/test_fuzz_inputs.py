"""Hypothesis fuzzing of the inputs attackers poke, on SQLite and on PostgreSQL.

Every test sends generated input through the real app (TestClient) to a real database and
holds the server to: never a 5xx, every 4xx the error envelope, and for each place its
security property --

- key creation: 201 or 400; a 400 changes nothing (no key row added);
- policy row_filters: 201 or 400; a 201 policy, applied to a member, lets exactly the rows
  its semantics allow through (checked against an independent oracle), never another one;
- SQL over a source: 200 or 400 invalid_query; a 200 over a filtered source equals the same
  query over a source holding only the caller's rows (a differential oracle: whatever the
  SQL does, it sees nothing more), and never shows a hidden row's marker;
- paging and cursors: 200 or 400, a page never larger than asked;
- hostile ids in paths: 400/404, and every such request still reaches the audit log;
- audit filters (dates at the ends of the calendar, odd ids): 200 or 400.

The last section pins, one deterministic case each, the 500s these fuzzers found.

Examples are bounded and derandomized (the same inputs on every run). The org fixtures are
made once per test, not per example, on purpose: the examples share one organization and
each one checks what it changed.
"""

from __future__ import annotations

import itertools
import json
import re
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tidegate.access.models import Policy
from tidegate.core.scopes import ALL_SCOPES
from tidegate.credentials.models import ApiKey
from tidegate.db.engine import session_scope

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


def fuzz(max_examples: int):
    return settings(FUZZ, max_examples=max_examples)


# -- what a hostile client sends ------------------------------------------------------------

# Text that has broken servers before: NUL, lone surrogates (valid JSON escapes, invalid
# Unicode), quotes, LIKE and comment metacharacters, case-folding and normalization traps,
# bidi and BOM, and sizes just past the limits.
HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t",
    "\n",
    "'",
    '"',
    "\\",
    "%",
    "_",
    "--",
    "/*",
    ";",
    "é",
    "e\u0301",
    "ß",
    "SS",
    "İ",
    "\u202e",
    "\ufeff",
    "😀",
    "null",
    "0",
    "data:read",
    "*",
    "x" * 201,
    "y" * 3000,
]
SURROGATES = ["\ud800", "x\udfff", "\udbff\ud800"]  # JSON can carry them (\ud800), Unicode cannot

text = st.one_of(st.text(max_size=20), st.sampled_from(HOSTILE_TEXT + SURROGATES))
url_text = st.one_of(st.text(max_size=20), st.sampled_from(HOSTILE_TEXT))  # a URL cannot carry a lone surrogate
numbers = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 1, 60, 10_000, 10_001, 3650, 3651, 2**31, 2**63, 2**64, 10**30, -(10**30)]),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=6,
)


def send(client, method: str, url: str, headers: dict, body=None, params=None):
    """The body as a client's JSON encoder writes it (ASCII, so lone surrogates travel as
    \\udXXX escapes and reach the server's parser)."""
    if body is None:
        return client.request(method, url, headers=headers, params=params)
    content = json.dumps(body, ensure_ascii=True)
    return client.request(
        method, url, headers={**headers, "Content-Type": "application/json"}, params=params, content=content.encode()
    )


ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def check_answer(r, allowed: set[int]) -> dict | None:
    """Never a 5xx; only an allowed status; a 4xx is the precise error envelope. Returns the error."""
    sent = f"{r.request.method} {r.request.url}\n{r.request.content[:1000]!r}"
    assert r.status_code < 500, f"server error {r.status_code} for\n{sent}\n{r.text[:500]}"
    assert r.headers.get("x-request-id"), r.headers
    assert r.status_code in allowed, f"{r.status_code} not in {sorted(allowed)} for\n{sent}\n{r.text[:500]}"
    if r.status_code < 400:
        return None
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "code", "message"}, body
    error = body["error"]
    assert error["type"] == ERROR_TYPE[r.status_code], body
    assert all(isinstance(error[k], str) and error[k] for k in error), body
    return error


FAST = 10_000  # the highest rate limit: the examples exercise the endpoint, not the limiter


@pytest.fixture
def admin(org) -> dict[str, str]:
    """Headers of an admin Full Access key with the highest rate limit."""
    return org.headers(org.key_for(org.admin_id, rate_limit_per_minute=FAST))


def count(settings_, model, org_id: str) -> int:
    with session_scope(settings_.database_url) as session:
        return session.scalar(select(func.count()).select_from(model).where(model.org_id == org_id))


# -- 1. key creation ----------------------------------------------------------------------


@st.composite
def key_bodies(draw, policy_id: str, member_id: str):
    """A valid body, a valid body with one field made hostile, or anything at all."""
    valid = {
        "name": draw(st.text(min_size=1, max_size=30).filter(str.strip)),
        **draw(
            st.one_of(
                st.fixed_dictionaries(
                    {"scopes": st.lists(st.sampled_from(sorted(ALL_SCOPES) + ["*"]), min_size=1, max_size=4)}
                ),
                st.fixed_dictionaries({"preset": st.sampled_from(["full_access", "data_access"])}),
            )
        ),
        **draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "expires_in_days": st.integers(1, 3650),
                    "rate_limit_per_minute": st.integers(1, 10_000),
                    "ip_allowlist": st.lists(
                        st.sampled_from(["10.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32", "0.0.0.0/0"]),
                        min_size=1,
                        max_size=3,
                    ),
                    "source_scope": st.sampled_from([{"mode": "all"}, {"mode": "selected", "source_ids": ["src_a"]}]),
                    "access_policy_ids": st.just([policy_id]),
                    "bound_user_id": st.just(member_id),
                },
            )
        ),
    }
    hostile = {
        "name": st.one_of(text, json_values),
        "scopes": st.one_of(
            st.lists(st.one_of(st.sampled_from(["data:destroy", "DATA:READ", "", " data:read"]), text), max_size=4),
            json_values,
        ),
        "preset": st.one_of(st.sampled_from(["everything", "FULL_ACCESS", ""]), json_values),
        "expires_in_days": st.one_of(numbers, json_values),
        "rate_limit_per_minute": st.one_of(numbers, json_values),
        "ip_allowlist": st.one_of(
            st.lists(
                st.one_of(
                    st.sampled_from(
                        ["10.0.0.0/33", "256.1.1.1", "", " 10.1.1.1 ", "fe80::1%eth0", "1", "10.0.0.1/8/8"]
                    ),
                    text,
                ),
                max_size=3,
            ),
            json_values,
        ),
        "source_scope": st.one_of(
            st.fixed_dictionaries(
                {"mode": st.one_of(st.sampled_from(["all", "selected", "some"]), json_values)},
                optional={"source_ids": st.one_of(st.lists(text, max_size=3), json_values)},
            ),
            json_values,
        ),
        "access_policy_ids": st.one_of(st.lists(st.one_of(st.just(policy_id), text), max_size=3), json_values),
        "bound_user_id": st.one_of(text, json_values),
        "unknown_field": json_values,
    }
    kind = draw(st.sampled_from(["valid", "one_hostile", "any"]))
    if kind == "valid":
        return valid
    if kind == "one_hostile":
        field = draw(st.sampled_from(sorted(hostile)))
        return {**valid, field: draw(hostile[field])}
    return draw(st.fixed_dictionaries({}, optional=hostile))


@pytest.fixture
def key_world(client, org, admin):
    member = org.add_user("bound@example.com")
    policy = client.post(
        "/api/v1/access/policies",
        json={"name": "eu", "row_filters": [{"column": "region", "values": ["EU"]}]},
        headers=admin,
    ).json()["id"]
    return {"member": member, "policy": policy}


def test_key_creation_bodies(client, org, admin, key_world):
    @fuzz(60)
    @given(body=key_bodies(key_world["policy"], key_world["member"]))
    def run(body):
        before = count(org.settings, ApiKey, org.id)
        r = send(client, "POST", "/api/v1/keys", admin, body)
        error = check_answer(r, {201, 400})
        after = count(org.settings, ApiKey, org.id)
        if error:
            assert after == before, f"a refused key creation added a key: {body!r}"
            return
        assert after == before + 1
        created = r.json()
        assert created["secret"].startswith("qk_") and created["name"] == body["name"].strip()
        if "scopes" in body:
            assert created["scopes"] == sorted(set(body["scopes"]))
        # Omitted, a key-made key inherits its parent's rate limit (never exceeds it).
        assert created["rate_limit_per_minute"] == body.get("rate_limit_per_minute", FAST)
        # The stored key is the one described, and it works.
        got = client.get(f"/api/v1/keys/{created['id']}", headers=admin)
        assert got.status_code == 200 and {k: v for k, v in created.items() if k != "secret"} == got.json()

    run()


# -- 2. policy row filters -------------------------------------------------------------------

# Columns differ in case and folding ("Straße" folds to "strasse"); values hold the traps
# (a value that is another one's case variant, decomposed accents, quotes, empty, NULL).
POLICY_ROWS = [
    {"region": "US", "Straße": "gold", "amount": 10},
    {"region": "us", "Straße": "silver", "amount": 20},
    {"region": "EU", "Straße": "gold", "amount": 30},
    {"region": "é", "Straße": "SS", "amount": 40},
    {"region": "e\u0301", "Straße": "ß", "amount": 50},
    {"region": "'; DROP TABLE data; --", "Straße": "%", "amount": 60},
    {"region": "", "Straße": "_", "amount": 70},
    {"region": None, "Straße": "gold", "amount": None},
    {"region": "😀", "Straße": None, "amount": 10},
]
POLICY_COLUMNS = ["region", "Straße", "amount"]


def row_text(value):
    """A value as the row filter compares it (CAST(col AS VARCHAR)); NULL never matches."""
    return None if value is None else str(value)


def expected_rows(row_filters: list[dict], explicit: bool) -> list[dict]:
    """The policy semantics (access.policies), restated independently: columns match
    case-insensitively (casefold); an Auto policy skips filters on absent columns; an
    Explicit policy with an absent column denies everything."""
    by_fold: dict[str, list[str]] = {}
    for name in POLICY_COLUMNS:
        by_fold.setdefault(name.casefold(), []).append(name)
    allowed: dict[str, set[str]] = {}
    for row_filter in row_filters:
        names = by_fold.get(row_filter["column"].casefold())
        if not names:
            if explicit:
                return []
            continue
        for name in names:
            allowed.setdefault(name, set()).update(row_filter["values"])
    return [row for row in POLICY_ROWS if all(row_text(row[name]) in values for name, values in allowed.items())]


def canonical(rows: list[dict]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


value_texts = st.one_of(
    st.sampled_from(sorted({row_text(r[c]) for r in POLICY_ROWS for c in POLICY_COLUMNS if r[c] is not None})), text
)
column_names = st.one_of(st.sampled_from(POLICY_COLUMNS + ["REGION", "STRASSE", "strasse", "Amount", "missing"]), text)
row_filter_lists = st.one_of(
    st.lists(
        st.fixed_dictionaries({"column": column_names, "values": st.lists(value_texts, min_size=1, max_size=4)}),
        max_size=3,
    ),
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "column": st.one_of(column_names, json_values),
                    "values": st.one_of(st.lists(st.one_of(value_texts, json_values), max_size=3), json_values),
                    "extra": json_values,
                },
            ),
            json_values,
        ),
        max_size=3,
    ),
    json_values,
)


@pytest.fixture
def policy_source(client, org, admin):
    r = client.post("/api/v1/sources", json={"name": "unicode", "rows": POLICY_ROWS}, headers=admin)
    assert r.status_code == 201, r.text
    assert [c if isinstance(c, str) else c["name"] for c in r.json()["columns"]] == POLICY_COLUMNS
    return r.json()["id"]


def test_policy_row_filters(client, org, admin, policy_source):
    serial = itertools.count()

    @fuzz(40)
    @given(row_filters=row_filter_lists, explicit=st.booleans())
    def run(row_filters, explicit):
        n = next(serial)
        body = {"name": f"fuzz-{n}", "row_filters": row_filters}
        if explicit:
            body["source_ids"] = [policy_source]
        before = count(org.settings, Policy, org.id)
        r = send(client, "POST", "/api/v1/access/policies", admin, body)
        error = check_answer(r, {201, 400})
        if error:
            assert count(org.settings, Policy, org.id) == before, f"a refused policy was stored: {body!r}"
            return
        policy = r.json()
        assert count(org.settings, Policy, org.id) == before + 1
        # What the policy stored is what every later read is filtered by.
        stored = policy["row_filters"]
        member = org.add_user(f"member-{n}@example.com")
        assert (
            client.post(f"/api/v1/sources/{policy_source}/shares", json={"user_id": member}, headers=admin).status_code
            == 200
        )
        assert (
            client.post(
                f"/api/v1/access/policies/{policy['id']}/users", json={"user_ids": [member]}, headers=admin
            ).status_code
            == 200
        )
        key = org.headers(org.key_for(member, scopes=["data:read"], rate_limit_per_minute=FAST))
        want = canonical(expected_rows(stored, explicit))
        page = client.get(f"/api/v1/sources/{policy_source}/data", params={"page_size": 100}, headers=key)
        assert page.status_code == 200, page.text
        assert canonical(page.json()["data"]) == want, (stored, explicit)
        assert page.json()["total_count"] == len(want)
        query = send(client, "POST", f"/api/v1/sources/{policy_source}/query", key, {"sql": "SELECT * FROM data"})
        assert query.status_code == 200 and canonical(query.json()["data"]) == want, query.text

    run()


# -- 3. SQL -------------------------------------------------------------------------------

VISIBLE = [
    {"region": "US", "tier": "gold", "amount": 10, "note": "a"},
    {"region": "US", "tier": "silver", "amount": 20, "note": "b'c"},
    {"region": "US", "tier": None, "amount": None, "note": "US"},
]
# Rows the caller must never see; every one carries markers no generated query contains.
HIDDEN = [
    {"region": "EU", "tier": "zqhidden7", "amount": 7777777, "note": "zqsecret9"},
    {"region": "APAC", "tier": "zqhidden7", "amount": 8888888, "note": "zqsecret9"},
]
MARKERS = re.compile(r"zqhidden7|zqsecret9|7777777|8888888", re.I)

# Fragments a query is built from: valid ones (so that many queries run) and ones the
# sandbox must refuse (other relations, table functions, dangerous functions, parameters).
COLUMNS = ["region", "tier", "amount", "note", '"region"', "REGION", "data.region", "d.amount"]
BAD_COLUMNS = ["x.tier", "main.data.region", "nope"]
LITERALS = [
    "1",
    "0",
    "-1",
    "2.5",
    "NULL",
    "TRUE",
    "'US'",
    "'EU'",
    "''",
    "'it''s'",
    "'%'",
    "'--'",
    "'/*'",
    "'; DROP TABLE data; --'",
    "9223372036854775807",
    "1e308",
    "DATE '2020-01-01'",
    "[1, 2]",
    "{'a': 1}",
]
BAD_LITERALS = ["'\\'", "'unterminated", '"no such column"', "$1", "?", "getvariable('x')", "$$dollar$$"]
FUNCTIONS = [
    "count",
    "min",
    "max",
    "lower",
    "upper",
    "length",
    "list",
    "md5",
    "typeof",
    "first",
    "any_value",
    "hash",
    "to_json",
    "abs",
    "sum",
]
BINARY_FUNCTIONS = ["coalesce", "concat", "nullif", "greatest", "string_agg", "least", "ifnull"]
BAD_FUNCTIONS = [
    "read_csv",
    "read_parquet",
    "read_json_auto",
    "read_text",
    "glob",
    "getenv",
    "current_setting",
    "range",
    "generate_series",
    "query",
    "query_table",
    "duckdb_tables",
    "duckdb_settings",
    "pragma_version",
    "version",
    "sleep_ms",
    "json_serialize_sql",
    "json_execute_serialized_sql",
    "nextval",
    "setseed",
    "repeat",
    "error",
    "aggregate",
    "list_aggregate",
    "current_database",
    "system.main.getenv",
    "main.lower",
    "pg_catalog.version",
    "load_extension",
    "current_schemas",
]
OPERATORS = ["||", "=", "<>", "<", ">=", "AND", "OR", "IS DISTINCT FROM", "+", "*", "/", "%", "LIKE", "->>"]
TYPES = ["VARCHAR", "INTEGER", "DOUBLE", "DATE", "BLOB", "JSON", "INTEGER[]"]
TABLES = [
    "data",
    '"data"',
    "DATA",
    "data AS d",
    "data d",
    "data AS x, data AS d",
    "data JOIN data AS d USING (region)",
    "data AS d LEFT JOIN data AS x ON d.amount = x.amount",
    "data AS d CROSS JOIN data AS e",
    "data AS d SEMI JOIN data AS e ON e.tier = d.tier",
    "data USING SAMPLE 100%",
]
BAD_TABLES = [
    "sources",
    "main.data",
    "memory.main.data",
    "information_schema.tables",
    "duckdb_tables()",
    "read_csv('/etc/passwd')",
    "range(10)",
    "'x.parquet'",
    "glob('*')",
    "unnest([1, 2])",
    "sqlite_master",
    "pg_catalog.pg_tables",
    "temp.data",
    "data AT (VERSION => 1)",
    "other",
    "__filtered",
    "read_parquet(['a', 'b'])",
    "(FROM 'x.csv')",
    "data, 'y.csv'",
]
STATEMENTS = [
    "ATTACH 'x.db' AS x",
    "COPY data TO '/tmp/x.csv'",
    "PRAGMA database_list",
    "SET threads = 1",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CREATE TABLE x AS SELECT 1",
    "DROP TABLE data",
    "DESCRIBE data",
    "SUMMARIZE data",
    "SHOW TABLES",
    "EXPLAIN SELECT * FROM data",
    "CALL pragma_version()",
    "EXPORT DATABASE '/tmp/x'",
    "SELECT * INTO x FROM data",
    "CHECKPOINT",
    "DETACH x",
    "USE x",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "BEGIN",
    "FROM data",
    "FROM data SELECT region",
    "UPDATE data SET region = 'US'",
    "DELETE FROM data",
    "INSERT INTO data VALUES (1)",
    "VALUES (1, 2)",
    "TABLE data",
    "PIVOT data ON region USING sum(amount)",
    "SELECT 1; SELECT 2",
]


def mostly(valid: list[str], invalid: list[str]):
    """About three draws in four from `valid`."""
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(invalid))


select_query = st.deferred(lambda: st.one_of(_simple_select, _simple_select, _select))
expressions = st.recursive(
    mostly(COLUMNS + LITERALS, BAD_COLUMNS + BAD_LITERALS),
    lambda e: st.one_of(
        st.builds("{}({})".format, mostly(FUNCTIONS, BAD_FUNCTIONS), e),
        st.builds("{}({}, {})".format, mostly(BINARY_FUNCTIONS, BAD_FUNCTIONS), e, e),
        st.builds("{} {} {}".format, e, st.sampled_from(OPERATORS), e),
        st.builds("CAST({} AS {})".format, e, st.sampled_from(TYPES)),
        st.builds("TRY_CAST({} AS {})".format, e, st.sampled_from(TYPES)),
        st.builds("{} IS NULL".format, e),
        st.builds("{} OVER (PARTITION BY {})".format, st.sampled_from(["row_number()", "count(*)", "rank()"]), e),
        st.builds("CASE WHEN {} THEN {} ELSE {} END".format, e, e, e),
        st.builds("({})".format, select_query),
        st.builds("{} IN ({})".format, e, select_query),
        st.builds("EXISTS ({})".format, select_query),
    ),
    max_leaves=4,
)
_select = st.builds(
    "SELECT {}{} FROM {}{}{}{}{}".format,
    st.sampled_from(["", "DISTINCT "]),
    st.one_of(
        st.just("*"),
        st.sampled_from(
            ["region, count(*) AS n", "tier, sum(amount) AS s", "* EXCLUDE (note)", "COLUMNS('re.*')", "count(*) AS n"]
        ),
        st.lists(expressions, min_size=1, max_size=3).map(", ".join),
        st.builds("{} AS {}".format, expressions, st.sampled_from(["region", "n", '"a b"', "data"])),
    ),
    st.one_of(mostly(TABLES, BAD_TABLES), st.builds("({}) AS s".format, select_query)),
    st.one_of(st.just(""), st.builds(" WHERE {}".format, expressions)),
    st.sampled_from(["", "", " GROUP BY ALL", " GROUP BY ALL HAVING count(*) > 0"]),
    st.sampled_from(["", "", " ORDER BY ALL", " ORDER BY 1"]),
    st.sampled_from(["", "", " LIMIT 1", " LIMIT 0", " OFFSET 1", " LIMIT 100000000000", " LIMIT 1 OFFSET 1"]),
)
_simple_select = st.builds(
    "SELECT {} FROM {}{}".format,
    st.sampled_from(
        [
            "*",
            "region",
            "tier, amount",
            "count(*) AS n",
            "sum(amount) AS s",
            "note || tier AS x",
            "DISTINCT tier",
            "max(amount) - min(amount) AS spread",
            "list(note ORDER BY note) AS l",
        ]
    ),
    mostly(TABLES, BAD_TABLES),
    st.sampled_from(
        [
            "",
            " WHERE amount > 10",
            " WHERE tier IS NULL",
            " WHERE region = 'EU'",
            " ORDER BY 1",
            " WHERE note LIKE '%c'",
            " LIMIT 2",
        ]
    ),
)
statements = st.one_of(
    select_query,
    st.builds(
        "({}) {} ({})".format,
        select_query,
        st.sampled_from(["UNION", "UNION ALL", "UNION BY NAME", "EXCEPT", "INTERSECT"]),
        select_query,
    ),
    st.builds("WITH x AS ({}) SELECT * FROM x".format, select_query),
    st.builds("WITH data AS ({}) SELECT * FROM data".format, select_query),
    st.builds("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) {}".format, select_query),
    st.sampled_from(STATEMENTS),
)
noisy_sql = st.builds(
    "{}{}{}".format,
    mostly(["", " ", "\n", "-- c\n", "/* c */ "], ["/* unterminated ", "'", "SELECT 1; "]),
    statements,
    st.one_of(
        mostly(
            ["", ";", " ;;", " -- tail", "\n"],
            ["; SELECT 1", "; DROP TABLE data", " /*", "'", ")", " UNION SELECT * FROM sources", "\x00"],
        ),
        st.text(alphabet="'\";()-/* \n$?", max_size=4),
    ),
)
sql_texts = st.one_of(statements, statements, noisy_sql)


@pytest.fixture
def sql_world(client, org, admin):
    """Source `mixed` (visible + hidden rows) seen by a member through `region = US`, and
    source `visible` holding only the visible rows, read unfiltered by the admin."""
    h = admin
    member = org.add_user("sql-member@example.com")
    mixed = client.post("/api/v1/sources", json={"name": "mixed", "rows": VISIBLE + HIDDEN}, headers=h).json()["id"]
    visible = client.post("/api/v1/sources", json={"name": "visible", "rows": VISIBLE}, headers=h).json()["id"]
    client.post(f"/api/v1/sources/{mixed}/shares", json={"user_id": member}, headers=h)
    policy = client.post(
        "/api/v1/access/policies",
        json={"name": "us", "row_filters": [{"column": "region", "values": ["US"]}]},
        headers=h,
    ).json()["id"]
    client.post(f"/api/v1/access/policies/{policy}/users", json={"user_ids": [member]}, headers=h)
    member_key = org.key_for(member, scopes=["data:read"], rate_limit_per_minute=FAST)
    return {"mixed": mixed, "visible": visible, "member": org.headers(member_key)}


def run_sql(client, source: str, headers: dict, sql: str):
    return send(client, "POST", f"/api/v1/sources/{source}/query", headers, {"sql": sql, "page_size": 1000})


def test_sql_cannot_reach_past_the_filter(client, org, admin, sql_world):
    # Sanity: the two sides differ without the filter, and agree with it.
    assert run_sql(client, sql_world["mixed"], admin, "SELECT count(*) AS n FROM data").json()["data"] == [{"n": 5}]
    assert (
        run_sql(client, sql_world["mixed"], sql_world["member"], "SELECT count(*) AS n FROM data").json()["data"]
        == run_sql(client, sql_world["visible"], admin, "SELECT count(*) AS n FROM data").json()["data"]
    )
    outcomes = {"ok": 0, "refused": 0}

    @fuzz(120)
    @given(sql=sql_texts)
    def run(sql):
        assert not MARKERS.search(sql)
        filtered = run_sql(client, sql_world["mixed"], sql_world["member"], sql)
        error = check_answer(filtered, {200, 400})
        reference = run_sql(client, sql_world["visible"], admin, sql)
        check_answer(reference, {200, 400})
        if error:
            assert error["code"] == "invalid_query", error
            assert reference.status_code == 400 and reference.json()["error"]["code"] == "invalid_query", reference.text
            outcomes["refused"] += 1
            return
        assert not MARKERS.search(filtered.text), f"hidden rows leaked through {sql!r}: {filtered.text[:500]}"
        assert reference.status_code == 200, (sql, reference.text)
        got, want = filtered.json(), reference.json()
        assert got["columns"] == want["columns"] and got["total_rows"] == want["total_rows"], sql
        if re.search(r"\b(LIMIT|OFFSET)\b", sql, re.I):
            # Which of several tied rows a LIMIT keeps is up to the engine, so compare what
            # may be compared: as many rows, each one of the rows the caller may see.
            assert len(got["data"]) == len(want["data"]), sql
            unlimited = set(
                canonical(run_sql(client, sql_world["visible"], admin, "SELECT * FROM data").json()["data"])
            )
            if got["columns"] == ["region", "tier", "amount", "note"]:
                assert set(canonical(got["data"])) <= unlimited, sql
        else:
            assert canonical(got["data"]) == canonical(want["data"]), sql
        outcomes["ok"] += 1

    run()
    # The grammar reaches both sides of the validator.
    assert outcomes["ok"] >= 10 and outcomes["refused"] >= 10, outcomes


# -- 4. paging, cursors and limits -----------------------------------------------------------

param_values = st.one_of(
    st.integers(1, 30),
    st.integers(1, 30).map(str),
    st.integers(),
    st.sampled_from(
        [0, -1, 1, 100, 101, 200, 201, 1000, 1001, 10_000, 10_001, 100_000_000, 100_000_001, 10**12, 2**63, 10**30]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    url_text,
    st.lists(st.integers(-5, 5), min_size=2, max_size=2),  # the parameter given twice
)
LIST_ENDPOINTS = [
    ("/api/v1/keys", 100),
    ("/api/v1/users", 100),
    ("/api/v1/access/policies", 200),
    ("/api/v1/access/groups", 200),
    ("/api/v1/files", 100),
    ("/api/v1/sources", 100),
    ("/api/v1/data/sources", 100),
    ("/api/v1/connectors", 100),
    ("/api/v1/audit/events", 100),
]


@pytest.fixture
def paging_source(client, org, admin):
    rows = [{"n": i, "tag": f"t{i % 3}"} for i in range(25)]
    return client.post("/api/v1/sources", json={"name": "paged", "rows": rows}, headers=admin).json()["id"]


def test_data_paging_params(client, org, admin, paging_source):
    @fuzz(60)
    @given(
        params=st.fixed_dictionaries(
            {},
            optional={
                "page": param_values,
                "page_size": param_values,
                "format": st.one_of(st.sampled_from(["json", "csv", "parquet", "JSON", "xml"]), url_text),
            },
        )
    )
    def run(params):
        r = client.get(f"/api/v1/sources/{paging_source}/data", params=params, headers=admin)
        check_answer(r, {200, 400})
        if r.status_code == 200 and params.get("format", "json") == "json":
            body = r.json()
            assert len(body["data"]) <= body["page_size"] and body["total_count"] == 25
            offset = (body["page"] - 1) * body["page_size"]
            assert [row["n"] for row in body["data"]] == list(range(25))[offset : offset + body["page_size"]]

    run()


def test_query_paging_fields(client, org, admin, paging_source):
    @fuzz(40)
    @given(
        extra=st.fixed_dictionaries(
            {},
            optional={
                "page": st.one_of(st.integers(1, 30), json_values),
                "page_size": st.one_of(st.integers(1, 30), json_values),
            },
        )
    )
    def run(extra):
        r = send(
            client,
            "POST",
            f"/api/v1/sources/{paging_source}/query",
            admin,
            {"sql": "SELECT n FROM data ORDER BY n", **extra},
        )
        check_answer(r, {200, 400})
        if r.status_code == 200:
            body = r.json()
            offset = (body["page"] - 1) * body["page_size"]
            assert [row["n"] for row in body["data"]] == list(range(25))[offset : offset + body["page_size"]]
            assert body["total_rows"] == 25

    run()


def test_list_limits_and_cursors(client, org, admin, paging_source):
    @fuzz(60)
    @given(
        endpoint=st.sampled_from(LIST_ENDPOINTS),
        params=st.fixed_dictionaries({}, optional={"limit": param_values, "after": st.one_of(url_text, param_values)}),
    )
    def run(endpoint, params):
        path, max_limit = endpoint
        r = client.get(path, params=params, headers=admin)
        check_answer(r, {200, 400})
        if r.status_code == 200:
            body = r.json()
            assert set(body) == {"data", "has_more", "next_cursor"} and len(body["data"]) <= max_limit
            limit = params.get("limit")
            limit = limit[-1] if isinstance(limit, list) else limit  # given twice: the last one counts
            if isinstance(limit, int) or (isinstance(limit, str) and limit.strip().isdigit()):
                assert 1 <= int(limit) <= max_limit and len(body["data"]) <= int(limit)
            assert (body["next_cursor"] is None) == (not body["has_more"])

    run()


AUDIT_BOUNDS = st.one_of(
    url_text,
    st.sampled_from(
        [
            "2020-01-01",
            "9999-12-31",
            "0001-01-01",
            "2020-02-30",
            "2020-01-01T00:00:00Z",
            "2020-01-01T00:00:00+14:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "9999-12-31T23:59:59.999999",
            "2020-01-01T25:00",
            "20200101",
            "2020-W01",
            "2020-001",
            "1" * 40,
        ]
    ),
)


def test_audit_filters(client, org, admin):
    @fuzz(60)
    @given(
        params=st.fixed_dictionaries(
            {},
            optional={name: AUDIT_BOUNDS for name in ("since", "until", "start_date", "end_date")}
            | {name: url_text for name in ("actor_id", "key_id", "action", "target_id")},
        )
    )
    def run(params):
        check_answer(client.get("/api/v1/audit/events", params=params, headers=admin), {200, 400})

    run()


# -- 5. hostile ids in paths ---------------------------------------------------------------

ID_PATHS = [
    "/api/v1/keys/{}",
    "/api/v1/users/{}",
    "/api/v1/users/external/{}",
    "/api/v1/access/policies/{}",
    "/api/v1/access/groups/{}",
    "/api/v1/sources/{}",
    "/api/v1/sources/{}/data",
    "/api/v1/files/{}",
    "/api/v1/sources/{}/shares",
    "/api/v1/data/sources/{}",
]


def test_hostile_ids_in_paths_are_refused_and_audited(client, org, admin):
    """A path id is whatever the client typed: NUL, 5,000 characters, quotes, unicode. It is a
    404 or 400; and the request is audited like any other (an event the audit log cannot
    store must not stop it from storing every later one)."""
    sent = []

    @fuzz(40)
    @given(
        template=st.sampled_from(ID_PATHS),
        value=url_text.filter(lambda v: v.strip() not in ("", ".", "..")),
        method=st.sampled_from(["GET", "DELETE"]),
    )
    def run(template, value, method):
        if method == "DELETE" and template.endswith(("/data", "/shares")):
            method = "GET"
        r = client.request(method, template.format(quote(value, safe="")), headers=admin)
        error = check_answer(r, {400, 404, 405})
        if error["code"] not in ("route_not_found", "method_not_allowed"):  # a "/" in the id: no route, no caller
            sent.append(r.headers["x-request-id"])

    run()
    events = client.get("/api/v1/audit/events", params={"limit": 100}, headers=admin)
    assert events.status_code == 200, events.text
    logged = set()
    after = None
    while True:
        page = client.get(
            "/api/v1/audit/events", params={"limit": 100, **({"after": after} if after else {})}, headers=admin
        ).json()
        logged |= {e["request_id"] for e in page["data"]}
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert set(sent) <= logged, f"{len(set(sent) - logged)} of {len(sent)} requests are missing from the audit log"


# -- regressions: what the fuzzers found ------------------------------------------------------


@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/v1/keys", '{"name": "k", "scopes": ["\\ud800"]}'),
        ("/api/v1/keys", '{"name": "k", "scopes": ["data:read"], "access_policy_ids": ["x\\udfff"]}'),
        (
            "/api/v1/keys",
            '{"name": "k", "scopes": ["data:read"], "source_scope": {"mode": "selected", "source_ids": ["\\ud800"]}}',
        ),
        ("/api/v1/access/policies", '{"name": "p\\ud800"}'),
        ("/api/v1/access/policies", '{"name": "p", "row_filters": [{"column": "a", "values": ["\\udbff"]}]}'),
        ("/api/v1/access/groups", '{"name": "g\\ud800"}'),
        ("/api/v1/sources", '{"name": "s", "rows": [{"a": "\\ud800"}]}'),
        ("/api/v1/sources", '{"name": "s", "rows": [{"\\ud800": 1}]}'),
    ],
)
def test_lone_surrogate_in_json_is_400_and_changes_nothing(client, org, admin, path, body):
    """A lone surrogate escape is valid JSON but not Unicode: it was a 500 (the database
    driver or the response encoder failed on it); the JSON decoder now refuses it."""
    keys, policies = count(org.settings, ApiKey, org.id), count(org.settings, Policy, org.id)
    r = client.post(path, content=body.encode(), headers={**admin, "Content-Type": "application/json"})
    error = check_answer(r, {400})
    assert error["code"] == "invalid_parameters" and "lone surrogate" in error["message"], error
    assert (count(org.settings, ApiKey, org.id), count(org.settings, Policy, org.id)) == (keys, policies)
    # A surrogate *pair* is just an escaped character, and fine.
    r = send(client, "POST", "/api/v1/access/groups", admin, {"name": "emoji 😀"})
    assert r.status_code == 201 and r.json()["name"] == "emoji 😀"


@pytest.mark.parametrize(
    "content_type,body,reason",
    [
        ("application/json", b'{"name": "\xff\xfe"}', "not UTF-8"),
        ("application/json", b"\xef\xbb\xbf{}" + b"\x80", "not UTF-8"),
        ("multipart/form-data", b"--x\r\nno boundary given", "could not be parsed"),
    ],
)
def test_unreadable_body_is_an_invalid_request_error(client, org, admin, content_type, body, reason):
    """A body that cannot be read was `{"type": "api_error", "code": "http_error"}`: the
    server-fault type on a client's mistake."""
    path = "/api/v1/files/upload" if content_type.startswith("multipart") else "/api/v1/access/groups"
    r = client.post(path, content=body, headers={**admin, "Content-Type": content_type})
    error = check_answer(r, {400})
    assert error["code"] == "invalid_parameters" and reason in error["message"], error


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "/api/v1/keys", {"name": "a\x00b", "scopes": ["data:read"]}),
        ("POST", "/api/v1/keys", {"name": "k", "scopes": ["data:read"], "bound_user_id": "user_\x00"}),
        ("POST", "/api/v1/keys", {"name": "k", "scopes": ["data:read"], "access_policy_ids": ["pol_\x00"]}),
        ("POST", "/api/v1/users", {"email": "a\x00@example.com"}),
        ("POST", "/api/v1/users", {"email": "x@example.com", "external_id": "e\x00"}),
        ("POST", "/api/v1/users", {"email": "y@example.com", "first_name": "\x00"}),
        ("POST", "/api/v1/sources", {"name": "s\x00", "rows": [{"a": 1}]}),
        ("POST", "/api/v1/sources", {"name": "s", "description": "\x00", "rows": [{"a": 1}]}),
        ("POST", "/api/v1/access/resolve", {"user_id": "u\x00", "source_id": "src_x"}),
        ("PUT", "/api/v1/access/users/user_x/policies", {"policy_ids": ["p\x00"]}),
        ("GET", "/api/v1/keys?search=a%00", None),
        ("GET", "/api/v1/keys?after=key_%00", None),
        ("GET", "/api/v1/users?external_id=%00", None),
        ("GET", "/api/v1/audit/events?action=%00", None),
        ("GET", "/api/v1/sources/src_%00", None),
        ("GET", "/api/v1/files/file_%00", None),
        ("PUT", "/api/v1/users/external/a%00b", {}),
    ],
)
def test_nul_in_text_is_400_on_every_backend(client, org, admin, method, path, body):
    """PostgreSQL cannot hold NUL in text, not even as a query parameter: each of these was a
    500 there (and a 2xx or 404 on SQLite). Now a 400 on both, nothing stored, and audited."""
    keys, users = count(org.settings, ApiKey, org.id), len(client.get("/api/v1/users", headers=admin).json()["data"])
    r = send(client, method, path, admin, body)
    error = check_answer(r, {400})
    assert error["code"] == "invalid_parameters" and "NUL" in error["message"], error
    assert count(org.settings, ApiKey, org.id) == keys
    assert len(client.get("/api/v1/users", headers=admin).json()["data"]) == users
    events = client.get("/api/v1/audit/events", params={"limit": 20}, headers=admin)
    assert r.headers["x-request-id"] in {e["request_id"] for e in events.json()["data"]}


@pytest.mark.parametrize(
    "path,headers",
    [
        ("/api/v1/sources/src_" + "a" * 300, {}),  # target_id longer than its column
        ("/api/v1/sources/" + "b" * 2100, {}),  # path longer than its column
        ("/api/v1/files/file_%00x", {}),  # NUL in path and target_id
        ("/api/v1/org/settings", {"User-Agent": "u" * 600}),  # user agent longer than its column
    ],
)
def test_an_odd_request_cannot_stop_the_audit_log(client, org, admin, path, headers):
    """A request event the database refuses (on PostgreSQL: NUL, or text longer than its
    column) used to be retried forever by the journal shipper, so no later event of any
    organization was ever stored, and every audit read was a 500. Events are now stored
    with NUL replaced and text cut to fit."""
    r = client.get(path, headers={**admin, **headers})
    assert r.status_code in (200, 400, 404), r.text
    after = client.get("/api/v1/org/settings", headers=admin)
    events = client.get("/api/v1/audit/events", params={"limit": 20}, headers=admin)
    assert events.status_code == 200, events.text
    by_request = {e["request_id"]: e for e in events.json()["data"]}
    assert r.headers["x-request-id"] in by_request and after.headers["x-request-id"] in by_request
    logged = by_request[r.headers["x-request-id"]]
    assert "\x00" not in (logged["path"] or "") and len(logged["path"]) <= 2000
    assert logged["target_id"] is None or len(logged["target_id"]) <= 200


def test_a_change_with_a_long_user_agent_is_recorded(client, org, admin):
    """The change's own audit event carries the user agent: longer than its column, it failed
    the change itself on PostgreSQL (500)."""
    r = send(client, "POST", "/api/v1/access/groups", {**admin, "User-Agent": "agent/" + "x" * 600}, {"name": "ua"})
    assert r.status_code == 201, r.text
    events = client.get("/api/v1/audit/events", params={"action": "group.created", "limit": 5}, headers=admin).json()
    assert [len(e["user_agent"]) for e in events["data"] if e["target_id"] == r.json()["id"]] == [500]


@pytest.mark.parametrize(
    "params",
    [
        {"until": "9999-12-31"},
        {"end_date": "9999-12-31"},
        {"since": "0001-01-01T00:00:00+01:00"},
        {"until": "9999-12-31T23:59:59-01:00"},
    ],
)
def test_audit_bounds_outside_the_calendar_are_400(client, org, admin, params):
    """A bound that has no UTC time (the day after 9999-12-31, an hour before year 1) was an
    OverflowError: 500."""
    error = check_answer(client.get("/api/v1/audit/events", params=params, headers=admin), {400})
    assert error["code"] == "invalid_date"


def test_sign_in_with_nul_in_the_email_is_a_400_page(client):
    """The sign-in form looked the email up as typed: with a NUL, a 500 on PostgreSQL."""
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"email": "a\x00@example.com", "password": "x", "csrf_token": token})
    assert r.status_code == 400 and "Enter your email and password." in r.text
