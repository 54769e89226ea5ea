"""Sources, their shares, uploaded files, connectors, and the shapes of data reads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from tidegate.catalog.models import File, SourceShare
from tidegate.db.base import isoformat

if TYPE_CHECKING:  # a type only: the wire shapes do not pull the access layer in
    from tidegate.access.sources import SourceAccess


class SourceOut(BaseModel):
    """A source as one caller sees it: counts are of the rows that caller may read."""

    id: str
    name: str
    description: str | None
    service: str
    connector_id: str | None
    status: str
    columns: list[str]
    column_types: dict[str, str]
    row_count: int
    access_controlled: bool
    permission: str  # view, edit or owner
    org_shared: bool
    created_by: str | None
    created_at: str | None
    updated_at: str | None
    last_synced_at: str | None
    config: dict[str, Any] | None  # the connector's settings, never its secret part
    mode: str | None  # connector sources: "live" (read on the source) or "snapshot"; else null
    sync_interval_minutes: int | None  # snapshot sources synced every N minutes

    @classmethod
    def of(cls, access: SourceAccess, row_count: int, status: str | None = None) -> SourceOut:
        """`row_count`: of the rows `access` lets its caller read (counting is the data layer's)."""
        source = access.opened_source
        return cls(
            id=source.id,
            name=source.name,
            description=source.description,
            service=source.service,
            connector_id=source.connector_id,
            status=status or source.sync_status or "ready",
            columns=access.columns,  # without the columns hidden from the caller
            column_types=dict(access.column_types),
            row_count=row_count,
            access_controlled=not access.row_filter.is_unrestricted,
            permission=access.permission,
            org_shared=source.org_share_permission is not None,
            created_by=source.created_by,
            created_at=isoformat(source.created_at),
            updated_at=isoformat(source.updated_at),
            last_synced_at=isoformat(source.last_synced_at),
            config=source.connector_config,
            mode=(source.connector_mode or "snapshot") if source.connector_id else None,
            sync_interval_minutes=source.sync_interval_minutes,
        )


class SourceWritten(BaseModel):
    """After rows were appended or replaced: the SDK's DataWriteResult."""

    id: str
    name: str
    columns: list[str]
    row_count: int
    updated_at: str | None
    source_id: str
    rows_affected: int

    @classmethod
    def of(cls, source: SourceOut, rows_affected: int) -> SourceWritten:
        return cls(
            id=source.id,
            name=source.name,
            columns=source.columns,
            row_count=source.row_count,
            updated_at=source.updated_at,
            source_id=source.id,
            rows_affected=rows_affected,
        )


class SourceUpdated(BaseModel):
    id: str
    updated: bool


class SourceSynced(BaseModel):
    id: str
    status: str


class ShareOut(BaseModel):
    user_id: str
    permission: str
    resource_type: str
    resource_id: str
    granted_by: str | None

    @classmethod
    def of(cls, share: SourceShare, source_id: str) -> ShareOut:
        return cls(
            user_id=share.user_id,
            permission=share.permission,
            resource_type="source",
            resource_id=source_id,
            granted_by=share.granted_by,
        )


class ShareRevoked(BaseModel):
    user_id: str
    resource_type: str
    resource_id: str
    revoked: bool
    deleted: bool


class OrgShareOut(BaseModel):
    source_id: str
    enabled: bool
    org_shared: bool
    permission: str


class ConnectorOut(BaseModel):
    id: str
    name: str
    service: str
    status: str
    description: str
    config_fields: list[str]
    secret_fields: list[str]


class FileOut(BaseModel):
    id: str
    name: str
    size: int | None
    content_type: str | None
    created_by: str | None
    created_at: str | None
    columns: list[str] | None  # of a tabular file
    row_count: int | None

    @classmethod
    def of(cls, file: File) -> FileOut:
        return cls(
            id=file.id,
            name=file.name,
            size=file.size,
            content_type=file.content_type,
            created_by=file.created_by,
            created_at=isoformat(file.created_at),
            columns=[c["name"] for c in file.columns] if file.columns else None,
            row_count=file.row_count,
        )


# -- data reads: schemas only. These responses are rendered by orjson straight from the
# engine's bytes (api/data.py), never validated row by row through these models.


class DataPageOut(BaseModel):
    """GET /sources/{id}/data as JSON: one page of the rows the caller may see."""

    data: list[dict[str, Any]]
    total_count: int
    page: int
    page_size: int
    columns: list[str]


class QueryResultOut(BaseModel):
    """POST /sources/{id}/query and /data/query."""

    data: list[dict[str, Any]]
    total_rows: int
    page: int
    page_size: int
    columns: list[str]


class ColumnValues(BaseModel):
    """Distinct values of one column (a tidegate extension)."""

    data: list[Any] = Field(description="Distinct values, among the rows the caller may see.")
