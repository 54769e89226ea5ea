"""An organization's admin controls (a tidegate extension)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

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

    @classmethod
    def of(cls, org: Organization) -> OrgSettingsOut:
        return cls(
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
