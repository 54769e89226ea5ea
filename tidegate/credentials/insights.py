"""Least privilege from usage: what a key did over the last 30 and 90 days, and the smallest
scopes and source restriction that would have allowed it.

Read from `audit_events` with a few GROUP BY queries on the key's events of the window
(index org_id, key_id, id: the window is an id range, event ids being time-ordered), never
a loop over events. Each request event names the scope checks it passed (`details.scopes`,
written by the request middleware: one scope, or the held alternatives of a check any of
several scopes allow); distinct combinations are few, so they are grouped in SQL and split
here. Only served requests (status < 400) count as something the key did. Requests of the
key's embed sessions count too: a session holds no more than its key.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from tidegate.audit.models import AuditEvent
from tidegate.catalog.models import Source
from tidegate.core.scopes import expand
from tidegate.credentials.models import ApiKey, KeyAddress
from tidegate.db.base import utcnow
from tidegate.ids import id_floor

SHORT, LONG = timedelta(days=30), timedelta(days=90)
MAX_ADDRESSES = 100
# Operations that make a source: a key doing them needs sources it cannot name in advance.
CREATING_SOURCES = frozenset({"create_source", "upload"})


@dataclass(frozen=True)
class ScopeUse:
    scope: str
    requests_30d: int
    requests_90d: int
    last_used_at: datetime | None  # within the 90 days


@dataclass(frozen=True)
class SourceUse:
    source_id: str
    name: str | None  # None: the source is gone
    requests_30d: int
    requests_90d: int
    last_used_at: datetime


@dataclass(frozen=True)
class AddressUse:
    ip: str
    first_seen: datetime
    last_seen: datetime
    requests: int
    refused: int


@dataclass(frozen=True)
class Suggestion:
    scopes: list[str]  # the smallest set covering every served request; [] if none needed one
    removes: list[str]  # of the key's scopes now, what that drops
    source_scope: dict[str, Any] | None  # the narrowest restriction covering the sources used
    source_scope_changes: bool
    applicable: bool  # there is something to narrow: `patch`
    reason: str
    # The PATCH /keys/{id} body that applies it (only what changes), or None.
    patch: dict[str, Any] | None = None


@dataclass(frozen=True)
class Insights:
    key_id: str
    generated_at: datetime
    observed_since: datetime  # the window's start, or the key's creation if later
    requests_30d: int
    requests_90d: int
    refused_90d: int
    scopes: list[ScopeUse]
    sources: list[SourceUse]
    addresses: list[AddressUse]
    suggestion: Suggestion


def _window(key: ApiKey, now: datetime) -> list[Any]:
    start = now - LONG
    return [
        AuditEvent.org_id == key.org_id,
        AuditEvent.key_id == key.id,
        # The window as an id range only (ids are time-ordered: a request's id is drawn when it
        # arrives), so that the one index that fits is (org_id, key_id, id).
        AuditEvent.id >= id_floor("evt", int(start.timestamp() * 1000)),
        AuditEvent.method.is_not(None),  # requests only (not lifecycle events done by the key)
    ]


def _counts(now: datetime) -> list[Any]:
    recent = AuditEvent.timestamp >= now - SHORT
    return [
        func.sum(case((recent, 1), else_=0)).label("n30"),
        func.count().label("n90"),
        func.max(AuditEvent.timestamp).label("last"),
    ]


def key_insights(session: Session, key: ApiKey, now: datetime | None = None) -> Insights:
    now = now or utcnow()
    rows = _grouped(session, key, now)
    served = [row for row in rows if not row.refused]
    held = sorted(expand(list(key.scopes)))
    sources = _source_uses(session, key.org_id, served)
    requirements = {check for row in served for check in _checks_of(row.checks)}
    return Insights(
        key_id=key.id,
        generated_at=now,
        observed_since=max(now - LONG, key.created_at),
        requests_30d=sum(int(row.n30 or 0) for row in rows),
        requests_90d=sum(int(row.n90 or 0) for row in rows),
        refused_90d=sum(int(row.n90 or 0) for row in rows if row.refused),
        scopes=_scope_uses(held, served),
        sources=sources,
        addresses=_addresses(session, key),
        suggestion=suggest(
            key,
            requirements,
            [s.source_id for s in sources if s.name is not None],  # (a deleted source needs no access)
            creates_sources=any(row.creating for row in served),
        ),
    )


def _grouped(session: Session, key: ApiKey, now: datetime) -> list[Any]:
    """The key's requests of the window in one scan, grouped by what the insights tell apart:
    refused or not, the scope checks passed, the source(s) used, and whether it made a source."""
    refused = case((AuditEvent.status >= 400, True), else_=False).label("refused")
    checks = AuditEvent.details["scopes"].as_string().label("checks")
    source_id = func.coalesce(
        AuditEvent.details["source_id"].as_string(),
        case((AuditEvent.target_type == "source", AuditEvent.target_id)),
    ).label("source_id")
    source_ids = AuditEvent.details["source_ids"].as_string().label("source_ids")  # (the PostgreSQL wire)
    operation = AuditEvent.details["operation"].as_string()
    creating = case((operation.in_(sorted(CREATING_SOURCES)), True), else_=False).label("creating")
    groups = (refused, checks, source_id, source_ids, creating)
    return list(session.execute(select(*groups, *_counts(now)).where(*_window(key, now)).group_by(*groups)).all())


def _checks_of(text: str | None) -> list[tuple[str, ...]]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [tuple(c) for c in value if isinstance(c, list) and c and all(isinstance(s, str) for s in c)]


def _scope_uses(held: list[str], rows: list[Any]) -> list[ScopeUse]:
    """Per scope the key holds: the served requests it allowed (a request any of several
    held scopes allowed counts for each of them)."""
    n30: dict[str, int] = dict.fromkeys(held, 0)
    n90: dict[str, int] = dict.fromkeys(held, 0)
    last: dict[str, datetime | None] = dict.fromkeys(held, None)
    for row in rows:
        for scope in {s for check in _checks_of(row.checks) for s in check}:
            n30[scope] = n30.get(scope, 0) + int(row.n30 or 0)
            n90[scope] = n90.get(scope, 0) + int(row.n90 or 0)
            previous = last.get(scope)
            last[scope] = row.last if previous is None or row.last > previous else previous
    return sorted(
        (ScopeUse(s, n30[s], n90[s], last[s]) for s in n90),
        key=lambda use: (-use.requests_90d, use.scope),
    )


def _source_uses(session: Session, org_id: str, rows: list[Any]) -> list[SourceUse]:
    n30: dict[str, int] = {}
    n90: dict[str, int] = {}
    last: dict[str, datetime] = {}
    for row in rows:
        ids = [row.source_id] if row.source_id else []
        if not ids and row.source_ids:
            try:
                ids = [i for i in json.loads(row.source_ids) if isinstance(i, str)]
            except ValueError:
                ids = []
        for source in set(ids):
            n30[source] = n30.get(source, 0) + int(row.n30 or 0)
            n90[source] = n90.get(source, 0) + int(row.n90 or 0)
            last[source] = max(last.get(source, row.last), row.last)
    names = {}
    if n90:
        names = dict(
            session.execute(select(Source.id, Source.name).where(Source.org_id == org_id, Source.id.in_(n90))).all()
        )
    return sorted(
        (SourceUse(s, names.get(s), n30[s], n90[s], last[s]) for s in n90),
        key=lambda use: (-use.requests_90d, use.source_id),
    )


def _addresses(session: Session, key: ApiKey) -> list[AddressUse]:
    rows = session.scalars(
        select(KeyAddress)
        .where(KeyAddress.key_id == key.id)
        .order_by(KeyAddress.last_seen.desc(), KeyAddress.ip)
        .limit(MAX_ADDRESSES)
    )
    return [AddressUse(r.ip, r.first_seen, r.last_seen, r.requests, r.refused) for r in rows]


def smallest_cover(requirements: set[tuple[str, ...]]) -> list[str]:
    """The fewest scopes such that every requirement (a set of alternatives) holds one:
    single-scope requirements are taken as they are, the rest searched smallest first (they
    are few: AnyOf checks have two or three alternatives), preferring each check's first
    alternative (its own resource's scope) on ties."""
    chosen = {check[0] for check in requirements if len(check) == 1}
    open_checks = [check for check in requirements if not chosen & set(check)]
    if not open_checks:
        return sorted(chosen)
    candidates = list(dict.fromkeys(s for check in sorted(open_checks) for s in check))
    for size in range(1, len(candidates) + 1):
        if size > 4:  # (never with the checks that exist; a bound all the same)
            break
        for combination in itertools.combinations(candidates, size):
            if all(set(check) & set(combination) for check in open_checks):
                return sorted(chosen | set(combination))
    return sorted(chosen | {check[0] for check in open_checks})


def suggest(
    key: ApiKey, requirements: set[tuple[str, ...]], sources_used: list[str], *, creates_sources: bool
) -> Suggestion:
    held = expand(list(key.scopes))
    # Only what the key can still keep: a check whose scopes it no longer holds (narrowed
    # since) cannot be covered by narrowing.
    still = {tuple(s for s in check if s in held) for check in requirements}
    scopes = smallest_cover({check for check in still if check})
    removes = sorted(held - set(scopes))
    source_scope, source_reason = _suggested_source_scope(key, sources_used, creates_sources)
    source_scope_changes = source_scope != _current_source_scope(key)
    patch: dict[str, Any] = {}
    if not requirements:
        reason = "No served request in the window needed a scope: if the key is unused, revoke it."
    elif not removes:
        reason = "The key already holds only the scopes its requests needed."
    else:
        patch["scopes"] = scopes
        reason = f"Every served request of the window needed only {_count(len(scopes), 'scope')}."
    if source_scope_changes:
        patch["source_scope"] = source_scope  # (always a narrowing: see _suggested_source_scope)
    if source_reason:
        reason += " " + source_reason
    return Suggestion(
        scopes=scopes,
        removes=removes,
        source_scope=source_scope,
        source_scope_changes=source_scope_changes,
        applicable=bool(patch),
        reason=reason,
        patch=patch or None,
    )


def _current_source_scope(key: ApiKey) -> dict[str, Any]:
    return dict(key.source_scope) if key.source_scope else {"mode": "all"}


def _suggested_source_scope(key: ApiKey, sources_used: list[str], creates_sources: bool) -> tuple[dict[str, Any], str]:
    current = _current_source_scope(key)
    if creates_sources:
        return current, "It creates sources, so its source restriction is left as it is."
    if not sources_used:
        return current, ""
    used = set(sources_used)
    if current.get("mode") == "selected":
        used &= set(current.get("source_ids") or [])
        if not used or used == set(current.get("source_ids") or []):
            return current, ""
    return {"mode": "selected", "source_ids": sorted(used)}, f"It used {_count(len(used), 'source')} only."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
