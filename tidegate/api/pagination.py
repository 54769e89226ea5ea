"""The query parameters of cursor pages (the page itself: wire.common.Page)."""

from __future__ import annotations

from fastapi import Query

LimitQuery = Query(25, ge=1, le=100, description="Items per page (1-100).")
AfterQuery = Query(None, max_length=100, description="Cursor from the previous page's next_cursor.")
