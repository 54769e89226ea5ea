"""/keys: create, list, get, rename, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.api.deps import DB, require, set_audit_target, settings_of
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery, LimitQuery
from tidegate.api.responses import JSON
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope, requested_scopes
from tidegate.credentials import service
from tidegate.http import request_context
from tidegate.wire.common import Page
from tidegate.wire.keys import KeyCreated, KeyOut, KeyRevoked

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

    name: Text = Field(min_length=1, max_length=200)


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
    return Page[KeyOut].of(rows, limit, KeyOut.of)


@router.get("/keys/{key_id}", response_model=KeyOut)
def get_key(key_id: str, principal: Principal = MANAGE, session: Session = DB):
    return KeyOut.of(service.get_key(session, principal, key_id))


@router.patch("/keys/{key_id}", response_model=KeyOut)
def rename_key(key_id: str, body: KeyUpdate, request: Request, principal: Principal = MANAGE, session: Session = DB):
    key = service.get_key(session, principal, key_id)
    return KeyOut.of(service.rename_key(session, principal, key, body.name, context=request_context(request)))


@router.delete("/keys/{key_id}", response_model=KeyRevoked)
def revoke_key(key_id: str, request: Request, principal: Principal = MANAGE, session: Session = DB):
    key = service.get_key(session, principal, key_id)
    service.revoke_key(session, principal, key, context=request_context(request))
    return KeyRevoked(id=key.id, status="revoked", deleted=True)
