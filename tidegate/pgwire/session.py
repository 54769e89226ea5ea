"""A qk_ key's connection: authenticated once, governed again before every statement.

`authenticate` is the REST API's authentication (credentials.authenticate: the keyed hash,
revoked, expired, creator active, IP allowlist) for a password and a database name; every
failure is the one `AuthFailed`, so a client learns nothing about why. Before each query
`KeySession.refresh` re-reads the key and its creator (a revocation, a demotion, a policy
edit is seen by the very next statement), counts the statement against the key's rate
limits (ratelimit.enforce, as REST counts a request), and opens every source the key may
read with `access.sources.open_source`: the tables of that statement, each the key's rows
(the opened set is reused while the key and its organization's access epoch are unchanged).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from sqlalchemy import select

from tidegate.access import ratelimit
from tidegate.access.authorize import authorize
from tidegate.access.sources import SourceAccess, open_source, visible_sources_query
from tidegate.audit.record import event_row
from tidegate.catalog.models import Source
from tidegate.config import Settings
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.credentials.authenticate import (
    KeyCache,
    KeyState,
    check_ip,
    digest_of,
    identify,
    principal_for,
)
from tidegate.data import engine as data_engine
from tidegate.db.engine import session_scope
from tidegate.errors import Forbidden, NotFound, RateLimited, TidegateError, Unauthenticated
from tidegate.orgs.models import Organization, User
from tidegate.pgwire import pgtypes

AUTH_NAMESPACE = "pgwire-auth:"  # the rate-limit counter of authentication attempts per client IP


class AuthFailed(Exception):
    """Authentication refused: SQLSTATE 28P01 and nothing else."""


class KeyCutOff(Exception):
    """The key may no longer be used (revoked, expired, creator deactivated): the connection ends."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Table:
    """One source the key may open, as a table of schema public."""

    name: str  # unique case-insensitively among the key's tables
    access: SourceAccess
    columns: tuple[tuple[str, int], ...]  # (name, PostgreSQL type oid)

    @property
    def source_id(self) -> str:
        return self.access.opened_source.id


@dataclass(frozen=True)
class View:
    """What the key may read at the start of one statement."""

    principal: Principal
    tables: Mapping[str, Table]  # lower-case name -> table

    def table_specs(self) -> list[tuple[str, tuple[tuple[str, int], ...]]]:
        return [(t.name, t.columns) for t in self.tables.values()]


def _org_id(session: Any, database: str) -> str | None:
    org = session.get(Organization, database)
    if org is None:
        org = session.scalar(select(Organization).where(Organization.name == database))
    return org.id if org is not None else None


def count_auth_attempt(
    settings: Settings, client_ip: str | None, per_minute: int, namespace: str = AUTH_NAMESPACE
) -> None:
    """One authentication attempt from `client_ip`; RateLimited past `per_minute`."""
    ratelimit.enforce(settings.redis_url, namespace + (client_ip or "unknown"), per_minute)


def _unique_names(sources: list[tuple[str, SourceAccess]]) -> list[tuple[str, SourceAccess]]:
    seen: set[str] = set()
    named = []
    for name, access in sources:
        candidate, n = name, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate.lower())
        named.append((candidate, access))
    return named


class KeySession:
    def __init__(self, settings: Settings, keys: KeyCache, digest: str, state: KeyState, database: str):
        self.settings = settings
        self.keys = keys
        self.digest = digest
        self.state = state
        self.database = database  # as the client named it (current_database())
        self.owner_email: str | None = None
        # What the key could read at the last statement, and the key state and access epoch
        # it was opened at: reused while both are unchanged. Every audited change (a share,
        # a policy edit, a new source version, a role change, a revocation) bumps the epoch,
        # read live with the key, so the next statement never sees a stale set.
        self._opened: tuple[KeyState, View] | None = None

    @property
    def key_id(self) -> str:
        return self.state.key_id

    @property
    def org_id(self) -> str:
        return self.state.org_id

    def refresh(self, client_ip: str | None, *, count: bool = True) -> View:
        """The key re-read, checked and counted, and what it may read now (blocking)."""
        state = self.keys.cached(self.digest) or self.keys.load(self.digest)
        if state is None or state.org_id != self.org_id:  # the key row is gone
            raise KeyCutOff("This API key no longer exists.")
        self.state = state
        try:
            principal = principal_for(state)
        except Unauthenticated as exc:
            raise KeyCutOff(exc.message) from None
        check_ip(state, client_ip)
        authorize(principal, Scope.DATA_READ)
        if count:
            ratelimit.enforce(
                self.settings.redis_url,
                state.key_id,
                state.rate_limit_per_minute,
                state.owner_id,
                state.owner_rate_limit_per_minute,
            )
        if principal.epoch is not None and self._opened is not None and self._opened[0] == state:
            return self._opened[1]
        view = self._open_all(principal)
        self._opened = (state, view) if principal.epoch is not None else None
        return view

    def _open_all(self, principal: Principal) -> View:
        """Every source the key may read, opened (blocking: reads the database)."""
        with session_scope(self.settings.database_url) as session:
            ids = session.scalars(visible_sources_query(session, principal).with_only_columns(Source.id)).all()
            opened: list[tuple[str, SourceAccess]] = []
            for source_id in sorted(ids):
                try:
                    access = open_source(session, principal, source_id)
                except (NotFound, Forbidden):
                    continue
                opened.append((access.opened_source.name, access))
        opened.sort(key=lambda item: (item[0].lower(), item[1].opened_source.id))
        tables = {}
        for name, access in _unique_names(opened):
            columns = tuple(
                (column, pgtypes.oid_of_declared(kind))
                for column, kind in access.column_types  # without the columns hidden from the key
            )
            tables[name.lower()] = Table(name, access, columns)
        return View(principal, tables)


def authenticate(settings: Settings, keys: KeyCache, password: str, database: str, client_ip: str | None) -> KeySession:
    """The key of `password` in organization `database` (id or name), allowed to read data
    from `client_ip` now; AuthFailed otherwise (blocking: reads the database)."""
    with session_scope(settings.database_url) as session:
        org_id = _org_id(session, database)
    try:
        digest = digest_of(settings.pepper, password.strip(), org_id)
        state = identify(keys.cached(digest) or keys.load(digest), org_id)
        principal = principal_for(state)
        check_ip(state, client_ip)
        authorize(principal, Scope.DATA_READ)
    except (Unauthenticated, Forbidden):
        raise AuthFailed() from None
    keyed = KeySession(settings, keys, digest, state, database)
    with session_scope(settings.database_url) as session:
        owner = session.get(User, state.owner_id)
        keyed.owner_email = owner.email if owner is not None else None
    return keyed


def filtered_tables(view: View, names: frozenset[str]) -> dict[str, pa.Table]:
    """The key's rows of each table named (run in the query pool: it reads files)."""
    return {name: data_engine.filtered_table(view.tables[name].access) for name in names if name in view.tables}


# -- audit ----------------------------------------------------------------------------------


def audit_event(
    session: KeySession,
    *,
    client_ip: str | None,
    application_name: str | None,
    view: View | None,
    tables: frozenset[str],
    rows: int | None,
    duration_ms: float,
    sqlstate: str | None,
    statement: str,
    action: str = "pgwire.statement",
) -> dict[str, Any]:
    state = session.state
    read = [view.tables[n] for n in sorted(tables) if view is not None and n in view.tables]
    return event_row(
        org_id=state.org_id,
        actor_type="api_key",
        actor_id=state.key_id,
        key_id=state.key_id,
        action=action,
        target_type="source" if len(read) == 1 else None,
        target_id=read[0].source_id if len(read) == 1 else None,
        method="PG",
        path="pgwire",
        status=200 if sqlstate is None else 400,
        ip_address=client_ip,
        user_agent=(application_name or "")[:500] or None,
        details={
            "operation": "pgwire_" + statement,
            "creator_user_id": state.owner_id,
            "application_name": application_name,
            "tables": [t.name for t in read],
            "source_ids": [t.source_id for t in read],
            "policy_ids": sorted({p for t in read for p in t.access.row_filter.policy_ids}),
            "rows_returned": rows,  # None: still streaming (its pgwire.statement_end says)
            "duration_ms": round(duration_ms, 3),
            "sqlstate": sqlstate,
            "scopes": [[Scope.DATA_READ.value]],  # every statement is checked for it (KeySession.refresh)
        },
    )


class Connections:
    """Open connections per key, capped (thread-safe: counted on the event loop and read in tests)."""

    def __init__(self, per_key: int):
        self.per_key = per_key
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def acquire(self, key_id: str) -> bool:
        with self._lock:
            if self._open.get(key_id, 0) >= self.per_key:
                return False
            self._open[key_id] = self._open.get(key_id, 0) + 1
            return True

    def release(self, key_id: str) -> None:
        with self._lock:
            left = self._open.get(key_id, 0) - 1
            if left > 0:
                self._open[key_id] = left
            else:
                self._open.pop(key_id, None)


def sqlstate_of(exc: BaseException) -> tuple[str, str]:
    """The SQLSTATE and message a refusal is answered with."""
    if isinstance(exc, TidegateError):
        code = exc.code
        state = {
            "run_cancelled": "57014",
            "query_timeout": "57014",
            "query_too_large": "54000",
            "result_too_large": "54000",
            "value_too_large": "54000",
            "query_too_expensive": "54000",
            "unknown_table": "42P01",
            "too_many_concurrent_queries": "53300",
        }.get(code)
        if state is None:
            if isinstance(exc, RateLimited):
                state = "53400"
            elif isinstance(exc, (Forbidden, Unauthenticated)):
                state = "42501"
            elif isinstance(exc, NotFound):
                state = "42P01"
            elif exc.status >= 500:
                state = "58000"
            else:
                state = "42601" if code == "invalid_query" else "22023"
        message = exc.message
        if code == "run_cancelled":
            message = "canceling statement due to user request"
        return state, message
    return "XX000", "internal error"
