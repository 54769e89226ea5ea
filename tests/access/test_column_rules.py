"""Column rules (issue 14 §1) as values and as resolved: matching like row filters, hide beats
mask, rules only add up (between policies, between a key's principals, when narrowing), and
every cache key of a read changes with them."""

from __future__ import annotations

import pytest

from tidegate.core.columnrules import ColumnRules
from tidegate.core.rowfilter import Clause, RowFilter

SRC = "src_people"
COLUMNS = ["Name", "email", "EMAIL", "salary", "region"]


def rules_of(row_filter: RowFilter) -> tuple[list[str], list[str]]:
    return sorted(row_filter.column_rules.hidden), sorted(row_filter.column_rules.masked)


# -- the values ---------------------------------------------------------------------------


def test_hide_beats_mask_in_one_value_and_when_combined():
    assert ColumnRules(hidden=frozenset({"a"}), masked=frozenset({"a", "b"})).masked == frozenset({"b"})
    one = ColumnRules(masked=frozenset({"a"}))
    other = ColumnRules(hidden=frozenset({"a"}), masked=frozenset({"c"}))
    both = one.both(other)
    assert both.hidden == {"a"} and both.masked == {"c"}
    assert both == other.both(one)
    with pytest.raises(TypeError):
        ColumnRules(hidden={"a"})  # type: ignore[arg-type]  (a mutable set would be shared)


def test_a_row_filter_carries_its_column_rules_into_equality_and_cache_keys():
    plain = RowFilter(clauses=(Clause("region", frozenset({"EU"})),))
    masked = RowFilter(clauses=plain.clauses, column_rules=ColumnRules(masked=frozenset({"email"})))
    hidden = RowFilter(clauses=plain.clauses, column_rules=ColumnRules(hidden=frozenset({"email"})))
    assert len({plain.cache_key(), masked.cache_key(), hidden.cache_key()}) == 3
    assert plain != masked != hidden
    assert not masked.is_unrestricted and not RowFilter(clauses=(), column_rules=masked.column_rules).is_unrestricted
    assert RowFilter(clauses=()).is_unrestricted
    combined = plain.both(masked).both(hidden)
    assert rules_of(combined) == (["email"], [])
    with pytest.raises(TypeError):
        RowFilter(clauses=(), column_rules={"hidden": ["email"]})  # type: ignore[arg-type]


def test_narrowing_an_access_only_adds_column_rules():
    from tidegate.access.sources import unrestricted_access
    from tidegate.catalog.snapshots import VersionSnapshot

    version = VersionSnapshot("ver_1", SRC, "org_1", None, 1, (("email", "string"), ("salary", "integer")), ())
    access = unrestricted_access(version, reason="a test of narrowing")
    assert access.columns == ["email", "salary"]
    narrowed = access.narrowed(RowFilter(clauses=(), column_rules=ColumnRules(hidden=frozenset({"salary"}))))
    assert narrowed.columns == ["email"] and narrowed.column_types == (("email", "string"),)
    again = narrowed.narrowed(RowFilter(clauses=(), column_rules=ColumnRules(masked=frozenset({"salary", "email"}))))
    assert again.columns == ["email"] and again.masked_columns == {"email"}  # still hidden: hide beats mask
    assert again.narrowed(RowFilter(clauses=())).columns == ["email"]  # an empty filter gives nothing back


# -- resolution ---------------------------------------------------------------------------


def test_rules_match_case_insensitively_every_column_of_that_name(world):
    user = world.user()
    world.policy(
        column_rules=[{"column": "EMAIL", "action": "mask"}, {"column": "name", "action": "hide"}], users=[user]
    )
    resolved = world.user_filter(user, SRC, COLUMNS)
    assert rules_of(resolved) == (["Name"], ["EMAIL", "email"])
    assert resolved.clauses == () and not resolved.deny_all  # no row filter: every row


def test_rules_of_several_policies_add_up_and_hide_beats_mask(world):
    user = world.user()
    world.policy(column_rules=[{"column": "salary", "action": "mask"}], users=[user])
    world.policy(
        column_rules=[{"column": "salary", "action": "hide"}, {"column": "region", "action": "mask"}], users=[user]
    )
    group_policy = world.policy(column_rules=[{"column": "name", "action": "mask"}])
    world.group(members=[user], policy_ids=[group_policy])
    assert rules_of(world.user_filter(user, SRC, COLUMNS)) == (["salary"], ["Name", "region"])


def test_auto_rules_skip_sources_without_the_column_and_explicit_ones_fail_closed(world):
    user = world.user()
    world.policy(column_rules=[{"column": "ssn", "action": "hide"}], users=[user])
    assert rules_of(world.user_filter(user, SRC, COLUMNS)) == ([], [])
    assert not world.user_filter(user, SRC, COLUMNS).deny_all
    world.policy(source_ids=[SRC], column_rules=[{"column": "ssn", "action": "hide"}], users=[user])
    closed = world.user_filter(user, SRC, COLUMNS)
    assert closed.deny_all and any("ssn" in reason for reason in closed.reasons)
    assert not world.user_filter(user, "src_elsewhere", COLUMNS).deny_all  # bound to SRC only


def test_a_rule_never_makes_a_policy_apply_for_rows(world):
    world.deny_by_default(True)
    user = world.user()
    world.policy(
        row_filters=[{"column": "department", "values": ["sales"]}],
        column_rules=[{"column": "salary", "action": "hide"}],
        users=[user],
    )
    resolved = world.user_filter(user, SRC, COLUMNS)
    assert resolved.deny_all  # its filter column is absent: no policy applies for rows
    assert rules_of(resolved) == (["salary"], [])  # (the rule still holds for the columns)


@pytest.mark.parametrize("binding", ["auto", "explicit"])
def test_a_policy_with_column_rules_only_grants_no_rows_when_the_org_denies_by_default(world, binding):
    world.deny_by_default(True)
    user = world.user()
    world.policy(
        source_ids=[SRC] if binding == "explicit" else None,
        column_rules=[{"column": "salary", "action": "hide"}],
        users=[user],
    )
    resolved = world.user_filter(user, SRC, COLUMNS)
    assert resolved.deny_all  # a policy made to hide a column opens no row
    assert rules_of(resolved) == (["salary"], [])
    # Beside a policy that grants rows, its rule still narrows the columns.
    world.policy(row_filters=[{"column": "region", "values": ["EU"]}], users=[user])
    both = world.user_filter(user, SRC, COLUMNS)
    assert not both.deny_all and [c.column for c in both.clauses] == ["region"]
    assert rules_of(both) == (["salary"], [])


def test_a_key_adds_its_creators_its_own_and_its_bound_users_rules(world):
    creator, bound = world.user(), world.user()
    world.policy(column_rules=[{"column": "salary", "action": "hide"}], users=[creator])
    world.policy(column_rules=[{"column": "name", "action": "mask"}], users=[bound])
    own = world.policy(column_rules=[{"column": "email", "action": "mask"}, {"column": "salary", "action": "mask"}])
    key = world.key(creator, access_policy_ids=[own], bound_user_id=bound)
    assert rules_of(world.key_filter(key, SRC, COLUMNS)) == (["salary"], ["EMAIL", "Name", "email"])
    plain = world.key(creator)
    assert rules_of(world.key_filter(plain, SRC, COLUMNS)) == (["salary"], [])


def test_admins_are_subject_like_anyone(world):
    world.policy(column_rules=[{"column": "salary", "action": "hide"}], users=[world.admin_id])
    assert rules_of(world.user_filter(world.admin_id, SRC, COLUMNS)) == (["salary"], [])
