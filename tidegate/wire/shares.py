"""Shares of projects and dashboards (the SDK's ShareEntry)."""

from __future__ import annotations

from pydantic import BaseModel

from tidegate.catalog.analysis import ResourceShare
from tidegate.db.base import isoformat


class ResourceShareOut(BaseModel):
    user_id: str
    permission: str
    resource_type: str
    resource_id: str
    granted_by: str | None
    created_at: str | None

    @classmethod
    def of(cls, share: ResourceShare) -> ResourceShareOut:
        return cls(
            user_id=share.user_id,
            permission=share.permission,
            resource_type=share.resource_type,
            resource_id=share.resource_id,
            granted_by=share.granted_by,
            created_at=isoformat(share.created_at),
        )
