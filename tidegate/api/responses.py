"""orjson-rendered JSON responses and the error envelope."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from tidegate import jsonfmt
from tidegate.errors import TidegateError


class JSON(JSONResponse):
    """Rendered straight by orjson. Data endpoints return it themselves: skipping FastAPI's
    jsonable_encoder pass over every row is most of the cost of a page. A JSONResponse, so
    that FastAPI documents the routes' response models (it does so only for JSON classes)."""

    def render(self, content: Any) -> bytes:
        return jsonfmt.dumps(content)


def error_response(status: int, type_: str, code: str, message: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"error": {"type": type_, "code": code, "message": message}}, status_code=status, headers=headers)


def from_error(exc: TidegateError) -> JSON:
    return JSON(exc.body(), status_code=exc.status, headers=exc.headers or None)
