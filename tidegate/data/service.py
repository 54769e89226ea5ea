"""Sources: creation, writes, sharing and views, with their business rules and audit.

Reads of rows never happen here: they go through `tidegate.data.engine`, whose every
function takes the caller's RowFilter, which only `access.sources.open_source` produces.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import pyarrow as pa
from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session

from tidegate.access.authorize import AnyOf, Rule, authorize
from tidegate.access.sources import EDIT, OWNER, SourceAccess, open_source, source_row, visible_sources_query
from tidegate.audit.record import RequestContext, record
from tidegate.catalog.models import SERVICE_API, SERVICE_FILE, SHARE_PERMISSIONS, File, Source, SourceShare
from tidegate.config import Settings
from tidegate.core.principal import Principal
from tidegate.core.rowfilter import RowFilter
from tidegate.core.scopes import Scope
from tidegate.data import connectors, ingest, live, storage
from tidegate.db.base import utcnow
from tidegate.errors import Forbidden, InvalidRequest, NotFound
from tidegate.ids import new_id
from tidegate.limits import get_limits
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.service import get_user

MAX_INLINE_ROWS = 100_000


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise InvalidRequest("invalid_name", "Source name must be 1-200 characters.")
    return name


def _rows_table(rows: Any, *, columns: list[dict[str, Any]] | None = None) -> pa.Table:
    if not isinstance(rows, list):
        raise InvalidRequest("invalid_rows", "rows must be a list of objects.")
    if len(rows) > MAX_INLINE_ROWS:
        raise InvalidRequest("too_many_rows", f"At most {MAX_INLINE_ROWS:,} rows per request; upload a file instead.")
    return ingest.rows_to_table(rows, columns=columns)


# -- creation ------------------------------------------------------------------------------


def create_source(
    session: Session,
    principal: Principal,
    settings: Settings,
    *,
    name: str,
    description: str | None = None,
    rows: list[Any] | None = None,
    file_id: str | None = None,
    connector_id: str | None = None,
    config: dict[str, Any] | None = None,
    context: RequestContext | None = None,
) -> Source:
    name = _check_name(name)
    given = [x for x in (rows is not None, file_id is not None, connector_id is not None) if x]
    if len(given) != 1:
        raise InvalidRequest("invalid_source", "Give exactly one of rows, file_id or connector_id.")
    source = Source(
        id=new_id("src"),
        org_id=principal.org_id,
        name=name,
        description=description,
        created_by=principal.user_id,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    if rows is not None:
        authorize(principal, AnyOf(Scope.DATA_WRITE, Scope.SOURCES_WRITE))
        source.service = SERVICE_API
        table = _rows_table(rows)
    elif file_id is not None:
        authorize(principal, AnyOf(Scope.DATA_WRITE, Scope.SOURCES_WRITE))
        file = get_file(session, principal, file_id)
        source.service = SERVICE_FILE
        table = storage.read_file_table(file)
    else:
        assert connector_id is not None  # exactly one of the three was given (checked above)
        authorize(principal, Scope.SOURCES_WRITE)
        authorize(principal, Rule.CREATE_CONNECTOR)
        connectors.get_connector(connector_id)
        config, mode, interval = _mode_settings(connector_id, config or {}, None)
        public, secret = connectors.split_config(connector_id, config)
        source.service = connector_id
        source.connector_id = connector_id
        source.connector_config = public
        source.connector_secret_encrypted = connectors.encrypt_secret(secret, settings.session_key) if secret else None
        source.connector_mode, source.sync_interval_minutes = mode, interval
        table = _connector_table(source, public, secret)
        source.sync_status, source.last_synced_at = "ok", utcnow()
    session.add(source)
    session.flush()
    version = storage.write_new_version(session, source, table, append=False)
    record(
        session,
        principal,
        "source.created",
        org_id=principal.org_id,
        target_type="source",
        target_id=source.id,
        details={
            "name": name,
            "service": source.service,
            "rows": version.row_count,
            "columns": version.column_names,
            **({"file_id": file_id} if file_id else {}),
        },
        context=context,
    )
    bump_access_epoch(session, principal.org_id)
    return source


def _mode_settings(
    connector_id: str, config: dict[str, Any], current: Source | None
) -> tuple[dict[str, Any], str, int | None]:
    """(the connector config without them, mode, sync interval) from a create or update body.

    New PostgreSQL sources are live unless asked otherwise; engines without a live dialect
    (SQLite) are snapshots. An update without them keeps the current ones."""
    if not isinstance(config, dict):
        raise InvalidRequest("invalid_connector_config", "config must be an object.")
    config = dict(config)
    has_live = connector_id in live.DIALECTS or connector_id == "postgresql"
    default = (current.connector_mode or "snapshot") if current is not None else ("live" if has_live else "snapshot")
    mode = live.check_mode(config.pop("mode", None) or default, connector_id)
    given = "sync_interval_minutes" in config
    interval = live.check_sync_interval(config.pop("sync_interval_minutes", None))
    if not given and current is not None:
        interval = current.sync_interval_minutes
    if mode == "live" and interval is not None:
        raise InvalidRequest("invalid_connector_config", '"sync_interval_minutes" is for snapshot sources only.')
    return config, mode, interval


def _connector_table(source: Source, public: dict[str, Any], secret: dict[str, Any]) -> pa.Table:
    """What a connector source's new version holds: its rows (a snapshot), or for a live
    source no rows at all, only the columns read from the source now (its rows stay there)."""
    if source.connector_mode == "live":
        columns = live.read_columns(live.target_for_config(source.service, public, secret))
        return ingest.empty_table(columns)
    return connectors.pull(source.service, public, secret)


def _refuse_live_write(access: SourceAccess) -> None:
    if access.source is not None and access.source.is_live:
        raise InvalidRequest(
            "live_source_read_only",
            "This source is live: its rows are read from the source database, so write them there.",
        )


def write_rows(
    session: Session,
    principal: Principal,
    source_id: str,
    rows: list[Any],
    *,
    replace: bool,
    context: RequestContext | None = None,
) -> SourceAccess:
    authorize(principal, Scope.DATA_WRITE)
    access = open_source(session, principal, source_id, need=EDIT)
    _refuse_live_write(access)
    if replace:
        check_may_replace(access)
    else:
        _refuse_column_rules(access)
        _check_rows_pass_filter(rows, access.row_filter)
    columns = None if replace or access.version is None else access.version.columns
    table = _rows_table(rows, columns=columns)
    version = storage.write_new_version(session, source_row(session, access), table, append=not replace)
    record(
        session,
        principal,
        "source.data_replaced" if replace else "source.rows_appended",
        org_id=principal.org_id,
        target_type="source",
        target_id=source_id,
        details={"rows": table.num_rows, "row_count": version.row_count},
        context=context,
    )
    bump_access_epoch(session, principal.org_id)
    return open_source(session, principal, source_id, need=EDIT)


def _refuse_column_rules(access: SourceAccess) -> None:
    """A writer with hidden or masked columns on the source writes nothing: an append would
    have to name columns they cannot see (or values they cannot read back), and a replace
    would destroy values they may not read."""
    rules = access.row_filter.column_rules
    if not rules.is_empty:
        raise Forbidden(
            "column_rules_restrict_write",
            "Your access policies hide or mask columns of this source, so you cannot write its rows.",
        )


def check_may_replace(access: SourceAccess) -> None:
    """Replacing a source's rows, or redefining where they come from (a sync, a connector's
    configuration), needs every row and column as it is: it would silently destroy, or let the
    caller rename away from its policies, what this caller may not see."""
    _refuse_column_rules(access)
    if not access.row_filter.is_unrestricted:
        raise _cannot_replace()


def _check_rows_pass_filter(rows: list[Any], row_filter: RowFilter) -> None:
    """A filtered writer may only add rows they would be allowed to read back."""
    if row_filter.is_unrestricted:
        return
    if row_filter.deny_all:
        raise Forbidden("row_filter_restricts_write", "Your access policies allow you no rows of this source.")
    for number, row in enumerate(rows if isinstance(rows, list) else [], 1):
        if not isinstance(row, dict):
            continue
        lowered = {str(k).lower(): v for k, v in row.items()}
        for clause in row_filter.clauses:
            value = lowered.get(clause.column.lower())
            text = None if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
            if text not in clause.values:
                raise Forbidden(
                    "row_filter_restricts_write",
                    f"Row {number}: column {clause.column!r} must be one of the values your policies allow.",
                )


def update_source(
    session: Session,
    principal: Principal,
    source_id: str,
    *,
    changes: dict[str, Any],
    settings: Settings,
    context: RequestContext | None = None,
) -> Source:
    authorize(principal, Scope.SOURCES_WRITE)
    redefines = bool(changes.get("config"))
    access = open_source(session, principal, source_id, need=EDIT, with_filter=redefines)
    if redefines:
        check_may_replace(access)  # a new query or table could rename columns away from the policies
    source = source_row(session, access)
    diff: dict[str, Any] = {}
    if "name" in changes:
        new = _check_name(changes["name"])
        if new != source.name:
            diff["name"] = {"old": source.name, "new": new}
            source.name = new
    if "description" in changes and changes["description"] != source.description:
        if changes["description"] is not None and len(changes["description"]) > 2000:
            raise InvalidRequest("invalid_description", "Description must be at most 2000 characters.")
        diff["description"] = {"old": source.description, "new": changes["description"]}
        source.description = changes["description"]
    if changes.get("config"):
        if source.connector_id is None:
            raise InvalidRequest("not_a_connector_source", "Only connector sources have a config.")
        authorize(principal, Rule.CONFIGURE_CONNECTOR)
        old_secret = connectors.decrypt_secret(source.connector_secret_encrypted, settings.session_key)
        given, mode, interval = _mode_settings(source.connector_id, changes["config"], source)
        merged = {**(source.connector_config or {}), **given}
        public, secret = connectors.split_config(source.connector_id, merged, old_secret)
        refresh = mode != (source.connector_mode or "snapshot") or (
            mode == "live" and public != source.connector_config
        )
        source.connector_config = public
        source.connector_secret_encrypted = connectors.encrypt_secret(secret, settings.session_key) if secret else None
        source.connector_mode, source.sync_interval_minutes = mode, interval
        if refresh:  # now live, or a snapshot again, or live elsewhere: the version follows
            storage.write_new_version(session, source, _connector_table(source, public, secret), append=False)
            source.sync_status, source.last_synced_at, source.last_sync_error = "ok", utcnow(), None
        diff["config"] = {"changed_fields": sorted(changes["config"])}  # names only, never values
    if diff:
        source.updated_at = utcnow()
        record(
            session,
            principal,
            "source.updated",
            org_id=principal.org_id,
            target_type="source",
            target_id=source.id,
            details=diff,
            context=context,
        )
        bump_access_epoch(session, principal.org_id)
    return source


def _cannot_replace() -> Forbidden:
    return Forbidden(
        "row_filter_restricts_write",
        "Your access policies restrict which rows you see, so you cannot replace or redefine this source's data.",
    )


def sync_source(
    session: Session, principal: Principal, source_id: str, settings: Settings, *, context: RequestContext | None = None
) -> Source:
    authorize(principal, Scope.SOURCES_WRITE)
    access = open_source(session, principal, source_id, need=EDIT)
    check_may_replace(access)  # a sync replaces every row, as a replace does
    source = source_row(session, access)
    if source.service not in connectors.CONNECTORS:
        raise InvalidRequest("not_a_connector_source", "This source is not fed by a connector.")
    secret = connectors.decrypt_secret(source.connector_secret_encrypted, settings.session_key)
    # A snapshot pulls its rows again; a live source re-reads its columns (its rows are read live).
    table = _connector_table(source, source.connector_config or {}, secret)
    version = storage.write_new_version(session, source, table, append=False)
    source.sync_status, source.last_synced_at, source.last_sync_error = "ok", utcnow(), None
    record(
        session,
        principal,
        "source.synced",
        org_id=principal.org_id,
        target_type="source",
        target_id=source.id,
        details={"rows": version.row_count},
        context=context,
    )
    bump_access_epoch(session, principal.org_id)
    return source


def delete_source(
    session: Session, principal: Principal, source_id: str, *, context: RequestContext | None = None
) -> None:
    authorize(principal, AnyOf(Scope.SOURCES_WRITE, Scope.DATA_WRITE))
    source = source_row(session, open_source(session, principal, source_id, need=OWNER, with_filter=False))
    source.deleted_at = utcnow()
    record(
        session,
        principal,
        "source.deleted",
        org_id=principal.org_id,
        target_type="source",
        target_id=source_id,
        details={"name": source.name},
        context=context,
    )
    bump_access_epoch(session, principal.org_id)


def list_sources(
    session: Session, principal: Principal, *, limit: int, after: str | None, before: str | None = None
) -> list[Source]:
    """The sources the caller may open, by id: after `after`, or the limit+1 just before `before`."""
    query = visible_sources_query(session, principal)
    if after:
        query = query.where(Source.id > after)
    if before:
        earlier = query.where(Source.id < before).order_by(Source.id.desc()).limit(limit + 1)
        return list(reversed(session.scalars(earlier).all()))
    return list(session.scalars(query.order_by(Source.id).limit(limit + 1)))


# -- sharing -------------------------------------------------------------------------------


def list_shares(session: Session, principal: Principal, source_id: str) -> list[SourceShare]:
    open_source(session, principal, source_id, need=OWNER, with_filter=False)
    return list(
        session.scalars(select(SourceShare).where(SourceShare.source_id == source_id).order_by(SourceShare.created_at))
    )


def _check_permission(permission: str) -> str:
    if permission not in SHARE_PERMISSIONS:
        raise InvalidRequest("invalid_permission", f"permission must be one of: {', '.join(SHARE_PERMISSIONS)}.")
    return permission


def share_source(
    session: Session,
    principal: Principal,
    source_id: str,
    user_id: str,
    permission: str,
    *,
    context: RequestContext | None = None,
) -> SourceShare:
    access = open_source(session, principal, source_id, need=OWNER, with_filter=False)
    _check_permission(permission)
    user = get_user(session, principal.org_id, user_id)
    share = session.scalar(
        select(SourceShare).where(SourceShare.source_id == source_id, SourceShare.user_id == user.id)
    )
    if share is None:
        share = SourceShare(
            id=new_id("shr"),
            source_id=source_id,
            user_id=user.id,
            permission=permission,
            granted_by=principal.user_id,
            created_at=utcnow(),
        )
        session.add(share)
    else:
        share.permission = permission
    session.flush()
    record(
        session,
        principal,
        "source.shared",
        org_id=principal.org_id,
        target_type="source",
        target_id=source_id,
        details={"user_id": user.id, "permission": permission, "name": access.opened_source.name},
        context=context,
    )
    bump_access_epoch(session, principal.org_id)
    return share


def unshare_source(
    session: Session, principal: Principal, source_id: str, user_id: str, *, context: RequestContext | None = None
) -> bool:
    open_source(session, principal, source_id, need=OWNER, with_filter=False)
    user = get_user(session, principal.org_id, user_id, include_inactive=True)
    removed = session.execute(
        delete(SourceShare).where(SourceShare.source_id == source_id, SourceShare.user_id == user.id)
    ).rowcount  # type: ignore[attr-defined]  # a DELETE returns a CursorResult; Session.execute's stubs say Result
    if removed:
        record(
            session,
            principal,
            "source.unshared",
            org_id=principal.org_id,
            target_type="source",
            target_id=source_id,
            details={"user_id": user.id},
            context=context,
        )
        bump_access_epoch(session, principal.org_id)
    return bool(removed)


def org_share(
    session: Session,
    principal: Principal,
    source_id: str,
    *,
    enabled: bool,
    permission: str,
    context: RequestContext | None = None,
) -> Source:
    source = source_row(session, open_source(session, principal, source_id, need=OWNER, with_filter=False))
    new = _check_permission(permission) if enabled else None
    if new != source.org_share_permission:
        record(
            session,
            principal,
            "source.org_shared",
            org_id=principal.org_id,
            target_type="source",
            target_id=source_id,
            details={"old": source.org_share_permission, "new": new},
            context=context,
        )
        bump_access_epoch(session, principal.org_id)
        source.org_share_permission = new
    return source


# -- files ---------------------------------------------------------------------------------


def upload_file(
    session: Session,
    principal: Principal,
    *,
    name: str,
    content: bytes | BinaryIO,
    content_type: str | None,
    context: RequestContext | None = None,
) -> File:
    """Store an upload; `content` may be the upload's (spooled) file, copied to storage in chunks."""
    authorize(principal, AnyOf(Scope.FILES_WRITE, Scope.FILES_UPLOAD))
    file = storage.store_file(
        session,
        org_id=principal.org_id,
        created_by=principal.user_id,
        name=name,
        content=content,
        content_type=content_type,
        max_bytes=get_limits().max_upload_bytes,
    )
    session.flush()
    record(
        session,
        principal,
        "file.upload",
        org_id=principal.org_id,
        target_type="file",
        target_id=file.id,
        details={"name": file.name, "size": file.size},
        context=context,
    )
    bump_access_epoch(session, principal.org_id)
    return file


def _visible_files(principal: Principal) -> Select[File]:
    query = select(File).where(File.org_id == principal.org_id)
    if not principal.is_admin:
        query = query.where(File.created_by == principal.user_id)  # files are private to their uploader
    return query


def get_file(session: Session, principal: Principal, file_id: str) -> File:
    file = session.scalar(_visible_files(principal).where(File.id == file_id))
    if file is None:
        raise NotFound("file_not_found", f"No file {file_id!r}.")
    return file


def list_files(session: Session, principal: Principal, *, limit: int, after: str | None) -> list[File]:
    query = _visible_files(principal)
    if after:
        query = query.where(File.id > after)
    return list(session.scalars(query.order_by(File.id).limit(limit + 1)))


def delete_file(session: Session, principal: Principal, file_id: str, *, context: RequestContext | None = None) -> None:
    authorize(principal, AnyOf(Scope.FILES_WRITE, Scope.FILES_DELETE))
    file = get_file(session, principal, file_id)
    session.delete(file)
    record(
        session,
        principal,
        "file.deleted",
        org_id=principal.org_id,
        target_type="file",
        target_id=file_id,
        details={"name": file.name},
        context=context,
    )
    bump_access_epoch(session, principal.org_id)
