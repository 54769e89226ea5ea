"""/users: list, create, get, update, deactivate, and external-id get-or-create."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.api.deps import DB, require, set_audit_target
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.http import request_context
from tidegate.orgs import service
from tidegate.wire.common import Deleted, Page
from tidegate.wire.users import ExternalIdUnlinked, ExternalUserOut, UserOut

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


@router.get("/users", response_model=Page[UserOut])
def list_users(
    principal: Principal = READ,
    session: Session = DB,
    limit: int = Query(50, ge=1, le=100),
    after: str | None = AfterQuery,
    external_id: str | None = Query(None, max_length=200),
):
    rows = service.list_users(session, principal.org_id, limit=limit, after=after, external_id=external_id)
    return Page[UserOut].of(rows, limit, UserOut.of)


@router.post("/users", status_code=201, response_model=UserOut)
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
    return UserOut.of(user)


@router.get("/users/{user_id}", response_model=UserOut)
def get_user(user_id: str, principal: Principal = READ, session: Session = DB):
    return UserOut.of(service.get_user(session, principal.org_id, user_id))


@router.patch("/users/{user_id}", response_model=UserOut)
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
    return UserOut.of(user)


@router.delete("/users/{user_id}", response_model=Deleted)
def delete_user(user_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    user = service.get_user(session, principal.org_id, user_id)
    service.deactivate_user(session, principal, user, context=request_context(request))
    return Deleted(id=user.id, deleted=True)


@router.put("/users/external/{external_id}", response_model=ExternalUserOut)
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
    return ExternalUserOut.of_external(user, created)


@router.delete("/users/external/{external_id}", response_model=ExternalIdUnlinked)
def unlink_external(external_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    user = service.unlink_external_id(
        session, principal, principal.org_id, external_id, context=request_context(request)
    )
    return ExternalIdUnlinked(external_id=external_id, user_id=user.id, deleted=True)
