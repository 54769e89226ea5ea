"""Scopes (what a key may be granted), roles (what a user may do) and presets.

This module is the one table that maps roles to permissions. A request is allowed a scope
only when the key holds it AND the key's creator holds it *now* (see access.principal).
"""

from __future__ import annotations

from tidegate.errors import InvalidRequest

# Grouped as the Querri CLI's scope picker groups them; the web UI shows the same groups.
SCOPE_GROUPS: dict[str, list[str]] = {
    "Projects": ["admin:projects:read", "admin:projects:write"],
    "Dashboards": ["admin:dashboards:read", "admin:dashboards:write"],
    "Data": ["data:read", "data:write"],
    "Sources": ["admin:sources:read", "admin:sources:write"],
    "Files": ["admin:files:read", "admin:files:write", "admin:files:upload", "admin:files:delete"],
    "Users": ["admin:users:read", "admin:users:write"],
    "Keys": ["admin:keys:manage"],
    "Policies": ["admin:policies:read", "admin:policies:write"],
    "Sharing": ["admin:permissions:read", "admin:permissions:write"],
    "Embed": ["embed:session:create"],
    "Usage": ["admin:usage:read"],
    "Audit": ["admin:audit:read"],
    "Organization": ["admin:org:read", "admin:org:write"],
}
ALL_SCOPES: frozenset[str] = frozenset(s for group in SCOPE_GROUPS.values() for s in group)
WILDCARD = "*"  # "every scope", as the Querri CLI's Superadmin entry sends it

ROLE_ADMIN = "admin"
ROLE_MEMBER = "member"
ROLES = (ROLE_ADMIN, ROLE_MEMBER)

# A member reads data, files and sources, makes their own keys, and manages what they own
# (ownership is checked per resource). Users, policies, audit, usage, embed sessions and
# organization settings are for admins.
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    ROLE_ADMIN: ALL_SCOPES,
    ROLE_MEMBER: frozenset(
        {
            "data:read",
            "data:write",
            "admin:sources:read",
            "admin:sources:write",
            "admin:files:read",
            "admin:files:write",
            "admin:files:upload",
            "admin:files:delete",
            "admin:projects:read",
            "admin:projects:write",
            "admin:dashboards:read",
            "admin:dashboards:write",
            "admin:permissions:read",
            "admin:permissions:write",
            "admin:keys:manage",
        }
    ),
}

PRESET_FULL_ACCESS = "full_access"
PRESET_DATA_ACCESS = "data_access"
DATA_ACCESS_SCOPES: frozenset[str] = frozenset({"data:read", "admin:sources:read", "admin:files:read"})
PRESETS = (PRESET_FULL_ACCESS, PRESET_DATA_ACCESS)


def role_permissions(role: str) -> frozenset[str]:
    return ROLE_PERMISSIONS.get(role, frozenset())


def expand(scopes: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    """Scopes as granted: the wildcard stands for every scope."""
    if WILDCARD in scopes:
        return ALL_SCOPES
    return frozenset(scopes)


def validate_scopes(scopes: list[str]) -> list[str]:
    """Reject unknown scopes by name; return them de-duplicated and sorted."""
    if not scopes:
        raise InvalidRequest("invalid_scopes", "At least one scope is required.")
    unknown = sorted({s for s in scopes if s not in ALL_SCOPES and s != WILDCARD})
    if unknown:
        raise InvalidRequest(
            "invalid_scope",
            f"Unknown scope(s): {', '.join(unknown)}. Valid scopes: {', '.join(sorted(ALL_SCOPES))}.",
        )
    return sorted(set(scopes))


def preset_scopes(preset: str, role: str) -> list[str]:
    """Full Access is everything the creator may do now; Data Access is read-only data."""
    if preset == PRESET_FULL_ACCESS:
        return sorted(role_permissions(role))
    if preset == PRESET_DATA_ACCESS:
        return sorted(DATA_ACCESS_SCOPES)
    raise InvalidRequest("invalid_preset", f"Unknown preset {preset!r}; use one of: {', '.join(PRESETS)}.")


def requested_scopes(scopes: list[str] | None, preset: str | None, role: str) -> list[str]:
    """A key request names either explicit scopes or a preset, never both (API and CLI)."""
    if (scopes is None) == (preset is None):
        raise InvalidRequest("invalid_scopes", "Give either scopes or preset (full_access or data_access), not both.")
    return scopes if scopes is not None else preset_scopes(preset, role)
