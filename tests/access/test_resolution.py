"""Policy semantics, table-driven: one user, a set of policies reaching them, one source."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from tidegate.access import policies
from tidegate.db.engine import get_engine

from .conftest import visible

ALL = "ALL"
NONE = "NONE"
SRC = "src_orders"
OTHER = "src_other"


def P(*filters, sources=None):  # noqa: N802 - table shorthand
    return {"row_filters": [{"column": c, "values": list(v)} for c, v in filters], "source_ids": sources}


CASES = [
    # (policies by name, direct policy names, {group: [policy names]}, deny_by_default, source columns, expected)
    pytest.param({}, [], {}, False, ["region"], ALL, id="no-policy-permissive"),
    pytest.param({}, [], {}, True, ["region"], NONE, id="no-policy-deny-by-default"),
    pytest.param(
        {"a": P(("region", ["US"]))}, ["a"], {}, False, ["region", "amount"], {"region": {"US"}}, id="auto-applies"
    ),
    pytest.param(
        {"a": P(("Country", ["FR"]))},
        ["a"],
        {},
        False,
        ["COUNTRY"],
        {"COUNTRY": {"FR"}},
        id="column-case-insensitive-uses-source-name",
    ),
    pytest.param(
        {"a": P(("country", ["FR"]))},
        ["a"],
        {},
        False,
        ["Country"],
        {"Country": {"FR"}},
        id="column-case-insensitive-2",
    ),
    pytest.param({"a": P(("region", ["US"]))}, ["a"], {}, False, ["amount"], ALL, id="auto-absent-column-skipped"),
    pytest.param(
        {"a": P(("region", ["US"]))}, ["a"], {}, True, ["amount"], NONE, id="auto-absent-column-deny-by-default"
    ),
    pytest.param(
        {"a": P(("region", ["US"]), ("tier", ["gold"]))},
        ["a"],
        {},
        False,
        ["region"],
        {"region": {"US"}},
        id="auto-partial-columns-apply-present-ones",
    ),
    pytest.param(
        {"a": P(("region", ["US"])), "b": P(("region", ["EU"]))},
        ["a", "b"],
        {},
        False,
        ["region"],
        {"region": {"US", "EU"}},
        id="same-column-or",
    ),
    pytest.param(
        {"a": P(("region", ["US"])), "b": P(("REGION", ["EU"]))},
        ["a", "b"],
        {},
        False,
        ["Region"],
        {"Region": {"US", "EU"}},
        id="same-column-or-across-case",
    ),
    pytest.param(
        {"a": P(("region", ["US"])), "b": P(("tier", ["gold"]))},
        ["a", "b"],
        {},
        False,
        ["region", "tier"],
        {"region": {"US"}, "tier": {"gold"}},
        id="different-columns-and",
    ),
    pytest.param(
        {"a": P(("region", ["US", "EU"]), ("tier", ["gold"])), "b": P(("region", ["APAC"]))},
        ["a", "b"],
        {},
        False,
        ["region", "tier"],
        {"region": {"US", "EU", "APAC"}, "tier": {"gold"}},
        id="mixed-union-and-intersection",
    ),
    pytest.param(
        {"a": P(("region", ["US"]), sources=[SRC])},
        ["a"],
        {},
        False,
        ["region"],
        {"region": {"US"}},
        id="explicit-bound-here",
    ),
    pytest.param(
        {"a": P(("region", ["US"]), sources=[OTHER])}, ["a"], {}, False, ["region"], ALL, id="explicit-bound-elsewhere"
    ),
    pytest.param(
        {"a": P(("region", ["US"]), sources=[OTHER])},
        ["a"],
        {},
        True,
        ["region"],
        NONE,
        id="explicit-bound-elsewhere-deny-by-default",
    ),
    pytest.param(
        {"a": P(("region", ["US"]), sources=[SRC])},
        ["a"],
        {},
        False,
        ["amount"],
        NONE,
        id="explicit-missing-column-fails-closed",
    ),
    pytest.param(
        {"a": P(("region", ["US"]), sources=[SRC]), "b": P(("amount", ["1"]))},
        ["a", "b"],
        {},
        False,
        ["amount"],
        NONE,
        id="explicit-fail-closed-beats-other-grants",
    ),
    pytest.param(
        {"a": P(sources=[SRC])},
        ["a"],
        {},
        True,
        ["region"],
        ALL,
        id="filterless-explicit-grants-all-under-deny-by-default",
    ),
    pytest.param(
        {"a": P(("region", ["US"]))}, [], {"g": ["a"]}, False, ["region"], {"region": {"US"}}, id="group-inherited"
    ),
    pytest.param(
        {"a": P(("region", ["US"])), "b": P(("region", ["EU"]))},
        ["a"],
        {"g": ["b"]},
        False,
        ["region"],
        {"region": {"US", "EU"}},
        id="group-and-direct-same-column-or",
    ),
    pytest.param(
        {"a": P(("region", ["US"])), "b": P(("tier", ["gold"]))},
        ["a"],
        {"g": ["b"]},
        False,
        ["region", "tier"],
        {"region": {"US"}, "tier": {"gold"}},
        id="group-and-direct-different-columns-and",
    ),
    pytest.param(
        {"a": P(("region", ["US"])), "b": P(("region", ["EU"]))},
        ["a"],
        {"g": ["a", "b"], "h": ["b"]},
        False,
        ["region"],
        {"region": {"US", "EU"}},
        id="same-policy-via-several-paths",
    ),
    pytest.param(
        {"a": P(("region", ["US"]))},
        [],
        {"g": ["a"]},
        True,
        ["region"],
        {"region": {"US"}},
        id="group-policy-grants-under-deny-by-default",
    ),
]


def _materialize(world, specs, direct, groups, deny):
    user = world.user()
    ids = {name: world.policy(name=name, **spec) for name, spec in specs.items()}
    for name in direct:
        with world.tx() as s:
            policies.assign_users(s, world.admin, policies.get_policy(s, world.id, ids[name]), [user])
    for group_name, names in groups.items():
        world.group(name=group_name, members=[user], policy_ids=[ids[n] for n in names])
    world.deny_by_default(deny)
    return user, ids


def _shape(row_filter):
    if row_filter.deny_all:
        return NONE
    if row_filter.is_unrestricted:
        return ALL
    shape = {}
    for clause in row_filter.clauses:
        assert clause.column not in shape, "one clause per column within one principal"
        shape[clause.column] = set(clause.values)
    return shape


@pytest.mark.parametrize("specs, direct, groups, deny, columns, expected", CASES)
def test_policy_semantics(world, specs, direct, groups, deny, columns, expected):
    user, ids = _materialize(world, specs, direct, groups, deny)
    row_filter = world.user_filter(user, SRC, columns)
    assert _shape(row_filter) == expected
    if expected == NONE:
        assert row_filter.reasons, "a denial always says why"
    if expected not in (ALL, NONE):
        assert set(row_filter.policy_ids) <= set(ids.values()) and row_filter.policy_ids


def test_explicit_fail_closed_reason_names_policy_and_column(world):
    user = world.user()
    pid = world.policy(
        name="EMEA only", row_filters=[{"column": "Region", "values": ["EU"]}], source_ids=[SRC], users=[user]
    )
    row_filter = world.user_filter(user, SRC, ["amount"])
    assert row_filter.deny_all
    assert pid in row_filter.policy_ids
    (reason,) = row_filter.reasons
    assert pid in reason and "'EMEA only'" in reason and "'Region'" in reason and SRC in reason


def test_deny_by_default_reason(world):
    user = world.user()
    world.deny_by_default(True)
    row_filter = world.user_filter(user, SRC, ["region"])
    assert row_filter.deny_all and "denies by default" in row_filter.reasons[0]
    world.deny_by_default(False)
    assert world.user_filter(user, SRC, ["region"]).is_unrestricted


def test_rows_seen(world):
    """The composed filter, applied to rows: the OR/AND rules in terms of what a user sees."""
    rows = [
        {"region": "US", "tier": "gold"},
        {"region": "US", "tier": "silver"},
        {"region": "EU", "tier": "gold"},
        {"region": "APAC", "tier": "gold"},
    ]
    user = world.user()
    world.policy(row_filters=[{"column": "region", "values": ["US"]}], users=[user])
    a = world.policy(row_filters=[{"column": "region", "values": ["EU"]}])
    b = world.policy(row_filters=[{"column": "tier", "values": ["gold"]}])
    world.group(members=[user], policy_ids=[a, b])
    seen = visible(world.user_filter(user, SRC, ["region", "tier"]), rows)
    assert seen == [{"region": "US", "tier": "gold"}, {"region": "EU", "tier": "gold"}]


def test_columns_differing_only_by_case_are_all_restricted(world):
    user = world.user()
    world.policy(row_filters=[{"column": "region", "values": ["US"]}], users=[user])
    row_filter = world.user_filter(user, SRC, ["Region", "REGION"])
    assert _shape(row_filter) == {"Region": {"US"}, "REGION": {"US"}}


def test_inactive_or_foreign_user_fails_closed(world, make_world):
    user = world.user()
    world.deactivate(user)
    assert world.user_filter(user, SRC, ["region"]).deny_all
    stranger = make_world().user()
    assert world.user_filter(stranger, SRC, ["region"]).deny_all
    assert world.user_filter("user_nope", SRC, ["region"]).deny_all


def test_changes_are_seen_by_the_next_resolution(world):
    """Nothing is cached: each step is its own transaction, like consecutive requests."""
    user = world.user()
    pid = world.policy(row_filters=[{"column": "region", "values": ["US"]}], users=[user])
    assert _shape(world.user_filter(user, SRC, ["region"])) == {"region": {"US"}}
    with world.tx() as s:
        policies.update_policy(
            s, world.admin, policies.get_policy(s, world.id, pid), row_filters=[{"column": "region", "values": ["EU"]}]
        )
    assert _shape(world.user_filter(user, SRC, ["region"])) == {"region": {"EU"}}
    with world.tx() as s:
        policies.update_policy(s, world.admin, policies.get_policy(s, world.id, pid), source_ids=[OTHER])
    assert world.user_filter(user, SRC, ["region"]).is_unrestricted
    with world.tx() as s:
        policies.update_policy(s, world.admin, policies.get_policy(s, world.id, pid), source_ids=[])
    gid = world.group(members=[user])
    with world.tx() as s:
        policies.remove_user(s, world.admin, policies.get_policy(s, world.id, pid), user)
    assert world.user_filter(user, SRC, ["region"]).is_unrestricted
    with world.tx() as s:
        policies.assign_group_policies(s, world.admin, policies.get_group(s, world.id, gid), [pid])
    assert _shape(world.user_filter(user, SRC, ["region"])) == {"region": {"EU"}}
    with world.tx() as s:
        policies.remove_group_member(s, world.admin, policies.get_group(s, world.id, gid), user)
    assert world.user_filter(user, SRC, ["region"]).is_unrestricted
    with world.tx() as s:
        policies.add_group_members(s, world.admin, policies.get_group(s, world.id, gid), [user])
    assert not world.user_filter(user, SRC, ["region"]).is_unrestricted
    with world.tx() as s:
        policies.delete_group(s, world.admin, policies.get_group(s, world.id, gid))
    assert world.user_filter(user, SRC, ["region"]).is_unrestricted


class _Counter:
    def __init__(self, url):
        self.engine = get_engine(url)
        self.count = 0

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._hit)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._hit)

    def _hit(self, *args):
        self.count += 1


def test_resolution_is_a_few_queries(world):
    user, other = world.user(), world.user()
    pids = [world.policy(row_filters=[{"column": "region", "values": [f"R{i}"]}], users=[user]) for i in range(5)]
    world.group(members=[user], policy_ids=pids[:2])
    world.group(members=[user], policy_ids=pids[2:])
    key = world.key(user, access_policy_ids=pids[:2], bound_user_id=other)
    from tidegate.credentials.bounds import restrictions_of
    from tidegate.credentials.models import ApiKey

    with world.tx() as s:
        api_key = restrictions_of(s.get(ApiKey, key))
        with _Counter(world.url) as counter:
            policies.resolve_user_filter(s, world.id, user, SRC, ["region"])
        assert counter.count <= 2
        with _Counter(world.url) as counter:
            row_filter = policies.resolve_key_filter(s, api_key, SRC, ["region"])
        assert counter.count <= 5
        assert not row_filter.deny_all
