"""ResolvedAccess (POST /access/resolve) and the display-only where_clause."""

from __future__ import annotations

import sqlite3

import pytest

from tidegate.access import policies
from tidegate.core.rowfilter import Clause, RowFilter

SRC = "src_accounts"


def resolve(world, user, columns, source=SRC):
    with world.tx() as s:
        return policies.resolve_view(s, world.id, user, source, columns).wire()


def test_no_policy_view(world):
    user = world.user()
    view = resolve(world, user, ["region"])
    assert view == {
        "user_id": user,
        "source_id": SRC,
        "source_is_access_controlled": False,
        "effective_access": "full",
        "resolved_filters": {"row_filters": {}, "has_any_policy": False},
        "where_clause": "",
        "policy_ids": [],
        "reasons": view["reasons"],
        "column_rules": {"hidden": [], "masked": []},  # a tidegate extension (column security)
    }
    assert any("all rows" in r for r in view["reasons"])


def test_filtered_view_matches_contract_example(world):
    user = world.user(external_id="crm-42")
    p1 = world.policy(row_filters=[{"column": "Region", "values": ["US-East"]}], users=[user])
    p2 = world.policy(row_filters=[{"column": "tier", "values": ["gold"]}], users=[user])
    view = resolve(world, "crm-42", ["region", "tier", "amount"])  # external ids resolve too
    assert view["user_id"] == user
    assert view["source_is_access_controlled"] is True
    assert view["effective_access"] == "filtered"
    assert view["resolved_filters"] == {
        "row_filters": {"region": ["US-East"], "tier": ["gold"]},
        "has_any_policy": True,
    }
    assert view["where_clause"] == "\"region\" IN ('US-East') AND \"tier\" IN ('gold')"
    assert sorted(view["policy_ids"]) == sorted([p1, p2])
    assert any(p1 in r and "applies" in r for r in view["reasons"])


def test_none_views(world):
    user = world.user()
    pid = world.policy(
        name="bound", row_filters=[{"column": "region", "values": ["US"]}], source_ids=[SRC], users=[user]
    )
    view = resolve(world, user, ["amount"])
    assert view["effective_access"] == "none" and view["where_clause"] == "FALSE"
    assert view["resolved_filters"] == {"row_filters": {}, "has_any_policy": True}
    assert any(pid in r and "'region'" in r and "fails closed" in r for r in view["reasons"])

    other = world.user()
    world.deny_by_default(True)
    view = resolve(world, other, ["amount"], source="src_elsewhere")
    assert view["effective_access"] == "none" and view["where_clause"] == "FALSE"
    assert view["source_is_access_controlled"] is True  # deny-by-default controls every source
    assert view["resolved_filters"]["has_any_policy"] is False


def test_source_is_access_controlled(world):
    user = world.user()
    world.policy(row_filters=[{"column": "region", "values": ["US"]}], source_ids=["src_x"])
    world.policy(row_filters=[{"column": "tier", "values": ["gold"]}])
    assert resolve(world, user, ["amount"])["source_is_access_controlled"] is False
    assert resolve(world, user, ["TIER"])["source_is_access_controlled"] is True  # auto, by column
    assert resolve(world, user, ["amount"], source="src_x")["source_is_access_controlled"] is True
    # Controlled, but not for this user (no policy reaches them): full access.
    assert resolve(world, user, ["TIER"])["effective_access"] == "full"


def test_resolve_view_unknown_user(world):
    from tidegate.errors import NotFound

    with pytest.raises(NotFound) as err, world.tx() as s:
        policies.resolve_view(s, world.id, "user_nope", SRC, ["region"])
    assert err.value.code == "user_not_found"


HOSTILE = [
    pytest.param("name", ["O'Brien"], "\"name\" IN ('O''Brien')", id="quote-in-value"),
    pytest.param('a"b', ["x"], '"a""b" IN (\'x\')', id="double-quote-in-column"),
    pytest.param(
        "we\"ird'col",
        ["'); DROP TABLE t; --", 'a"b'],
        "\"we\"\"ird'col\" IN ('''); DROP TABLE t; --', 'a\"b')",
        id="injection-attempt",
    ),
    pytest.param("region", ["", "back\\slash"], "\"region\" IN ('', 'back\\slash')", id="empty-and-backslash"),
]


@pytest.mark.parametrize("column, values, expected", HOSTILE)
def test_where_clause_quoting(world, column, values, expected):
    user = world.user()
    world.policy(row_filters=[{"column": column, "values": values}], users=[user])
    view = resolve(world, user, [column, "id"])
    assert view["where_clause"] == expected
    # The rendering is display-only, but it must be exact SQL: run it on a table holding those
    # very names and values plus decoys, and it selects exactly the allowed rows.
    db = sqlite3.connect(":memory:")
    quoted = policies.quote_identifier(column)
    db.execute(f"CREATE TABLE t (id INTEGER, {quoted} TEXT)")
    decoys = ["O", "Brien", "x'", "other", "a", "b"]
    rows = [(i, v) for i, v in enumerate(values + [d for d in decoys if d not in values])]
    db.executemany("INSERT INTO t VALUES (?, ?)", rows)
    got = sorted(v for (v,) in db.execute(f"SELECT {quoted} FROM t WHERE {view['where_clause']}"))
    assert got == sorted(values)
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == len(rows)  # nothing was dropped


def test_where_clause_rendering_rules():
    assert policies.where_clause(RowFilter(clauses=())) == ""
    assert policies.where_clause(RowFilter.deny("no")) == "FALSE"
    both = RowFilter(clauses=(Clause("b", frozenset({"2", "1"})),)).both(
        RowFilter(clauses=(Clause("a", frozenset({"z"})),))
    )
    assert policies.where_clause(both) == "\"b\" IN ('1', '2') AND \"a\" IN ('z')"
    assert policies.effective_access(both) == "filtered"
