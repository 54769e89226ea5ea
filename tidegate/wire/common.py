"""Shapes shared by every resource: cursor pages, deletion acknowledgements, errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Self, TypeVar

from pydantic import BaseModel

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """A cursor page as the Querri SDK reads it; `next_cursor` is the `after` of the next page."""

    data: list[Item]
    has_more: bool
    next_cursor: str | None

    @classmethod
    def of(
        cls,
        rows: Sequence[Any],
        limit: int,
        render: Callable[[Any], Item],
        cursor_of: Callable[[Any], str] = lambda row: row.id,
    ) -> Self:
        """`rows` holds up to limit+1 items; the extra one only says that more exist."""
        has_more = len(rows) > limit
        page = list(rows[:limit])
        return cls(
            data=[render(r) for r in page],
            has_more=has_more,
            next_cursor=cursor_of(page[-1]) if has_more and page else None,
        )


class DataList(BaseModel, Generic[Item]):
    """An unpaginated list: `{"data": [...]}`."""

    data: list[Item]


class Deleted(BaseModel):
    id: str
    deleted: bool


class ErrorDetail(BaseModel):
    type: str
    code: str
    message: str
    retry_after: int | None = None  # only on a 503: seconds until a retry may succeed


class ErrorOut(BaseModel):
    """Every 4xx and 5xx body."""

    error: ErrorDetail
