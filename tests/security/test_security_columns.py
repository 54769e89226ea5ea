"""Issue 14 §1: column rules (hide and mask) on every way out of the API.

A member reads an org-shared source of people; policies hide `salary` and mask `email`
(text: first character + `***`, numbers and dates: null). Each test tries to get the real
values back through one path: pages, exports, /query's SQL (filters, grouping, ordering,
aggregates, joins), distinct values, metadata, writes; and checks composition (several
policies, a key's own policies), that admins are subject too, and the validation of rules.
"""

from __future__ import annotations

import csv
import io

import pyarrow.parquet as pq
import pytest
from columns_world import api, assert_no_secret, assign, create_policy, create_source


@pytest.fixture
def people(client, org):
    """(source id, analyst key): the analyst's policy hides salary and masks email."""
    source = create_source(client, org)
    analyst = org.add_user("analyst@example.com")
    policy = create_policy(
        client,
        org,
        name="hr-columns",
        column_rules=[{"column": "SALARY", "action": "hide"}, {"column": "email", "action": "mask"}],
    )
    assign(client, org, policy, analyst)
    return source, org.key_for(analyst)


def page(client, org, key, source, **params):
    r = client.get(api(f"/sources/{source}/data"), params=params, headers=org.headers(key))
    assert r.status_code == 200, r.text
    return r.json()


def query(client, org, key, source, sql):
    return client.post(api(f"/sources/{source}/query"), json={"sql": sql}, headers=org.headers(key))


def rows_of(client, org, key, source, sql):
    r = query(client, org, key, source, sql)
    assert r.status_code == 200, r.text
    return r.json()["data"]


# ------------------------------------------------------------------------- data pages


def test_pages_drop_hidden_and_mask_masked(client, org, people):
    source, key = people
    body = page(client, org, key, source)
    assert body["columns"] == ["name", "email", "region", "hired"]
    assert [row["email"] for row in body["data"]] == ["a***", "a***", "b***"]
    assert all("salary" not in row for row in body["data"])
    assert [row["name"] for row in body["data"]] == ["Ann", "Amy", "Bob"]  # other columns as they are
    assert_no_secret(str(body))
    # The same page again (answered from the page cache) is still masked.
    assert page(client, org, key, source) == body
    # The admin, whom no policy reaches, still reads every column as it is.
    full = page(client, org, None, source)
    assert full["columns"] == ["name", "email", "salary", "region", "hired"]
    assert full["data"][0]["email"] == "ann@example.com" and full["data"][0]["salary"] == 150000


def test_numbers_and_dates_are_masked_to_null(client, org):
    source = create_source(client, org)
    analyst = org.add_user("analyst@example.com")
    policy = create_policy(
        client,
        org,
        name="nulls",
        column_rules=[{"column": "salary", "action": "mask"}, {"column": "hired", "action": "mask"}],
    )
    assign(client, org, policy, analyst)
    key = org.key_for(analyst)
    body = page(client, org, key, source)
    assert body["columns"] == ["name", "email", "salary", "region", "hired"]
    assert [(row["salary"], row["hired"]) for row in body["data"]] == [(None, None)] * 3
    meta = client.get(api(f"/sources/{source}"), headers=org.headers(key)).json()
    assert meta["column_types"]["salary"] == "integer"  # a masked column keeps its type (its values are null)


def test_csv_and_parquet_exports(client, org, people):
    source, key = people
    r = client.get(api(f"/sources/{source}/data"), params={"format": "csv"}, headers=org.headers(key))
    assert r.status_code == 200
    assert_no_secret(r.text)
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["name", "email", "region", "hired"]
    assert [row["email"] for row in rows] == ["a***", "a***", "b***"]

    r = client.get(api(f"/sources/{source}/data"), params={"format": "parquet"}, headers=org.headers(key))
    assert r.status_code == 200
    table = pq.read_table(io.BytesIO(r.content))
    assert table.column_names == ["name", "email", "region", "hired"]
    assert table.column("email").to_pylist() == ["a***", "a***", "b***"]
    assert_no_secret(str(table.to_pylist()))


def test_distinct_values(client, org, people):
    source, key = people
    hidden = client.get(api(f"/sources/{source}/columns/salary/values"), headers=org.headers(key))
    unknown = client.get(api(f"/sources/{source}/columns/nosuch/values"), headers=org.headers(key))
    assert hidden.status_code == unknown.status_code == 400
    assert hidden.json()["error"]["code"] == unknown.json()["error"]["code"] == "unknown_column"
    assert hidden.json()["error"]["message"] == unknown.json()["error"]["message"].replace("nosuch", "salary")
    masked = client.get(api(f"/sources/{source}/columns/email/values"), headers=org.headers(key))
    assert masked.status_code == 200 and masked.json()["data"] == ["a***", "b***"]


def test_source_metadata_and_columns_endpoint(client, org, people):
    source, key = people
    one = client.get(api(f"/sources/{source}"), headers=org.headers(key)).json()
    assert one["columns"] == ["name", "email", "region", "hired"]
    assert "salary" not in one["column_types"] and one["column_types"]["email"] == "string"
    assert one["access_controlled"] is True
    listed = client.get(api("/sources"), headers=org.headers(key)).json()["data"]
    assert [s["columns"] for s in listed if s["id"] == source] == [one["columns"]]

    # /access/columns for a caller whom the rules reach: hidden absent, masked flagged.
    admin_key = org.key_for(org.admin_id)
    policy = create_policy(
        client,
        org,
        name="admin-rules",
        column_rules=[{"column": "salary", "action": "hide"}, {"column": "email", "action": "mask"}],
    )
    assign(client, org, policy, org.admin_id)
    r = client.get(api("/access/columns"), params={"source_id": source}, headers=org.headers(admin_key))
    assert r.status_code == 200, r.text
    columns = r.json()["data"][0]["columns"]
    assert [c["name"] for c in columns] == ["name", "email", "region", "hired"]
    assert [c["name"] for c in columns if c["masked"]] == ["email"]


# ------------------------------------------------------------------------- SQL


def test_select_star_omits_hidden_and_referring_to_it_is_unknown(client, org, people):
    source, key = people
    r = query(client, org, key, source, "SELECT * FROM data")
    assert r.status_code == 200 and r.json()["columns"] == ["name", "email", "region", "hired"]
    hidden = query(client, org, key, source, "SELECT salary FROM data")
    unknown = query(client, org, key, source, "SELECT nosuch FROM data")
    assert hidden.status_code == unknown.status_code == 400
    assert hidden.json()["error"]["code"] == unknown.json()["error"]["code"]
    assert hidden.json()["error"]["message"] == unknown.json()["error"]["message"].replace("nosuch", "salary")
    for sql in (
        "SELECT name FROM data WHERE salary > 100000",
        "SELECT name FROM data ORDER BY salary",
        "SELECT max(salary) FROM data",
        'SELECT "SALARY" FROM data',
        "SELECT data.salary FROM data",
    ):
        r = query(client, org, key, source, sql)
        assert r.status_code == 400, sql
        assert_no_secret(r.text)


def test_sql_sees_only_the_masked_values(client, org):
    source = create_source(client, org)
    analyst = org.add_user("analyst@example.com")
    policy = create_policy(
        client,
        org,
        name="mask-all",
        column_rules=[{"column": "salary", "action": "mask"}, {"column": "email", "action": "mask"}],
    )
    assign(client, org, policy, analyst)
    key = org.key_for(analyst)

    def run(sql):
        return rows_of(client, org, key, source, sql)

    assert run("SELECT name FROM data WHERE salary > 100000") == []
    assert run("SELECT count(*) AS n FROM data WHERE salary IS NULL") == [{"n": 3}]
    assert run("SELECT min(salary) AS lo, max(salary) AS hi, sum(salary) AS s, avg(salary) AS a FROM data") == [
        {"lo": None, "hi": None, "s": None, "a": None}
    ]
    assert run("SELECT salary, count(*) AS n FROM data GROUP BY salary") == [{"salary": None, "n": 3}]
    # Ordering by a masked column cannot rank the real values: every key is equal.
    ordered = run("SELECT name, row_number() OVER (ORDER BY salary DESC, name) AS r FROM data ORDER BY r")
    assert [row["name"] for row in ordered] == ["Amy", "Ann", "Bob"]  # by name only
    assert run("SELECT name FROM data WHERE email = 'ann@example.com'") == []
    assert run("SELECT name FROM data WHERE email LIKE 'an%'") == []
    assert run("SELECT DISTINCT length(email) AS l FROM data") == [{"l": 4}]
    assert run("SELECT count(DISTINCT email) AS n FROM data") == [{"n": 2}]  # 'a***' twice: not 3 values
    assert run("SELECT email, count(*) AS n FROM data GROUP BY email ORDER BY email") == [
        {"email": "a***", "n": 2},
        {"email": "b***", "n": 1},
    ]
    # A self-join on the masked column pairs Ann with Amy: the join sees masks, not addresses.
    assert run("SELECT count(*) AS n FROM data a JOIN data b ON a.email = b.email") == [{"n": 5}]
    everything = run("SELECT * FROM data")
    assert_no_secret(str(everything))
    assert run("SELECT md5(email) AS h FROM data WHERE name = 'Ann'") == run("SELECT md5('a***') AS h")


def test_row_filter_on_a_masked_column_uses_the_real_values(client, org):
    source = create_source(client, org)
    analyst = org.add_user("analyst@example.com")
    policy = create_policy(
        client,
        org,
        name="eu-masked",
        row_filters=[{"column": "region", "values": ["EU"]}],
        column_rules=[{"column": "region", "action": "mask"}],
    )
    assign(client, org, policy, analyst)
    key = org.key_for(analyst)
    body = page(client, org, key, source)
    assert [(row["name"], row["region"]) for row in body["data"]] == [("Ann", "E***"), ("Bob", "E***")]
    assert rows_of(client, org, key, source, "SELECT count(*) AS n FROM data WHERE region = 'EU'") == [{"n": 0}]


# ------------------------------------------------------------------------- composition


def test_hide_beats_mask_and_rules_add_up(client, org):
    source = create_source(client, org)
    analyst = org.add_user("analyst@example.com")
    hide = create_policy(client, org, name="hide", column_rules=[{"column": "email", "action": "hide"}])
    mask = create_policy(
        client,
        org,
        name="mask",
        column_rules=[{"column": "Email", "action": "mask"}, {"column": "name", "action": "mask"}],
    )
    assign(client, org, hide, analyst)
    assign(client, org, mask, analyst)
    key = org.key_for(analyst)
    body = page(client, org, key, source)
    assert body["columns"] == ["name", "salary", "region", "hired"]
    assert [row["name"] for row in body["data"]] == ["A***", "A***", "B***"]
    resolved = client.post(
        api("/access/resolve"), json={"user_id": analyst, "source_id": source}, headers=org.headers()
    ).json()
    assert resolved["column_rules"] == {"hidden": ["email"], "masked": ["name"]}
    assert resolved["effective_access"] == "filtered"
    assert sorted(resolved["policy_ids"]) == sorted([hide, mask])


def test_a_key_reads_with_its_creators_and_its_own_rules(client, org):
    source = create_source(client, org)
    analyst = org.add_user("analyst@example.com")
    creator_rule = create_policy(client, org, name="creator", column_rules=[{"column": "salary", "action": "hide"}])
    assign(client, org, creator_rule, analyst)
    key_rule = create_policy(client, org, name="key-own", column_rules=[{"column": "email", "action": "mask"}])
    narrow = org.key_for(analyst, access_policy_ids=[key_rule])
    plain = org.key_for(analyst)
    assert page(client, org, plain, source)["columns"] == ["name", "email", "region", "hired"]
    body = page(client, org, narrow, source)
    assert body["columns"] == ["name", "email", "region", "hired"]
    assert [row["email"] for row in body["data"]] == ["a***", "a***", "b***"]
    # A key of the admin with its own hiding policy: the admin's key hides too.
    admin_key = org.key_for(org.admin_id, access_policy_ids=[creator_rule])
    assert "salary" not in page(client, org, admin_key, source)["columns"]


def test_admins_are_subject_to_column_rules(client, org):
    source = create_source(client, org)
    policy = create_policy(client, org, name="admins-too", column_rules=[{"column": "salary", "action": "hide"}])
    assign(client, org, policy, org.admin_id)
    body = page(client, org, None, source)  # the admin's own Full Access key
    assert "salary" not in body["columns"] and all("salary" not in row for row in body["data"])
    r = query(client, org, None, source, "SELECT sum(salary) FROM data")
    assert r.status_code == 400


def test_explicit_binding_to_a_source_without_the_column_fails_closed(client, org):
    source = create_source(client, org)
    analyst = org.add_user("analyst@example.com")
    policy = create_policy(
        client, org, name="bound", source_ids=[source], column_rules=[{"column": "ssn", "action": "hide"}]
    )
    assign(client, org, policy, analyst)
    body = page(client, org, org.key_for(analyst), source)
    assert body["data"] == []
    resolved = client.post(
        api("/access/resolve"), json={"user_id": analyst, "source_id": source}, headers=org.headers()
    ).json()
    assert resolved["effective_access"] == "none"
    assert any("ssn" in reason and "fails closed" in reason for reason in resolved["reasons"])


def test_auto_rule_applies_only_where_the_column_exists_and_never_opens_rows(client, org):
    """A hide rule must not make a policy "apply" for rows: under deny-by-default a user
    whose only policy hides a column still reads no row of a source its filters miss."""
    source = create_source(client, org)
    analyst = org.add_user("analyst@example.com")
    policy = create_policy(
        client,
        org,
        name="auto",
        row_filters=[{"column": "department", "values": ["sales"]}],
        column_rules=[{"column": "salary", "action": "hide"}],
    )
    assign(client, org, policy, analyst)
    key = org.key_for(analyst)
    body = page(client, org, key, source)
    assert body["columns"] == ["name", "email", "region", "hired"] and len(body["data"]) == 3
    r = client.patch(api("/org/settings"), json={"deny_by_default": True}, headers=org.headers())
    assert r.status_code == 200, r.text
    assert page(client, org, key, source)["data"] == []


# ------------------------------------------------------------------------- changes and caches


def test_a_new_rule_applies_on_the_next_request(client, org):
    source = create_source(client, org)
    analyst = org.add_user("analyst@example.com")
    key = org.key_for(analyst)
    before = page(client, org, key, source)  # fills the caches (access, rows, page)
    assert before["data"][0]["email"] == "ann@example.com"
    query(client, org, key, source, "SELECT * FROM data")
    policy = create_policy(client, org, name="later", column_rules=[{"column": "email", "action": "mask"}])
    assign(client, org, policy, analyst)
    assert page(client, org, key, source)["data"][0]["email"] == "a***"
    assert rows_of(client, org, key, source, "SELECT email FROM data LIMIT 1") == [{"email": "a***"}]
    r = client.patch(
        api(f"/access/policies/{policy}"),
        json={"column_rules": [{"column": "email", "action": "hide"}]},
        headers=org.headers(),
    )
    assert r.status_code == 200 and r.json()["policy"]["column_rules"] == [{"column": "email", "action": "hide"}]
    assert "email" not in page(client, org, key, source)["columns"]
    client.patch(api(f"/access/policies/{policy}"), json={"column_rules": []}, headers=org.headers())
    assert page(client, org, key, source)["data"][0]["email"] == "ann@example.com"


def test_writes_with_column_rules_are_refused(client, org, people):
    source, key = people
    before = page(client, org, None, source)
    appended = client.post(
        api(f"/sources/{source}/rows"),
        json={"rows": [{"name": "Eve", "email": "eve@example.com", "region": "EU"}]},
        headers=org.headers(key),
    )
    assert appended.status_code == 403 and appended.json()["error"]["code"] == "column_rules_restrict_write"
    replaced = client.put(api(f"/sources/{source}/data"), json={"rows": [{"name": "x"}]}, headers=org.headers(key))
    assert replaced.status_code == 403 and replaced.json()["error"]["code"] == "column_rules_restrict_write"
    assert page(client, org, None, source) == before  # nothing changed


# ------------------------------------------------------------------------- policy API


def test_column_rules_in_create_get_list_and_update(client, org):
    rules = [{"column": "salary", "action": "hide"}, {"column": "email", "action": "mask"}]
    r = client.post(api("/access/policies"), json={"name": "cols", "column_rules": rules}, headers=org.headers())
    assert r.status_code == 201 and r.json()["column_rules"] == rules and r.json()["row_filters"] == []
    policy = r.json()["id"]
    assert client.get(api(f"/access/policies/{policy}"), headers=org.headers()).json()["column_rules"] == rules
    listed = client.get(api("/access/policies"), headers=org.headers()).json()["data"]
    assert [p["column_rules"] for p in listed] == [rules]
    # The SDK's get-or-create: the same definition again is the same policy; another is a conflict.
    again = client.post(api("/access/policies"), json={"name": "cols", "column_rules": rules}, headers=org.headers())
    assert again.status_code == 201 and again.json()["id"] == policy
    other = client.post(
        api("/access/policies"), json={"name": "cols", "column_rules": rules[:1]}, headers=org.headers()
    )
    assert other.status_code == 409
    # A policy without column_rules behaves as before: the field is [] in every answer.
    plain = client.post(api("/access/policies"), json={"name": "plain"}, headers=org.headers()).json()
    assert plain["column_rules"] == []
    events = client.get(
        api("/audit/events"), params={"action": "policy.created", "target_id": policy}, headers=org.headers()
    )
    assert events.status_code == 200, events.text
    assert [e["details"]["column_rules"] for e in events.json()["data"]] == [rules]


@pytest.mark.parametrize(
    "rules,code",
    [
        ([{"column": "salary", "action": "drop"}], "invalid_column_rule_action"),
        ([{"column": "salary"}], "invalid_column_rule_action"),
        ([{"column": "", "action": "hide"}], "invalid_column_rules"),
        ([{"column": "  ", "action": "mask"}], "invalid_column_rules"),
        ([{"action": "hide"}], "invalid_column_rules"),
        ([{"column": 3, "action": "hide"}], "invalid_column_rules"),
        ([{"column": "a\x00", "action": "hide"}], "invalid_column_rules"),
        ([{"column": "x" * 201, "action": "hide"}], "invalid_column_rules"),
        ([{"column": "salary", "action": "hide"}, {"column": "SALARY", "action": "mask"}], "invalid_column_rules"),
        ([{"column": "salary", "action": "hide", "extra": 1}], "invalid_column_rules"),
        (["salary"], "invalid_column_rules"),
        ([{"column": f"c{i}", "action": "hide"} for i in range(201)], "invalid_column_rules"),
    ],
)
def test_bad_column_rules_are_refused_and_change_nothing(client, org, rules, code):
    r = client.post(api("/access/policies"), json={"name": "bad", "column_rules": rules}, headers=org.headers())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    assert client.get(api("/access/policies"), headers=org.headers()).json()["data"] == []
    good = create_policy(client, org, name="good", column_rules=[{"column": "a", "action": "hide"}])
    r = client.patch(api(f"/access/policies/{good}"), json={"column_rules": rules}, headers=org.headers())
    assert r.status_code == 400 and r.json()["error"]["code"] == code
    kept = client.get(api(f"/access/policies/{good}"), headers=org.headers()).json()["column_rules"]
    assert kept == [{"column": "a", "action": "hide"}]


def test_column_rules_must_be_a_list(client, org):
    r = client.post(api("/access/policies"), json={"name": "bad", "column_rules": "salary"}, headers=org.headers())
    assert r.status_code == 400


def test_a_restricted_key_cannot_lift_its_own_column_rules(client, org):
    source = create_source(client, org)
    policy = create_policy(client, org, name="admin-rule", column_rules=[{"column": "salary", "action": "hide"}])
    restricted = org.key_for(org.admin_id, access_policy_ids=[policy])
    r = client.patch(api(f"/access/policies/{policy}"), json={"column_rules": []}, headers=org.headers(restricted))
    assert r.status_code == 403 and r.json()["error"]["code"] == "own_restriction"
    assert "salary" not in page(client, org, restricted, source)["columns"]
