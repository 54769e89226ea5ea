"""Cursor pages as the Querri SDK reads them: `{data, has_more, next_cursor}`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Query

LimitQuery = Query(25, ge=1, le=100, description="Items per page (1-100).")
AfterQuery = Query(None, max_length=100, description="Cursor from the previous page's next_cursor.")


def cursor_page(rows: Sequence[Any], limit: int, render: Callable[[Any], dict], cursor_of=lambda r: r.id) -> dict:
    """`rows` holds up to limit+1 items; the extra one only says that more exist."""
    has_more = len(rows) > limit
    page = list(rows[:limit])
    return {
        "data": [render(r) for r in page],
        "has_more": has_more,
        "next_cursor": cursor_of(page[-1]) if has_more and page else None,
    }
