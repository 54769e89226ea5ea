"""A key's filter: its creator's AND the key's own policies AND its bound user's."""

from __future__ import annotations

import pytest

from tidegate.access import policies
from tidegate.credentials.bounds import keys_naming_policy, restrictions_of
from tidegate.credentials.models import ApiKey

from .conftest import visible

SRC = "src_sales"
COLUMNS = ["region", "tier"]
ROWS = [{"region": r, "tier": t} for r in ("US", "EU", "APAC") for t in ("gold", "silver")]


def rows_of(row_filter):
    return sorted((r["region"], r["tier"]) for r in visible(row_filter, ROWS))


def f(column, *values):
    return [{"column": column, "values": list(values)}]


@pytest.mark.parametrize(
    "creator_filters, key_filters, bound_filters, expected",
    [
        pytest.param(
            None, None, None, [(r, t) for r in ("APAC", "EU", "US") for t in ("gold", "silver")], id="nothing-anywhere"
        ),
        pytest.param(f("region", "US"), None, None, [("US", "gold"), ("US", "silver")], id="creator-only"),
        pytest.param(
            None,
            f("region", "US"),
            None,
            [("US", "gold"), ("US", "silver")],
            id="key-policy-narrows-unrestricted-creator",
        ),
        pytest.param(
            f("region", "US"),
            f("region", "US", "EU"),
            None,
            [("US", "gold"), ("US", "silver")],
            id="key-policy-cannot-widen",
        ),
        pytest.param(
            f("region", "US", "EU"),
            f("tier", "gold"),
            None,
            [("EU", "gold"), ("US", "gold")],
            id="key-policy-other-column-ands",
        ),
        pytest.param(
            f("region", "US", "EU"),
            None,
            f("region", "EU", "APAC"),
            [("EU", "gold"), ("EU", "silver")],
            id="bound-user-intersects",
        ),
        pytest.param(f("region", "US"), None, f("region", "EU"), [], id="disjoint-creator-and-bound-user"),
        pytest.param(
            f("region", "US", "EU"), f("tier", "silver"), f("region", "EU"), [("EU", "silver")], id="all-three"
        ),
    ],
)
def test_key_composition(world, creator_filters, key_filters, bound_filters, expected):
    creator, bound = world.user(), world.user()
    if creator_filters:
        world.policy(row_filters=creator_filters, users=[creator])
    key_policy_ids = [world.policy(row_filters=key_filters)] if key_filters else None
    if bound_filters:
        world.policy(row_filters=bound_filters, users=[bound])
    key = world.key(creator, access_policy_ids=key_policy_ids, bound_user_id=bound if bound_filters else None)
    assert rows_of(world.key_filter(key, SRC, COLUMNS)) == expected


def test_key_policy_is_not_assigned_to_anyone(world):
    """A key's policy restricts the key only: the creator alone still sees everything."""
    creator = world.user()
    pid = world.policy(row_filters=f("region", "US"))
    key = world.key(creator, access_policy_ids=[pid])
    assert world.user_filter(creator, SRC, COLUMNS).is_unrestricted
    assert rows_of(world.key_filter(key, SRC, COLUMNS)) == [("US", "gold"), ("US", "silver")]


def test_deleted_key_policy_fails_closed(world):
    creator = world.user()
    pid = world.policy(row_filters=f("region", "US"))
    key = world.key(creator, access_policy_ids=[pid])
    with world.tx() as s:
        policies.delete_policy(
            s, world.admin, policies.get_policy(s, world.id, pid), keys_naming_it=keys_naming_policy(s, world.id, pid)
        )
    row_filter = world.key_filter(key, SRC, COLUMNS)
    assert row_filter.deny_all
    assert any(pid in reason and key in reason for reason in row_filter.reasons)


def test_unknown_or_foreign_key_policy_is_refused_at_creation(world, make_world):
    from tidegate.errors import InvalidRequest

    creator = world.user()
    foreign = make_world().policy(row_filters=f("region", "US"))
    for ids in (["pol_does_not_exist"], [foreign]):
        with pytest.raises(InvalidRequest) as refused:
            world.key(creator, access_policy_ids=ids)
        assert refused.value.code == "invalid_policy_ids"


def test_key_policy_deleted_later_fails_closed(world):
    creator = world.user()
    doomed = world.policy(row_filters=f("region", "US"))
    key = world.key(creator, access_policy_ids=[doomed])
    assert not world.key_filter(key, SRC, COLUMNS).deny_all
    with world.tx() as s:
        policies.delete_policy(
            s, None, policies.get_policy(s, world.id, doomed), keys_naming_it=keys_naming_policy(s, world.id, doomed)
        )
    row_filter = world.key_filter(key, SRC, COLUMNS)
    assert row_filter.deny_all and doomed in row_filter.reasons[0]


def test_key_policies_compose_like_a_users(world):
    """Several key policies: same column OR, different column AND; auto skip; explicit fail closed."""
    creator = world.user()
    a = world.policy(row_filters=f("region", "US"))
    b = world.policy(row_filters=f("region", "EU"))
    c = world.policy(row_filters=f("tier", "gold"))
    key = world.key(creator, access_policy_ids=[a, b, c])
    assert rows_of(world.key_filter(key, SRC, COLUMNS)) == [("EU", "gold"), ("US", "gold")]
    # Auto policy whose column the source lacks does not apply to that source.
    assert rows_of(world.key_filter(key, SRC, ["region", "tier", "x"])) == rows_of(world.key_filter(key, SRC, COLUMNS))
    d = world.policy(row_filters=f("customer", "c1"), source_ids=[SRC])
    key2 = world.key(creator, access_policy_ids=[a, d])
    row_filter = world.key_filter(key2, SRC, COLUMNS)
    assert row_filter.deny_all and "'customer'" in row_filter.reasons[0]


def test_key_policies_under_deny_by_default(world):
    """A key policy that does not apply to the source grants nothing when the org denies by default."""
    creator = world.user()
    world.policy(row_filters=f("region", "US", "EU"), users=[creator])
    key_policy = world.policy(row_filters=f("customer", "c1"))  # auto, column absent from SRC
    key = world.key(creator, access_policy_ids=[key_policy])
    assert rows_of(world.key_filter(key, SRC, COLUMNS)) == [
        ("EU", "gold"),
        ("EU", "silver"),
        ("US", "gold"),
        ("US", "silver"),
    ]
    world.deny_by_default(True)
    assert world.key_filter(key, SRC, COLUMNS).deny_all


def test_creator_policies_reach_the_key_live(world):
    creator = world.user()
    key = world.key(creator)
    assert world.key_filter(key, SRC, COLUMNS).is_unrestricted
    world.policy(row_filters=f("region", "APAC"), users=[creator])
    assert rows_of(world.key_filter(key, SRC, COLUMNS)) == [("APAC", "gold"), ("APAC", "silver")]


def test_deactivated_bound_user_or_creator_fails_closed(world):
    creator, bound = world.user(), world.user()
    key = world.key(creator, bound_user_id=bound)
    assert world.key_filter(key, SRC, COLUMNS).is_unrestricted
    world.deactivate(bound)
    row_filter = world.key_filter(key, SRC, COLUMNS)
    assert row_filter.deny_all and bound in row_filter.reasons[0]
    key2 = world.key(creator)
    world.deactivate(creator)
    assert world.key_filter(key2, SRC, COLUMNS).deny_all


def test_resolve_key_view(world):
    creator = world.user()
    pid = world.policy(row_filters=f("region", "US", "EU"), users=[creator])
    kp = world.policy(row_filters=f("region", "EU", "APAC"))
    key = world.key(creator, access_policy_ids=[kp])
    with world.tx() as s:
        view = policies.resolve_key_view(s, restrictions_of(s.get(ApiKey, key)), SRC, COLUMNS).wire()
    assert view["effective_access"] == "filtered"
    assert view["resolved_filters"] == {"row_filters": {"region": ["EU"]}, "has_any_policy": True}
    assert view["where_clause"] == "\"region\" IN ('EU', 'US') AND \"region\" IN ('APAC', 'EU')"
    assert set(view["policy_ids"]) == {pid, kp}
