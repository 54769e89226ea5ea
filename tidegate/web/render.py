"""Templates, security headers, and the small formatting helpers the pages share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tidegate import __version__
from tidegate.core.scopes import ALL_SCOPES, DATA_ACCESS_SCOPES, ROLE_MEMBER, ROLE_PERMISSIONS, Scope, expand
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.notifications import reads
from tidegate.web.sessions import Viewer

TEMPLATES = Path(__file__).parent / "templates"

# No inline script or style anywhere: JS and CSS come from /static only. Pico's form
# icons are data: SVGs, hence img-src data:.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # Pages show who may do what, and one of them shows a new key's secret: never cache.
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class NavItem:
    label: str
    href: str
    scope: Scope | None  # shown only to viewers holding this permission


# Top-level sections.
SECTIONS: tuple[NavItem, ...] = (
    NavItem("Sources", "/sources", Scope.SOURCES_READ),
    NavItem("Projects", "/projects", Scope.PROJECTS_READ),
    NavItem("Dashboards", "/dashboards", Scope.DASHBOARDS_READ),
    NavItem("Settings", "/settings", None),
    NavItem("Audit log", "/audit", Scope.AUDIT_READ),
    NavItem("Usage", "/usage", Scope.USAGE_READ),
    NavItem("Notifications", "/notifications", Scope.ORG_READ),
)
SETTINGS_PAGES: tuple[NavItem, ...] = (
    NavItem("API Keys", "/settings/api-keys", Scope.KEYS_MANAGE),
    NavItem("People", "/settings/people", Scope.USERS_READ),
    NavItem("Security", "/settings/security", Scope.ORG_READ),
)
# Settings > Security sub-sections.
SECURITY_PAGES: tuple[NavItem, ...] = (
    NavItem("Admin Controls", "/settings/security", Scope.ORG_READ),
    NavItem("Access Policies", "/settings/security/access-policies", Scope.POLICIES_READ),
    NavItem("Groups", "/settings/security/groups", Scope.POLICIES_READ),
    NavItem("Embeds", "/settings/security/embeds", Scope.ORG_READ),
)


def visible(items: tuple[NavItem, ...], viewer: Viewer | None) -> list[NavItem]:
    if viewer is None:
        return []
    return [i for i in items if i.scope is None or viewer.can(i.scope)]


def best_match(items: list[NavItem], path: str) -> str | None:
    """The href of the item `path` is in: the longest href that is `path` or a parent of it."""
    found = [i.href for i in items if path == i.href or path.startswith(i.href.rstrip("/") + "/")]
    return max(found, key=len) if found else None


def relative_time(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "Never"
    now = now or utcnow()
    seconds = (now - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 45:
        return "just now" if not future else "in a few seconds"
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = round(seconds / size)
            text = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"


def utc_text(moment: datetime | None, *, with_time: bool = True) -> str:
    if moment is None:
        return ""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC" if with_time else "%Y-%m-%d")


def iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else ""


def scope_summary(scopes: list[str]) -> str:
    granted = expand(scopes)
    if granted in (ALL_SCOPES, ROLE_PERMISSIONS[ROLE_MEMBER]):
        return "Full Access"
    if granted == DATA_ACCESS_SCOPES:
        return "Data Access"
    return f"Custom ({len(granted)} scope{'s' if len(granted) != 1 else ''})"


def cell(value: object) -> str:
    """A data value as text in a preview table (None is shown by the template)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(relative=relative_time, utc=utc_text, iso=iso, scope_summary=scope_summary, cell=cell)
_env.globals.update(version=__version__, Scope=Scope)  # pages test `viewer.can(Scope.X)`


def page(
    request: Request,
    template: str,
    context: dict,
    *,
    viewer: Viewer | None,
    status: int = 200,
    current: str | None = None,
) -> HTMLResponse:
    current = current or request.url.path
    security_pages = visible(SECURITY_PAGES, viewer)
    # (Not on error pages: they may be rendered on the event loop, where no query may block.
    # Pages rendered there (dashboards, projects) count in their threadpool step: `badges`.)
    if status < 400 and "notification_count" not in context and viewer is not None and viewer.can(Scope.ORG_READ):
        context = {**context, "notification_count": unseen_notifications(request, viewer)}
    body = _env.get_template(template).render(
        viewer=viewer,
        sections=visible(SECTIONS, viewer),
        settings_pages=visible(SETTINGS_PAGES, viewer),
        security_pages=security_pages,
        security_current=best_match(security_pages, current),
        current=current,
        **context,
    )
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


# The newest notification time this browser has seen on /notifications (a cookie: a
# per-browser "read" mark that changes no server state); the navigation counts the newer ones.
SEEN_COOKIE = "tidegate_notifications_seen"
UNSEEN_WINDOW = timedelta(days=7)  # and none older than this


def seen_at(request: Request) -> datetime:
    floor = utcnow() - UNSEEN_WINDOW
    try:
        seen = datetime.fromtimestamp(float(request.cookies.get(SEEN_COOKIE, "")), UTC)
    except (ValueError, OverflowError, OSError):
        return floor
    return max(seen, floor)


def unseen_notifications(request: Request, viewer: Viewer, session: Session | None = None) -> int:
    """The navigation's count (in `session`, else a session of its own); 0 if it cannot be
    read (a page, an error page included, must not fail for want of its badge)."""
    try:
        if session is not None:
            return reads.count_since(session, viewer.org.id, seen_at(request))
        with session_scope(request.app.state.settings.database_url) as own:
            return reads.count_since(own, viewer.org.id, seen_at(request))
    except Exception:  # noqa: BLE001
        return 0


def badges(request: Request, session: Session, viewer: Viewer) -> dict[str, int]:
    """The navigation's counts, read in the caller's session: for a page whose `page()` call
    runs on the event loop, where its own query would block every other request."""
    return {"notification_count": unseen_notifications(request, viewer, session)} if viewer.can(Scope.ORG_READ) else {}


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def error_page(
    request: Request, status: int, title: str, message: str, *, viewer: Viewer | None = None
) -> HTMLResponse:
    return page(
        request, "error.html", {"title": title, "message": message, "status": status}, viewer=viewer, status=status
    )
