"""/org/settings: admin controls (a tidegate extension)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy.orm import Session

from tidegate.access import policies
from tidegate.api.deps import DB, require, settings_of
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.responses import JSON
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.http import request_context
from tidegate.notifications import audit_stream, webhooks
from tidegate.orgs import service
from tidegate.wire.orgs import AuditStreamOut, OrgSettingsOut, OrgSettingsWithSecret

router = APIRouter(tags=["organization"], route_class=InputRoute)


class SettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key_creation_enabled: bool | None = None
    deny_by_default: bool | None = None
    max_keys_per_user: StrictInt | None = None
    user_rate_limit_per_minute: StrictInt | None = None
    embeds_enabled: bool | None = None
    embed_allowed_origins: list[Text] | None = Field(None, max_length=100)
    embed_ui_config: dict[str, Any] | None = Field(None, description="{chrome, theme, privacy}: JSON objects")
    public_share_links_enabled: bool | None = Field(
        None, description="Allow dashboard links that open without signing in (off deactivates them all)."
    )
    unused_key_days: StrictInt | None = Field(
        None, description="Flag active keys not used for this many days (1-3650; default 90)."
    )
    audit_retention_days: StrictInt | None = Field(None, description="Days audit events are kept: 1 to 2190.")
    audit_stream_url: Text | None = Field(
        None,
        max_length=webhooks.MAX_URL_LENGTH,
        description="HTTPS endpoint that gets the audit chain as NDJSON; a new URL returns a new secret once; "
        "null clears it (and stops the stream).",
    )
    audit_stream_enabled: bool | None = None


@router.get("/org/settings", response_model=OrgSettingsOut)
def get_settings(principal: Principal = require(Scope.ORG_READ), session: Session = DB):
    org = service.get_org(session, principal.org_id)
    return OrgSettingsOut.of(org, audit_stream.get_stream(session, org.id))


@router.patch("/org/settings", response_model=OrgSettingsOut)
def update_settings(
    body: SettingsUpdate, request: Request, principal: Principal = require(Scope.ORG_WRITE), session: Session = DB
):
    org = service.get_org(session, principal.org_id)
    context = request_context(request)
    stream_fields = body.model_fields_set & {"audit_stream_url", "audit_stream_enabled"}
    clear_url = "audit_stream_url" in body.model_fields_set and body.audit_stream_url is None
    if stream_fields:  # checked first: a refused stream setting changes nothing
        audit_stream.check_update(
            session, org.id, url=body.audit_stream_url, clear_url=clear_url, enabled=body.audit_stream_enabled
        )
    service.update_settings(
        session,
        principal,
        org,
        api_key_creation_enabled=body.api_key_creation_enabled,
        max_keys_per_user=body.max_keys_per_user,
        user_rate_limit_per_minute=body.user_rate_limit_per_minute,
        embeds_enabled=body.embeds_enabled,
        embed_allowed_origins=body.embed_allowed_origins,
        embed_ui_config=body.embed_ui_config,
        public_share_links_enabled=body.public_share_links_enabled,
        unused_key_days=body.unused_key_days,
        audit_retention_days=body.audit_retention_days,
        context=context,
    )
    if body.deny_by_default is not None:
        policies.set_deny_by_default(session, principal, org, body.deny_by_default, context=context)
    stream = audit_stream.StreamSettings(None, False)
    if stream_fields:
        stream = audit_stream.update_stream(
            session,
            principal,
            org.id,
            url=body.audit_stream_url,
            clear_url=clear_url,
            enabled=body.audit_stream_enabled,
            session_key=settings_of(request).session_key,
            context=context,
        )
    out = OrgSettingsOut.of(org, audit_stream.get_stream(session, org.id))
    if stream.secret is None:
        return out
    # The only response that ever carries the stream's secret; keep it out of every cache.
    shown = OrgSettingsWithSecret(**out.model_dump(), audit_stream_secret=stream.secret)
    return JSON(shown.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


@router.get("/org/audit-stream", response_model=AuditStreamOut)
def get_audit_stream(principal: Principal = require(Scope.ORG_READ), session: Session = DB):
    stream = audit_stream.get_stream(session, principal.org_id)
    return AuditStreamOut.of(stream, audit_stream.pending_events(session, principal.org_id, stream))
