"""Reading rows: pages and exports of a source, read-only SQL over it, a column's values.

Kept apart from /sources (which manages sources) because these are the hot path: this
router is matched first. Every read here opens the source through `access.sources`, which
resolves the caller's row filter, and reads through `data.engine`, which requires it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from tidegate import jsonfmt
from tidegate.access.sources import VIEW, SourceAccess, cached_access, open_source
from tidegate.api.deps import DB, caller_with, in_session, require, set_audit_target, settings_of
from tidegate.api.inputs import InputRoute, Text, query_choice, query_int
from tidegate.api.responses import JSON
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.data import engine, querypool, sandbox
from tidegate.jsonfmt import Raw
from tidegate.wire.sources import ColumnValues, DataPageOut, QueryResultOut

router = APIRouter(tags=["data"], route_class=InputRoute)
DATA_READ = require(Scope.DATA_READ)

MAX_SQL = 10_000


class Query_(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=MAX_SQL)
    page: int = Field(1, ge=1, le=1_000_000)
    page_size: int = Field(100, ge=1, le=10_000)
    # At most the server's limit (TIDEGATE_QUERY_TIMEOUT_SECONDS); a caller may ask for less.
    timeout_seconds: float | None = Field(None, gt=0, le=86_400)


class DataQuery(Query_):
    source_id: Text = Field(max_length=100)


def _render_page(access: SourceAccess, page: int, page_size: int) -> engine.JSONPage:
    """A page not in memory yet: read and rendered (in the threadpool: it does I/O)."""
    return engine.page_json(access, page=page, page_size=page_size)


def _audit_read(request: Request, access: SourceAccess, action: str, rows: int, **extra) -> None:
    """What a key read: the source, how many rows, under which policies."""
    set_audit_target(
        request,
        "source",
        access.opened_source.id,
        source_id=access.opened_source.id,
        rows_returned=rows,
        policy_ids=list(access.row_filter.policy_ids),
        **extra,
    )
    request.scope["state"]["audit_action"] = action


ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorOut"}
READ_DATA_PATHS = ("/sources/{source_id}/data", "/data/sources/{source_id}/data")


async def read_data(request: Request) -> Response:
    """A page of the rows the caller may see, or all of them as CSV or Parquet.

    The hot path, served as a plain Starlette route rather than a FastAPI one: FastAPI's
    request handling (its dependency solver runs even when nothing is declared) is about
    half of the framework's cost per request; measured with bench/data_page.py, the page
    read went from 6,500 to 8,000 requests/s. So the caller is checked by a direct call
    (`caller_with`, what `require` does), the parameters are read here, and the OpenAPI
    operation is written out below (`openapi_operations`).
    """
    if request.method != "GET":  # Starlette also routes HEAD here; a HEAD would read a page for nothing
        raise StarletteHTTPException(405)
    principal = await caller_with(request, Scope.DATA_READ)
    source_id = request.path_params["source_id"]
    page = query_int(request, "page", 1, low=1, high=100_000_000)
    page_size = query_int(request, "page_size", 100, low=1, high=engine.MAX_PAGE_SIZE)
    format = query_choice(request, "format", "json", ("json", "csv", "parquet"))
    raw = query_choice(request, "raw", "0", ("0", "1")) == "1"  # CSV: formula-like cells verbatim
    # async: a repeated page read is answered from memory (access and filtered rows are
    # cached per access epoch and per version+filter) without a thread hop; misses go to
    # the threadpool.
    access = cached_access(principal, source_id) or await in_session(
        request, open_source, principal, source_id, need=VIEW
    )
    version = access.version
    if format != "json":
        total = await run_in_threadpool(engine.count, access) if version else 0
        _audit_read(request, access, "data.export", total, format=format, **({"raw": True} if raw else {}))
        if format == "csv":
            body = engine.stream_csv(access, raw=raw) if version else iter([b""])
            media = "text/csv; charset=utf-8"
        else:
            body = engine.stream_parquet(access) if version else iter([b""])
            media = "application/vnd.apache.parquet"
        filename = f"{access.opened_source.id}.{format}"
        return StreamingResponse(
            body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )
    if version is None:
        rendered = engine.JSONPage(b"[]", 0, 0)
    else:
        cached = engine.page_json(access, page=page, page_size=page_size, cached_only=True)
        rendered = cached if cached is not None else await run_in_threadpool(_render_page, access, page, page_size)
    _audit_read(request, access, "data.read", rendered.count, page=page, page_size=page_size)
    return JSON(
        {
            "data": Raw(rendered.rows),
            "total_count": rendered.total,
            "page": page,
            "page_size": page_size,
            "columns": access.columns,
        }
    )


for _path in READ_DATA_PATHS:
    _route = Route(_path, read_data, methods=["GET"], include_in_schema=False)
    _route.methods = {"GET"}  # Starlette adds HEAD, which read_data refuses
    router.routes.append(_route)


def openapi_operations(prefix: str) -> dict:
    """The OpenAPI paths of the routes FastAPI does not describe itself (read_data)."""
    parameters = [
        {
            "name": "source_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "The source's id.",
        },
        {
            "name": "page",
            "in": "query",
            "required": False,
            "description": "Page number, from 1.",
            "schema": {"type": "integer", "minimum": 1, "maximum": 100_000_000, "default": 1},
        },
        {
            "name": "page_size",
            "in": "query",
            "required": False,
            "description": "Rows per page.",
            "schema": {"type": "integer", "minimum": 1, "maximum": engine.MAX_PAGE_SIZE, "default": 100},
        },
        {
            "name": "format",
            "in": "query",
            "required": False,
            "description": "json: one page; csv or parquet: every row the caller may see, streamed.",
            "schema": {"type": "string", "enum": ["json", "csv", "parquet"], "default": "json"},
        },
        {
            "name": "raw",
            "in": "query",
            "required": False,
            "description": (
                "CSV only. 0 (default): text cells starting with =, +, -, @, tab or CR get a leading "
                "quote so spreadsheets do not run them as formulas; 1: every cell verbatim, for scripts."
            ),
            "schema": {"type": "string", "enum": ["0", "1"], "default": "0"},
        },
    ]
    responses = {
        "200": {
            "description": "`{data, total_count, page, page_size, columns}`, or the CSV or Parquet file.",
            "content": {
                # The rows are rendered by orjson from the engine's bytes, never through the model.
                "application/json": {"schema": DataPageOut.model_json_schema()},
                "text/csv": {"schema": {"type": "string"}},
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        # The error envelope, as every FastAPI route of /api/v1 declares it (api.app.ERROR_RESPONSES).
        **{
            status: {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for status, description in (("4XX", "Refused."), ("5XX", "Server error or outage."))
        },
    }
    return {
        prefix + path: {
            "get": {
                "tags": ["data"],
                "summary": "Read Data",
                "parameters": parameters,
                "responses": responses,
                "operationId": "read_data"
                + (prefix + path).replace("/", "_").replace("{", "_").replace("}", "_")
                + "_get",
            }
        }
        for path in READ_DATA_PATHS
    }


@dataclass(frozen=True)
class _QueryPage:
    rows: bytes  # the page's rows, rendered (a JSON array of objects)
    count: int
    total: int
    columns: list[str]


def _query_page(access: SourceAccess, body: Query_, budget: sandbox.Budget, execute) -> _QueryPage:
    """Runs in the query pool: the page, rendered there too (rendering megabytes of JSON on
    the event loop would stall every other request), and refused if it renders too large."""
    rows, total, columns = engine.run_query(
        access,
        body.sql,
        page=body.page,
        page_size=body.page_size,
        budget=budget,
        execute=execute,
    )
    rendered = jsonfmt.dumps(rows)
    if len(rendered) > budget.max_result_bytes:
        raise sandbox.result_too_large(budget.max_result_bytes)
    return _QueryPage(rendered, len(rows), total, columns)


async def _run_query(request: Request, principal: Principal, source_id: str, body: Query_) -> JSON:
    """Opens the source in the general threadpool (briefly), then runs the query in the query
    pool, which admits it or refuses it (429) first: see `data.querypool`."""
    access = cached_access(principal, source_id) or await in_session(
        request, open_source, principal, source_id, need=VIEW
    )
    if access.version is None:
        result = _QueryPage(b"[]", 0, 0, [])
    else:
        pool = querypool.pool_for(settings_of(request).query_limits)
        result = await pool.run(principal, partial(_query_page, access, body), timeout=body.timeout_seconds)
    _audit_read(request, access, "data.query", result.count, page=body.page)
    return JSON(
        {
            "data": Raw(result.rows),
            "total_rows": result.total,
            "page": body.page,
            "page_size": body.page_size,
            "columns": result.columns,
        }
    )


@router.post("/sources/{source_id}/query", response_model=QueryResultOut)
async def query_source(source_id: str, body: Query_, request: Request, principal: Principal = DATA_READ):
    return await _run_query(request, principal, source_id, body)


@router.post("/data/query", response_model=QueryResultOut)
async def data_query(body: DataQuery, request: Request, principal: Principal = DATA_READ):
    return await _run_query(request, principal, body.source_id, body)


# Values as the rows hold them (dates, decimals) go through FastAPI's encoder as before; the
# model only describes them.
@router.get(
    "/sources/{source_id}/columns/{column}/values", response_model=None, responses={200: {"model": ColumnValues}}
)
def column_values(
    source_id: str,
    column: str,
    request: Request,
    principal: Principal = DATA_READ,
    session: Session = DB,
    limit: int = Query(100, ge=1, le=1000),
):
    """Distinct values of a column among the rows the caller may see (tidegate extension)."""
    access = open_source(session, principal, source_id, need=VIEW)
    values = engine.distinct_values(access, column, limit) if access.version else []
    _audit_read(request, access, "data.values", len(values), column=column)
    return {"data": values}
