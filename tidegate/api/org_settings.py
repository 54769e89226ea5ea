"""/org/settings: admin controls (a tidegate extension)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from tidegate.access import policies
from tidegate.access.principal import Principal
from tidegate.api.deps import DB, request_context, require
from tidegate.api.inputs import InputRoute
from tidegate.orgs import service
from tidegate.orgs.models import Organization

router = APIRouter(tags=["organization"], route_class=InputRoute)


class SettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key_creation_enabled: bool | None = None
    deny_by_default: bool | None = None


def settings_view(org: Organization) -> dict:
    return {
        "org_id": org.id,
        "name": org.name,
        "api_key_creation_enabled": org.api_key_creation_enabled,
        "deny_by_default": org.deny_by_default,
    }


@router.get("/org/settings")
def get_settings(principal: Principal = require("admin:org:read"), session: Session = DB):
    return settings_view(service.get_org(session, principal.org_id))


@router.patch("/org/settings")
def update_settings(body: SettingsUpdate, request: Request,
                    principal: Principal = require("admin:org:write"), session: Session = DB):
    org = service.get_org(session, principal.org_id)
    context = request_context(request)
    service.update_settings(session, principal, org, api_key_creation_enabled=body.api_key_creation_enabled,
                            context=context)
    if body.deny_by_default is not None:
        policies.set_deny_by_default(session, principal, org, body.deny_by_default, context=context)
    return settings_view(org)
