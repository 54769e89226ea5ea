"""Access policies, groups, and access resolution (tidegate's row-level security)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from tidegate.access.models import Group, Policy
from tidegate.db.base import isoformat


class RowFilterOut(BaseModel):
    column: str
    values: list[Any]


class ColumnRuleOut(BaseModel):
    column: str
    action: Literal["hide", "mask"]


class PolicyOut(BaseModel):
    """A policy as listed. `binding` (a tidegate extension): explicit when it names sources,
    auto when it applies to every source having its filter columns."""

    id: str
    name: str
    description: str | None
    source_ids: list[str]
    row_filters: list[RowFilterOut]
    column_rules: list[ColumnRuleOut]  # a tidegate extension: hide or mask columns
    binding: Literal["explicit", "auto"]
    user_count: int
    created_at: str | None
    updated_at: str | None

    @classmethod
    def fields_of(cls, policy: Policy, user_count: int) -> dict[str, Any]:
        return {
            "id": policy.id,
            "name": policy.name,
            "description": policy.description,
            "source_ids": list(policy.source_ids or []),
            "row_filters": [
                RowFilterOut(column=f["column"], values=list(f["values"])) for f in policy.row_filters or []
            ],
            "column_rules": [ColumnRuleOut(column=r["column"], action=r["action"]) for r in policy.column_rules or []],
            "binding": "explicit" if policy.source_ids else "auto",
            "user_count": user_count,
            "created_at": isoformat(policy.created_at),
            "updated_at": isoformat(policy.updated_at),
        }

    @classmethod
    def of(cls, policy: Policy, user_count: int) -> PolicyOut:
        return cls(**cls.fields_of(policy, user_count))


class PolicyDetail(PolicyOut):
    """A single policy: its users too, under both names the SDK accepts."""

    user_ids: list[str]
    assigned_user_ids: list[str]

    @classmethod
    def of_assigned(cls, policy: Policy, user_ids: list[str]) -> PolicyDetail:
        return cls(**cls.fields_of(policy, len(user_ids)), user_ids=list(user_ids), assigned_user_ids=list(user_ids))


class PolicyUpdated(BaseModel):
    id: str
    updated: bool
    policy: PolicyDetail


class PolicyUsersAssigned(BaseModel):
    policy_id: str
    assigned_user_ids: list[str]  # newly assigned by this call
    user_ids: list[str]  # all the policy's users now


class PolicyUserRemoved(BaseModel):
    policy_id: str
    user_id: str
    removed: bool


class UserPoliciesReplaced(BaseModel):
    user_id: str
    policy_ids: list[str]
    added: list[str]
    removed: list[str]


class GroupOut(BaseModel):
    """A group of users sharing policies (a tidegate extension)."""

    id: str
    name: str
    description: str | None
    user_ids: list[str]
    user_count: int
    policy_ids: list[str]
    created_at: str | None
    updated_at: str | None

    @classmethod
    def of(cls, group: Group, *, member_ids: list[str], policy_ids: list[str]) -> GroupOut:
        return cls(
            id=group.id,
            name=group.name,
            description=group.description,
            user_ids=list(member_ids),
            user_count=len(member_ids),
            policy_ids=list(policy_ids),
            created_at=isoformat(group.created_at),
            updated_at=isoformat(group.updated_at),
        )


class GroupMemberRemoved(BaseModel):
    group_id: str
    user_id: str
    removed: bool


class GroupPolicyRemoved(BaseModel):
    group_id: str
    policy_id: str
    removed: bool


class ResolvedFiltersOut(BaseModel):
    row_filters: dict[str, list[Any]]  # column -> the values allowed (every applying policy's)
    has_any_policy: bool


class ResolvedColumnRulesOut(BaseModel):
    hidden: list[str]  # the source's columns that do not exist for the reader
    masked: list[str]  # the source's columns the reader sees masked


class ResolvedAccessOut(BaseModel):
    """POST /access/resolve: what one user may see of one source, and why."""

    user_id: str
    source_id: str
    source_is_access_controlled: bool
    effective_access: str  # full, filtered or none
    resolved_filters: ResolvedFiltersOut
    where_clause: str
    policy_ids: list[str]
    reasons: list[str]
    column_rules: ResolvedColumnRulesOut


class ColumnOut(BaseModel):
    name: str
    type: str
    masked: bool  # the caller reads this column's values masked (column rules)


class SourceColumnsOut(BaseModel):
    source_id: str
    source_name: str
    columns: list[ColumnOut]
