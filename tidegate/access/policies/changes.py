"""The shapes every policy and group service shares: change a row's fields (checking a new
name is free), and add or remove links of a many-to-many table (a policy's users, a group's
members, a group's policies). One audit event per call that changed something."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tidegate.access.models import GroupMember, GroupPolicy, PolicyAssignment
from tidegate.audit.record import RequestContext, record
from tidegate.core.principal import Principal
from tidegate.db.base import utcnow
from tidegate.errors import Conflict
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.service import lock_organization


def update_fields(
    session: Session,
    actor: Principal | None,
    row: Any,
    new: Mapping[str, Any],
    *,
    name_taken: Callable[[Session, str, str, str | None], bool],
    conflict: tuple[str, str],
    event: str,
    target_type: str,
    context: RequestContext | None,
) -> None:
    """Set the validated `new` fields of a policy or group; one `event` listing old and new
    values, if any changed. A new name must be free in the organization (409 `conflict`:
    (code, what), under the organization lock so that the check holds until commit)."""
    if "name" in new and new["name"] != row.name:
        lock_organization(session, row.org_id)
        if name_taken(session, row.org_id, new["name"], row.id):
            code, what = conflict
            raise Conflict(code, f"{what} named {new['name']!r} already exists.")
    changes = {}
    for field, value in new.items():
        old = getattr(row, field)
        if value != old:
            changes[field] = {"old": old, "new": value}
            setattr(row, field, value)
    if changes:
        row.updated_at = utcnow()
        session.flush()
        record(
            session,
            actor,
            event,
            org_id=row.org_id,
            target_type=target_type,
            target_id=row.id,
            details=changes,
            context=context,
        )
        bump_access_epoch(session, row.org_id)


@dataclass(frozen=True)
class Link:
    """A many-to-many table seen from its owner (a policy or a group)."""

    table: type
    owner: str  # the owner's id column: policy_id | group_id
    member: str  # the linked id column: user_id | policy_id
    target_type: str  # the owner, in audit events
    owner_label: str  # the details key naming the owner
    added: str  # audit events
    removed: str


POLICY_USERS = Link(
    PolicyAssignment,
    "policy_id",
    "user_id",
    "access_policy",
    "policy_name",
    "policy.user_assigned",
    "policy.user_removed",
)
GROUP_MEMBERS = Link(
    GroupMember, "group_id", "user_id", "group", "group_name", "group.member_added", "group.member_removed"
)
GROUP_POLICIES = Link(
    GroupPolicy, "group_id", "policy_id", "group", "group_name", "group.policy_assigned", "group.policy_removed"
)


def add_links(
    session: Session,
    actor: Principal | None,
    link: Link,
    owner: Any,
    wanted: list[str],
    *,
    context: RequestContext | None,
) -> list[str]:
    """Link `owner` to each of `wanted` (validated ids of its organization) not yet linked;
    the ones newly linked. Additive and idempotent."""
    lock_organization(session, owner.org_id)  # concurrent identical calls stay idempotent
    owner_column, member_column = getattr(link.table, link.owner), getattr(link.table, link.member)
    existing = set(session.scalars(select(member_column).where(owner_column == owner.id, member_column.in_(wanted))))
    added = [member for member in wanted if member not in existing]
    for member in added:
        session.add(link.table(**{link.owner: owner.id, link.member: member, "created_at": utcnow()}))
    if added:
        session.flush()
        record(
            session,
            actor,
            link.added,
            org_id=owner.org_id,
            target_type=link.target_type,
            target_id=owner.id,
            details={link.owner_label: owner.name, f"{link.member}s": added},
            context=context,
        )
        bump_access_epoch(session, owner.org_id)
    return added


def remove_link(
    session: Session, actor: Principal | None, link: Link, owner: Any, member: str, *, context: RequestContext | None
) -> bool:
    """Unlink one id (of the owner's organization); False if it was not linked (idempotent)."""
    result = session.execute(
        delete(link.table).where(
            getattr(link.table, link.owner) == owner.id, getattr(link.table, link.member) == member
        )
    )
    removed = bool(result.rowcount)  # type: ignore[attr-defined]  # a DELETE returns a CursorResult; the stubs say Result
    if removed:
        record(
            session,
            actor,
            link.removed,
            org_id=owner.org_id,
            target_type=link.target_type,
            target_id=owner.id,
            details={link.owner_label: owner.name, link.member: member},
            context=context,
        )
        bump_access_epoch(session, owner.org_id)
    return removed
