"""Frozen copies of a source and a version, as read at one moment.

What `access.sources.open_source` hands out (and caches): plain values that need no database
session, so they stay valid after the session that read them is closed or rolled back, and
no reader can change them for another. Code that changes a source re-loads its ORM row in
its own session (`access.sources.source_row`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from tidegate.catalog.models import Source, SourceVersion


@dataclass(frozen=True)
class VersionSnapshot:
    """A source version (versions never change once written, so this is exact forever)."""

    id: str
    source_id: str
    org_id: str
    created_at: datetime | None
    row_count: int
    column_types: tuple[tuple[str, str], ...]  # (name, type) in order
    parts: tuple[str, ...]

    @classmethod
    def of(cls, version: SourceVersion) -> VersionSnapshot:
        return cls(
            id=version.id,
            source_id=version.source_id,
            org_id=version.org_id,
            created_at=version.created_at,
            row_count=int(version.row_count or 0),
            column_types=tuple((c["name"], c["type"]) for c in version.columns or ()),
            parts=tuple(version.parts or ()),
        )

    @property
    def columns(self) -> list[dict[str, Any]]:
        """`[{"name", "type"}]` like SourceVersion.columns (a fresh list: change it freely)."""
        return [{"name": name, "type": kind} for name, kind in self.column_types]

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.column_types]


@dataclass(frozen=True)
class SourceSnapshot:
    """A source's own fields, without its connector secret."""

    id: str
    org_id: str
    name: str
    description: str | None
    created_by: str
    created_at: datetime | None
    updated_at: datetime | None
    service: str
    connector_id: str | None
    connector_config_json: bytes | None  # JSON: a dict would be shared and mutable
    sync_status: str | None
    last_synced_at: datetime | None
    last_sync_error: str | None
    current_version_id: str | None
    org_share_permission: str | None
    deleted_at: datetime | None
    connector_mode: str | None = None  # live | snapshot | None (no connector, or an older snapshot)
    sync_interval_minutes: int | None = None
    # The Fernet token of a live source's credentials (what data/live.py connects with):
    # encrypted, kept out of repr, and never rendered (wire.SourceOut lists its fields).
    connector_secret_token: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, source: Source) -> SourceSnapshot:
        config = source.connector_config
        return cls(
            id=source.id,
            org_id=source.org_id,
            name=source.name,
            description=source.description,
            created_by=source.created_by,
            created_at=source.created_at,
            updated_at=source.updated_at,
            service=source.service,
            connector_id=source.connector_id,
            connector_config_json=None if config is None else orjson.dumps(config),
            sync_status=source.sync_status,
            last_synced_at=source.last_synced_at,
            last_sync_error=source.last_sync_error,
            current_version_id=source.current_version_id,
            org_share_permission=source.org_share_permission,
            deleted_at=source.deleted_at,
            connector_mode=source.connector_mode,
            sync_interval_minutes=source.sync_interval_minutes,
            connector_secret_token=source.connector_secret_encrypted if source.connector_mode == "live" else None,
        )

    @property
    def is_live(self) -> bool:
        return self.connector_mode == "live"

    @property
    def connector_config(self) -> dict[str, Any] | None:
        """The connector's non-secret settings (a fresh dict)."""
        return None if self.connector_config_json is None else orjson.loads(self.connector_config_json)
