"""An organization's admin controls (a tidegate extension)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from tidegate.audit.chain import timestamp_text
from tidegate.notifications.models import AuditStream
from tidegate.orgs.embeds import ui_config_of
from tidegate.orgs.models import Organization


class OrgSettingsOut(BaseModel):
    """GET/PATCH /org/settings (a tidegate extension)."""

    org_id: str
    name: str
    api_key_creation_enabled: bool
    deny_by_default: bool
    max_keys_per_user: int
    user_rate_limit_per_minute: int
    embeds_enabled: bool
    embed_allowed_origins: list[str]
    embed_ui_config: dict[str, dict[str, Any]]
    public_share_links_enabled: bool
    unused_key_days: int
    audit_retention_days: int
    audit_stream_url: str | None
    audit_stream_enabled: bool

    @classmethod
    def of(cls, org: Organization, stream: AuditStream | None = None) -> OrgSettingsOut:
        return cls(
            audit_stream_url=stream.url if stream else None,
            audit_stream_enabled=bool(stream and stream.enabled),
            org_id=org.id,
            name=org.name,
            api_key_creation_enabled=org.api_key_creation_enabled,
            deny_by_default=org.deny_by_default,
            max_keys_per_user=org.max_keys_per_user,
            user_rate_limit_per_minute=org.user_rate_limit_per_minute,
            embeds_enabled=org.embeds_enabled,
            embed_allowed_origins=list(org.embed_allowed_origins or []),
            embed_ui_config=ui_config_of(org),
            public_share_links_enabled=org.public_share_links_enabled,
            unused_key_days=org.unused_key_days,
            audit_retention_days=org.audit_retention_days,
        )


class OrgSettingsWithSecret(OrgSettingsOut):
    """PATCH /org/settings when it set a new audit stream URL: its secret, shown this once."""

    audit_stream_secret: str


class AuditStreamOut(BaseModel):
    """GET /org/audit-stream: where the organization's audit events go, and how far they got."""

    object: str
    url: str | None
    enabled: bool
    secret_prefix: str | None
    delivered_seq: int = Field(description="The last chain position the receiver acknowledged (0: none yet).")
    delivered_at: str | None
    pending_events: int = Field(description="Chained events not delivered yet.")
    attempts: int = Field(description="Failed attempts in a row since the last delivery.")
    last_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: str | None = Field(description="Set while backing off after a failure.")

    @classmethod
    def of(cls, stream: AuditStream | None, pending_events: int) -> AuditStreamOut:
        def when(value: datetime | None) -> str | None:
            return timestamp_text(value) if value else None

        if stream is None:
            return cls(
                object="audit_stream",
                url=None,
                enabled=False,
                secret_prefix=None,
                delivered_seq=0,
                delivered_at=None,
                pending_events=pending_events,
                attempts=0,
                last_attempt_at=None,
                last_status_code=None,
                last_error=None,
                next_attempt_at=None,
            )
        return cls(
            object="audit_stream",
            url=stream.url,
            enabled=stream.enabled,
            secret_prefix=stream.secret_prefix,
            delivered_seq=stream.delivered_seq,
            delivered_at=when(stream.delivered_at),
            pending_events=pending_events,
            attempts=stream.attempts,
            last_attempt_at=when(stream.last_attempt_at),
            last_status_code=stream.last_status_code,
            last_error=stream.last_error,
            next_attempt_at=when(stream.next_attempt_at),
        )
