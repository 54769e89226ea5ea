"""Usage, counted from the audit log: requests, rows read, rows exported and bytes sent,
per day, per key and per source, over a reporting period.

Every number is one aggregate query (GROUP BY) over `audit_events` in the period (index
org_id, timestamp), never a loop over events. What is counted:

- a request: an event the request middleware wrote (it has a `method`); lifecycle events
  written inside a request's transaction are not counted again;
- rows read: `rows_returned` of the data reads (`data.read`, `data.query`, `data.values`);
- rows exported: `rows_returned` of `data.export` (every row of a CSV or Parquet export);
- bytes out: the response's Content-Length (`bytes_out`). A streamed export has none when
  its event is written (before its first byte), so its bytes are NOT counted: its rows are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, case, func, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from tidegate.audit.models import AuditEvent
from tidegate.errors import InvalidRequest

PERIODS = ("current_month", "last_month", "last_30_days")
READ_ACTIONS = ("data.read", "data.query", "data.values")
EXPORT_ACTION = "data.export"
TOP = 100  # keys and sources listed per report, most requests first


@dataclass(frozen=True)
class Window:
    """A reporting period: [start, end) in UTC."""

    period: str
    start: datetime
    end: datetime

    def days(self) -> list[str]:
        """Every UTC day the window touches, oldest first."""
        first, last = self.start.date(), (self.end - timedelta(microseconds=1)).date()
        return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def window(period: str, now: datetime) -> Window:
    """The period named `period` as seen at `now`; 400 invalid_period for any other name."""
    if period not in PERIODS:
        raise InvalidRequest("invalid_period", f"period must be one of {', '.join(PERIODS)}; got {period[:40]!r}.")
    now = now.astimezone(UTC)
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    if period == "current_month":
        return Window(period, month_start, now)
    if period == "last_month":
        previous = month_start - timedelta(days=1)
        return Window(period, datetime(previous.year, previous.month, 1, tzinfo=UTC), month_start)
    return Window(period, now - timedelta(days=30), now)


@dataclass(frozen=True)
class Totals:
    requests: int = 0
    rows_read: int = 0
    rows_exported: int = 0
    bytes_out: int = 0
    refused: int = 0  # requests answered 4xx or 5xx


@dataclass(frozen=True)
class Summary:
    totals: Totals
    by_day: dict[str, Totals]  # "YYYY-MM-DD" (UTC) -> totals; days without requests absent
    by_key: list[tuple[str, Totals]]  # most requests first, at most TOP
    by_source: list[tuple[str, Totals]]  # same


class utc_day(FunctionElement[str]):
    """The UTC calendar day of a timestamp, as YYYY-MM-DD text, on every backend."""

    type = String()
    inherit_cache = True


@compiles(utc_day)
def _utc_day_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    # SQLite holds UtcDateTime as naive UTC text: its first ten characters are the day.
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    # Explicitly in UTC: a bare cast would use the session's TimeZone.
    return f"to_char(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


def acting_user() -> ColumnElement[Any]:
    """The user an event acted for: a person (or an embed session's user) is the actor; a
    key acts for its creator, whom its request events name in `creator_user_id`."""
    return case(
        (AuditEvent.actor_type == "user", AuditEvent.actor_id),
        else_=AuditEvent.details["creator_user_id"].as_string(),
    )


def _rows() -> ColumnElement[Any]:
    return func.coalesce(AuditEvent.details["rows_returned"].as_integer(), 0)


def _measures() -> list[ColumnElement[Any]]:
    is_request = AuditEvent.method.is_not(None)
    served = and_(is_request, AuditEvent.status < 400)
    return [
        func.count(AuditEvent.method).label("requests"),  # (COUNT of a column skips NULLs)
        func.sum(case((and_(served, AuditEvent.action.in_(READ_ACTIONS)), _rows()), else_=0)).label("rows_read"),
        func.sum(case((and_(served, AuditEvent.action == EXPORT_ACTION), _rows()), else_=0)).label("rows_exported"),
        func.sum(case((is_request, func.coalesce(AuditEvent.details["bytes_out"].as_integer(), 0)), else_=0)).label(
            "bytes_out"
        ),
        func.sum(case((and_(is_request, AuditEvent.status >= 400), 1), else_=0)).label("refused"),
    ]


def _totals(row: Any) -> Totals:
    return Totals(
        requests=int(row.requests or 0),
        rows_read=int(row.rows_read or 0),
        rows_exported=int(row.rows_exported or 0),
        bytes_out=int(row.bytes_out or 0),
        refused=int(row.refused or 0),
    )


def _in_window(org_id: str, span: Window, user_id: str | None) -> list[ColumnElement[bool]]:
    conditions = [AuditEvent.org_id == org_id, AuditEvent.timestamp >= span.start, AuditEvent.timestamp < span.end]
    if user_id is not None:
        conditions.append(acting_user() == user_id)
    return conditions


def summarize(session: Session, org_id: str, span: Window, *, user_id: str | None = None) -> Summary:
    """Totals, per day, per key and per source of `org_id` in `span` (of one user's requests
    if `user_id` is given). Four GROUP BY queries over the period's events."""
    where = _in_window(org_id, span, user_id)
    totals = _totals(session.execute(select(*_measures()).where(*where)).one())
    day = utc_day(AuditEvent.timestamp).label("day")
    by_day = {row.day: _totals(row) for row in session.execute(select(day, *_measures()).where(*where).group_by(day))}
    return Summary(
        totals=totals,
        by_day=by_day,
        by_key=_grouped(session, AuditEvent.key_id, where),
        by_source=_grouped(session, AuditEvent.details["source_id"].as_string(), where),
    )


def _grouped(
    session: Session, column: ColumnElement[Any] | InstrumentedAttribute[Any], where: list[ColumnElement[bool]]
) -> list[tuple[str, Totals]]:
    group = column.label("group_id")
    measures = _measures()
    query = (
        select(group, *measures)
        .where(*where, column.is_not(None), AuditEvent.method.is_not(None))
        .group_by(group)
        .order_by(measures[0].desc(), group)
        .limit(TOP)
    )
    return [(str(row.group_id), _totals(row)) for row in session.execute(query)]


def active_users(session: Session, org_id: str, span: Window) -> int:
    """How many users something was done for in `span` (requests by their keys or embed
    sessions, or changes they made signed in)."""
    user = acting_user()
    query = select(func.count(func.distinct(user))).where(*_in_window(org_id, span, None), user.is_not(None))
    return int(session.scalar(query) or 0)


# -- pictures: the audit log's events per day, one key's requests per day ----------------


def events_per_day(
    session: Session,
    org_id: str,
    span: Window,
    *,
    actor_id: str | None = None,
    action: str | None = None,
    key_id: str | None = None,
) -> dict[str, int]:
    """How many audit events per UTC day in `span`, with the audit log's filters (a key
    filter matches the requests it made and the events about it). Days without any absent."""
    where = [AuditEvent.org_id == org_id, AuditEvent.timestamp >= span.start, AuditEvent.timestamp < span.end]
    if actor_id is not None:
        where.append(AuditEvent.actor_id == actor_id)
    if action is not None:
        where.append(AuditEvent.action == action)
    if key_id is not None:
        where.append(or_(AuditEvent.key_id == key_id, AuditEvent.target_id == key_id))
    day = utc_day(AuditEvent.timestamp).label("day")
    query = select(day, func.count().label("events")).where(*where).group_by(day)
    return {row.day: int(row.events) for row in session.execute(query)}


@dataclass(frozen=True)
class KeyActivity:
    by_day: dict[str, Totals]  # requests (and refused among them) per UTC day
    top_sources: list[tuple[str, Totals]]  # source id, most requests first
    top_ips: list[tuple[str, Totals]]  # client IP, most requests first


def key_activity(session: Session, org_id: str, key_id: str, span: Window, *, top: int = 10) -> KeyActivity:
    """What one key did in `span`: its requests per day, accepted and refused, and the
    sources and client IPs it used most. Three GROUP BY queries."""
    where = [
        AuditEvent.org_id == org_id,
        AuditEvent.key_id == key_id,
        AuditEvent.timestamp >= span.start,
        AuditEvent.timestamp < span.end,
    ]
    day = utc_day(AuditEvent.timestamp).label("day")
    by_day = {row.day: _totals(row) for row in session.execute(select(day, *_measures()).where(*where).group_by(day))}
    return KeyActivity(
        by_day=by_day,
        top_sources=_grouped(session, AuditEvent.details["source_id"].as_string(), where)[:top],
        top_ips=_grouped(session, AuditEvent.ip_address, where)[:top],
    )
