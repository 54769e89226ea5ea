"""Scopes (what a key may be granted), roles (what a user may do) and presets.

This module is the one table that maps roles to permissions. A request is allowed a scope
only when the key holds it AND the key's creator holds it *now* (see core.principal and access.authorize).
"""

from __future__ import annotations

from enum import StrEnum

from tidegate.errors import InvalidRequest


class Scope(StrEnum):
    """A permission a key may be granted. The values are the wire and database strings."""

    PROJECTS_READ = "admin:projects:read"
    PROJECTS_WRITE = "admin:projects:write"
    DASHBOARDS_READ = "admin:dashboards:read"
    DASHBOARDS_WRITE = "admin:dashboards:write"
    DATA_READ = "data:read"
    DATA_WRITE = "data:write"
    SOURCES_READ = "admin:sources:read"
    SOURCES_WRITE = "admin:sources:write"
    FILES_READ = "admin:files:read"
    FILES_WRITE = "admin:files:write"
    FILES_UPLOAD = "admin:files:upload"
    FILES_DELETE = "admin:files:delete"
    USERS_READ = "admin:users:read"
    USERS_WRITE = "admin:users:write"
    KEYS_MANAGE = "admin:keys:manage"
    POLICIES_READ = "admin:policies:read"
    POLICIES_WRITE = "admin:policies:write"
    PERMISSIONS_READ = "admin:permissions:read"
    PERMISSIONS_WRITE = "admin:permissions:write"
    EMBED_SESSION_CREATE = "embed:session:create"
    USAGE_READ = "admin:usage:read"
    AUDIT_READ = "admin:audit:read"
    ORG_READ = "admin:org:read"
    ORG_WRITE = "admin:org:write"


# Grouped as the Querri CLI's scope picker groups them; the web UI shows the same groups.
SCOPE_GROUPS: dict[str, list[Scope]] = {
    "Projects": [Scope.PROJECTS_READ, Scope.PROJECTS_WRITE],
    "Dashboards": [Scope.DASHBOARDS_READ, Scope.DASHBOARDS_WRITE],
    "Data": [Scope.DATA_READ, Scope.DATA_WRITE],
    "Sources": [Scope.SOURCES_READ, Scope.SOURCES_WRITE],
    "Files": [Scope.FILES_READ, Scope.FILES_WRITE, Scope.FILES_UPLOAD, Scope.FILES_DELETE],
    "Users": [Scope.USERS_READ, Scope.USERS_WRITE],
    "Keys": [Scope.KEYS_MANAGE],
    "Policies": [Scope.POLICIES_READ, Scope.POLICIES_WRITE],
    "Sharing": [Scope.PERMISSIONS_READ, Scope.PERMISSIONS_WRITE],
    "Embed": [Scope.EMBED_SESSION_CREATE],
    "Usage": [Scope.USAGE_READ],
    "Audit": [Scope.AUDIT_READ],
    "Organization": [Scope.ORG_READ, Scope.ORG_WRITE],
}
ALL_SCOPES: frozenset[str] = frozenset(Scope)
WILDCARD = "*"  # "every scope", as the Querri CLI's Superadmin entry sends it

ROLE_ADMIN = "admin"
ROLE_MEMBER = "member"
ROLES = (ROLE_ADMIN, ROLE_MEMBER)

# A member reads data, files and sources, makes their own keys, and manages what they own
# (ownership is checked per resource). Users, policies, audit, usage, embed sessions and
# organization settings are for admins.
ADMIN_ONLY_SCOPES: frozenset[str] = frozenset(
    {
        Scope.USERS_READ,
        Scope.USERS_WRITE,
        Scope.POLICIES_READ,
        Scope.POLICIES_WRITE,
        Scope.EMBED_SESSION_CREATE,
        Scope.USAGE_READ,
        Scope.AUDIT_READ,
        Scope.ORG_READ,
        Scope.ORG_WRITE,
    }
)
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    ROLE_ADMIN: ALL_SCOPES,
    ROLE_MEMBER: ALL_SCOPES - ADMIN_ONLY_SCOPES,
}

# What an embed session never holds, whatever its user's role: it cannot mint sessions or
# keys, and dashboards are read-only under it (the SDK's UserQuerri).
EMBED_SESSION_EXCLUDED: frozenset[str] = frozenset(
    {Scope.EMBED_SESSION_CREATE, Scope.KEYS_MANAGE, Scope.DASHBOARDS_WRITE}
)

PRESET_FULL_ACCESS = "full_access"
PRESET_DATA_ACCESS = "data_access"
DATA_ACCESS_SCOPES: frozenset[str] = frozenset({Scope.DATA_READ, Scope.SOURCES_READ, Scope.FILES_READ})
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
    if scopes is not None and preset is None:
        return scopes
    if scopes is None and preset is not None:
        return preset_scopes(preset, role)
    raise InvalidRequest("invalid_scopes", "Give either scopes or preset (full_access or data_access), not both.")


def is_full_access(scopes: list[str] | tuple[str, ...] | frozenset[str]) -> bool:
    """A Full Access grant: the wildcard, or at least everything a member may do (the Full
    Access preset of a member; an admin's adds the admin scopes). The web UI's label too."""
    return expand(scopes) >= ROLE_PERMISSIONS[ROLE_MEMBER]
