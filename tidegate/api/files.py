"""/files: upload (multipart part `file`), list, get, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, UploadFile
from sqlalchemy.orm import Session

from tidegate.access.principal import Principal
from tidegate.access.scopes import Scope
from tidegate.api.deps import DB, authenticated, request_context, require, set_audit_target
from tidegate.api.inputs import InputRoute
from tidegate.api.pagination import AfterQuery, LimitQuery, cursor_page
from tidegate.data import service

router = APIRouter(tags=["files"], route_class=InputRoute)


@router.post("/files/upload", status_code=201)
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
    return service.file_view(stored)


@router.get("/files")
def list_files(
    principal: Principal = require(Scope.FILES_READ),
    session: Session = DB,
    limit: int = LimitQuery,
    after: str | None = AfterQuery,
):
    return cursor_page(service.list_files(session, principal, limit=limit, after=after), limit, service.file_view)


@router.get("/files/{file_id}")
def get_file(file_id: str, principal: Principal = require(Scope.FILES_READ), session: Session = DB):
    return service.file_view(service.get_file(session, principal, file_id))


@router.delete("/files/{file_id}")
def delete_file(file_id: str, request: Request, principal: Principal = Depends(authenticated), session: Session = DB):
    service.delete_file(session, principal, file_id, context=request_context(request))
    return {"id": file_id, "deleted": True}
