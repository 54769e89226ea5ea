"""Usage reports (GET /usage, GET /usage/users/{id}, the web UI's Usage page): what the
audit log counts (tidegate.audit.usage), with the names of keys and sources, the org's
project count and its active users. Admins only: the caller's scope says so.

tidegate is not an AI product: AI message counts (`total_ai_messages`, `ai_messages`) are
always 0, as the Querri SDK's fields require a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tidegate.audit import usage
from tidegate.audit.usage import Totals, Window
from tidegate.catalog.analysis import Project
from tidegate.catalog.models import Source
from tidegate.credentials.models import ApiKey
from tidegate.db.base import utcnow
from tidegate.orgs import service as orgs


@dataclass(frozen=True)
class Day:
    date: str  # YYYY-MM-DD, UTC
    totals: Totals


@dataclass(frozen=True)
class KeyUse:
    key_id: str
    name: str | None  # None: not a key of this org any more
    key_prefix: str | None
    totals: Totals


@dataclass(frozen=True)
class SourceUse:
    source_id: str
    name: str | None  # None: deleted
    totals: Totals


@dataclass(frozen=True)
class Report:
    org_id: str
    window: Window
    totals: Totals
    days: tuple[Day, ...]  # every day of the period, oldest first (zeros included)
    keys: tuple[KeyUse, ...]
    sources: tuple[SourceUse, ...]


@dataclass(frozen=True)
class OrgReport(Report):
    active_user_count: int
    project_count: int


@dataclass(frozen=True)
class UserReport(Report):
    user_id: str


def org_report(session: Session, org_id: str, period: str, *, now: datetime | None = None) -> OrgReport:
    span = usage.window(period, now or utcnow())
    summary = usage.summarize(session, org_id, span)
    projects = session.scalar(select(func.count()).select_from(Project).where(Project.org_id == org_id))
    return OrgReport(
        **_report_fields(session, org_id, span, summary),
        active_user_count=usage.active_users(session, org_id, span),
        project_count=int(projects or 0),
    )


def user_report(session: Session, org_id: str, user_id: str, period: str, *, now: datetime | None = None) -> UserReport:
    """404 user_not_found for a user not of this org (by id or external id); a deactivated
    user's past usage is still reported."""
    span = usage.window(period, now or utcnow())  # (a bad period is refused first)
    user = orgs.get_user(session, org_id, user_id, include_inactive=True)
    summary = usage.summarize(session, org_id, span, user_id=user.id)
    return UserReport(**_report_fields(session, org_id, span, summary), user_id=user.id)


def _report_fields(session: Session, org_id: str, span: Window, summary: usage.Summary) -> dict:
    key_ids = [key_id for key_id, _ in summary.by_key]
    source_ids = [source_id for source_id, _ in summary.by_source]
    keys = {
        key.id: key for key in session.scalars(select(ApiKey).where(ApiKey.org_id == org_id, ApiKey.id.in_(key_ids)))
    }
    sources = {
        row.id: row.name
        for row in session.execute(
            select(Source.id, Source.name).where(Source.org_id == org_id, Source.id.in_(source_ids))
        )
    }
    return {
        "org_id": org_id,
        "window": span,
        "totals": summary.totals,
        "days": tuple(Day(day, summary.by_day.get(day, Totals())) for day in span.days()),
        "keys": tuple(
            KeyUse(
                key_id,
                keys[key_id].name if key_id in keys else None,
                keys[key_id].key_prefix if key_id in keys else None,
                totals,
            )
            for key_id, totals in summary.by_key
        ),
        "sources": tuple(
            SourceUse(source_id, sources.get(source_id), totals) for source_id, totals in summary.by_source
        ),
    }
