"""/org/webhooks and /org/notifications: security notifications (a tidegate extension).

Org admins only (admin:org:read to read, admin:org:write to change), as /org/settings.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.api.deps import DB, require, set_audit_target, settings_of
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery, LimitQuery
from tidegate.api.responses import JSON
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.errors import InvalidRequest
from tidegate.http import request_context
from tidegate.notifications import reads, webhooks
from tidegate.notifications.events import EVENT_TYPES, summary
from tidegate.wire.common import DataList, Deleted, Page
from tidegate.wire.webhooks import DeliveryOut, NotificationOut, WebhookCreated, WebhookOut

router = APIRouter(tags=["notifications"], route_class=InputRoute)
READ = require(Scope.ORG_READ)
WRITE = require(Scope.ORG_WRITE)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Text = Field(min_length=1, max_length=webhooks.MAX_URL_LENGTH)
    events: list[Text] = Field(min_length=1, max_length=len(EVENT_TYPES), description=", ".join(EVENT_TYPES))
    description: Text | None = Field(None, max_length=200)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Text | None = Field(None, min_length=1, max_length=webhooks.MAX_URL_LENGTH)
    events: list[Text] | None = Field(None, max_length=len(EVENT_TYPES))
    description: Text | None = Field(None, max_length=200)


class EventTypeOut(BaseModel):
    type: str
    description: str


@router.get("/org/webhooks/event-types", response_model=DataList[EventTypeOut])
def list_event_types(principal: Principal = READ):
    return DataList[EventTypeOut](data=[EventTypeOut(type=t, description=d) for t, d in EVENT_TYPES.items()])


@router.get("/org/webhooks", response_model=DataList[WebhookOut])
def list_webhooks(principal: Principal = READ, session: Session = DB):
    return DataList[WebhookOut](data=[WebhookOut.of(w) for w in webhooks.list_webhooks(session, principal.org_id)])


@router.post("/org/webhooks", status_code=201, response_model=WebhookCreated)
def create_webhook(body: WebhookCreate, request: Request, principal: Principal = WRITE, session: Session = DB):
    created = webhooks.create_webhook(
        session,
        principal,
        url=body.url,
        events=body.events,
        description=body.description,
        session_key=settings_of(request).session_key,
        context=request_context(request),
    )
    set_audit_target(request, "webhook", created.webhook.id)
    # The only response that ever carries the secret; keep it out of every cache.
    return JSON(
        WebhookCreated(**WebhookOut.fields_of(created.webhook), secret=created.secret).model_dump(mode="json"),
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/org/webhooks/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: str, principal: Principal = READ, session: Session = DB):
    return WebhookOut.of(webhooks.get_webhook(session, principal.org_id, webhook_id))


@router.patch("/org/webhooks/{webhook_id}", response_model=WebhookOut)
def update_webhook(
    webhook_id: str, body: WebhookUpdate, request: Request, principal: Principal = WRITE, session: Session = DB
):
    if body.url is None and body.events is None and body.description is None:
        raise InvalidRequest("invalid_parameters", "Send url, events and/or description to change.")
    webhook = webhooks.get_webhook(session, principal.org_id, webhook_id)
    set_audit_target(request, "webhook", webhook.id)
    webhooks.update_webhook(
        session,
        principal,
        webhook,
        url=body.url,
        events=body.events,
        description=body.description,
        context=request_context(request),
    )
    return WebhookOut.of(webhook)


@router.delete("/org/webhooks/{webhook_id}", response_model=Deleted)
def delete_webhook(webhook_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    webhook = webhooks.get_webhook(session, principal.org_id, webhook_id)
    set_audit_target(request, "webhook", webhook.id)
    webhooks.delete_webhook(session, principal, webhook, context=request_context(request))
    return Deleted(id=webhook.id, deleted=True)


@router.get("/org/webhooks/{webhook_id}/deliveries", response_model=Page[DeliveryOut])
def list_deliveries(
    webhook_id: str,
    principal: Principal = READ,
    session: Session = DB,
    limit: int = LimitQuery,
    after: str | None = AfterQuery,
):
    """The delivery log: newest first, each with its attempts, last status code or error."""
    webhook = webhooks.get_webhook(session, principal.org_id, webhook_id)
    rows = reads.list_deliveries(session, principal.org_id, webhook_id=webhook.id, limit=limit, after=after)
    return Page[DeliveryOut].of(rows, limit, DeliveryOut.of)


@router.get("/org/notifications", response_model=Page[NotificationOut])
def list_notifications(
    principal: Principal = READ, session: Session = DB, limit: int = LimitQuery, after: str | None = AfterQuery
):
    rows = reads.list_notifications(session, principal.org_id, limit=limit, after=after)
    return Page[NotificationOut].of(
        rows, limit, lambda n: NotificationOut.of(n, summary(n.event_type, n.details, n.ip_address))
    )
