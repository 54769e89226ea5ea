"""Usage reports as GET /usage and GET /usage/users/{id} return them: the Querri SDK's
fields (OrgUsageReport, UserUsageReport) plus tidegate's own counts."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tidegate.analysis.usage import Day, KeyUse, OrgReport, Report, SourceUse, UserReport
from tidegate.audit.usage import Totals
from tidegate.db.base import isoformat


class Counts(BaseModel):
    requests: int = Field(description="Requests made with keys or embed sessions (refused ones too).")
    rows_read: int = Field(description="Rows returned by data reads, queries and column values.")
    rows_exported: int = Field(description="Rows sent as CSV or Parquet exports.")
    bytes_out: int = Field(
        description="Response bytes (Content-Length). Streamed exports have none and are not counted."
    )
    refused_requests: int = Field(description="Requests answered with an error (4xx or 5xx).")

    @classmethod
    def fields_of(cls, totals: Totals) -> dict[str, int]:
        return {
            "requests": totals.requests,
            "rows_read": totals.rows_read,
            "rows_exported": totals.rows_exported,
            "bytes_out": totals.bytes_out,
            "refused_requests": totals.refused,
        }


class DailyOut(Counts):
    date: str = Field(description="UTC day, YYYY-MM-DD.")
    count: int = Field(description="Requests that day (the SDK's DailyUsage.count).")

    @classmethod
    def of(cls, day: Day) -> DailyOut:
        return cls(date=day.date, count=day.totals.requests, **Counts.fields_of(day.totals))


class KeyUsageOut(Counts):
    key_id: str
    name: str | None
    key_prefix: str | None

    @classmethod
    def of(cls, use: KeyUse) -> KeyUsageOut:
        return cls(key_id=use.key_id, name=use.name, key_prefix=use.key_prefix, **Counts.fields_of(use.totals))


class SourceUsageOut(Counts):
    source_id: str
    name: str | None

    @classmethod
    def of(cls, use: SourceUse) -> SourceUsageOut:
        return cls(source_id=use.source_id, name=use.name, **Counts.fields_of(use.totals))


class _ReportOut(Counts):
    period: str
    period_start: str
    period_end: str
    daily_breakdown: list[DailyOut] = Field(description="Every day of the period, oldest first.")
    keys: list[KeyUsageOut] = Field(description="Keys by requests, most first (at most 100).")
    sources: list[SourceUsageOut] = Field(description="Sources by requests, most first (at most 100).")

    @staticmethod
    def fields_of_report(report: Report) -> dict:
        return {
            "period": report.window.period,
            "period_start": isoformat(report.window.start),
            "period_end": isoformat(report.window.end),
            "daily_breakdown": [DailyOut.of(day) for day in report.days],
            "keys": [KeyUsageOut.of(use) for use in report.keys],
            "sources": [SourceUsageOut.of(use) for use in report.sources],
            **Counts.fields_of(report.totals),
        }


class OrgUsageOut(_ReportOut):
    org_id: str
    total_ai_messages: int = Field(description="Always 0: tidegate has no AI features.")
    active_user_count: int = Field(description="Users a request was made for, or who made a change, in the period.")
    project_count: int = Field(description="Projects in the organization now.")

    @classmethod
    def of(cls, report: OrgReport) -> OrgUsageOut:
        return cls(
            org_id=report.org_id,
            total_ai_messages=0,
            active_user_count=report.active_user_count,
            project_count=report.project_count,
            **cls.fields_of_report(report),
        )


class UserUsageOut(_ReportOut):
    user_id: str
    ai_messages: int = Field(description="Always 0: tidegate has no AI features.")

    @classmethod
    def of(cls, report: UserReport) -> UserUsageOut:
        return cls(user_id=report.user_id, ai_messages=0, **cls.fields_of_report(report))
