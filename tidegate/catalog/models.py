"""Sources, their immutable versions, shares and uploaded files, as stored in the database.

A source's rows live in Parquet files (see `tidegate.data.storage`); the database only holds
which files make up which version and which version is current. A version is never changed
once written: an append makes a NEW version listing the old part files plus a new one, a
replace makes a new version with fresh parts. Readers that hold an old version keep reading
exactly what it listed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidegate.db.base import Base, UtcDateTime, utcnow

SERVICE_API = "api"  # rows pushed through the API
SERVICE_FILE = "file"  # created from an uploaded file
# Any other service value is a connector type from `tidegate.data.connectors.CONNECTORS`.

SHARE_PERMISSIONS = ("view", "edit")


class Source(Base):
    __tablename__ = "sources"
    __table_args__ = (Index(None, "org_id", "id"), Index(None, "created_by"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # src_...
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    service: Mapped[str] = mapped_column(String(40), default=SERVICE_API)
    connector_id: Mapped[str | None] = mapped_column(String(40))
    # The non-secret part of a connector's configuration (host, database, table, ...).
    connector_config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Fernet token (key derived from Settings.session_key) of the connector's credentials.
    # Write-only: never returned, logged or audited. See connectors.encrypt_secret.
    connector_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    # "live" (every read runs on the source database, data/live.py) or "snapshot" (a copy,
    # refreshed by sync); None for sources no connector feeds, and for connector sources
    # made before live ones existed (snapshots).
    connector_mode: Mapped[str | None] = mapped_column(String(10))
    sync_interval_minutes: Mapped[int | None] = mapped_column(Integer)  # snapshot only; data/scheduled_sync.py
    sync_status: Mapped[str | None] = mapped_column(String(20))  # pending | ok | error
    last_synced_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_sync_error: Mapped[str | None] = mapped_column(Text)  # never contains a secret
    # No foreign key: versions reference sources, and a cycle is not worth it. Switched only
    # by storage.write_new_version, with a compare-and-set.
    current_version_id: Mapped[str | None] = mapped_column(String(40))
    org_share_permission: Mapped[str | None] = mapped_column(String(10))  # view | edit | None
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    def __repr__(self) -> str:  # never the secret
        return f"<Source {self.id} {self.name!r}>"


class SourceVersion(Base):
    __tablename__ = "source_versions"
    __table_args__ = (Index(None, "source_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # ver_...
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id"))
    # Denormalized from the source so that a version alone locates its files.
    org_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    row_count: Mapped[int] = mapped_column(BigInteger, default=0)
    columns: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{"name": str, "type": str}]
    # Part files relative to <data_dir>/<org_id>/<source_id>/, e.g. "ver_x/part-0000.parquet".
    parts: Mapped[list[str]] = mapped_column(JSON)

    @property
    def column_names(self) -> list[str]:
        return [c["name"] for c in self.columns]

    def __repr__(self) -> str:
        return f"<SourceVersion {self.id} of {self.source_id} rows={self.row_count}>"


class SourceShare(Base):
    __tablename__ = "source_shares"
    __table_args__ = (UniqueConstraint("source_id", "user_id"), Index(None, "user_id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # shr_...
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    permission: Mapped[str] = mapped_column(String(10))  # view | edit
    granted_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index(None, "org_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # file_...
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # Relative to data_dir: "<org_id>/files/<file_id>".
    storage_path: Mapped[str] = mapped_column(String(300))
    # Filled when the file is tabular (csv, tsv, json, ndjson, parquet, xlsx); else None.
    columns: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    row_count: Mapped[int | None] = mapped_column(BigInteger)
