"""/keys: create, list, get, rename and narrow, rotate, revoke, insights."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy.orm import Session

from tidegate.api.deps import DB, require, set_audit_target, settings_of
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery, LimitQuery
from tidegate.api.responses import JSON
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope, requested_scopes
from tidegate.credentials import service
from tidegate.credentials.hygiene import DEFAULT_UNUSED_KEY_DAYS
from tidegate.credentials.insights import key_insights
from tidegate.errors import InvalidRequest
from tidegate.http import request_context
from tidegate.orgs.models import Organization
from tidegate.wire.common import Page
from tidegate.wire.keys import KeyCreated, KeyInsightsOut, KeyOut, KeyRevoked, KeyRotated

router = APIRouter(tags=["keys"], route_class=InputRoute)
MANAGE = require(Scope.KEYS_MANAGE)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200)
    scopes: list[str] | None = Field(None, max_length=100)
    preset: str | None = Field(None, description="tidegate extension: full_access or data_access instead of scopes")
    expires_in_days: int | None = None
    rate_limit_per_minute: int | None = None
    ip_allowlist: list[str] | None = Field(None, max_length=100)
    source_scope: dict | None = None
    access_policy_ids: list[Text] | None = Field(None, max_length=100)
    bound_user_id: Text | None = None


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(None, min_length=1, max_length=200)
    # Only a subset of the key's scopes (narrowing); widening is 403.
    scopes: list[str] | None = Field(None, max_length=100)
    # Only fewer sources: {"mode": "selected", "source_ids": [...]} within the current ones.
    source_scope: dict | None = None


# The API's grace window is a week (the web UI offers up to 30 days); no body or no value:
# 0, the old key stops working at once (a leaked key is the usual reason to rotate).
MAX_API_GRACE_SECONDS = 7 * 24 * 3600


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_period_seconds: StrictInt | None = None


@router.post("/keys", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, request: Request, principal: Principal = MANAGE, session: Session = DB):
    created = service.create_key(
        session,
        principal,
        service.KeyRequest(
            name=body.name,
            scopes=requested_scopes(body.scopes, body.preset, principal.role),
            expires_in_days=body.expires_in_days,
            rate_limit_per_minute=body.rate_limit_per_minute,
            ip_allowlist=body.ip_allowlist,
            source_scope=body.source_scope,
            access_policy_ids=body.access_policy_ids,
            bound_user_id=body.bound_user_id,
        ),
        pepper=settings_of(request).pepper,
        context=request_context(request),
    )
    set_audit_target(request, "api_key", created.key.id)
    # The only response that ever carries the secret; keep it out of every cache.
    return JSON(
        KeyCreated.of_created(created.key, created.secret).model_dump(),
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/keys", response_model=Page[KeyOut])
def list_keys(
    principal: Principal = MANAGE,
    session: Session = DB,
    limit: int = LimitQuery,
    after: str | None = AfterQuery,
    search: str | None = Query(None, max_length=200, description="Name contains, or key prefix starts with"),
    status: str | None = Query(None, description="active, revoked or expired"),
):
    rows = service.list_keys(session, principal, limit=limit, after=after, search=search, status=status)
    days = _unused_key_days(session, principal)
    return Page[KeyOut].of(rows, limit, lambda key: KeyOut.of(key, days))


def _unused_key_days(session: Session, principal: Principal) -> int:
    org = session.get(Organization, principal.org_id)
    return org.unused_key_days if org is not None else DEFAULT_UNUSED_KEY_DAYS


@router.get("/keys/{key_id}", response_model=KeyOut)
def get_key(key_id: str, principal: Principal = MANAGE, session: Session = DB):
    return KeyOut.of(service.get_key(session, principal, key_id), _unused_key_days(session, principal))


@router.get("/keys/{key_id}/insights", response_model=KeyInsightsOut)
def get_key_insights(key_id: str, request: Request, principal: Principal = MANAGE, session: Session = DB):
    """Per scope, source and client address, what the key did over 30 and 90 days, and the
    smallest scopes and source restriction covering it (`suggestion`)."""
    key = service.get_key(session, principal, key_id)
    request.app.state.journal.flush()  # this process's latest requests count too
    return KeyInsightsOut.of(key_insights(session, key))


@router.patch("/keys/{key_id}", response_model=KeyOut)
def update_key(key_id: str, body: KeyUpdate, request: Request, principal: Principal = MANAGE, session: Session = DB):
    if body.name is None and body.scopes is None and body.source_scope is None:
        raise InvalidRequest("invalid_parameters", "Send name, scopes and/or source_scope to change.")
    key = service.get_key(session, principal, key_id)
    context = request_context(request)
    if body.scopes is not None:
        service.narrow_scopes(session, principal, key, body.scopes, context=context)
    if body.source_scope is not None:
        service.narrow_source_scope(session, principal, key, body.source_scope, context=context)
    if body.name is not None:
        service.rename_key(session, principal, key, body.name, context=context)
    return KeyOut.of(key, _unused_key_days(session, principal))


@router.post("/keys/{key_id}/rotate", status_code=201, response_model=KeyRotated)
def rotate_key(
    key_id: str, request: Request, body: KeyRotate | None = None, principal: Principal = MANAGE, session: Session = DB
):
    grace = (body.grace_period_seconds if body is not None else None) or 0
    if not 0 <= grace <= MAX_API_GRACE_SECONDS:
        raise InvalidRequest(
            "invalid_grace_period", f"grace_period_seconds must be between 0 and {MAX_API_GRACE_SECONDS} (7 days)."
        )
    old = service.get_key(session, principal, key_id)
    created = service.rotate_key(
        session,
        principal,
        old,
        grace=timedelta(seconds=grace),
        pepper=settings_of(request).pepper,
        context=request_context(request),
    )
    set_audit_target(request, "api_key", old.id, replacement_key_id=created.key.id)
    payload = KeyRotated(
        **KeyOut.fields_of(created.key),
        secret=created.secret,
        replaced_key=KeyOut.of(old, _unused_key_days(session, principal)),
    ).model_dump()
    # Carries the new secret: like creation, never cached.
    return JSON(payload, status_code=201, headers={"Cache-Control": "no-store"})


@router.delete("/keys/{key_id}", response_model=KeyRevoked)
def revoke_key(key_id: str, request: Request, principal: Principal = MANAGE, session: Session = DB):
    key = service.get_key(session, principal, key_id)
    service.revoke_key(session, principal, key, context=request_context(request))
    return KeyRevoked(id=key.id, status="revoked", deleted=True)
