"""Errors every layer raises and the API renders as `{"error": {type, code, message}}`.

Services raise these directly, so a refusal reads the same whether it came through the
API, the CLI or the web UI.
"""

from __future__ import annotations

from typing import Any


class TidegateError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "code": self.code, "message": self.message}}


class InvalidRequest(TidegateError):
    status = 400
    type = "invalid_request_error"


class Unauthenticated(TidegateError):
    status = 401
    type = "authentication_error"


class Forbidden(TidegateError):
    status = 403
    type = "permission_error"


class NotFound(TidegateError):
    status = 404
    type = "not_found_error"


class Conflict(TidegateError):
    status = 409
    type = "conflict_error"


class RateLimited(TidegateError):
    status = 429
    type = "rate_limit_error"


class NotImplementedFeature(TidegateError):
    """A Querri feature tidegate deliberately does not have (the AI features): 501."""

    status = 501
    type = "not_implemented_error"


class ServiceUnavailable(TidegateError):
    """A dependency (database, Redis, disk, audit journal) is down: retry later.

    Always carries Retry-After, as a header and in the envelope (`retry_after`, seconds)."""

    status = 503
    type = "api_error"
    RETRY_AFTER = 2

    def __init__(
        self, code: str, message: str, *, retry_after: int | None = None, headers: dict[str, str] | None = None
    ):
        self.retry_after = retry_after or self.RETRY_AFTER
        super().__init__(code, message, headers={"Retry-After": str(self.retry_after), **(headers or {})})

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["retry_after"] = self.retry_after
        return body


class UpstreamTimeout(TidegateError):
    """A database tidegate reads on the caller's behalf (a live source) did not answer in
    time: 504. The read was cancelled; retrying may succeed."""

    status = 504
    type = "api_error"
