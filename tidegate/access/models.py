"""Access policies (row-level security), their assignments, and groups.

A policy holds `row_filters` ([{column, values}]), `column_rules` ([{column, action: hide |
mask}]) and a binding: `source_ids` empty means
Auto (every source having the column), non-empty means Explicit (only those sources).
Policies reach a user directly (PolicyAssignment) or through a group the user belongs to
(GroupMember + GroupPolicy). Resolution (access.policies) reads these tables on every data
request, so each link table carries an index led by the column resolution looks up by.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidegate.db.base import Base, UtcDateTime, utcnow


class Policy(Base):
    __tablename__ = "access_policies"
    __table_args__ = (
        UniqueConstraint("org_id", "name"),
        Index(None, "org_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(2000))
    # [{"column": str, "values": [str, ...]}, ...]
    row_filters: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # [{"column": str, "action": "hide" | "mask"}, ...] (one rule per column)
    column_rules: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # [] = Auto binding; non-empty = Explicit binding to exactly these sources.
    source_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class PolicyAssignment(Base):
    """A policy assigned directly to a user."""

    __tablename__ = "access_policy_assignments"
    __table_args__ = (Index(None, "user_id", "policy_id"),)

    policy_id: Mapped[str] = mapped_column(ForeignKey("access_policies.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Group(Base):
    """A flat, named set of users of one organization."""

    __tablename__ = "access_groups"
    __table_args__ = (
        UniqueConstraint("org_id", "name"),
        Index(None, "org_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class GroupMember(Base):
    __tablename__ = "access_group_members"
    __table_args__ = (Index(None, "user_id", "group_id"),)

    group_id: Mapped[str] = mapped_column(ForeignKey("access_groups.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class GroupPolicy(Base):
    """A policy assigned to a group: every member inherits it."""

    __tablename__ = "access_group_policies"
    __table_args__ = (Index(None, "policy_id", "group_id"),)

    group_id: Mapped[str] = mapped_column(ForeignKey("access_groups.id", ondelete="CASCADE"), primary_key=True)
    policy_id: Mapped[str] = mapped_column(ForeignKey("access_policies.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
