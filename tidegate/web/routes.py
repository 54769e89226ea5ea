"""Every web page, on one router; mount it and STATIC_DIR (at /static) on the app."""

from __future__ import annotations

from pathlib import Path

from tidegate.web import (  # noqa: F401  (they register their pages)
    audit,
    auth,
    dashboards,
    embed,
    embeds,
    groups,
    keys,
    notifications,
    people,
    policies,
    projects,
    security,
    sources,
    usage,
)
from tidegate.web.common import router

STATIC_DIR = Path(__file__).parent / "static"

__all__ = ["router", "STATIC_DIR"]
