"""/access/policies, /access/users/{id}/policies, /access/groups (tidegate extension)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.access import policies as service
from tidegate.access.sources import open_source, visible_sources_query
from tidegate.api.deps import DB, require, set_audit_target
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery
from tidegate.catalog.models import Source
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.credentials.bounds import keys_naming_policy
from tidegate.http import request_context
from tidegate.wire.common import DataList, Deleted, Page
from tidegate.wire.policies import (
    ColumnOut,
    GroupMemberRemoved,
    GroupOut,
    GroupPolicyRemoved,
    PolicyDetail,
    PolicyOut,
    PolicyUpdated,
    PolicyUserRemoved,
    PolicyUsersAssigned,
    ResolvedAccessOut,
    SourceColumnsOut,
    UserPoliciesReplaced,
)

router = APIRouter(tags=["access policies"], route_class=InputRoute)
READ = require(Scope.POLICIES_READ)
WRITE = require(Scope.POLICIES_WRITE)


class PolicyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str | None = None
    source_ids: list[str] | None = None
    row_filters: list[dict[str, Any]] | None = None
    column_rules: list[Any] | None = None  # checked by the service (precise invalid_column_rules codes)


class PolicyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str | None = None
    source_ids: list[str] | None = None
    row_filters: list[dict[str, Any]] | None = None
    column_rules: list[Any] | None = None  # checked by the service (precise invalid_column_rules codes)


class UserIds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_ids: list[Text] = Field(max_length=1000)


class PolicyIds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy_ids: list[Text] = Field(max_length=1000)


class GroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str | None = None


class GroupUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str | None = None


def _changes(body: BaseModel) -> dict[str, Any]:
    """Only the fields the client sent (PATCH semantics)."""
    return {name: getattr(body, name) for name in body.model_fields_set}


def _policy_detail(session: Session, policy) -> PolicyDetail:
    return PolicyDetail.of_assigned(policy, service.policy_user_ids(session, policy.id))


@router.get("/access/policies", response_model=Page[PolicyOut])
def list_policies(
    principal: Principal = READ,
    session: Session = DB,
    limit: int = Query(25, ge=1, le=200),
    after: str | None = AfterQuery,
    name: str | None = Query(None, max_length=200, description="Exact name"),
):
    rows = service.list_policies(session, principal.org_id, limit=limit, after=after, name=name)
    counts = service.policy_user_counts(session, [p.id for p in rows[:limit]])
    return Page[PolicyOut].of(rows, limit, lambda p: PolicyOut.of(p, user_count=counts.get(p.id, 0)))


@router.post("/access/policies", status_code=201, response_model=PolicyDetail)
def create_policy(body: PolicyCreate, request: Request, principal: Principal = WRITE, session: Session = DB):
    policy = service.create_policy(
        session,
        principal,
        principal.org_id,
        name=body.name,
        description=body.description,
        source_ids=body.source_ids,
        row_filters=body.row_filters,
        column_rules=body.column_rules,
        context=request_context(request),
    )
    set_audit_target(request, "access_policy", policy.id)
    return _policy_detail(session, policy)


@router.get("/access/policies/{policy_id}", response_model=PolicyDetail)
def get_policy(policy_id: str, principal: Principal = READ, session: Session = DB):
    return _policy_detail(session, service.get_policy(session, principal.org_id, policy_id))


@router.patch("/access/policies/{policy_id}", response_model=PolicyUpdated)
def update_policy(
    policy_id: str, body: PolicyUpdate, request: Request, principal: Principal = WRITE, session: Session = DB
):
    policy = service.get_policy(session, principal.org_id, policy_id)
    service.update_policy(session, principal, policy, context=request_context(request), **_changes(body))
    return PolicyUpdated(id=policy.id, updated=True, policy=_policy_detail(session, policy))


@router.delete("/access/policies/{policy_id}", response_model=Deleted)
def delete_policy(policy_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    policy = service.get_policy(session, principal.org_id, policy_id)
    service.delete_policy(
        session,
        principal,
        policy,
        keys_naming_it=keys_naming_policy(session, principal.org_id, policy.id),
        context=request_context(request),
    )
    return Deleted(id=policy_id, deleted=True)


@router.post("/access/policies/{policy_id}/users", response_model=PolicyUsersAssigned)
def assign_users(policy_id: str, body: UserIds, request: Request, principal: Principal = WRITE, session: Session = DB):
    policy = service.get_policy(session, principal.org_id, policy_id)
    result = service.assign_users(session, principal, policy, body.user_ids, context=request_context(request))
    return PolicyUsersAssigned(policy_id=policy.id, assigned_user_ids=result.added, user_ids=result.user_ids)


@router.delete("/access/policies/{policy_id}/users/{user_id}", response_model=PolicyUserRemoved)
def remove_user(policy_id: str, user_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    policy = service.get_policy(session, principal.org_id, policy_id)
    result = service.remove_user(session, principal, policy, user_id, context=request_context(request))
    return PolicyUserRemoved(policy_id=policy.id, user_id=result.user_id, removed=result.removed)


@router.put("/access/users/{user_id}/policies", response_model=UserPoliciesReplaced)
def replace_user_policies(
    user_id: str, body: PolicyIds, request: Request, principal: Principal = WRITE, session: Session = DB
):
    result = service.replace_user_policies(
        session, principal, principal.org_id, user_id, body.policy_ids, context=request_context(request)
    )
    return UserPoliciesReplaced(
        user_id=result.user_id, policy_ids=result.policy_ids, added=result.added, removed=result.removed
    )


# -- groups (tidegate extension: the contract has no groups API) --------------------------


def _group_detail(session: Session, group) -> GroupOut:
    return GroupOut.of(
        group,
        member_ids=service.group_member_ids(session, group.id),
        policy_ids=service.group_policy_ids(session, group.id),
    )


@router.get("/access/groups", response_model=Page[GroupOut])
def list_groups(
    principal: Principal = READ,
    session: Session = DB,
    limit: int = Query(25, ge=1, le=200),
    after: str | None = AfterQuery,
    name: str | None = Query(None, max_length=200),
):
    rows = service.list_groups(session, principal.org_id, limit=limit, after=after, name=name)
    return Page[GroupOut].of(rows, limit, lambda g: _group_detail(session, g))


@router.post("/access/groups", status_code=201, response_model=GroupOut)
def create_group(body: GroupCreate, request: Request, principal: Principal = WRITE, session: Session = DB):
    group = service.create_group(
        session,
        principal,
        principal.org_id,
        name=body.name,
        description=body.description,
        context=request_context(request),
    )
    set_audit_target(request, "group", group.id)
    return _group_detail(session, group)


@router.get("/access/groups/{group_id}", response_model=GroupOut)
def get_group(group_id: str, principal: Principal = READ, session: Session = DB):
    return _group_detail(session, service.get_group(session, principal.org_id, group_id))


@router.patch("/access/groups/{group_id}", response_model=GroupOut)
def update_group(
    group_id: str, body: GroupUpdate, request: Request, principal: Principal = WRITE, session: Session = DB
):
    group = service.get_group(session, principal.org_id, group_id)
    service.update_group(session, principal, group, context=request_context(request), **_changes(body))
    return _group_detail(session, group)


@router.delete("/access/groups/{group_id}", response_model=Deleted)
def delete_group(group_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    group = service.get_group(session, principal.org_id, group_id)
    service.delete_group(session, principal, group, context=request_context(request))
    return Deleted(id=group_id, deleted=True)


@router.post("/access/groups/{group_id}/users", response_model=GroupOut)
def add_members(group_id: str, body: UserIds, request: Request, principal: Principal = WRITE, session: Session = DB):
    group = service.get_group(session, principal.org_id, group_id)
    service.add_group_members(session, principal, group, body.user_ids, context=request_context(request))
    return _group_detail(session, group)


@router.delete("/access/groups/{group_id}/users/{user_id}", response_model=GroupMemberRemoved)
def remove_member(group_id: str, user_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    group = service.get_group(session, principal.org_id, group_id)
    removed = service.remove_group_member(session, principal, group, user_id, context=request_context(request))
    return GroupMemberRemoved(group_id=group.id, user_id=user_id, removed=removed)


@router.post("/access/groups/{group_id}/policies", response_model=GroupOut)
def assign_group_policies(
    group_id: str, body: PolicyIds, request: Request, principal: Principal = WRITE, session: Session = DB
):
    group = service.get_group(session, principal.org_id, group_id)
    service.assign_group_policies(session, principal, group, body.policy_ids, context=request_context(request))
    return _group_detail(session, group)


@router.delete("/access/groups/{group_id}/policies/{policy_id}", response_model=GroupPolicyRemoved)
def remove_group_policy(
    group_id: str, policy_id: str, request: Request, principal: Principal = WRITE, session: Session = DB
):
    group = service.get_group(session, principal.org_id, group_id)
    removed = service.remove_group_policy(session, principal, group, policy_id, context=request_context(request))
    return GroupPolicyRemoved(group_id=group.id, policy_id=policy_id, removed=removed)


# -- resolution and columns ----------------------------------------------------------------


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Text = Field(max_length=200)
    source_id: Text = Field(max_length=100)


@router.post("/access/resolve", response_model=ResolvedAccessOut)
def resolve(body: ResolveRequest, principal: Principal = READ, session: Session = DB):
    access = open_source(session, principal, body.source_id, with_filter=False)
    # Resolved over every column of the source: a rule or filter on any of them counts.
    columns = access.version.column_names if access.version else []
    explained = service.resolve_view(session, principal.org_id, body.user_id, access.opened_source.id, columns)
    return ResolvedAccessOut.model_validate(explained.wire())


@router.get("/access/columns", response_model=DataList[SourceColumnsOut])
def columns(principal: Principal = READ, session: Session = DB, source_id: str | None = Query(None, max_length=100)):
    # Opened with the caller's own filter: columns hidden from the caller are not listed.
    if source_id is not None:
        found = [open_source(session, principal, source_id)]
    else:
        found = [
            open_source(session, principal, s.id)
            for s in session.scalars(visible_sources_query(session, principal).order_by(Source.id))
        ]
    return DataList[SourceColumnsOut](
        data=[
            SourceColumnsOut(
                source_id=a.opened_source.id,
                source_name=a.opened_source.name,
                columns=[
                    ColumnOut(name=name, type=kind, masked=name in a.masked_columns) for name, kind in a.column_types
                ],
            )
            for a in found
        ]
    )
