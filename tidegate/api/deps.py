"""Request dependencies: the database session, the caller, and scope checks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC
from email.utils import format_datetime
from urllib.parse import urlsplit

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tidegate import metrics
from tidegate.access import ratelimit
from tidegate.access.authorize import Action, authorize
from tidegate.config import Settings
from tidegate.core.principal import Principal
from tidegate.credentials import embed_sessions
from tidegate.credentials.authenticate import KeyState, check_ip, digest_of, identify, parse_bearer, principal_for
from tidegate.credentials.failures import prefix_of_attempt
from tidegate.db.engine import session_scope
from tidegate.errors import InvalidRequest, TidegateError, Unauthenticated
from tidegate.http import client_ip
from tidegate.outages import unavailable_error


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def _db(request: Request) -> Iterator[Session]:
    # Committed when the handler returns, before the response is sent: a client that
    # got a 2xx can count on the change being durable.
    with session_scope(request.app.state.settings.database_url) as session:
        yield session


DB = Depends(_db, scope="function")


async def in_session(request: Request, work, *args, **kwargs):
    """`work(session, *args, **kwargs)` in the threadpool, as one transaction.

    For async endpoints whose common case needs no database (answered from a cache) and
    so should not pay for a session dependency's two thread hops.
    """

    def run():
        with session_scope(request.app.state.settings.database_url) as session:
            return work(session, *args, **kwargs)

    return await run_in_threadpool(run)


async def authenticated(request: Request) -> Principal:
    """The caller of an /api/v1 request, or a 401/403/429 refusal.

    async, and free of database work while the key cache is fresh: the common request costs
    no thread hop. A cache miss reads the database in the threadpool. Computed once per
    request, however many dependencies ask (the rate limit counts the request once).
    """
    request_state = request.scope.setdefault("state", {})
    if "principal" in request_state:
        return request_state["principal"]
    embed_token = request.headers.get("x-embed-session")
    credential = "api_key" if embed_token is None else "embed_session"
    try:
        if embed_token is not None:  # a credential on its own, first as in the SDK
            principal = await _embed_session_principal(request, embed_token)
        else:
            principal = await _key_principal(request)
    except Exception as exc:
        if embed_token is None and (
            isinstance(exc, Unauthenticated) or (isinstance(exc, TidegateError) and exc.code == "ip_not_allowed")
        ):
            await _count_failure(request)
        if isinstance(exc, TidegateError):
            metrics.key_check(credential, exc.code)
        else:
            down = unavailable_error(exc)
            metrics.key_check(credential, down.code if down is not None else "internal_error")
        raise
    metrics.key_check(credential, None)
    request_state["principal"] = principal
    return principal


async def _count_failure(request: Request) -> None:
    """A refused key counts against its prefix (credentials.failures): off the event loop
    only when it must be (Redis, or the burst's event to record)."""
    prefix = prefix_of_attempt(request.headers.get("authorization"))
    if prefix is None:
        return
    bursts = request.app.state.auth_failures
    database_url = settings_of(request).database_url
    if not bursts.local:
        await run_in_threadpool(bursts.note, database_url, prefix)
    elif bursts.count(prefix) == bursts.threshold:
        await run_in_threadpool(bursts.record, database_url, prefix)


async def _key_principal(request: Request) -> Principal:
    """The caller of `Authorization: Bearer qk_...` + `X-Tenant-ID`, or the refusal."""
    request_state = request.scope["state"]
    settings = settings_of(request)
    token = parse_bearer(request.headers.get("authorization"))
    tenant_id = request.headers.get("x-tenant-id")
    digest = digest_of(settings.pepper, token, tenant_id)
    keys = request.app.state.key_cache
    # PostgreSQL: count the request against the cached entry's limits while its epoch is read
    # (two round trips at once, not one after the other); kept if the key's limits read now
    # are the same, else counted again with the fresh ones (a wrong guess counts once too
    # many, never once too few).
    guess = keys.unvalidated(digest)
    counting = None
    if guess is not None and guess.org_id == tenant_id:
        counting = asyncio.ensure_future(_count_request(settings, *_limits_of(guess)))
    try:
        key = identify(await keys.lookup(digest), tenant_id)
        # From here on the key is known: the request is audited against it, refused or not.
        request_state["audit_key"] = {"key_id": key.key_id, "org_id": key.org_id, "user_id": key.owner_id}
        principal = principal_for(key)
        if key.rotated_to_prefix is not None:
            request_state["response_headers"] = deprecation_headers(key)
        ip = request_state["client_ip"] = client_ip(request)  # these two also for the audit event
        request_state["user_agent"] = request.headers.get("user-agent")
        check_ip(key, ip)
        _refuse_nul_in_url(request)
        # The key's own limit, and its owner's shared by all their keys.
        if counting is not None and _limits_of(key) == _limits_of(guess):  # (as good as counted now)
            task, counting = counting, None
            await task
        else:
            await _count_request(settings, *_limits_of(key))
    finally:
        if counting is not None:  # not used: its outcome (a 429, a 503) is not this request's
            counting.add_done_callback(_ignore_outcome)
    return principal


def _limits_of(key: KeyState) -> tuple[str, int, str | None, int | None]:
    return key.key_id, key.rate_limit_per_minute, key.owner_id, key.owner_rate_limit_per_minute


def _ignore_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # (retrieved: no "exception was never retrieved" warning)


def deprecation_headers(key: KeyState) -> list[tuple[bytes, bytes]]:
    """What every response to a rotated key in its grace period says: deprecated since the
    rotation (RFC 9745), refused from its expiry on (Sunset, RFC 8594), and the replacement's
    display prefix (never more of it)."""
    assert key.rotated_to_prefix is not None
    headers = [(b"x-tidegate-replaced-by", key.rotated_to_prefix.encode())]
    if key.rotated_at is not None:
        headers.append((b"deprecation", f"@{int(key.rotated_at.timestamp())}".encode()))
    expires_at = key.restrictions.expiry.at
    if expires_at is not None:
        headers.append((b"sunset", format_datetime(expires_at.astimezone(UTC), usegmt=True).encode()))
    return headers


async def _count_request(
    settings: Settings, key_id: str, per_minute: int, owner_id: str | None, owner_per_minute: int | None
) -> None:
    """Count the request against its key's and its owner's rate limits, or refuse it (429)."""
    await ratelimit.enforce_async(settings.redis_url, key_id, per_minute, owner_id, owner_per_minute)


def embed_request_origin(request: Request) -> str | None:
    """The origin a session is used from: the browser's `Origin`, except for our own /embed
    page. Its requests are same-origin (no `Origin` on a GET, ours on a POST), so it names
    the origin of the frame that sent it the token in `X-Embed-Origin`; a page of another
    origin cannot pass for it, since the browser then sends that origin as `Origin`."""
    origin = request.headers.get("origin")
    parent = request.headers.get("x-embed-origin")
    if parent is not None and (origin is None or urlsplit(origin).netloc == request.headers.get("host")):
        return parent
    return origin


async def _embed_session_principal(request: Request, token: str) -> Principal:
    """The user an `X-Embed-Session` token acts as, read live (no cache: every request sees
    a revocation, a deactivation, a demotion or embeds switched off), or the refusal."""
    settings = settings_of(request)
    request_state = request.scope["state"]
    tenant_id = request.headers.get("x-tenant-id")

    def load() -> embed_sessions.SessionUse:
        with session_scope(settings.database_url) as session:
            return embed_sessions.authenticate_session(session, settings.pepper, token.strip(), tenant_id)

    use = await run_in_threadpool(load)
    principal = use.principal
    # From here on the session is known: the request is audited as its user, refused or not.
    request_state["audit_key"] = {
        "key_id": principal.key_id,
        "org_id": principal.org_id,
        "user_id": use.key_owner_id,
        "actor_type": "user",
        "actor_id": principal.user_id,
    }
    request_state.setdefault("audit_details", {}).update(
        {"auth_method": "embed_session", "embed_session_id": use.session_id, "created_by_key_id": principal.key_id}
    )
    request_state["client_ip"] = client_ip(request)
    request_state["user_agent"] = request.headers.get("user-agent")
    use.check_allowed(embed_request_origin(request))
    # (Not the creating key's IP allowlist: that names the servers holding the key, while a
    # session is used from its user's browser; the session is bound to an origin instead.)
    _refuse_nul_in_url(request)
    # Counted against the creating key: its sessions together never exceed its rate.
    await _count_request(
        settings,
        principal.key_id or use.session_id,
        use.key_rate_limit_per_minute,
        use.key_owner_id,
        use.owner_rate_limit_per_minute,
    )
    return principal


def _refuse_nul_in_url(request: Request) -> None:
    """NUL in a path or query parameter: 400 (PostgreSQL cannot hold it; see api.inputs)."""
    if "\x00" not in request.scope["path"] and b"%00" not in request.scope["query_string"]:
        return  # the common case, without decoding every parameter
    for where, params in (("path", request.path_params.items()), ("query", request.query_params.multi_items())):
        for name, value in params:
            if isinstance(value, str) and "\x00" in value:
                raise InvalidRequest(
                    "invalid_parameters", f"{name} ({where} parameter): must not contain NUL characters."
                )


async def caller_with(request: Request, action: Action) -> Principal:
    """The caller, who must be allowed `action` now (401/403/429 otherwise). What `require`
    checks, as a plain call for the hot endpoints that skip FastAPI's dependency solving."""
    principal = await authenticated(request)
    authorize(principal, action)
    return principal


def require(action: Action):
    """A dependency: the caller, allowed `action` (a scope, or AnyOf scopes) now."""

    # One dependency, not a chain (each level costs FastAPI ~5 us), and async: a pure
    # check runs on the event loop instead of costing a thread hop.
    async def check(request: Request) -> Principal:
        return await caller_with(request, action)

    return Depends(check)


def set_audit_target(request: Request, target_type: str, target_id: str, **details) -> None:
    state = request.scope.setdefault("state", {})
    state["audit_target"] = (target_type, target_id)
    if details:
        state.setdefault("audit_details", {}).update(details)
