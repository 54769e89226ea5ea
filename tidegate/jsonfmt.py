"""JSON as tidegate writes it: orjson, with the types query results can hold."""

from __future__ import annotations

import base64
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson


def _fallback(value: Any) -> int | float | str:
    """Types orjson does not know, as query results can hold them."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_fallback, option=orjson.OPT_NON_STR_KEYS)


# Already-rendered JSON placed inside a document as is (a cached page of rows).
Raw = orjson.Fragment
