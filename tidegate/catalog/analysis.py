"""Projects (saved analyses: SQL steps over sources), dashboards (widgets drawing steps),
their shares and a dashboard's share links, as stored in the database.

Nothing here holds rows: a step's rows are computed on read, under the READER's access
(tidegate.analysis), never stored under its author's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidegate.db.base import Base, UtcDateTime, utcnow

RESOURCE_PROJECT = "project"
RESOURCE_DASHBOARD = "dashboard"
RESOURCE_TYPES = (RESOURCE_PROJECT, RESOURCE_DASHBOARD)
WIDGET_KINDS = ("table", "bar", "line", "number")


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (Index(None, "org_id", "id"), Index(None, "created_by"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # prj_...
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))  # the owner
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # Bumped by every change to its steps or sources: part of every cached step result's key.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ProjectSource(Base):
    """A source a project's steps read, by `name` (the table name in their SQL)."""

    __tablename__ = "project_sources"
    __table_args__ = (UniqueConstraint("project_id", "name"), Index(None, "source_id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # psrc_...
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id"))
    name: Mapped[str] = mapped_column(String(63))
    added_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Step(Base):
    """One SELECT over the project's sources and earlier steps, by name."""

    __tablename__ = "project_steps"
    __table_args__ = (UniqueConstraint("project_id", "name"), Index(None, "project_id", "position"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # stp_...
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(63))
    sql: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer)
    # Step ids this one reads (given, or found in its SQL by name).
    depends_on: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ProjectRun(Base):
    __tablename__ = "project_runs"
    __table_args__ = (Index(None, "project_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # api_...
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    started_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    key_id: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20))  # running | complete | error | cancelled
    message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Dashboard(Base):
    __tablename__ = "dashboards"
    __table_args__ = (Index(None, "org_id", "id"), Index(None, "created_by"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # dash_...
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # [{"column": str, "values": [str, ...]}]: narrows every widget (AND of the filters).
    filters: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    refresh_status: Mapped[str] = mapped_column(String(20), default="idle", server_default="idle")
    refreshed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Widget(Base):
    __tablename__ = "dashboard_widgets"
    __table_args__ = (Index(None, "dashboard_id", "position"), Index(None, "project_id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # wdg_...
    dashboard_id: Mapped[str] = mapped_column(ForeignKey("dashboards.id"))
    title: Mapped[str] = mapped_column(String(200))
    # No foreign keys: a widget outlives a deleted project or step and then reports it.
    project_id: Mapped[str] = mapped_column(String(40))
    step_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(10))  # table | bar | line | number
    x: Mapped[str | None] = mapped_column(String(255))  # column names
    y: Mapped[str | None] = mapped_column(String(255))
    position: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ResourceShare(Base):
    """A project or dashboard shared with one user (view | edit)."""

    __tablename__ = "resource_shares"
    __table_args__ = (UniqueConstraint("resource_type", "resource_id", "user_id"), Index(None, "user_id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # shr_...
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    resource_type: Mapped[str] = mapped_column(String(20))  # project | dashboard
    resource_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    permission: Mapped[str] = mapped_column(String(10))  # view | edit
    granted_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ShareLink(Base):
    """A revocable, expiring link to a dashboard. Its token is a secret: shown once, stored
    only as a keyed hash. Member links open for signed-in members (each sees their rows);
    public links (only while the organization allows them) render with `policy_ids`' access."""

    __tablename__ = "share_links"
    __table_args__ = (Index(None, "dashboard_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # lnk_...
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    dashboard_id: Mapped[str] = mapped_column(ForeignKey("dashboards.id"))
    token_prefix: Mapped[str] = mapped_column(String(24), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    policy_ids: Mapped[list[str]] = mapped_column(JSON, default=list)  # public links only
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
