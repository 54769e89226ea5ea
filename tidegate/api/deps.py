"""Request dependencies: the database session, the caller, and scope checks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tidegate.access import ratelimit
from tidegate.access.principal import Principal
from tidegate.audit.record import RequestContext
from tidegate.config import Settings
from tidegate.credentials.authenticate import check_key_usable, identify_key, parse_bearer
from tidegate.db.engine import session_scope


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def _db(request: Request) -> Iterator[Session]:
    # Committed when the handler returns, before the response is sent: a client that
    # got a 2xx can count on the change being durable.
    with session_scope(request.app.state.settings.database_url) as session:
        yield session


DB = Depends(_db, scope="function")


def client_ip(request: Request) -> str | None:
    peer = request.client.host if request.client else None
    trusted = request.app.state.settings.trusted_proxies
    if not peer or not trusted or not _in_any(peer, trusted):
        return peer
    # Walk X-Forwarded-For from the nearest hop; the first untrusted address is the client.
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_any(hop, trusted):
            return hop
    return peer


def _in_any(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def request_context(request: Request) -> RequestContext:
    return RequestContext(
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
        request_id=request.scope.get("state", {}).get("request_id"),
    )


def authenticated(request: Request, session: Session = DB) -> Principal:
    """The caller of an /api/v1 request, or a 401/403/429 refusal."""
    settings = settings_of(request)
    token = parse_bearer(request.headers.get("authorization"))
    key = identify_key(session, settings.pepper, token, request.headers.get("x-tenant-id"))
    # From here on the key is known: the request is audited against it, refused or not.
    state = request.scope.setdefault("state", {})
    state["audit_key"] = {"key_id": key.id, "org_id": key.org_id, "user_id": key.created_by}
    ip = client_ip(request)
    auth = check_key_usable(session, key, ip)
    ratelimit.enforce(settings.redis_url, key.id, key.rate_limit_per_minute)
    return auth.principal


def require(scope: str):
    # async: a pure check, so it runs on the event loop instead of costing a thread hop.
    async def check(principal: Principal = Depends(authenticated)) -> Principal:
        principal.require(scope)
        return principal

    return Depends(check)


def set_audit_target(request: Request, target_type: str, target_id: str, **details) -> None:
    state = request.scope.setdefault("state", {})
    state["audit_target"] = (target_type, target_id)
    if details:
        state.setdefault("audit_details", {}).update(details)
