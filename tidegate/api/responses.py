"""orjson-rendered JSON responses and the error envelope."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from tidegate import jsonfmt
from tidegate.errors import TidegateError


class JSON(Response):
    """Rendered straight by orjson. Data endpoints return it themselves: skipping FastAPI's
    jsonable_encoder pass over every row is most of the cost of a page."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return jsonfmt.dumps(content)


def error_response(status: int, type_: str, code: str, message: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"error": {"type": type_, "code": code, "message": message}}, status_code=status, headers=headers)


def from_error(exc: TidegateError) -> JSON:
    return JSON(exc.body(), status_code=exc.status, headers=exc.headers or None)
