"""tidegate.audit.usage: reporting periods, and the SQL that groups events by UTC day,
key and source (SQLite and PostgreSQL, the latter in a session whose time zone is not UTC)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tidegate.audit import usage
from tidegate.audit.models import AuditEvent
from tidegate.audit.record import event_row
from tidegate.db.engine import session_scope
from tidegate.errors import InvalidRequest


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("current_month", at(2026, 3, 15, 10), at(2026, 3, 1), at(2026, 3, 15, 10)),
        ("last_month", at(2026, 3, 15, 10), at(2026, 2, 1), at(2026, 3, 1)),
        ("last_month", at(2026, 1, 1, 0, 0, 1), at(2025, 12, 1), at(2026, 1, 1)),  # across a year
        ("last_30_days", at(2026, 3, 15, 10), at(2026, 2, 13, 10), at(2026, 3, 15, 10)),
    ],
)
def test_windows(period, now, start, end):
    span = usage.window(period, now)
    assert (span.period, span.start, span.end) == (period, start, end)


def test_a_windows_days_are_every_utc_day_it_touches():
    assert len(usage.window("last_month", at(2026, 3, 2)).days()) == 28
    assert usage.window("last_month", at(2024, 3, 2)).days()[-1] == "2024-02-29"
    assert usage.window("current_month", at(2026, 3, 1, 0, 0, 1)).days() == ["2026-03-01"]
    days = usage.window("last_30_days", at(2026, 3, 15, 10)).days()
    assert (days[0], days[-1], len(days)) == ("2026-02-13", "2026-03-15", 31)


def test_an_unknown_period_is_refused():
    with pytest.raises(InvalidRequest) as refused:
        usage.window("yesterday", at(2026, 3, 15))
    assert refused.value.code == "invalid_period"


def event(org_id: str, when: datetime, **fields) -> AuditEvent:
    details = {"creator_user_id": "usr_a", **fields.pop("details", {})}
    row = event_row(
        org_id=org_id,
        actor_type="api_key",
        actor_id=fields.get("key_id", "key_a"),
        key_id=fields.pop("key_id", "key_a"),
        action=fields.pop("action", "data.read"),
        method=fields.pop("method", "GET"),
        path="/api/v1/sources/x/data",
        status=fields.pop("status", 200),
        timestamp=when,
        details=details,
    )
    return AuditEvent(**row)


def test_summaries_group_by_utc_day_key_and_source(database_url):
    org_id = "org_" + uuid.uuid4().hex[:12]
    late = at(2026, 3, 10, 23, 30)  # late in the UTC day: the next day east of UTC
    with session_scope(database_url) as session:
        session.add_all(
            [
                event(org_id, late, details={"source_id": "src_1", "rows_returned": 5, "bytes_out": 100}),
                event(
                    org_id,
                    late + timedelta(minutes=10),
                    key_id="key_b",
                    details={"source_id": "src_1", "rows_returned": 2},
                ),
                event(
                    org_id,
                    at(2026, 3, 11, 0, 30),
                    action="data.export",
                    details={"source_id": "src_2", "rows_returned": 40},
                ),
                event(org_id, at(2026, 3, 11, 1), status=404, details={"source_id": "src_2", "rows_returned": 9}),
                # A lifecycle event (no method) is not a request; another org's is not counted.
                event(org_id, at(2026, 3, 11, 2), method=None, action="source.created"),
                event("org_other", at(2026, 3, 11, 2), details={"source_id": "src_1", "rows_returned": 1000}),
                event(org_id, at(2026, 2, 28, 12), details={"source_id": "src_1", "rows_returned": 1}),  # last month
            ]
        )
    with session_scope(database_url) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET LOCAL TIME ZONE 'Pacific/Kiritimati'"))  # UTC+14
        span = usage.window("current_month", at(2026, 3, 20))
        summary = usage.summarize(session, org_id, span)
        active = usage.active_users(session, org_id, span)
        mine = usage.summarize(session, org_id, span, user_id="usr_a")
        nobody = usage.summarize(session, org_id, span, user_id="usr_b")
    t = summary.totals
    assert (t.requests, t.rows_read, t.rows_exported, t.bytes_out, t.refused) == (4, 7, 40, 100, 1)
    assert {day: totals.requests for day, totals in summary.by_day.items()} == {
        "2026-03-10": 2,
        "2026-03-11": 2,
    }
    assert summary.by_day["2026-03-10"].rows_read == 7 and summary.by_day["2026-03-11"].rows_exported == 40
    assert [(key, totals.requests) for key, totals in summary.by_key] == [("key_a", 3), ("key_b", 1)]
    sources = dict(summary.by_source)
    assert (sources["src_1"].rows_read, sources["src_2"].rows_exported, sources["src_2"].refused) == (7, 40, 1)
    assert active == 1 and mine.totals == summary.totals and nobody.totals == usage.Totals()
