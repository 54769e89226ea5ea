"""/usage: the organization's and a user's usage, from the audit log (admins only)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from tidegate.analysis import usage
from tidegate.api.deps import DB, require
from tidegate.api.inputs import InputRoute
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.wire.usage import OrgUsageOut, UserUsageOut

router = APIRouter(tags=["usage"], route_class=InputRoute)
READ = require(Scope.USAGE_READ)


def Period():  # a fresh Query per route
    return Query("current_month", max_length=40, description="current_month, last_month or last_30_days (UTC).")


@router.get("/usage", response_model=OrgUsageOut)
def org_usage(request: Request, principal: Principal = READ, session: Session = DB, period: str = Period()):
    request.app.state.journal.flush()  # this process's latest requests count too
    return OrgUsageOut.of(usage.org_report(session, principal.org_id, period))


@router.get("/usage/users/{user_id}", response_model=UserUsageOut)
def user_usage(
    user_id: str, request: Request, principal: Principal = READ, session: Session = DB, period: str = Period()
):
    request.app.state.journal.flush()
    return UserUsageOut.of(usage.user_report(session, principal.org_id, user_id, period))
