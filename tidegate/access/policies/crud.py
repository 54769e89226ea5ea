"""Access policies: reading, creating, changing and deleting them, assigning them to users,
and the organization's deny-by-default setting. Every change is one audit event inside the
caller's transaction; an `actor` of None is the operator CLI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tidegate.access.models import GroupPolicy, Policy, PolicyAssignment
from tidegate.access.policies.changes import POLICY_USERS, add_links, remove_link, update_fields
from tidegate.access.policies.selfguard import refuse_loosening
from tidegate.access.policies.validation import (
    UNSET,
    _check_description,
    _check_name,
    normalize_column_rules,
    normalize_row_filters,
    normalize_source_ids,
    resolve_user_ids,
    validate_policy_ids,
)
from tidegate.audit.record import RequestContext, record
from tidegate.core.principal import Principal
from tidegate.db.base import utcnow
from tidegate.errors import Conflict, InvalidRequest, NotFound
from tidegate.ids import new_id
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.models import Organization, User
from tidegate.orgs.service import get_user, lock_organization


def get_policy(session: Session, org_id: str, policy_id: str) -> Policy:
    policy = session.scalar(select(Policy).where(Policy.org_id == org_id, Policy.id == policy_id))
    if policy is None:
        raise NotFound("policy_not_found", f"No access policy {policy_id!r}.")
    return policy


def list_policies(
    session: Session, org_id: str, *, limit: int, after: str | None = None, name: str | None = None
) -> list[Policy]:
    """Up to limit+1 policies ordered by id (the extra one tells that more exist)."""
    query = select(Policy).where(Policy.org_id == org_id)
    if name is not None:
        query = query.where(Policy.name == name)
    if after:
        query = query.where(Policy.id > after)
    return list(session.scalars(query.order_by(Policy.id).limit(limit + 1)))


def policy_user_ids(session: Session, policy_id: str) -> list[str]:
    """Active users the policy is assigned to directly."""
    return list(
        session.scalars(
            select(PolicyAssignment.user_id)
            .join(User, User.id == PolicyAssignment.user_id)
            .where(PolicyAssignment.policy_id == policy_id, User.is_active.is_(True))
            .order_by(PolicyAssignment.user_id)
        )
    )


def policy_user_counts(session: Session, policy_ids: Sequence[str]) -> dict[str, int]:
    """Number of active users directly assigned, per policy (0 for none), in one query."""
    counts = dict.fromkeys(policy_ids, 0)
    if policy_ids:
        rows = session.execute(
            select(PolicyAssignment.policy_id, func.count())
            .join(User, User.id == PolicyAssignment.user_id)
            .where(PolicyAssignment.policy_id.in_(list(policy_ids)), User.is_active.is_(True))
            .group_by(PolicyAssignment.policy_id)
        ).all()
        counts.update({policy_id: count for policy_id, count in rows})
    return counts


def direct_policy_ids(session: Session, user_id: str) -> list[str]:
    return list(
        session.scalars(
            select(PolicyAssignment.policy_id)
            .where(PolicyAssignment.user_id == user_id)
            .order_by(PolicyAssignment.policy_id)
        )
    )


def _policy_name_taken(session: Session, org_id: str, name: str, exclude_id: str | None = None) -> bool:
    query = select(Policy.id).where(Policy.org_id == org_id, Policy.name == name)
    if exclude_id is not None:
        query = query.where(Policy.id != exclude_id)
    return session.scalar(query) is not None


def create_policy(
    session: Session,
    actor: Principal | None,
    org_id: str,
    *,
    name: str,
    description: str | None = None,
    source_ids: list[str] | None = None,
    row_filters: list[Any] | None = None,
    column_rules: list[Any] | None = None,
    context: RequestContext | None = None,
) -> Policy:
    name = _check_name(name, "Policy")
    description = _check_description(description)
    source_ids = normalize_source_ids(source_ids)
    row_filters = normalize_row_filters(row_filters)
    column_rules = normalize_column_rules(column_rules)
    lock_organization(session, org_id)  # the name check holds until commit
    existing = session.scalar(select(Policy).where(Policy.org_id == org_id, Policy.name == name))
    if existing is not None:
        # The SDK's get-or-create (sdk_auto_<hash> names) may race itself: the same
        # definition again is the policy that exists; a different one is a conflict.
        same = (description, source_ids, row_filters, column_rules)
        if (existing.description, existing.source_ids, existing.row_filters, existing.column_rules or []) == same:
            return existing
        raise Conflict("policy_exists", f"An access policy named {name!r} already exists with a different definition.")
    now = utcnow()
    policy = Policy(
        id=new_id("pol"),
        org_id=org_id,
        name=name,
        description=description,
        source_ids=source_ids,
        row_filters=row_filters,
        column_rules=column_rules,
        created_by=actor.user_id if actor else None,
        created_at=now,
        updated_at=now,
    )
    session.add(policy)
    session.flush()
    record(
        session,
        actor,
        "policy.created",
        org_id=org_id,
        target_type="access_policy",
        target_id=policy.id,
        details={
            "name": name,
            "description": description,
            "source_ids": source_ids,
            "row_filters": row_filters,
            "column_rules": column_rules,
        },
        context=context,
    )
    bump_access_epoch(session, org_id)
    return policy


def update_policy(
    session: Session,
    actor: Principal | None,
    policy: Policy,
    *,
    name: Any = UNSET,
    description: Any = UNSET,
    source_ids: Any = UNSET,
    row_filters: Any = UNSET,
    column_rules: Any = UNSET,
    context: RequestContext | None = None,
) -> Policy:
    """Change any of the given fields (UNSET = leave as is). `source_ids` None/[] = Auto."""
    refuse_loosening(session, actor, policy_id=policy.id)
    new: dict[str, Any] = {}
    if name is not UNSET:
        new["name"] = _check_name(name, "Policy")
    if description is not UNSET:
        new["description"] = _check_description(description)
    if source_ids is not UNSET:
        new["source_ids"] = normalize_source_ids(source_ids)
    if row_filters is not UNSET:
        new["row_filters"] = normalize_row_filters(row_filters)
    if column_rules is not UNSET:
        new["column_rules"] = normalize_column_rules(column_rules)
    update_fields(
        session,
        actor,
        policy,
        new,
        name_taken=_policy_name_taken,
        conflict=("policy_exists", "An access policy"),
        event="policy.updated",
        target_type="access_policy",
        context=context,
    )
    return policy


def delete_policy(
    session: Session,
    actor: Principal | None,
    policy: Policy,
    *,
    keys_naming_it: Sequence[str],
    context: RequestContext | None = None,
) -> None:
    """Delete the policy and its user and group assignments.

    Keys naming it in access_policy_ids fail closed from then on; the event lists them
    (`keys_naming_it`: the caller reads them from the keys, which this package does not know).
    """
    refuse_loosening(session, actor, policy_id=policy.id)
    user_ids = list(session.scalars(select(PolicyAssignment.user_id).where(PolicyAssignment.policy_id == policy.id)))
    group_ids = list(session.scalars(select(GroupPolicy.group_id).where(GroupPolicy.policy_id == policy.id)))
    key_ids = sorted(keys_naming_it)
    session.execute(delete(PolicyAssignment).where(PolicyAssignment.policy_id == policy.id))
    session.execute(delete(GroupPolicy).where(GroupPolicy.policy_id == policy.id))
    session.delete(policy)
    session.flush()
    record(
        session,
        actor,
        "policy.deleted",
        org_id=policy.org_id,
        target_type="access_policy",
        target_id=policy.id,
        details={
            "name": policy.name,
            "source_ids": policy.source_ids,
            "row_filters": policy.row_filters,
            "column_rules": policy.column_rules or [],
            "user_ids": sorted(user_ids),
            "group_ids": sorted(group_ids),
            "keys_now_failing_closed": key_ids,
        },
        context=context,
    )
    bump_access_epoch(session, policy.org_id)


@dataclass(frozen=True)
class AssignResult:
    policy_id: str
    user_ids: list[str]  # every user named in the call (tidegate ids), now assigned
    added: list[str]  # those newly assigned by this call (the contract's `assigned_user_ids`)


def assign_users(
    session: Session,
    actor: Principal | None,
    policy: Policy,
    user_ids: list[str],
    *,
    context: RequestContext | None = None,
) -> AssignResult:
    """Additive and idempotent. All users must be active users of the policy's org, or nothing changes."""
    resolved = resolve_user_ids(session, policy.org_id, user_ids)
    refuse_loosening(session, actor, user_ids=resolved, adding=True)
    added = add_links(session, actor, POLICY_USERS, policy, resolved, context=context)
    return AssignResult(policy_id=policy.id, user_ids=resolved, added=added)


@dataclass(frozen=True)
class RemoveResult:
    policy_id: str
    user_id: str
    removed: bool  # False: the user was not assigned (idempotent; nothing recorded)


def remove_user(
    session: Session, actor: Principal | None, policy: Policy, user_id: str, *, context: RequestContext | None = None
) -> RemoveResult:
    """Unassign one user (also a deactivated one). NotFound `user_not_found` if not a user of the org."""
    user = get_user(session, policy.org_id, user_id, include_inactive=True)
    refuse_loosening(session, actor, user_ids=[user.id])
    removed = remove_link(session, actor, POLICY_USERS, policy, user.id, context=context)
    return RemoveResult(policy_id=policy.id, user_id=user.id, removed=removed)


@dataclass(frozen=True)
class ReplaceResult:
    user_id: str
    policy_ids: list[str]
    added: list[str]
    removed: list[str]


def replace_user_policies(
    session: Session,
    actor: Principal | None,
    org_id: str,
    user_id: str,
    policy_ids: list[str],
    *,
    context: RequestContext | None = None,
) -> ReplaceResult:
    """Make exactly `policy_ids` the user's direct policies ([] removes all; group policies untouched).

    Atomic: every id is checked before anything changes, so one bad id changes nothing.
    """
    user = get_user(session, org_id, user_id)
    wanted = validate_policy_ids(session, org_id, policy_ids)
    lock_organization(session, org_id)  # "exactly": never the union of two concurrent calls
    current = direct_policy_ids(session, user.id)
    added = sorted(set(wanted) - set(current))
    removed = sorted(set(current) - set(wanted))
    if added or removed:  # more policies widen too: policies on one column OR their values
        refuse_loosening(session, actor, user_ids=[user.id], adding=not removed)
    if removed:
        session.execute(
            delete(PolicyAssignment).where(PolicyAssignment.user_id == user.id, PolicyAssignment.policy_id.in_(removed))
        )
    for policy_id in added:
        session.add(PolicyAssignment(policy_id=policy_id, user_id=user.id, created_at=utcnow()))
    if added or removed:
        session.flush()
        record(
            session,
            actor,
            "policy.user_policies_replaced",
            org_id=org_id,
            target_type="user",
            target_id=user.id,
            details={"old": current, "new": sorted(wanted), "added": added, "removed": removed},
            context=context,
        )
        bump_access_epoch(session, org_id)
    return ReplaceResult(user_id=user.id, policy_ids=sorted(wanted), added=added, removed=removed)


def set_deny_by_default(
    session: Session,
    actor: Principal | None,
    org: Organization,
    enabled: bool,
    *,
    context: RequestContext | None = None,
) -> Organization:
    """The admin toggle: users with no applicable policy see no rows (on) or all rows (off)."""
    if not isinstance(enabled, bool):
        raise InvalidRequest("invalid_setting", "deny_by_default must be true or false.")
    old = bool(org.deny_by_default)
    if old and not enabled:
        refuse_loosening(session, actor, deny_by_default_off=True)
    if enabled != old:
        org.deny_by_default = enabled
        session.flush()
        record(
            session,
            actor,
            "org.settings_updated",
            org_id=org.id,
            target_type="organization",
            target_id=org.id,
            details={"deny_by_default": {"old": old, "new": enabled}},
            context=context,
        )
        bump_access_epoch(session, org.id)
    return org
