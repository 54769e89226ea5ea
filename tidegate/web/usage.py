"""The Usage page (admins): requests and rows per day as a chart, the top keys and sources,
for a period. The same report as GET /usage (tidegate.analysis.usage)."""

from __future__ import annotations

from fastapi import Query, Request

from tidegate.analysis import usage
from tidegate.audit.usage import PERIODS
from tidegate.core.scopes import Scope
from tidegate.web.common import as_page, db, router, signed_in
from tidegate.web.render import page

PERIOD_LABELS = {"current_month": "This month", "last_month": "Last month", "last_30_days": "Last 30 days"}
TOP_ROWS = 10  # keys and sources shown


@router.get("/usage")
def usage_page(request: Request, period: str = Query("current_month", max_length=40)):
    request.app.state.journal.flush()  # this process's latest requests count too
    with db(request) as session:
        viewer = signed_in(request, session, Scope.USAGE_READ)
        with as_page(viewer, "Bad period"):
            report = usage.org_report(session, viewer.org.id, period)
    chart = {
        "labels": [day.date for day in report.days],
        "requests": [day.totals.requests for day in report.days],
        "rows_read": [day.totals.rows_read for day in report.days],
        "rows_exported": [day.totals.rows_exported for day in report.days],
    }
    context = {
        "title": "Usage",
        "report": report,
        "period": period,
        "periods": [(name, PERIOD_LABELS[name]) for name in PERIODS],
        "keys": report.keys[:TOP_ROWS],
        "sources": report.sources[:TOP_ROWS],
        "chart": chart,
    }
    return page(request, "usage.html", context, viewer=viewer)
