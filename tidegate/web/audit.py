"""The audit log (admins): filter by key, user, action and dates; a per-key view of what
a key accessed; CSV export of the filtered list.

The key filter matches both the requests a key made (key_id) and the events about it
(target_id: created, revoked, rotated...).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import Path, Query, Request
from sqlalchemy import select
from starlette.responses import StreamingResponse

from tidegate.access.models import Group, Policy
from tidegate.audit.models import AuditEvent
from tidegate.audit.query import list_events, parse_bound
from tidegate.audit.record import SERVER, record
from tidegate.audit.usage import Window, events_per_day
from tidegate.audit.usage import key_activity as key_activity_of
from tidegate.audit.verify import verify_org
from tidegate.catalog.analysis import Dashboard, Project
from tidegate.catalog.models import Source
from tidegate.core.scopes import Scope
from tidegate.credentials import service as keys_service
from tidegate.credentials.insights import key_insights
from tidegate.credentials.models import ApiKey
from tidegate.db.base import isoformat, utcnow
from tidegate.db.engine import session_scope
from tidegate.errors import TidegateError
from tidegate.http import request_context
from tidegate.orgs.models import User
from tidegate.spreadsheet import neutralize
from tidegate.web.common import PageError, db, router, settings_of, signed_in
from tidegate.web.render import SECURITY_HEADERS, page

READ = Scope.AUDIT_READ
PAGE_SIZE = 50
EXPORT_BATCH = 500
EXPORT_MAX_ROWS = 100_000
CHAIN_CHECK_EVENTS = 50_000  # about a second of hashing


def Id():  # a fresh Query per parameter: FastAPI must not share one between parameters
    return Query(None, max_length=100)


def DateQ():
    return Query(None, max_length=40)


CSV_COLUMNS = (
    "timestamp",
    "action",
    "actor_type",
    "actor_id",
    "actor",
    "key_id",
    "key",
    "target_type",
    "target_id",
    "method",
    "path",
    "status",
    "ip_address",
    "user_agent",
    "request_id",
    "details",
)


@dataclass
class Filters:
    key_id: str | None = None
    user_id: str | None = None
    action: str | None = None
    since: str | None = None
    until: str | None = None

    def clean(self) -> Filters:
        return Filters(
            *(
                v.strip() or None if isinstance(v, str) else None
                for v in (self.key_id, self.user_id, self.action, self.since, self.until)
            )
        )

    def query(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


def fetch(
    session, org_id: str, f: Filters, *, limit: int, after: str | None, before: str | None = None
) -> list[AuditEvent]:
    """Up to limit+1 events, newest first (older than `after`, or the oldest ones newer than
    `before`); raises InvalidRequest for a bad date."""
    since, until = parse_bound(f.since, "From", end=False), parse_bound(f.until, "To", end=True)

    def events(**which: str | None) -> list:
        return list_events(
            session,
            org_id,
            limit=limit,
            after=after,
            before=before,
            actor_id=f.user_id,
            action=f.action,
            since=since,
            until=until,
            **which,
        )

    if not f.key_id:
        return events()
    by_key = events(key_id=f.key_id)
    about_key = events(target_id=f.key_id)
    merged = sorted({e.id: e for e in by_key + about_key}.values(), key=lambda e: e.id, reverse=True)
    return merged[-(limit + 1) :] if before else merged[: limit + 1]


CHART_DAYS = 30  # without dates, the chart shows the last 30 days
CHART_MAX_DAYS = 366


def chart_window(f: Filters, now: datetime) -> Window:
    """The days the events-per-day chart covers: the filter's dates, else the last 30 days
    (at most a year: the last 366 days of a longer range)."""
    since, until = parse_bound(f.since, "From", end=False), parse_bound(f.until, "To", end=True)
    end = min(until, now) if until else now
    start = since or end - timedelta(days=CHART_DAYS)
    start = max(start, end - timedelta(days=CHART_MAX_DAYS))
    return Window("filter", start, max(start, end))


def events_chart(session, org_id: str, f: Filters) -> dict:
    span = chart_window(f, utcnow())
    counts = events_per_day(session, org_id, span, actor_id=f.user_id, action=f.action, key_id=f.key_id)
    days = span.days()
    return {"labels": days, "events": [counts.get(d, 0) for d in days], "total": sum(counts.values())}


def labels(session, org_id: str, events: list[AuditEvent]) -> tuple[dict[str, str], dict[str, str]]:
    """Display names: user id -> email, key id -> 'name (prefix)'."""
    user_ids = {e.actor_id for e in events if e.actor_type == "user"} | {
        e.target_id for e in events if e.target_type == "user" and e.target_id
    }
    key_ids = (
        {e.key_id for e in events if e.key_id}
        | {e.actor_id for e in events if e.actor_type == "api_key"}
        | {e.target_id for e in events if e.target_type == "api_key" and e.target_id}
    )
    users = (
        dict(session.execute(select(User.id, User.email).where(User.org_id == org_id, User.id.in_(user_ids))).all())
        if user_ids
        else {}
    )
    keys = (
        {
            k: f"{n} ({p}…)"
            for k, n, p in session.execute(
                select(ApiKey.id, ApiKey.name, ApiKey.key_prefix).where(ApiKey.org_id == org_id, ApiKey.id.in_(key_ids))
            ).all()
        }
        if key_ids
        else {}
    )
    return users, keys


# Targets shown by name and linked: their type, model and page.
NAMED_TARGETS: dict[str, tuple[Any, str, str]] = {
    "source": (Source, "Source", "/sources/{}"),
    "access_policy": (Policy, "Access policy", "/settings/security/access-policies/{}"),
    "group": (Group, "Group", "/settings/security/groups/{}"),
    "project": (Project, "Project", "/projects/{}"),
    "dashboard": (Dashboard, "Dashboard", "/dashboards/{}"),
}


def target_names(session, org_id: str, events: list[AuditEvent]) -> dict[tuple[str, str], str]:
    """(type, id) -> name of the sources, policies, groups, projects and dashboards events
    are about: one query per type present."""
    wanted: dict[str, set[str]] = {}
    for e in events:
        if e.target_type in NAMED_TARGETS and e.target_id:
            wanted.setdefault(e.target_type, set()).add(e.target_id)
    names: dict[tuple[str, str], str] = {}
    for kind, ids in wanted.items():
        model = NAMED_TARGETS[kind][0]
        query = select(model.id, model.name).where(model.org_id == org_id, model.id.in_(sorted(ids)))
        names.update({(kind, id_): name for id_, name in session.execute(query).all()})
    return names


def target_href(event: AuditEvent, names: dict[tuple[str, str], str]) -> str | None:
    """The page of an event's target, while it still exists."""
    if event.target_type == "api_key" and event.target_id:
        return f"/audit/keys/{event.target_id}"
    known = NAMED_TARGETS.get(event.target_type or "")
    if known and (event.target_type, event.target_id) in names:
        return known[2].format(event.target_id)
    return None


def actor_label(event: AuditEvent, users: dict[str, str], keys: dict[str, str]) -> str:
    if event.actor_type == "user":
        return users.get(event.actor_id, event.actor_id)
    if event.actor_type == "api_key":
        return "key " + keys.get(event.actor_id, event.actor_id)
    return {"cli": "operator (CLI)", SERVER: "tidegate (automatic)"}.get(event.actor_id, event.actor_id)


def target_label(
    event: AuditEvent, users: dict[str, str], keys: dict[str, str], names: dict[tuple[str, str], str] | None = None
) -> str:
    if not event.target_id:
        return ""
    if event.target_type == "user":
        return users.get(event.target_id, event.target_id)
    if event.target_type == "api_key":
        return keys.get(event.target_id, event.target_id)
    known = NAMED_TARGETS.get(event.target_type or "")
    if known:
        name = (names or {}).get((event.target_type or "", event.target_id))
        return f"{known[1]} {name}" if name else f"{known[1]} {event.target_id} (deleted)"
    return f"{(event.target_type or '').replace('_', ' ')} {event.target_id}".strip()


def event_rows(session, org_id: str, events: list[AuditEvent]) -> list[dict]:
    users, keys = labels(session, org_id, events)
    names = target_names(session, org_id, events)
    return [
        {
            "id": e.id,
            "timestamp": e.timestamp,
            "action": e.action,
            "actor": actor_label(e, users, keys),
            "actor_type": e.actor_type,
            "actor_id": e.actor_id,
            "request_id": e.request_id,
            "key_id": e.key_id,
            "key": keys.get(e.key_id, e.key_id) if e.key_id else "",
            "target_type": e.target_type,
            "target_id": e.target_id,
            "target_label": target_label(e, users, keys, names),
            "target_href": target_href(e, names),
            "method": e.method,
            "path": e.path,
            "status": e.status,
            "ip": e.ip_address,
            "user_agent": e.user_agent,
            "details": json.dumps(e.details, sort_keys=True) if e.details else "",
            "details_pretty": json.dumps(e.details, sort_keys=True, indent=2) if e.details else "",
            "details_summary": _summary(e.details),
        }
        for e in events
    ]


def _summary(details: dict | None) -> str:
    """A short line for the details disclosure: its first few simple fields."""
    if not details:
        return ""
    parts = [
        f"{k}: {v}" for k, v in details.items() if isinstance(v, (str, int, float, bool)) and k != "creator_user_id"
    ]
    text = ", ".join(parts[:2]) or f"{len(details)} field{'s' if len(details) != 1 else ''}"
    return text if len(text) <= 60 else text[:59] + "…"


def filter_choices(session, org_id: str) -> dict:
    users = session.execute(select(User.id, User.email).where(User.org_id == org_id).order_by(User.email)).all()
    keys = session.execute(
        select(ApiKey.id, ApiKey.name, ApiKey.key_prefix)
        .where(ApiKey.org_id == org_id)
        .order_by(ApiKey.name, ApiKey.id)
    ).all()
    actions = session.scalars(
        select(AuditEvent.action).where(AuditEvent.org_id == org_id).distinct().order_by(AuditEvent.action)
    ).all()
    return {"users": users, "key_choices": keys, "actions": actions}


def chain_status(request: Request, org_id: str) -> dict:
    """The page's "verified up to": this process verifies the chain from its start, then
    only what was added since (from the last checkpoint it verified), at most
    CHAIN_CHECK_EVENTS events per page view (a long log is caught up over a few views)."""
    signer = request.app.state.audit_signer
    verified = request.app.state.audit_verified
    with session_scope(settings_of(request).database_url) as session:
        report = verify_org(
            session, org_id, {signer.key_id: signer.public}, resume=verified.get(org_id), limit=CHAIN_CHECK_EVENTS
        )
    if report.ok and report.verified_seq is not None and report.verified_hash and report.verified_at:
        verified[org_id] = (report.verified_seq, report.verified_hash, report.verified_at)
    return {
        "problem": report.problem.message if report.problem else None,
        "verified_at": report.verified_at,
        "verified_seq": report.verified_seq,
        "unsigned": report.unsigned,
    }


def _flush_journal(request: Request) -> None:
    # Ship this process's request events first, so that the page shows the latest requests.
    request.app.state.journal.flush()


@router.get("/audit")
def audit_page(
    request: Request,
    key_id: str | None = Id(),
    user_id: str | None = Id(),
    action: str | None = Id(),
    since: str | None = DateQ(),
    until: str | None = DateQ(),
    after: str | None = Id(),
    before: str | None = Id(),
):
    f = Filters(key_id, user_id, action, since, until).clean()
    _flush_journal(request)
    error, status, events, chart = None, 200, [], None
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        try:
            events = fetch(session, viewer.org.id, f, limit=PAGE_SIZE, after=after, before=None if after else before)
            chart = events_chart(session, viewer.org.id, f)
        except TidegateError as exc:
            error, status = exc.message, exc.status
        more = len(events) > PAGE_SIZE
        if before and not after:
            newer, older = more, True
            events = events[-PAGE_SIZE:]
        else:
            newer, older = bool(after), more
            events = events[:PAGE_SIZE]
        context = {
            "title": "Audit log",
            "filters": f,
            "events": event_rows(session, viewer.org.id, events),
            "next_query": {**f.query(), "after": events[-1].id} if older and events else None,
            "previous_query": {**f.query(), "before": events[0].id} if newer and events else None,
            "chart": chart,
            "export_query": f.query(),
            "error": error,
            **filter_choices(session, viewer.org.id),
        }
    context["chain"] = chain_status(request, viewer.org.id)
    return page(request, "audit.html", context, viewer=viewer, status=status)


def _csv_line(values) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([neutralize(v) for v in values])
    return buffer.getvalue()


@router.get("/audit/export.csv")
def audit_export(
    request: Request,
    key_id: str | None = Id(),
    user_id: str | None = Id(),
    action: str | None = Id(),
    since: str | None = DateQ(),
    until: str | None = DateQ(),
):
    f = Filters(key_id, user_id, action, since, until).clean()
    _flush_journal(request)
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        try:
            fetch(session, viewer.org.id, f, limit=1, after=None)  # validate the dates before streaming
        except TidegateError as exc:
            raise PageError(exc.status, "Bad filter", exc.message, viewer) from None
        record(
            session,
            viewer.principal,
            "audit.exported",
            org_id=viewer.org.id,
            target_type="audit",
            details={"filters": f.query(), "format": "csv", "via": "web"},
            context=request_context(request),
        )
        org_id = viewer.org.id
    database_url = settings_of(request).database_url

    def rows() -> Iterator[str]:
        yield _csv_line(CSV_COLUMNS)
        after, sent = None, 0
        while sent < EXPORT_MAX_ROWS:
            with session_scope(database_url) as session:
                batch = fetch(session, org_id, f, limit=EXPORT_BATCH, after=after)
                page_rows = event_rows(session, org_id, batch[:EXPORT_BATCH])
            for r in page_rows:
                yield _csv_line(
                    (
                        isoformat(r["timestamp"]),
                        r["action"],
                        r["actor_type"],
                        r["actor_id"],
                        r["actor"],
                        r["key_id"],
                        r["key"],
                        r["target_type"],
                        r["target_id"],
                        r["method"],
                        r["path"],
                        r["status"],
                        r["ip"],
                        r["user_agent"],
                        r["request_id"],
                        r["details"],
                    )
                )
            sent += len(page_rows)
            if len(batch) <= EXPORT_BATCH:
                return
            after = batch[EXPORT_BATCH - 1].id

    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="audit-{stamp}.csv"'}
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers=headers)


APPLIED = {
    "narrowed": "The suggestion was applied: the key now holds only what its requests needed.",
}


@router.get("/audit/keys/{key_id}")
def key_activity(
    request: Request,
    key_id: str = Path(max_length=100),
    after: str | None = Id(),
    before: str | None = Id(),
    notice: str | None = Query(None, max_length=40),
):
    _flush_journal(request)
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        try:
            key = keys_service.get_key(session, viewer.principal, key_id)
        except TidegateError as exc:
            raise PageError(exc.status, "Key not found", exc.message, viewer) from None
        before = None if after else before
        requests = list_events(session, viewer.org.id, limit=PAGE_SIZE, after=after, before=before, key_id=key.id)
        more = len(requests) > PAGE_SIZE
        if before:
            newer, older = more, True
            requests = requests[-PAGE_SIZE:]
        else:
            newer, older = bool(after), more
            requests = requests[:PAGE_SIZE]
        lifecycle = list_events(session, viewer.org.id, limit=100, target_id=key.id)
        creator = session.get(User, key.created_by)
        context = {
            "title": f"Key activity: {key.name}",
            "key": {
                "id": key.id,
                "name": key.name,
                "prefix": key.key_prefix,
                "status": key.status_at(utcnow()),
                "created_at": key.created_at,
                "created_by": creator.email if creator else key.created_by,
                "last_used_at": key.last_used_at,
                "last_used_ip": key.last_used_ip,
                "expires_at": key.expires_at,
                "scopes": list(key.scopes),
            },
            "requests": event_rows(session, viewer.org.id, requests),
            "lifecycle": event_rows(session, viewer.org.id, lifecycle[:100]),
            "next_after": requests[-1].id if older and requests else None,
            "previous_before": requests[0].id if newer and requests else None,
            **activity_context(session, viewer.org.id, key.id),
            "insights": (found := key_insights(session, key)),
            "source_names": {u.source_id: u.name for u in found.sources if u.name},
            "can_apply": viewer.can(Scope.KEYS_MANAGE) and key.status_at(utcnow()) == "active",
            "notice": APPLIED.get(notice or ""),
        }
    return page(request, "audit_key.html", context, viewer=viewer, current="/audit")


def activity_context(session, org_id: str, key_id: str) -> dict:
    """The key's last 30 days as pictures: requests per day (accepted, refused), and the
    sources (by name, linked) and client IPs it used most."""
    now = utcnow()
    span = Window("last_30_days", now - timedelta(days=CHART_DAYS), now)
    activity = key_activity_of(session, org_id, key_id, span)
    days = span.days()
    refused = [activity.by_day[d].refused if d in activity.by_day else 0 for d in days]
    requests = [activity.by_day[d].requests if d in activity.by_day else 0 for d in days]
    source_ids = [s for s, _ in activity.top_sources]
    names = (
        dict(
            session.execute(
                select(Source.id, Source.name).where(Source.org_id == org_id, Source.id.in_(source_ids))
            ).all()
        )
        if source_ids
        else {}
    )
    return {
        "chart": {
            "labels": days,
            "accepted": [n - r for n, r in zip(requests, refused, strict=True)],
            "refused": refused,
        },
        "chart_totals": {"accepted": sum(requests) - sum(refused), "refused": sum(refused)},
        "top_sources": [(s, names.get(s), t) for s, t in activity.top_sources],
        "top_ips": activity.top_ips,
    }
