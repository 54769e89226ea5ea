"""The ASGI application."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tidegate import __version__, limits
from tidegate.access import ratelimit
from tidegate.api import (
    audit,
    dashboards,
    data,
    embed,
    files,
    health,
    keys,
    leaks,
    not_implemented,
    org_settings,
    policies,
    projects,
    shares,
    sources,
    usage,
    users,
    webhooks,
)
from tidegate.api.bodylimit import BodyLimitMiddleware
from tidegate.api.middleware import RequestMiddleware
from tidegate.api.responses import JSON, error_response, from_error
from tidegate.api.uploads import spool_uploads_under
from tidegate.audit import chainer, shipper
from tidegate.audit.journal import Journal, brief_error
from tidegate.audit.signing import load_signer
from tidegate.config import Settings, get_settings
from tidegate.credentials.authenticate import KeyCache
from tidegate.credentials.failures import FailureBursts
from tidegate.credentials.reminders import PeriodicReminders
from tidegate.credentials.usage import record_key_use
from tidegate.data import connectors, egress, engine, live, querypool, sandbox
from tidegate.data.maintenance import PeriodicCollector
from tidegate.data.scheduled_sync import SyncScheduler
from tidegate.errors import TidegateError
from tidegate.notifications.delivery import NotificationWorker, Policy
from tidegate.orgs.epochwatch import EpochWatch
from tidegate.orgs.retention import PeriodicPurge
from tidegate.web import routes as web
from tidegate.web.throttle import SigninThrottle
from tidegate.wire.common import ErrorOut

log = logging.getLogger("tidegate")

# Every /api/v1 router. Routes are matched in this order, at a cost per route tried, so the
# data reads (the hot path) come first.
API_MODULES = (
    data,
    leaks,  # (POST /keys/leaks: before /keys's routes)
    keys,
    users,
    org_settings,
    audit,
    policies,
    sources,
    files,
    embed,
    usage,
    projects,
    shares,
    dashboards,
    webhooks,
    not_implemented,
)
# Public API routes outside /api/v1 (no credential; rate limited per client address).
PUBLIC_ROUTERS = (embed.public_router,)

HTTP_CODES = {
    # A body FastAPI could not read at all (e.g. a broken multipart form).
    400: ("invalid_request_error", "invalid_parameters", "The request body could not be parsed."),
    404: ("not_found_error", "route_not_found", "No such endpoint."),
    405: ("invalid_request_error", "method_not_allowed", "This method is not allowed on this endpoint."),
}


# Every error is the envelope (a request FastAPI cannot validate is a 400, never its 422).
ERROR_RESPONSES: dict[int | str, dict] = {
    "4XX": {"model": ErrorOut, "description": "Refused: `{error: {type, code, message}}`."},
    "5XX": {"model": ErrorOut, "description": "Server error or outage (503 adds `retry_after`)."},
}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        reason = (err.get("ctx") or {}).get("error") if err.get("type") == "json_invalid" else None
        parts.append(f"{loc or 'request'}: {err.get('msg')}" + (f" ({reason})" if reason else ""))
    return "; ".join(parts) or "Invalid request."


def _route_templates(app: FastAPI) -> frozenset[str]:
    """Every path template the app serves (`/api/v1/keys/{key_id}`), as the metrics name routes."""
    routers = [(module.router, "/api/v1") for module in API_MODULES]
    routers += [(router, "") for router in (*PUBLIC_ROUTERS, health.router, web.router, app.router)]
    return frozenset(
        prefix + route.path_format
        for router, prefix in routers
        for route in router.routes
        if isinstance(getattr(route, "path_format", None), str)
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # The modules that hold process-wide state get their values from the settings here.
    limits.configure(settings.limits)
    engine.configure(
        data_dir=settings.data_dir,
        object_store=settings.object_store,
        part_cache_dir=settings.part_cache_dir,
        cache_bytes=settings.data.cache_bytes,
        threads=settings.data.threads,
        memory_limit=settings.data.memory_limit,
    )
    sandbox.configure_server_home(settings.home)
    connectors.configure(
        sqlite_dirs=settings.data.sqlite_connector_dirs,
        statement_timeout_seconds=settings.data.connector_statement_timeout_seconds,
    )
    live.configure(
        timeout_seconds=settings.data.live_timeout_seconds,
        pool_size=settings.data.live_pool_size,
        session_key=settings.session_key,
    )
    egress.configure(settings.data.connector_allow)  # a malformed TIDEGATE_CONNECTOR_ALLOW stops the start (ValueError)
    spool_uploads_under(settings.home / "tmp")
    collector = PeriodicCollector(  # the configured store: disk or object store; one round across nodes
        settings.database_url,
        None,
        settings.data.gc_interval_seconds,
        min_age_seconds=settings.data.gc_min_age_seconds,
    )
    scheduled_syncs = SyncScheduler(settings.database_url, settings.session_key)  # once across nodes: row locks
    reminders = PeriodicReminders(settings.database_url)  # api_key.expiring_soon; one round across nodes
    notify = settings.notify
    notifications = NotificationWorker(  # once across nodes: cursor row lock, claimed deliveries
        settings.database_url,
        settings.session_key,
        Policy(notify.webhook_retry_base_seconds, notify.webhook_max_attempts, notify.webhook_timeout_seconds),
        interval=notify.interval_seconds,
    )
    journal = Journal(
        settings.audit_dir, settings.database_url, fsync=settings.audit_fsync, after_insert=record_key_use
    )
    audit_signer = load_signer(settings.home, settings.audit_signing_key)
    audit_purge = PeriodicPurge(settings.database_url, audit_signer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Clients are built here, once, not lazily by the first concurrent requests.
        ratelimit.connect(settings.redis_url)
        try:
            journal.flush()  # ship what a previous (possibly killed) process left behind
        except Exception as exc:  # the database is down: serve (503s) and keep retrying
            log.warning("audit events of earlier runs not shipped yet (%s); will retry", brief_error(exc))
        chains_here = not shipper.ships_elsewhere()  # else the shipper process chains (audit.chainer)
        journal.start(
            ship=chains_here,
            after_ship=(lambda: chainer.run_if_due(settings.database_url, audit_signer)) if chains_here else None,
        )
        audit_purge.start()
        collector.start()
        scheduled_syncs.start()
        reminders.start()
        notifications.start()
        querypool.pool_for(settings.query_limits)  # its worker processes start now, not on the first query
        leases = None
        if key_cache.epochs is not None and settings.epoch_lease_seconds > 0:  # PostgreSQL
            leases = key_cache.leases = EpochWatch(settings.database_url, settings.epoch_lease_seconds)
            leases.start()  # until it holds its lease, epochs are read per request
        yield
        notifications.close()
        reminders.close()
        if leases is not None:
            key_cache.leases = None
            leases.close()
        scheduled_syncs.close()
        collector.close()
        audit_purge.close()
        journal.close()
        if chains_here:  # after the journal's last shipping: chain it, and sign every moved head
            chainer.last_round(settings.database_url, audit_signer)

    app = FastAPI(
        title="tidegate",
        version=__version__,
        default_response_class=JSON,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.journal = journal
    app.state.key_cache = key_cache = KeyCache(settings.database_url)
    app.state.auth_failures = FailureBursts(
        settings.redis_url, notify.auth_failure_burst, notify.auth_failure_window_seconds
    )
    app.state.audit_signer = audit_signer
    app.state.audit_verified = {}  # org id -> (position, hash, signed at) verified by this process
    app.state.signin_throttle = SigninThrottle.for_redis_url(settings.redis_url)  # built now, not per request
    app.state.ready_checks = health.checks_for(settings)

    @app.exception_handler(TidegateError)
    async def _tidegate_error(request: Request, exc: TidegateError):
        return from_error(exc)

    @app.exception_handler(IntegrityError)
    async def _integrity_error(request: Request, exc: IntegrityError):
        # Two concurrent writes raced past a uniqueness check; the database kept one.
        return error_response(
            409, "conflict_error", "conflict", "A conflicting change was made at the same time; retry."
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(400, "invalid_request_error", "invalid_parameters", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        type_, code, message = HTTP_CODES.get(exc.status_code, ("api_error", "http_error", str(exc.detail)))
        return error_response(exc.status_code, type_, code, message, headers=getattr(exc, "headers", None))

    for module in API_MODULES:
        app.include_router(module.router, prefix="/api/v1", responses=ERROR_RESPONSES)
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI's document, plus the operations of the plain Starlette routes (api.data).
        schema = app.openapi_schema
        if schema is None:
            schema = fastapi_openapi()  # (which keeps it as app.openapi_schema)
            for path, operations in data.openapi_operations("/api/v1").items():
                schema["paths"].setdefault(path, {}).update(operations)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    for public in PUBLIC_ROUTERS:
        app.include_router(public, responses=ERROR_RESPONSES)
    app.include_router(health.router)  # /readyz, /metrics (before the web pages)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"status": "ok", "version": __version__}

    app.add_middleware(BodyLimitMiddleware)  # inside RequestMiddleware: a 413 gets its request id
    app.add_middleware(RequestMiddleware, journal=journal, route_templates=_route_templates(app))
    return app
