"""/users: list, create, get, update, deactivate, and external-id get-or-create."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.access.principal import Principal
from tidegate.access.scopes import Scope
from tidegate.api.deps import DB, request_context, require, set_audit_target
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery, cursor_page
from tidegate.db.base import isoformat
from tidegate.orgs import service
from tidegate.orgs.models import User

router = APIRouter(tags=["users"], route_class=InputRoute)
READ = require(Scope.USERS_READ)
WRITE = require(Scope.USERS_WRITE)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Text = Field(min_length=3, max_length=320)
    role: str = "member"
    external_id: Text | None = Field(None, min_length=1, max_length=200)
    first_name: Text | None = Field(None, max_length=200)
    last_name: Text | None = Field(None, max_length=200)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str | None = None
    first_name: Text | None = Field(None, max_length=200)
    last_name: Text | None = Field(None, max_length=200)


class ExternalUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = "member"
    email: Text | None = Field(None, min_length=3, max_length=320)
    first_name: Text | None = Field(None, max_length=200)
    last_name: Text | None = Field(None, max_length=200)


def user_view(user: User) -> dict:
    return {
        "id": user.id,
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "role": user.role,
        "external_id": user.external_id,
        "created_at": isoformat(user.created_at),
        "is_active": user.is_active,
    }


@router.get("/users")
def list_users(
    principal: Principal = READ,
    session: Session = DB,
    limit: int = Query(50, ge=1, le=100),
    after: str | None = AfterQuery,
    external_id: str | None = Query(None, max_length=200),
):
    rows = service.list_users(session, principal.org_id, limit=limit, after=after, external_id=external_id)
    return cursor_page(rows, limit, user_view)


@router.post("/users", status_code=201)
def create_user(body: UserCreate, request: Request, principal: Principal = WRITE, session: Session = DB):
    user = service.create_user(
        session,
        principal,
        principal.org_id,
        email=body.email,
        role=body.role,
        first_name=body.first_name,
        last_name=body.last_name,
        external_id=body.external_id,
        context=request_context(request),
    )
    set_audit_target(request, "user", user.id)
    return user_view(user)


@router.get("/users/{user_id}")
def get_user(user_id: str, principal: Principal = READ, session: Session = DB):
    return user_view(service.get_user(session, principal.org_id, user_id))


@router.patch("/users/{user_id}")
def update_user(user_id: str, body: UserUpdate, request: Request, principal: Principal = WRITE, session: Session = DB):
    user = service.get_user(session, principal.org_id, user_id)
    service.update_user(
        session,
        principal,
        user,
        role=body.role,
        first_name=body.first_name,
        last_name=body.last_name,
        context=request_context(request),
    )
    return user_view(user)


@router.delete("/users/{user_id}")
def delete_user(user_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    user = service.get_user(session, principal.org_id, user_id)
    service.deactivate_user(session, principal, user, context=request_context(request))
    return {"id": user.id, "deleted": True}


@router.put("/users/external/{external_id}")
def get_or_create_external(
    external_id: str, body: ExternalUser, request: Request, principal: Principal = WRITE, session: Session = DB
):
    user, created = service.get_or_create_external(
        session,
        principal,
        principal.org_id,
        external_id,
        email=body.email,
        role=body.role,
        first_name=body.first_name,
        last_name=body.last_name,
        context=request_context(request),
    )
    set_audit_target(request, "user", user.id)
    return {**user_view(user), "created": created}


@router.delete("/users/external/{external_id}")
def unlink_external(external_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    user = service.unlink_external_id(
        session, principal, principal.org_id, external_id, context=request_context(request)
    )
    return {"external_id": external_id, "user_id": user.id, "deleted": True}
