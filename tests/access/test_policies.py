"""Policy and group services: validation, CRUD, assignments, audit, org isolation."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tidegate.access import policies
from tidegate.access.models import GroupMember, GroupPolicy, PolicyAssignment
from tidegate.audit.models import AuditEvent
from tidegate.credentials.bounds import keys_naming_policy
from tidegate.errors import Conflict, InvalidRequest, NotFound
from tidegate.wire.policies import GroupOut, PolicyDetail


def events(world, action=None):
    with world.tx() as s:
        query = select(AuditEvent).where(AuditEvent.org_id == world.id).order_by(AuditEvent.id)
        if action:
            query = query.where(AuditEvent.action == action)
        return list(s.scalars(query))


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "row_filters, fragment",
    [
        pytest.param("region=US", "must be a list", id="not-a-list"),
        pytest.param([["region", ["US"]]], "must be an object", id="item-not-object"),
        pytest.param([{"column": "", "values": ["US"]}], "non-empty string", id="empty-column"),
        pytest.param([{"column": "   ", "values": ["US"]}], "non-empty string", id="blank-column"),
        pytest.param([{"column": 3, "values": ["US"]}], "non-empty string", id="column-not-string"),
        pytest.param([{"column": "x" * 201, "values": ["US"]}], "at most 200", id="column-too-long"),
        pytest.param([{"column": "a\nb", "values": ["US"]}], "printable", id="column-control-char"),
        pytest.param([{"column": "region", "values": "US"}], "non-empty list", id="values-not-list"),
        pytest.param([{"column": "region", "values": []}], "non-empty list", id="values-empty"),
        pytest.param([{"column": "region", "values": [1]}], "must be strings", id="values-int"),
        pytest.param([{"column": "region", "values": [True]}], "must be strings", id="values-bool"),
        pytest.param([{"column": "region", "values": [None]}], "must be strings", id="values-null"),
        pytest.param([{"column": "region", "values": ["x" * 1001]}], "at most 1000", id="value-too-long"),
        pytest.param([{"column": "region", "values": ["a\x00"]}], "NUL", id="value-nul"),
        pytest.param(
            [{"column": "region", "values": [str(i) for i in range(1001)]}], "at most 1000 values", id="too-many-values"
        ),
        pytest.param([{"column": f"c{i}", "values": ["v"]} for i in range(51)], "at most 50", id="too-many-filters"),
        pytest.param(
            [{"column": "region", "values": ["US"]}, {"column": "REGION", "values": ["EU"]}],
            "case-insensitively",
            id="duplicate-column",
        ),
        pytest.param([{"column": "region", "values": ["US"], "op": "in"}], "unknown field", id="unknown-field"),
    ],
)
def test_row_filter_validation(world, row_filters, fragment):
    with pytest.raises(InvalidRequest) as err, world.tx() as s:
        policies.create_policy(s, world.admin, world.id, name="p", row_filters=row_filters)
    assert err.value.code == "invalid_row_filters"
    assert fragment in err.value.message
    assert events(world, "policy.created") == []


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({"name": ""}, "invalid_name"),
        ({"name": "x" * 201}, "invalid_name"),
        ({"name": "ok", "description": "d" * 2001}, "invalid_description"),
        ({"name": "ok", "source_ids": "src_1"}, "invalid_source_ids"),
        ({"name": "ok", "source_ids": [""]}, "invalid_source_ids"),
        ({"name": "ok", "source_ids": [7]}, "invalid_source_ids"),
    ],
)
def test_policy_field_validation(world, kwargs, code):
    with pytest.raises(InvalidRequest) as err, world.tx() as s:
        policies.create_policy(s, world.admin, world.id, **kwargs)
    assert err.value.code == code


def test_create_normalizes_and_renders(world):
    user = world.user()
    with world.tx() as s:
        p = policies.create_policy(
            s,
            world.admin,
            world.id,
            name="  Sales US ",
            description="US only",
            source_ids=["src_b", "src_a", "src_b"],
            row_filters=[{"column": "Region", "values": ["US", "US", "CA"]}],
        )
        policies.assign_users(s, world.admin, p, [user])
        assert p.id.startswith("pol_")
        view = PolicyDetail.of_assigned(p, policies.policy_user_ids(s, p.id)).model_dump(mode="json")
        assert policies.policy_user_counts(s, [p.id])[p.id] == 1
    assert view["name"] == "Sales US"
    assert view["source_ids"] == ["src_a", "src_b"] and view["binding"] == "explicit"
    assert view["row_filters"] == [{"column": "Region", "values": ["US", "CA"]}]
    assert view["user_count"] == 1 and view["user_ids"] == [user] and view["assigned_user_ids"] == [user]
    assert view["created_at"].endswith("Z")
    (event,) = events(world, "policy.created")
    assert event.target_id == p.id and event.actor_id == world.admin_id
    assert event.details["row_filters"] == [{"column": "Region", "values": ["US", "CA"]}]


def test_duplicate_name_conflicts_within_org_only(world, make_world):
    world.policy(name="Region lock")
    with pytest.raises(Conflict) as err, world.tx() as s:
        policies.create_policy(s, world.admin, world.id, name="Region lock", description="another definition")
    assert err.value.code == "policy_exists" and err.value.status == 409
    make_world().policy(name="Region lock")  # another org may use the name
    other = world.policy(name="Other")
    with pytest.raises(Conflict), world.tx() as s:
        policies.update_policy(s, world.admin, policies.get_policy(s, world.id, other), name="Region lock")


def test_update_records_old_and_new(world):
    pid = world.policy(name="a", row_filters=[{"column": "region", "values": ["US"]}])
    with world.tx() as s:
        p = policies.get_policy(s, world.id, pid)
        created_updated_at = p.updated_at
        policies.update_policy(
            s, world.admin, p, name="b", source_ids=["src_1"], row_filters=[{"column": "region", "values": ["EU"]}]
        )
        policies.update_policy(s, world.admin, p, name="b")  # no change: no event
    (event,) = events(world, "policy.updated")
    assert event.details == {
        "name": {"old": "a", "new": "b"},
        "source_ids": {"old": [], "new": ["src_1"]},
        "row_filters": {
            "old": [{"column": "region", "values": ["US"]}],
            "new": [{"column": "region", "values": ["EU"]}],
        },
    }
    with world.tx() as s:
        p = policies.get_policy(s, world.id, pid)
        assert p.name == "b" and p.source_ids == ["src_1"] and p.updated_at >= created_updated_at
        policies.update_policy(s, world.admin, p, description="why", source_ids=None)
        assert p.source_ids == [] and p.description == "why"


def test_delete_policy(world):
    user = world.user()
    pid = world.policy(row_filters=[{"column": "region", "values": ["US"]}], users=[user])
    gid = world.group(members=[user], policy_ids=[pid])
    key = world.key(user, access_policy_ids=[pid])
    with world.tx() as s:
        policies.delete_policy(
            s, world.admin, policies.get_policy(s, world.id, pid), keys_naming_it=keys_naming_policy(s, world.id, pid)
        )
    with world.tx() as s:
        with pytest.raises(NotFound) as err:
            policies.get_policy(s, world.id, pid)
        assert err.value.code == "policy_not_found"
        assert s.scalars(select(PolicyAssignment).where(PolicyAssignment.policy_id == pid)).all() == []
        assert s.scalars(select(GroupPolicy).where(GroupPolicy.policy_id == pid)).all() == []
        assert policies.group_policy_ids(s, gid) == []
    (event,) = events(world, "policy.deleted")
    assert event.details["user_ids"] == [user] and event.details["group_ids"] == [gid]
    assert event.details["keys_now_failing_closed"] == [key]


def test_list_policies_pages_and_filters_by_name(world, make_world):
    ids = [world.policy(name=f"p{i}") for i in range(3)]
    make_world().policy(name="p0")
    with world.tx() as s:
        page = policies.list_policies(s, world.id, limit=2)
        assert [p.id for p in page] == ids  # limit + 1 rows: the extra says "more"
        assert [p.id for p in policies.list_policies(s, world.id, limit=2, after=ids[1])] == ids[2:]
        assert [p.id for p in policies.list_policies(s, world.id, limit=10, name="p0")] == ids[:1]


# ----------------------------------------------------------------------------- assignments


def test_assign_users_is_additive_and_idempotent(world):
    a, b = world.user(), world.user(external_id="ext-b")
    pid = world.policy()
    with world.tx() as s:
        p = policies.get_policy(s, world.id, pid)
        first = policies.assign_users(s, world.admin, p, [a])
        second = policies.assign_users(s, world.admin, p, [a, "ext-b", b])
        third = policies.assign_users(s, world.admin, p, [a, b])
        assert first.added == [a]
        assert second.added == [b] and second.user_ids == [a, b]
        assert third.added == []
        assert policies.policy_user_ids(s, pid) == sorted([a, b])
    assert [e.details["user_ids"] for e in events(world, "policy.user_assigned")] == [[a], [b]]


def test_assign_users_all_or_nothing(world, make_world):
    a, gone = world.user(), world.user()
    world.deactivate(gone)
    stranger = make_world().user()
    pid = world.policy()
    for bad in ("user_nope", gone, stranger):
        with pytest.raises(InvalidRequest) as err, world.tx() as s:
            policies.assign_users(s, world.admin, policies.get_policy(s, world.id, pid), [a, bad])
        assert err.value.code == "invalid_user_ids" and bad in err.value.message
    with world.tx() as s:
        assert policies.policy_user_ids(s, pid) == []


def test_remove_user(world):
    a = world.user()
    pid = world.policy(users=[a])
    with world.tx() as s:
        p = policies.get_policy(s, world.id, pid)
        assert policies.remove_user(s, world.admin, p, a).removed is True
        assert policies.remove_user(s, world.admin, p, a).removed is False
        with pytest.raises(NotFound) as err:
            policies.remove_user(s, world.admin, p, "user_nope")
        assert err.value.code == "user_not_found"
    assert len(events(world, "policy.user_removed")) == 1


def test_replace_user_policies(world):
    user = world.user()
    p1, p2, p3 = world.policy(users=[user]), world.policy(users=[user]), world.policy()
    with world.tx() as s:
        result = policies.replace_user_policies(s, world.admin, world.id, user, [p2, p3])
    assert result == policies.ReplaceResult(user_id=user, policy_ids=sorted([p2, p3]), added=[p3], removed=[p1])
    (event,) = events(world, "policy.user_policies_replaced")
    assert event.target_id == user and event.details["added"] == [p3] and event.details["removed"] == [p1]
    assert event.details["old"] == sorted([p1, p2]) and event.details["new"] == sorted([p2, p3])
    with world.tx() as s:
        result = policies.replace_user_policies(s, world.admin, world.id, user, [])
        assert result.policy_ids == [] and result.removed == sorted([p2, p3])
        assert policies.direct_policy_ids(s, user) == []


@pytest.mark.parametrize("bad", ["pol_does_not_exist", "FOREIGN"])
def test_replace_is_atomic(world, make_world, bad):
    user = world.user()
    p1, p2, p3 = world.policy(users=[user]), world.policy(users=[user]), world.policy()
    if bad == "FOREIGN":
        bad = make_world().policy()
    before = len(events(world))
    with pytest.raises(InvalidRequest) as err, world.tx() as s:
        policies.replace_user_policies(s, world.admin, world.id, user, [p3, bad, p1])
    assert err.value.code == "invalid_policy_ids" and bad in err.value.message
    with world.tx() as s:
        assert policies.direct_policy_ids(s, user) == sorted([p1, p2])
    assert len(events(world)) == before


def test_replace_leaves_group_policies_alone(world):
    user = world.user()
    gp = world.policy(row_filters=[{"column": "region", "values": ["US"]}])
    world.group(members=[user], policy_ids=[gp])
    with world.tx() as s:
        policies.replace_user_policies(s, world.admin, world.id, user, [])
    assert not world.user_filter(user, "src", ["region"]).is_unrestricted


# ----------------------------------------------------------------------------- groups


def test_group_lifecycle_and_audit(world):
    a, b = world.user(), world.user()
    p1, p2 = world.policy(), world.policy()
    with world.tx() as s:
        g = policies.create_group(s, world.admin, world.id, name="Sales", description="team")
        assert g.id.startswith("grp_")
        assert policies.add_group_members(s, world.admin, g, [a, b]) == [a, b]
        assert policies.add_group_members(s, world.admin, g, [a]) == []
        assert policies.assign_group_policies(s, world.admin, g, [p1, p2]) == [p1, p2]
        assert policies.assign_group_policies(s, world.admin, g, [p1]) == []
        assert policies.remove_group_member(s, world.admin, g, b) is True
        assert policies.remove_group_member(s, world.admin, g, b) is False
        assert policies.remove_group_policy(s, world.admin, g, p2) is True
        assert policies.remove_group_policy(s, world.admin, g, p2) is False
        policies.update_group(s, world.admin, g, name="Sales EMEA")
        view = GroupOut.of(
            g, member_ids=policies.group_member_ids(s, g.id), policy_ids=policies.group_policy_ids(s, g.id)
        ).model_dump(mode="json")
        gid = g.id
    assert view["name"] == "Sales EMEA" and view["user_ids"] == [a] and view["policy_ids"] == [p1]
    with world.tx() as s:
        policies.delete_group(s, world.admin, policies.get_group(s, world.id, gid))
    with world.tx() as s:
        assert s.scalars(select(GroupMember).where(GroupMember.group_id == gid)).all() == []
        with pytest.raises(NotFound):
            policies.get_group(s, world.id, gid)
    actions = [e.action for e in events(world) if e.target_type == "group"]
    assert actions == [
        "group.created",
        "group.member_added",
        "group.policy_assigned",
        "group.member_removed",
        "group.policy_removed",
        "group.updated",
        "group.deleted",
    ]
    updated = events(world, "group.updated")[0]
    assert updated.details == {"name": {"old": "Sales", "new": "Sales EMEA"}}


def test_group_name_unique_per_org(world, make_world):
    world.group(name="Ops")
    with pytest.raises(Conflict) as err, world.tx() as s:
        policies.create_group(s, world.admin, world.id, name="Ops")
    assert err.value.code == "group_exists"
    make_world().group(name="Ops")


def test_deny_by_default_setting_is_audited(world):
    world.deny_by_default(True)
    world.deny_by_default(True)
    world.deny_by_default(False)
    changes = [e.details["deny_by_default"] for e in events(world, "org.settings_updated")]
    assert changes == [{"old": False, "new": True}, {"old": True, "new": False}]


# ----------------------------------------------------------------------------- org isolation


def test_org_isolation(world, make_world):
    other = make_world()
    their_user, their_policy, their_group = other.user(), other.policy(), other.group()
    mine_user, mine_policy, mine_group = world.user(), world.policy(), world.group()
    with world.tx() as s:
        with pytest.raises(NotFound) as err:
            policies.get_policy(s, world.id, their_policy)
        assert err.value.code == "policy_not_found"
        with pytest.raises(NotFound) as err:
            policies.get_group(s, world.id, their_group)
        assert err.value.code == "group_not_found"
        my_policy, my_group = policies.get_policy(s, world.id, mine_policy), policies.get_group(s, world.id, mine_group)
        with pytest.raises(InvalidRequest):
            policies.assign_users(s, world.admin, my_policy, [their_user])
        with pytest.raises(InvalidRequest):
            policies.add_group_members(s, world.admin, my_group, [their_user])
        with pytest.raises(InvalidRequest):
            policies.assign_group_policies(s, world.admin, my_group, [their_policy])
        with pytest.raises(NotFound):
            policies.remove_user(s, world.admin, my_policy, their_user)
        with pytest.raises(NotFound):
            policies.remove_group_member(s, world.admin, my_group, their_user)
        with pytest.raises(NotFound):
            policies.remove_group_policy(s, world.admin, my_group, their_policy)
        with pytest.raises(NotFound) as err:
            policies.replace_user_policies(s, world.admin, world.id, their_user, [mine_policy])
        assert err.value.code == "user_not_found"
        with pytest.raises(NotFound):
            policies.resolve_view(s, world.id, their_user, "src", ["region"])
        assert [p.id for p in policies.list_policies(s, world.id, limit=10)] == [mine_policy]
        assert [g.id for g in policies.list_groups(s, world.id, limit=10)] == [mine_group]
    with other.tx() as s:
        assert policies.policy_user_ids(s, their_policy) == []
        assert policies.group_member_ids(s, their_group) == []
    assert mine_user  # my user untouched by the other org
