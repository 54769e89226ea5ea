"""A widget's rows: its step evaluated under the READER's access, narrowed by the dashboard's
filters. Never the author's access: the plan is built for the reader (engine.plan opens the
project and every source with the reader's principal), so two people reading one widget see
the rows their own policies allow.

A widget whose project or step is gone, or whose step fails, is a value (`WidgetError`),
not an exception: the dashboard still draws its other widgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.orm import Session

from tidegate.access.sources import SourceAccess
from tidegate.analysis import engine
from tidegate.catalog.analysis import Widget
from tidegate.core.principal import Principal
from tidegate.errors import TidegateError

# How many rows a chart draws at most (a table widget pages through all of them).
CHART_ROWS = 1000


@dataclass(frozen=True)
class WidgetError:
    code: str
    message: str


@dataclass(frozen=True)
class Filter:
    column: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class WidgetTarget:
    """What to evaluate for one reader (immutable: built in a session, used outside it)."""

    widget_id: str
    project_id: str
    step_id: str
    filters: tuple[Filter, ...]
    plan: engine.ProjectPlan | None
    error: WidgetError | None

    @property
    def source_ids(self) -> list[str]:
        return sorted({a.opened_source.id for a in self._opened()})

    @property
    def policy_ids(self) -> list[str]:
        return sorted({p for a in self._opened() for p in a.row_filter.policy_ids})

    def _opened(self) -> list[SourceAccess]:
        if self.plan is None:
            return []
        return [a for a in self.plan.sources.values() if isinstance(a, SourceAccess)]


@dataclass(frozen=True)
class WidgetPage:
    rows: list[dict[str, Any]]
    total: int
    columns: list[str]
    error: WidgetError | None


def filters_of(stored: Sequence[dict[str, Any]] | None) -> tuple[Filter, ...]:
    return tuple(Filter(f["column"], tuple(f["values"])) for f in stored or ())


def target_of(session: Session, principal: Principal, widget: Widget, filters: tuple[Filter, ...]) -> WidgetTarget:
    """The widget's plan for `principal` (the reader), or why there is none."""

    def failed(code: str, message: str) -> WidgetTarget:
        return WidgetTarget(widget.id, widget.project_id, widget.step_id, filters, None, WidgetError(code, message))

    try:
        plan = engine.plan(session, principal, widget.project_id)
    except TidegateError as exc:
        if exc.status in (403, 404):
            return failed(
                "project_unavailable",
                f"Project {widget.project_id} was deleted, or you cannot open it: ask its owner to share it.",
            )
        raise
    if widget.step_id not in {s.id for s in plan.steps}:
        return failed("step_not_found", f"Step {widget.step_id} is no longer in project {widget.project_id}.")
    return WidgetTarget(widget.id, widget.project_id, widget.step_id, filters, plan, None)


def _failure(exc: TidegateError) -> WidgetError | None:
    """A step that failed for this reader (bad data, a deleted source, too large a result) is
    the widget's error; overload (429) and outages (503) stay errors of the request."""
    if exc.status in (429, 503) or exc.status >= 500:
        return None
    return WidgetError(exc.code, exc.message)


async def run(limits: Any, principal: Principal, target: WidgetTarget) -> pa.Table | WidgetError:
    """The step's rows for the reader, filtered; through the query pool (admission,
    deadline, memory ceiling, as /query), for the API and the web pages alike."""
    if target.plan is None:
        assert target.error is not None
        return target.error
    try:
        table = await engine.run_step(limits, principal, target.plan, target.step_id)
    except TidegateError as exc:
        error = _failure(exc)
        if error is None:
            raise
        return error
    return narrow(table, target.filters)


def narrow(table: pa.Table, filters: tuple[Filter, ...]) -> pa.Table:
    """Only the rows passing every filter (AND); a filter on a column the table lacks does not
    apply to it. Columns match case-insensitively, as policies' do; values compare as text."""
    by_name = {name.lower(): name for name in table.column_names}
    mask = None
    for item in filters:
        name = by_name.get(item.column.lower())
        if name is None:
            continue
        passes = _matches(table.column(name), item.values)
        mask = passes if mask is None else pc.and_(mask, passes)
    return table if mask is None else table.filter(mask)


def _matches(column: pa.ChunkedArray, values: tuple[str, ...]) -> pa.ChunkedArray:
    try:
        as_text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        # A column that has no text form (a list, a struct) matches no value: the filter
        # still narrows, to nothing, rather than being silently ignored.
        return pa.chunked_array([pa.array([False] * len(column), pa.bool_())])
    return pc.fill_null(pc.is_in(as_text, value_set=pa.array(values, pa.string())), False)


def page(result: pa.Table | WidgetError, page_number: int, page_size: int) -> WidgetPage:
    if isinstance(result, WidgetError):
        return WidgetPage([], 0, [], result)
    rows, total, columns = engine.page_of(result, page_number, page_size)
    return WidgetPage(rows, total, columns, None)
