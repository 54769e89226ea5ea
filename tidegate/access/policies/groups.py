"""Groups: named sets of users that policies are assigned to (a member gets the group's
policies as if assigned directly). Same conventions as `crud`: one audit event per change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tidegate.access.models import Group, GroupMember, GroupPolicy
from tidegate.access.policies.changes import GROUP_MEMBERS, GROUP_POLICIES, add_links, remove_link, update_fields
from tidegate.access.policies.crud import get_policy
from tidegate.access.policies.selfguard import refuse_loosening
from tidegate.access.policies.validation import (
    UNSET,
    _check_description,
    _check_name,
    resolve_user_ids,
    validate_policy_ids,
)
from tidegate.audit.record import RequestContext, record
from tidegate.core.principal import Principal
from tidegate.db.base import utcnow
from tidegate.errors import Conflict, NotFound
from tidegate.ids import new_id
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.models import User
from tidegate.orgs.service import get_user, lock_organization


def get_group(session: Session, org_id: str, group_id: str) -> Group:
    group = session.scalar(select(Group).where(Group.org_id == org_id, Group.id == group_id))
    if group is None:
        raise NotFound("group_not_found", f"No group {group_id!r}.")
    return group


def list_groups(
    session: Session, org_id: str, *, limit: int, after: str | None = None, name: str | None = None
) -> list[Group]:
    """Up to limit+1 groups ordered by id."""
    query = select(Group).where(Group.org_id == org_id)
    if name is not None:
        query = query.where(Group.name == name)
    if after:
        query = query.where(Group.id > after)
    return list(session.scalars(query.order_by(Group.id).limit(limit + 1)))


def group_member_ids(session: Session, group_id: str) -> list[str]:
    """Active members."""
    return list(
        session.scalars(
            select(GroupMember.user_id)
            .join(User, User.id == GroupMember.user_id)
            .where(GroupMember.group_id == group_id, User.is_active.is_(True))
            .order_by(GroupMember.user_id)
        )
    )


def group_policy_ids(session: Session, group_id: str) -> list[str]:
    return list(
        session.scalars(
            select(GroupPolicy.policy_id).where(GroupPolicy.group_id == group_id).order_by(GroupPolicy.policy_id)
        )
    )


def policy_group_ids(session: Session, policy_id: str) -> list[str]:
    """The groups a policy is assigned to (the reverse of group_policy_ids)."""
    return list(
        session.scalars(
            select(GroupPolicy.group_id).where(GroupPolicy.policy_id == policy_id).order_by(GroupPolicy.group_id)
        )
    )


def _group_name_taken(session: Session, org_id: str, name: str, exclude_id: str | None = None) -> bool:
    query = select(Group.id).where(Group.org_id == org_id, Group.name == name)
    if exclude_id is not None:
        query = query.where(Group.id != exclude_id)
    return session.scalar(query) is not None


def create_group(
    session: Session,
    actor: Principal | None,
    org_id: str,
    *,
    name: str,
    description: str | None = None,
    context: RequestContext | None = None,
) -> Group:
    name = _check_name(name, "Group")
    description = _check_description(description)
    lock_organization(session, org_id)  # the name check holds until commit
    if _group_name_taken(session, org_id, name):
        raise Conflict("group_exists", f"A group named {name!r} already exists.")
    now = utcnow()
    group = Group(id=new_id("grp"), org_id=org_id, name=name, description=description, created_at=now, updated_at=now)
    session.add(group)
    session.flush()
    record(
        session,
        actor,
        "group.created",
        org_id=org_id,
        target_type="group",
        target_id=group.id,
        details={"name": name, "description": description},
        context=context,
    )
    bump_access_epoch(session, org_id)
    return group


def update_group(
    session: Session,
    actor: Principal | None,
    group: Group,
    *,
    name: Any = UNSET,
    description: Any = UNSET,
    context: RequestContext | None = None,
) -> Group:
    new: dict[str, Any] = {}
    if name is not UNSET:
        new["name"] = _check_name(name, "Group")
    if description is not UNSET:
        new["description"] = _check_description(description)
    update_fields(
        session,
        actor,
        group,
        new,
        name_taken=_group_name_taken,
        conflict=("group_exists", "A group"),
        event="group.updated",
        target_type="group",
        context=context,
    )
    return group


def delete_group(
    session: Session, actor: Principal | None, group: Group, *, context: RequestContext | None = None
) -> None:
    """Delete the group: its members lose the policies they had only through it."""
    refuse_loosening(session, actor, group_id=group.id)
    member_ids = list(session.scalars(select(GroupMember.user_id).where(GroupMember.group_id == group.id)))
    policy_ids = group_policy_ids(session, group.id)
    session.execute(delete(GroupMember).where(GroupMember.group_id == group.id))
    session.execute(delete(GroupPolicy).where(GroupPolicy.group_id == group.id))
    session.delete(group)
    session.flush()
    record(
        session,
        actor,
        "group.deleted",
        org_id=group.org_id,
        target_type="group",
        target_id=group.id,
        details={"name": group.name, "user_ids": sorted(member_ids), "policy_ids": policy_ids},
        context=context,
    )
    bump_access_epoch(session, group.org_id)


def add_group_members(
    session: Session,
    actor: Principal | None,
    group: Group,
    user_ids: list[str],
    *,
    context: RequestContext | None = None,
) -> list[str]:
    """Additive, idempotent, all or nothing. Returns the users newly added."""
    resolved = resolve_user_ids(session, group.org_id, user_ids)
    refuse_loosening(session, actor, user_ids=resolved, adding=True)
    return add_links(session, actor, GROUP_MEMBERS, group, resolved, context=context)


def remove_group_member(
    session: Session, actor: Principal | None, group: Group, user_id: str, *, context: RequestContext | None = None
) -> bool:
    """False if the user was not a member (idempotent). NotFound `user_not_found` if not a user of the org."""
    user = get_user(session, group.org_id, user_id, include_inactive=True)
    refuse_loosening(session, actor, user_ids=[user.id])
    return remove_link(session, actor, GROUP_MEMBERS, group, user.id, context=context)


def assign_group_policies(
    session: Session,
    actor: Principal | None,
    group: Group,
    policy_ids: list[str],
    *,
    context: RequestContext | None = None,
) -> list[str]:
    """Additive, idempotent, all or nothing. Returns the policies newly assigned."""
    wanted = validate_policy_ids(session, group.org_id, policy_ids)
    refuse_loosening(session, actor, group_id=group.id, adding=True)
    return add_links(session, actor, GROUP_POLICIES, group, wanted, context=context)


def remove_group_policy(
    session: Session, actor: Principal | None, group: Group, policy_id: str, *, context: RequestContext | None = None
) -> bool:
    """False if the policy was not assigned to the group. NotFound `policy_not_found` if not a policy of the org."""
    policy = get_policy(session, group.org_id, policy_id)
    refuse_loosening(session, actor, group_id=group.id)
    return remove_link(session, actor, GROUP_POLICIES, group, policy.id, context=context)
