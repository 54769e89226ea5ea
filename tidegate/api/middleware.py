"""Per-request plumbing: a request id and `X-Content-Type-Options: nosniff` on every
response, and the request audit event.

A plain ASGI middleware (not BaseHTTPMiddleware) so that it adds no task or copy per
request. The audit event is appended to the journal when the response *starts*, before
any byte reaches the client; if it cannot be, the request is answered 503
`audit_unavailable` instead (no audit, no access). A change that succeeded has already
committed: its event goes straight to the database instead, so that a retry of a 503 does
not repeat the change. A dependency that fails (database, disk,
Redis) answers 503 with Retry-After, never a 500 (see `tidegate.outages`).
"""

from __future__ import annotations

import logging
import time

import anyio
from starlette.requests import Request

from tidegate import metrics
from tidegate.access.authorize import stop_tracking_scope_checks, track_scope_checks
from tidegate.api.responses import error_response, from_error
from tidegate.audit.journal import AuditUnavailable, Journal
from tidegate.audit.record import event_row
from tidegate.core.redaction import redact_secrets
from tidegate.http import client_ip
from tidegate.ids import new_ulid
from tidegate.outages import unavailable_error

log = logging.getLogger("tidegate.api")
# Our own access log: path only, never the query string (a client may put anything there),
# never headers. uvicorn's access log is switched off in `tidegate serve` for that reason.
access_log = logging.getLogger("tidegate.access")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # change nothing: refused if not journaled

# First path segment under /api/v1 -> audit target type.
TARGET_TYPES = {
    "keys": "api_key",
    "users": "user",
    "sources": "source",
    "data": "source",
    "files": "file",
    "access": "policy",
    "audit": "audit",
    "org": "organization",
    "connectors": "connector",
    "dashboards": "dashboard",
}


def route_template(path: str, path_params: dict, known: frozenset[str]) -> str:
    """The template of the route that matched `path` (`/api/v1/keys/{key_id}`), rebuilt from
    the path parameters the router found, or `metrics.UNMATCHED_ROUTE`. Only one of the
    app's own templates (`known`) is ever returned: a label never carries what a caller sent."""
    segments = path.split("/")
    end = len(segments)  # parameters are replaced right to left, each left of the one after it
    for name, value in reversed(list(path_params.items())):
        text = str(value)
        width = text.count("/") + 1  # a {name:path} parameter spans segments
        for start in range(end - width, -1, -1):
            if "/".join(segments[start : start + width]) == text:
                segments[start : start + width] = ["{" + name + "}"]
                end = start
                break
        else:
            return metrics.UNMATCHED_ROUTE
    template = "/".join(segments)
    return template if template in known else metrics.UNMATCHED_ROUTE


class RequestMiddleware:
    def __init__(self, app, journal: Journal, route_templates: frozenset[str] = frozenset()):
        self.app = app
        self.journal = journal
        self.route_templates = route_templates  # every route's path template: the metrics' labels

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # A request's audit event is "evt_" + the same ULID: one id drawn per request.
        request_ulid = new_ulid()
        request_id = "req_" + request_ulid
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["scope_checks"], tracking = track_scope_checks()
        started = False  # the response has begun to leave
        unjournaled: AuditUnavailable | None = None  # why the response was stopped before it began
        began = time.perf_counter()
        status = 500  # what the metrics count if no response could start at all

        async def send_with_id(message):
            nonlocal started, unjournaled, status
            if unjournaled is not None:
                raise unjournaled  # nothing of a response whose event was not journaled
            if message["type"] == "http.response.start":
                status = message["status"]
                # Appended, not set through MutableHeaders: no response of ours sets it.
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                # nosniff on every response (API, static files, errors, 404s); pages set it already.
                if not any(name.lower() == b"x-content-type-options" for name, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                # Set by authentication: a rotated key's Deprecation notice (api.deps).
                headers.extend(state.get("response_headers", ()))
                message["headers"] = headers
                try:
                    # No audit, no access: journaled before the first byte (of a stream too) leaves.
                    event = self._event(scope, message["status"], "evt_" + request_ulid, headers)
                    if event is not None:
                        try:
                            self.journal.append(event)
                        except AuditUnavailable:
                            if scope["method"] in SAFE_METHODS or not 200 <= message["status"] < 300:
                                raise
                            # A committed change: recorded in the database, not refused (see above).
                            await anyio.to_thread.run_sync(self.journal.insert_directly, event)
                except AuditUnavailable as exc:
                    unjournaled = exc
                    raise
                access_log.info(
                    "%s %s %s %d %.1fms",
                    request_id,
                    scope["method"],
                    redact_secrets(scope["path"]),  # (never a token)
                    message["status"],
                    (time.perf_counter() - began) * 1000,
                )
                started = True
            await send(message)

        async def refuse_unjournaled():
            # Sent as is: it carries no data, and the journal that would record it is failing.
            response = from_error(unjournaled)
            response.headers["x-request-id"] = request_id
            response.headers["x-content-type-options"] = "nosniff"
            await response(scope, receive, send)

        try:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                if started:
                    raise
                if unjournaled is None:
                    try:
                        await self._failure_response(exc, request_id)(scope, receive, send_with_id)
                        return
                    except AuditUnavailable:
                        if started:
                            raise
                status = 503  # audit_unavailable (sent past send_with_id)
                await refuse_unjournaled()
                return
            if unjournaled is not None and not started:  # the app swallowed the refusal
                status = 503
                await refuse_unjournaled()
        finally:
            stop_tracking_scope_checks(tracking)
            # By route template, never by path (ids, and whatever a caller puts there).
            route = route_template(scope["path"], scope.get("path_params") or {}, self.route_templates)
            metrics.request_done(route, scope["method"], status, time.perf_counter() - began)

    @staticmethod
    def _failure_response(exc: Exception, request_id: str):
        """503 with Retry-After if a dependency is down (database, disk, Redis); else 500."""
        down = unavailable_error(exc)
        if down is not None:
            log.warning(
                "request %s: %s (%s: %s)",
                request_id,
                down.code,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            return from_error(down)
        log.error("unhandled error in request %s", request_id, exc_info=exc)
        return error_response(
            500, "api_error", "internal_error", f"Internal error; quote request id {request_id} when reporting it."
        )

    def _event(self, scope, status: int, event_id: str, headers=()) -> dict | None:
        state = scope.get("state", {})
        who = state.get("audit_key")
        if who is None:
            return None  # no key identified: nothing to attribute the request to
        if "client_ip" in state:  # read once already, by authentication
            ip, user_agent = state["client_ip"], state["user_agent"]
        else:
            request = Request(scope)
            ip, user_agent = client_ip(request), request.headers.get("user-agent")
        path_params = scope.get("path_params") or {}
        target_type, target_id = state.get("audit_target") or (None, None)
        if target_type is None:
            parts = scope["path"].split("/")
            target_type = TARGET_TYPES.get(parts[3] if len(parts) > 3 else "", None)
            target_id = next(iter(path_params.values()), None) if path_params else None
            target_id = redact_secrets(str(target_id)) if target_id is not None else None
        details = {
            # The endpoint's name: what a route is named after, and set by FastAPI routes and
            # plain Starlette ones (api.data's read_data) alike.
            "operation": getattr(scope.get("endpoint"), "__name__", None),
            "creator_user_id": who["user_id"],
            **state.get("audit_details", {}),
        }
        checks = state.get("scope_checks")
        if checks:  # the scopes it was allowed by (key insights: the least privilege a key needs)
            details["scopes"] = [list(check) for check in sorted(set(checks))]
        sent = _content_length(headers)
        if sent is not None:  # (a streamed response has none yet: its bytes are not counted)
            details["bytes_out"] = sent
        return event_row(
            id=event_id,
            org_id=who["org_id"],
            actor_type=who.get("actor_type", "api_key"),  # (an embed session: its user)
            actor_id=who.get("actor_id", who["key_id"]),
            key_id=who["key_id"],
            action=state.get("audit_action", "api.request"),
            target_type=target_type,
            target_id=str(target_id) if target_id is not None else None,
            method=scope["method"],
            # Never the query string: it could carry anything; never a secret in the path.
            path=redact_secrets(scope["path"]),
            status=status,
            ip_address=ip,
            user_agent=(user_agent or "")[:500] or None,
            request_id=state.get("request_id"),
            details=details,
        )


def _content_length(headers) -> int | None:
    """The response body's size in bytes, if its headers say it (usage counts bytes out)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
