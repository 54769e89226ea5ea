"""Access policies and groups: CRUD services, and resolution to a RowFilter.

Services follow the rest of tidegate: they take the caller's session (one transaction per
request), an `actor` (None for the operator CLI) and an optional RequestContext, raise
tidegate.errors, and add one audit event per change inside the caller's transaction.
Policies and groups are looked up org-scoped (`get_policy`, `get_group`); every id a service
receives in a list is resolved against the organization of the object it is attached to, so
nothing crosses organizations.

Resolution (`resolve_user_filter`, `resolve_key_filter`) runs on every data request. It
reads the database every time (nothing is cached in the process, so a change is seen by the
very next request everywhere) with a couple of indexed queries per principal:
  1. the organization's deny_by_default flag joined with the user's active flag;
  2. the policies reaching the user directly or through a group (index-led subqueries).

Semantics (see also access.rowfilter):
- Binding: `source_ids` empty = Auto, the policy applies to every source having its
  column(s); each of its filters applies where the source has that column and is skipped
  where it does not; a filterless Auto policy applies to every source. Non-empty =
  Explicit: the policy applies only to those sources, and if such a source lacks one of the
  policy's columns the whole result fails closed (deny_all), with a reason naming the
  policy and the column.
- Columns match case-insensitively; clauses carry the source's actual column name (a
  policy column matching several source columns that differ only by case restricts each).
- Across all applicable policies (direct and group alike, no priority): filters on the same
  column union their values; filters on different columns AND.
- No applicable policy: all rows, or none when the organization's deny_by_default is on.
- A key: its creator's filter AND (if set) its own access_policy_ids composed as if they were
  the only policies (an id that no longer exists fails closed) AND (if set) its bound user's
  filter. AND-ing means a key's policies can only narrow what its creator sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, union
from sqlalchemy.orm import Session

from tidegate.access.models import Group, GroupMember, GroupPolicy, Policy, PolicyAssignment
from tidegate.access.principal import Principal
from tidegate.access.restrictions import KeyRestrictions
from tidegate.access.rowfilter import Clause, RowFilter
from tidegate.audit.record import RequestContext, record
from tidegate.db.base import isoformat, utcnow
from tidegate.errors import Conflict, InvalidRequest, NotFound
from tidegate.ids import new_id
from tidegate.orgs.models import Organization, User
from tidegate.orgs.service import get_user, lock_organization

MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_FILTERS = 50
MAX_COLUMN = 200
MAX_VALUES = 1000
MAX_VALUE = 1000
MAX_SOURCE_IDS = 500
MAX_SOURCE_ID = 200
MAX_IDS_PER_CALL = 1000


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "field not given" in updates (None may be a real value)


# --------------------------------------------------------------------------- validation


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME or _has_control(name):
        raise InvalidRequest("invalid_name", f"{what} name must be 1-{MAX_NAME} printable characters.")
    return name.strip()


def _check_description(description: Any) -> str | None:
    if description is None:
        return None
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION or "\x00" in description:
        raise InvalidRequest(
            "invalid_description", f"description must be text of at most {MAX_DESCRIPTION} characters."
        )
    return description


def normalize_row_filters(raw: Any) -> list[dict]:
    """Validate `row_filters` ([{column, values: [str]}]); return them de-duplicated, as stored.

    Accepts mappings or objects with `column`/`values` attributes (e.g. pydantic models).
    """
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise InvalidRequest("invalid_row_filters", "row_filters must be a list of {column, values}.")
    if len(raw) > MAX_FILTERS:
        raise InvalidRequest("invalid_row_filters", f"A policy holds at most {MAX_FILTERS} row filters.")
    result: list[dict] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(raw):
        where = f"row_filters[{index}]"
        if isinstance(item, Mapping):
            extra = sorted(set(item) - {"column", "values"})
            if extra:
                raise InvalidRequest(
                    "invalid_row_filters", f"{where} has unknown field(s): {', '.join(map(str, extra))}."
                )
            column, values = item.get("column"), item.get("values")
        elif hasattr(item, "column") and hasattr(item, "values"):
            column, values = item.column, item.values
        else:
            raise InvalidRequest("invalid_row_filters", f"{where} must be an object {{column, values}}.")
        if not isinstance(column, str) or not column.strip():
            raise InvalidRequest("invalid_row_filters", f"{where}.column must be a non-empty string.")
        if len(column) > MAX_COLUMN or _has_control(column):
            raise InvalidRequest(
                "invalid_row_filters", f"{where}.column must be at most {MAX_COLUMN} printable characters."
            )
        folded = column.casefold()
        if folded in seen:
            raise InvalidRequest(
                "invalid_row_filters",
                f"{where}.column {column!r} repeats column {seen[folded]!r} (columns match case-insensitively); "
                f"list every allowed value in one filter.",
            )
        seen[folded] = column
        if not isinstance(values, (list, tuple)) or not values:
            raise InvalidRequest("invalid_row_filters", f"{where}.values must be a non-empty list of strings.")
        if len(values) > MAX_VALUES:
            raise InvalidRequest("invalid_row_filters", f"{where}.values holds at most {MAX_VALUES} values.")
        for value in values:
            if not isinstance(value, str):
                raise InvalidRequest(
                    "invalid_row_filters",
                    f'{where}.values must be strings; got {type(value).__name__} {value!r} (send it as "{value}").',
                )
            if len(value) > MAX_VALUE or "\x00" in value:
                raise InvalidRequest(
                    "invalid_row_filters", f"{where}.values: each value is at most {MAX_VALUE} characters, without NUL."
                )
        result.append({"column": column, "values": list(dict.fromkeys(values))})
    return result


def normalize_source_ids(raw: Any) -> list[str]:
    """Validate `source_ids`; empty or None means Auto binding. Returned de-duplicated, sorted."""
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise InvalidRequest("invalid_source_ids", "source_ids must be a list of source ids.")
    if len(raw) > MAX_SOURCE_IDS:
        raise InvalidRequest("invalid_source_ids", f"A policy is bound to at most {MAX_SOURCE_IDS} sources.")
    for source_id in raw:
        if (
            not isinstance(source_id, str)
            or not source_id.strip()
            or len(source_id) > MAX_SOURCE_ID
            or _has_control(source_id)
        ):
            raise InvalidRequest("invalid_source_ids", f"{source_id!r} is not a source id.")
    return sorted(set(raw))


def _check_id_list(raw: Any, field: str) -> list[str]:
    if not isinstance(raw, (list, tuple)):
        raise InvalidRequest(f"invalid_{field}", f"{field} must be a list of ids.")
    if len(raw) > MAX_IDS_PER_CALL:
        raise InvalidRequest(f"invalid_{field}", f"{field} holds at most {MAX_IDS_PER_CALL} ids.")
    for item in raw:
        if not isinstance(item, str) or not item or len(item) > 200:
            raise InvalidRequest(f"invalid_{field}", f"{item!r} in {field} is not an id.")
    return list(dict.fromkeys(raw))


def resolve_user_ids(session: Session, org_id: str, user_ids: Any) -> list[str]:
    """Active users of the org, by tidegate id or external id; all or nothing.

    Raises InvalidRequest `invalid_user_ids` naming every id that is not an active user here.
    Returns tidegate user ids, de-duplicated, in request order.
    """
    wanted = _check_id_list(user_ids, "user_ids")
    if not wanted:
        return []
    rows = session.execute(
        select(User.id, User.external_id, User.is_active).where(
            User.org_id == org_id, or_(User.id.in_(wanted), User.external_id.in_(wanted))
        )
    ).all()
    by_id = {r.id: r for r in rows}
    by_external = {r.external_id: r for r in rows if r.external_id is not None}
    resolved, bad = [], []
    for item in wanted:
        row = by_id.get(item) or by_external.get(item)
        if row is None or not row.is_active:
            bad.append(item)
        else:
            resolved.append(row.id)
    if bad:
        raise InvalidRequest("invalid_user_ids", f"No active user(s) {', '.join(map(repr, bad))} in this organization.")
    return list(dict.fromkeys(resolved))


def validate_policy_ids(session: Session, org_id: str, policy_ids: Any) -> list[str]:
    """Existing policies of the org; all or nothing (InvalidRequest `invalid_policy_ids`).

    Also what key creation should call on a key's `access_policy_ids`.
    """
    wanted = _check_id_list(policy_ids, "policy_ids")
    if not wanted:
        return []
    found = set(session.scalars(select(Policy.id).where(Policy.org_id == org_id, Policy.id.in_(wanted))))
    bad = [p for p in wanted if p not in found]
    if bad:
        raise InvalidRequest(
            "invalid_policy_ids", f"No access policy {', '.join(map(repr, bad))} in this organization."
        )
    return wanted


# --------------------------------------------------------------------------- policies: reads


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


def policy_view(policy: Policy, *, user_count: int, user_ids: list[str] | None = None) -> dict:
    """The contract's Policy object; `user_ids` (also sent as `assigned_user_ids`) on detail only."""
    view = {
        "id": policy.id,
        "name": policy.name,
        "description": policy.description,
        "source_ids": list(policy.source_ids or []),
        "row_filters": [{"column": f["column"], "values": list(f["values"])} for f in policy.row_filters or []],
        "binding": "explicit" if policy.source_ids else "auto",  # tidegate extension
        "user_count": user_count,
        "created_at": isoformat(policy.created_at),
        "updated_at": isoformat(policy.updated_at),
    }
    if user_ids is not None:
        view["user_ids"] = list(user_ids)
        view["assigned_user_ids"] = list(user_ids)
    return view


def direct_policy_ids(session: Session, user_id: str) -> list[str]:
    return list(
        session.scalars(
            select(PolicyAssignment.policy_id)
            .where(PolicyAssignment.user_id == user_id)
            .order_by(PolicyAssignment.policy_id)
        )
    )


# --------------------------------------------------------------------------- policies: writes


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
    row_filters: list | None = None,
    context: RequestContext | None = None,
) -> Policy:
    name = _check_name(name, "Policy")
    description = _check_description(description)
    source_ids = normalize_source_ids(source_ids)
    row_filters = normalize_row_filters(row_filters)
    lock_organization(session, org_id)  # the name check holds until commit
    if _policy_name_taken(session, org_id, name):
        raise Conflict("policy_exists", f"An access policy named {name!r} already exists.")
    now = utcnow()
    policy = Policy(
        id=new_id("pol"),
        org_id=org_id,
        name=name,
        description=description,
        source_ids=source_ids,
        row_filters=row_filters,
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
        details={"name": name, "description": description, "source_ids": source_ids, "row_filters": row_filters},
        context=context,
    )
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
    context: RequestContext | None = None,
) -> Policy:
    """Change any of the given fields (UNSET = leave as is). `source_ids` None/[] = Auto."""
    new: dict[str, Any] = {}
    if name is not UNSET:
        new["name"] = _check_name(name, "Policy")
    if description is not UNSET:
        new["description"] = _check_description(description)
    if source_ids is not UNSET:
        new["source_ids"] = normalize_source_ids(source_ids)
    if row_filters is not UNSET:
        new["row_filters"] = normalize_row_filters(row_filters)
    if "name" in new and new["name"] != policy.name:
        lock_organization(session, policy.org_id)
    if (
        "name" in new
        and new["name"] != policy.name
        and _policy_name_taken(session, policy.org_id, new["name"], policy.id)
    ):
        raise Conflict("policy_exists", f"An access policy named {new['name']!r} already exists.")
    changes = {}
    for field, value in new.items():
        old = getattr(policy, field)
        if value != old:
            changes[field] = {"old": old, "new": value}
            setattr(policy, field, value)
    if changes:
        policy.updated_at = utcnow()
        session.flush()
        record(
            session,
            actor,
            "policy.updated",
            org_id=policy.org_id,
            target_type="access_policy",
            target_id=policy.id,
            details=changes,
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
            "user_ids": sorted(user_ids),
            "group_ids": sorted(group_ids),
            "keys_now_failing_closed": key_ids,
        },
        context=context,
    )


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
    lock_organization(session, policy.org_id)  # concurrent identical calls stay idempotent
    existing = set(
        session.scalars(
            select(PolicyAssignment.user_id).where(
                PolicyAssignment.policy_id == policy.id, PolicyAssignment.user_id.in_(resolved)
            )
        )
    )
    added = [u for u in resolved if u not in existing]
    for user_id in added:
        session.add(PolicyAssignment(policy_id=policy.id, user_id=user_id, created_at=utcnow()))
    if added:
        session.flush()
        record(
            session,
            actor,
            "policy.user_assigned",
            org_id=policy.org_id,
            target_type="access_policy",
            target_id=policy.id,
            details={"policy_name": policy.name, "user_ids": added},
            context=context,
        )
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
    result = session.execute(
        delete(PolicyAssignment).where(PolicyAssignment.policy_id == policy.id, PolicyAssignment.user_id == user.id)
    )
    removed = bool(result.rowcount)
    if removed:
        record(
            session,
            actor,
            "policy.user_removed",
            org_id=policy.org_id,
            target_type="access_policy",
            target_id=policy.id,
            details={"policy_name": policy.name, "user_id": user.id},
            context=context,
        )
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
    return ReplaceResult(user_id=user.id, policy_ids=sorted(wanted), added=added, removed=removed)


# --------------------------------------------------------------------------- groups


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


def group_view(group: Group, *, member_ids: list[str], policy_ids: list[str]) -> dict:
    return {
        "id": group.id,
        "name": group.name,
        "description": group.description,
        "user_ids": list(member_ids),
        "user_count": len(member_ids),
        "policy_ids": list(policy_ids),
        "created_at": isoformat(group.created_at),
        "updated_at": isoformat(group.updated_at),
    }


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
    if "name" in new and new["name"] != group.name:
        lock_organization(session, group.org_id)
    if "name" in new and new["name"] != group.name and _group_name_taken(session, group.org_id, new["name"], group.id):
        raise Conflict("group_exists", f"A group named {new['name']!r} already exists.")
    changes = {}
    for field, value in new.items():
        old = getattr(group, field)
        if value != old:
            changes[field] = {"old": old, "new": value}
            setattr(group, field, value)
    if changes:
        group.updated_at = utcnow()
        session.flush()
        record(
            session,
            actor,
            "group.updated",
            org_id=group.org_id,
            target_type="group",
            target_id=group.id,
            details=changes,
            context=context,
        )
    return group


def delete_group(
    session: Session, actor: Principal | None, group: Group, *, context: RequestContext | None = None
) -> None:
    """Delete the group: its members lose the policies they had only through it."""
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
    lock_organization(session, group.org_id)  # concurrent identical calls stay idempotent
    existing = set(
        session.scalars(
            select(GroupMember.user_id).where(GroupMember.group_id == group.id, GroupMember.user_id.in_(resolved))
        )
    )
    added = [u for u in resolved if u not in existing]
    for user_id in added:
        session.add(GroupMember(group_id=group.id, user_id=user_id, created_at=utcnow()))
    if added:
        session.flush()
        record(
            session,
            actor,
            "group.member_added",
            org_id=group.org_id,
            target_type="group",
            target_id=group.id,
            details={"group_name": group.name, "user_ids": added},
            context=context,
        )
    return added


def remove_group_member(
    session: Session, actor: Principal | None, group: Group, user_id: str, *, context: RequestContext | None = None
) -> bool:
    """False if the user was not a member (idempotent). NotFound `user_not_found` if not a user of the org."""
    user = get_user(session, group.org_id, user_id, include_inactive=True)
    result = session.execute(
        delete(GroupMember).where(GroupMember.group_id == group.id, GroupMember.user_id == user.id)
    )
    removed = bool(result.rowcount)
    if removed:
        record(
            session,
            actor,
            "group.member_removed",
            org_id=group.org_id,
            target_type="group",
            target_id=group.id,
            details={"group_name": group.name, "user_id": user.id},
            context=context,
        )
    return removed


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
    lock_organization(session, group.org_id)  # concurrent identical calls stay idempotent
    existing = set(
        session.scalars(
            select(GroupPolicy.policy_id).where(GroupPolicy.group_id == group.id, GroupPolicy.policy_id.in_(wanted))
        )
    )
    added = [p for p in wanted if p not in existing]
    for policy_id in added:
        session.add(GroupPolicy(group_id=group.id, policy_id=policy_id, created_at=utcnow()))
    if added:
        session.flush()
        record(
            session,
            actor,
            "group.policy_assigned",
            org_id=group.org_id,
            target_type="group",
            target_id=group.id,
            details={"group_name": group.name, "policy_ids": added},
            context=context,
        )
    return added


def remove_group_policy(
    session: Session, actor: Principal | None, group: Group, policy_id: str, *, context: RequestContext | None = None
) -> bool:
    """False if the policy was not assigned to the group. NotFound `policy_not_found` if not a policy of the org."""
    policy = get_policy(session, group.org_id, policy_id)
    result = session.execute(
        delete(GroupPolicy).where(GroupPolicy.group_id == group.id, GroupPolicy.policy_id == policy.id)
    )
    removed = bool(result.rowcount)
    if removed:
        record(
            session,
            actor,
            "group.policy_removed",
            org_id=group.org_id,
            target_type="group",
            target_id=group.id,
            details={"group_name": group.name, "policy_id": policy.id},
            context=context,
        )
    return removed


# --------------------------------------------------------------------------- org setting


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
    return org


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class _PolicyRow:
    id: str
    name: str
    source_ids: list[str]
    row_filters: list[dict]


_POLICY_COLUMNS = (Policy.id, Policy.name, Policy.source_ids, Policy.row_filters)


def _rows(result: Iterable) -> list[_PolicyRow]:
    return sorted(
        (_PolicyRow(r.id, r.name, list(r.source_ids or []), list(r.row_filters or [])) for r in result),
        key=lambda p: p.id,
    )


def _subject_state(session: Session, org_id: str, user_id: str) -> tuple[bool, bool | None]:
    """(org deny_by_default, user active?) in one query; user None if not a user of the org."""
    row = session.execute(
        select(Organization.deny_by_default, User.is_active)
        .select_from(Organization)
        .outerjoin(User, and_(User.id == user_id, User.org_id == Organization.id))
        .where(Organization.id == org_id)
    ).first()
    if row is None:
        return True, None  # no such organization: nothing to see
    return bool(row[0]), row[1]


def _load_user_policies(session: Session, org_id: str, user_id: str) -> list[_PolicyRow]:
    direct = select(PolicyAssignment.policy_id).where(PolicyAssignment.user_id == user_id)
    via_groups = (
        select(GroupPolicy.policy_id)
        .join(GroupMember, GroupMember.group_id == GroupPolicy.group_id)
        .where(GroupMember.user_id == user_id)
    )
    return _rows(
        session.execute(
            # One IN over a UNION: each policy is then a seek on (org_id, id), whatever the org's size.
            select(*_POLICY_COLUMNS).where(Policy.org_id == org_id, Policy.id.in_(union(direct, via_groups)))
        )
    )


def _column_index(source_columns: Sequence[str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for column in source_columns:
        names = index.setdefault(column.casefold(), [])
        if column not in names:
            names.append(column)
    return index


def _label(policy: _PolicyRow) -> str:
    return f"policy {policy.id} ({policy.name!r})"


def _values(values: Iterable[str]) -> str:
    return ", ".join(repr(v) for v in sorted(values))


def _compose(
    policies: Sequence[_PolicyRow],
    source_id: str,
    source_columns: Sequence[str],
    *,
    deny_by_default: bool,
    subject: str,
) -> tuple[RowFilter, list[str]]:
    """One principal's policies -> its RowFilter for the source, plus notes explaining it."""
    columns = _column_index(source_columns)
    union: dict[str, set[str]] = {}
    applicable: list[str] = []
    denials: list[str] = []
    notes: list[str] = []
    for policy in policies:
        explicit = bool(policy.source_ids)
        if explicit and source_id not in policy.source_ids:
            notes.append(f"{_label(policy)} is bound to other sources; it does not apply here.")
            continue
        matched: list[tuple[list[str], list[str]]] = []
        missing: list[str] = []
        for row_filter in policy.row_filters:
            names = columns.get(row_filter["column"].casefold())
            if names:
                matched.append((names, row_filter["values"]))
            else:
                missing.append(row_filter["column"])
        if explicit and missing:
            applicable.append(policy.id)
            for column in missing:
                denials.append(
                    f"{_label(policy)} is bound to source {source_id} but that source has no column {column!r}: "
                    f"access fails closed."
                )
            continue
        if not explicit and policy.row_filters and not matched:
            notes.append(
                f"{_label(policy)} (auto) does not apply: the source has none of its columns "
                f"({', '.join(repr(c) for c in missing)})."
            )
            continue
        applicable.append(policy.id)
        for names, values in matched:
            for name in names:
                union.setdefault(name, set()).update(values)
        parts = [f"{names[0] if len(names) == 1 else names} IN ({_values(values)})" for names, values in matched]
        note = f"{_label(policy)} applies: " + (" AND ".join(parts) if parts else "no row filter (all rows)")
        if missing:
            note += f"; its filter(s) on absent column(s) {', '.join(repr(c) for c in missing)} do not apply here"
        notes.append(note + ".")
    if denials:
        return RowFilter(clauses=(), deny_all=True, policy_ids=tuple(applicable), reasons=tuple(denials)), notes
    if not applicable:
        if deny_by_default:
            reason = (
                f"No access policy applies to {subject} on source {source_id}, and the organization "
                f"denies by default: no rows."
            )
            return RowFilter.deny(reason), notes
        notes.append(f"No access policy applies to {subject} on source {source_id}: all rows.")
        return RowFilter(clauses=()), notes  # no policy applies and none is required: every row
    clauses = tuple(Clause(column, frozenset(values)) for column, values in sorted(union.items()))
    return RowFilter(clauses=clauses, policy_ids=tuple(applicable)), notes


def _user_filter(
    session: Session, org_id: str, user_id: str, source_id: str, source_columns: Sequence[str], *, subject: str
) -> tuple[RowFilter, list[str], bool]:
    deny_by_default, active = _subject_state(session, org_id, user_id)
    if not active:
        return (
            RowFilter.deny(f"{subject} is not an active user of this organization: access fails closed."),
            [],
            deny_by_default,
        )
    policies = _load_user_policies(session, org_id, user_id)
    row_filter, notes = _compose(policies, source_id, source_columns, deny_by_default=deny_by_default, subject=subject)
    return row_filter, notes, deny_by_default


def resolve_user_filter(
    session: Session, org_id: str, user_id: str, source_id: str, source_columns: Sequence[str]
) -> RowFilter:
    """The rows `user_id` may see in the source (columns as the source names them).

    Fails closed (deny_all) for a user who is not an active user of the organization.
    """
    return _user_filter(session, org_id, user_id, source_id, source_columns, subject=f"user {user_id}")[0]


def _key_policy_filter(
    session: Session, key: KeyRestrictions, source_id: str, source_columns: Sequence[str], deny_by_default: bool
) -> tuple[RowFilter, list[str]]:
    ids = list(dict.fromkeys(key.access_policy_ids))
    policies = _rows(session.execute(select(*_POLICY_COLUMNS).where(Policy.org_id == key.org_id, Policy.id.in_(ids))))
    found = {p.id for p in policies}
    unknown = [p for p in ids if p not in found]
    if unknown:
        return RowFilter(
            clauses=(),
            deny_all=True,
            policy_ids=tuple(ids),
            reasons=tuple(
                f"key {key.key_id} names access policy {p}, which does not exist in this organization: access fails closed."
                for p in unknown
            ),
        ), []
    return _compose(
        policies, source_id, source_columns, deny_by_default=deny_by_default, subject=f"key {key.key_id}'s own policies"
    )


def _resolve_key(
    session: Session, key: KeyRestrictions, source_id: str, source_columns: Sequence[str]
) -> tuple[RowFilter, list[str]]:
    result, notes, deny_by_default = _user_filter(
        session, key.org_id, key.creator_id, source_id, source_columns, subject=f"key creator {key.creator_id}"
    )
    if key.access_policy_ids:
        key_filter, key_notes = _key_policy_filter(session, key, source_id, source_columns, deny_by_default)
        result, notes = result.both(key_filter), notes + key_notes
    if key.bound_user_id:
        bound, bound_notes, _ = _user_filter(
            session, key.org_id, key.bound_user_id, source_id, source_columns, subject=f"bound user {key.bound_user_id}"
        )
        result, notes = result.both(bound), notes + bound_notes
    return result, notes


def resolve_key_filter(
    session: Session, key: KeyRestrictions, source_id: str, source_columns: Sequence[str]
) -> RowFilter:
    """The rows a request with `key` may see: creator AND key policies AND bound user (each if set)."""
    return _resolve_key(session, key, source_id, source_columns)[0]


# --------------------------------------------------------------------------- display


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def where_clause(row_filter: RowFilter) -> str:
    """A readable SQL rendering of the filter, for display only (never executed by tidegate).

    "" when unrestricted, "FALSE" when no row passes.
    """
    if row_filter.deny_all:
        return "FALSE"
    return " AND ".join(
        f"{quote_identifier(c.column)} IN ({', '.join(quote_literal(v) for v in sorted(c.values))})"
        for c in row_filter.clauses
    )


def effective_access(row_filter: RowFilter) -> str:
    if row_filter.deny_all:
        return "none"
    return "full" if not row_filter.clauses else "filtered"


def filter_columns(row_filter: RowFilter) -> dict[str, list[str]]:
    """{column: [values]}; a column restricted twice (key composition) keeps the intersection."""
    merged: dict[str, frozenset[str]] = {}
    for clause in row_filter.clauses:
        merged[clause.column] = merged[clause.column] & clause.values if clause.column in merged else clause.values
    return {column: sorted(values) for column, values in merged.items()}


def _applies_to_source(policy: _PolicyRow, source_id: str, columns: dict[str, list[str]]) -> bool:
    if policy.source_ids:
        return source_id in policy.source_ids
    return not policy.row_filters or any(f["column"].casefold() in columns for f in policy.row_filters)


@dataclass(frozen=True)
class Explanation:
    """What one subject (a user, or a key) may read of one source, and why: the resolved row
    filter itself (the one data reads use) with the notes that explain it."""

    user_id: str  # the user, or the key's creator
    source_id: str
    row_filter: RowFilter
    notes: tuple[str, ...]
    # Some policy of the org applies to the source, or the org denies by default (or the
    # key has policies or a bound user of its own).
    source_is_access_controlled: bool

    @property
    def effective_access(self) -> str:
        return effective_access(self.row_filter)

    @property
    def where_clause(self) -> str:
        return where_clause(self.row_filter)

    @property
    def policy_ids(self) -> list[str]:
        return list(self.row_filter.policy_ids)

    @property
    def reasons(self) -> list[str]:
        return list(self.row_filter.reasons) + list(self.notes)

    @property
    def has_any_policy(self) -> bool:
        """At least one policy applies to this subject and source."""
        return bool(self.row_filter.policy_ids)

    @property
    def row_filters(self) -> dict[str, list[str]]:
        return {} if self.row_filter.deny_all else filter_columns(self.row_filter)

    def wire(self) -> dict:
        """The contract's ResolvedAccess, plus `policy_ids` and `reasons`."""
        return {
            "user_id": self.user_id,
            "source_id": self.source_id,
            "source_is_access_controlled": self.source_is_access_controlled,
            "effective_access": self.effective_access,
            "resolved_filters": {"row_filters": self.row_filters, "has_any_policy": self.has_any_policy},
            "where_clause": self.where_clause,
            "policy_ids": self.policy_ids,
            "reasons": self.reasons,
        }


def _source_is_access_controlled(
    session: Session, org_id: str, source_id: str, source_columns: Sequence[str], deny_by_default: bool
) -> bool:
    if deny_by_default:
        return True
    columns = _column_index(source_columns)
    return any(
        _applies_to_source(p, source_id, columns)
        for p in _rows(session.execute(select(*_POLICY_COLUMNS).where(Policy.org_id == org_id)))
    )


def explain_user(
    session: Session, org_id: str, user_id: str, source_id: str, source_columns: Sequence[str]
) -> Explanation:
    """What `user_id` (a tidegate id of the org) may read of the source, resolved once."""
    row_filter, notes, deny_by_default = _user_filter(
        session, org_id, user_id, source_id, source_columns, subject=f"user {user_id}"
    )
    controlled = _source_is_access_controlled(session, org_id, source_id, source_columns, deny_by_default)
    return Explanation(user_id, source_id, row_filter, tuple(notes), controlled)


def explain_key(session: Session, key: KeyRestrictions, source_id: str, source_columns: Sequence[str]) -> Explanation:
    """What a request with the key may read of the source (`user_id`: the key's creator):
    creator AND key policies AND bound user, resolved once."""
    row_filter, notes = _resolve_key(session, key, source_id, source_columns)
    deny_by_default, _ = _subject_state(session, key.org_id, key.creator_id)
    controlled = (
        _source_is_access_controlled(session, key.org_id, source_id, source_columns, deny_by_default)
        or bool(key.access_policy_ids)
        or bool(key.bound_user_id)
    )
    return Explanation(key.creator_id, source_id, row_filter, tuple(notes), controlled)


def resolve_view(session: Session, org_id: str, user_id: str, source_id: str, source_columns: Sequence[str]) -> dict:
    """The contract's ResolvedAccess for POST /access/resolve, plus `policy_ids` and `reasons`.

    `user_id` may be a tidegate id or an external id; NotFound `user_not_found` otherwise.
    `source_is_access_controlled`: some policy of the org applies to the source, or the org
    denies by default. `has_any_policy`: at least one policy applies to this user and source.
    """
    user = get_user(session, org_id, user_id)
    return explain_user(session, org_id, user.id, source_id, source_columns).wire()


def resolve_key_view(session: Session, key: KeyRestrictions, source_id: str, source_columns: Sequence[str]) -> dict:
    """ResolvedAccess for a key (tidegate extension): `user_id` is the key's creator."""
    return explain_key(session, key, source_id, source_columns).wire()
