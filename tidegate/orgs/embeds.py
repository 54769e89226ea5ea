"""An organization's embed settings: the switch, the allowed origins, the embed UI config."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from tidegate.errors import InvalidRequest
from tidegate.orgs.models import Organization

MAX_ORIGIN_LENGTH = 300
MAX_ALLOWED_ORIGINS = 100
UI_CONFIG_GROUPS = ("chrome", "theme", "privacy")
MAX_UI_CONFIG_BYTES = 16_384  # all three groups, as compact JSON
MAX_UI_CONFIG_DEPTH = 4


def normalize_origin(origin: str) -> str:
    """`scheme://host[:port]`, lower-cased; 400 `invalid_origin` for anything else."""
    value = origin.strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or len(value) > MAX_ORIGIN_LENGTH
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
    ):
        raise InvalidRequest(
            "invalid_origin",
            f"{origin[:80]!r} is not an origin: give scheme://host[:port], e.g. https://app.example.com.",
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def check_allowed_origins(origins: list[str]) -> list[str]:
    if len(origins) > MAX_ALLOWED_ORIGINS:
        raise InvalidRequest("invalid_origin", f"At most {MAX_ALLOWED_ORIGINS} embed origins.")
    return sorted({normalize_origin(o) for o in origins})


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def check_ui_config(config: dict[str, Any]) -> dict[str, Any]:
    """Only the three groups, each a JSON object, small and shallow."""
    unknown = sorted(set(config) - set(UI_CONFIG_GROUPS))
    if unknown:
        raise InvalidRequest(
            "invalid_ui_config", f"Unknown embed UI config group(s): {', '.join(unknown)}; use chrome, theme, privacy."
        )
    for group, value in config.items():
        if not isinstance(value, dict):
            raise InvalidRequest("invalid_ui_config", f"embed_ui_config.{group} must be a JSON object.")
        if _depth(value) > MAX_UI_CONFIG_DEPTH:
            raise InvalidRequest("invalid_ui_config", f"embed_ui_config.{group} is nested too deeply.")
    if len(json.dumps(config, separators=(",", ":"))) > MAX_UI_CONFIG_BYTES:
        raise InvalidRequest("invalid_ui_config", f"The embed UI config is limited to {MAX_UI_CONFIG_BYTES} bytes.")
    return {group: config[group] for group in UI_CONFIG_GROUPS if group in config}


def ui_config_of(org: Organization | None) -> dict[str, dict[str, Any]]:
    stored = (org.embed_ui_config if org is not None else None) or {}
    return {group: dict(stored.get(group) or {}) for group in UI_CONFIG_GROUPS}


def public_ui_config(session: Session, org_id: str) -> dict[str, dict[str, Any]]:
    """What GET /api/embed/ui-config shows: an unknown organization has empty groups."""
    return ui_config_of(session.get(Organization, org_id) if org_id else None)
