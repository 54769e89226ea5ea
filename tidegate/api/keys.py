"""/keys: create, list, get, rename, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.access.principal import Principal
from tidegate.access.scopes import Scope, requested_scopes
from tidegate.api.deps import (
    DB,
    request_context,
    require,
    set_audit_target,
    settings_of,
)
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery, LimitQuery, cursor_page
from tidegate.api.responses import JSON
from tidegate.credentials import service
from tidegate.credentials.models import ApiKey
from tidegate.db.base import isoformat, utcnow

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


def key_view(key: ApiKey) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "key_prefix": key.key_prefix,
        "scopes": list(key.scopes),
        "status": key.status_at(utcnow()),
        "created_by": key.created_by,
        "created_at": isoformat(key.created_at),
        "last_used_at": isoformat(key.last_used_at),
        "last_used_ip": key.last_used_ip,
        "expires_at": isoformat(key.expires_at),
        "revoked_at": isoformat(key.revoked_at),
        "rate_limit_per_minute": key.rate_limit_per_minute,
        "bound_user_id": key.bound_user_id,
        "source_scope": key.source_scope,
        "access_policy_ids": key.access_policy_ids,
        "ip_allowlist": key.ip_allowlist,
        "parent_key_id": key.parent_key_id,
    }


@router.post("/keys", status_code=201)
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
        {**key_view(created.key), "secret": created.secret}, status_code=201, headers={"Cache-Control": "no-store"}
    )


@router.get("/keys")
def list_keys(
    principal: Principal = MANAGE,
    session: Session = DB,
    limit: int = LimitQuery,
    after: str | None = AfterQuery,
    search: str | None = Query(None, max_length=200, description="Name contains, or key prefix starts with"),
    status: str | None = Query(None, description="active, revoked or expired"),
):
    rows = service.list_keys(session, principal, limit=limit, after=after, search=search, status=status)
    return cursor_page(rows, limit, key_view)


@router.get("/keys/{key_id}")
def get_key(key_id: str, principal: Principal = MANAGE, session: Session = DB):
    return key_view(service.get_key(session, principal, key_id))


@router.patch("/keys/{key_id}")
def rename_key(key_id: str, body: KeyUpdate, request: Request, principal: Principal = MANAGE, session: Session = DB):
    key = service.get_key(session, principal, key_id)
    return key_view(service.rename_key(session, principal, key, body.name, context=request_context(request)))


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, request: Request, principal: Principal = MANAGE, session: Session = DB):
    key = service.get_key(session, principal, key_id)
    service.revoke_key(session, principal, key, context=request_context(request))
    return {"id": key.id, "status": "revoked", "deleted": True}
