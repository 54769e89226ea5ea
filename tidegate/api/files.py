"""/files: upload (multipart part `file`), list, get, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, UploadFile
from sqlalchemy.orm import Session

from tidegate.api.deps import DB, authenticated, require, set_audit_target
from tidegate.api.inputs import InputRoute
from tidegate.api.pagination import AfterQuery, LimitQuery
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.data import service
from tidegate.http import request_context
from tidegate.wire.common import Deleted, Page
from tidegate.wire.sources import FileOut

router = APIRouter(tags=["files"], route_class=InputRoute)


@router.post("/files/upload", status_code=201, response_model=FileOut)
def upload(request: Request, file: UploadFile, principal: Principal = Depends(authenticated), session: Session = DB):
    # The upload's spooled file (on disk past 1 MiB), copied to storage in chunks: an upload
    # never sits in memory whole. Its size cap: file_too_large.
    name = request.headers.get("filename") or file.filename or "upload"
    stored = service.upload_file(
        session,
        principal,
        name=name,
        content=file.file,
        content_type=file.content_type,
        context=request_context(request),
    )
    set_audit_target(request, "file", stored.id)
    return FileOut.of(stored)


@router.get("/files", response_model=Page[FileOut])
def list_files(
    principal: Principal = require(Scope.FILES_READ),
    session: Session = DB,
    limit: int = LimitQuery,
    after: str | None = AfterQuery,
):
    return Page[FileOut].of(service.list_files(session, principal, limit=limit, after=after), limit, FileOut.of)


@router.get("/files/{file_id}", response_model=FileOut)
def get_file(file_id: str, principal: Principal = require(Scope.FILES_READ), session: Session = DB):
    return FileOut.of(service.get_file(session, principal, file_id))


@router.delete("/files/{file_id}", response_model=Deleted)
def delete_file(file_id: str, request: Request, principal: Principal = Depends(authenticated), session: Session = DB):
    service.delete_file(session, principal, file_id, context=request_context(request))
    return Deleted(id=file_id, deleted=True)
