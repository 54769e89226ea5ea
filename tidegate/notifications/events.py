"""Which audit events notify an organization's admins, and how they read.

A notification's type is the audit action it comes from; webhooks subscribe by those names.
Two actions notify only in part: `api_key.created` when the key has Full Access, and
`org.settings_updated` when it switched API key creation off or on.
"""

from __future__ import annotations

from typing import Any

from tidegate.core.scopes import is_full_access

EVENT_TYPES: dict[str, str] = {
    "api_key.used_from_new_ip": "A key was used from an IP address it had never used before",
    "api_key.expiring_soon": "A key expires within 7 days",
    "api_key.leak_reported": "A key was reported leaked (and revoked if it was active)",
    "api_key.created": "A key was created with Full Access",
    "org.settings_updated": "API key creation was switched off or on",
    "api_key.auth_failure_burst": "A burst of failed authentications against a key prefix",
}


def notifies(action: str, details: dict[str, Any] | None) -> bool:
    details = details or {}
    if action == "api_key.created":
        return is_full_access(details.get("scopes") or [])
    if action == "org.settings_updated":
        return "api_key_creation_enabled" in details
    return action in EVENT_TYPES


def summary(event_type: str, details: dict[str, Any] | None, ip_address: str | None = None) -> str:
    """One line for the notifications panel (names and prefixes only, never a secret)."""
    details = details or {}
    key = " ".join(part for part in (details.get("name") and f"“{details['name']}”", details.get("key_prefix")) if part)
    key = key or "a key"
    if event_type == "api_key.leak_reported":
        where = details.get("url") or details.get("source") or "an unnamed place"
        done = "revoked" if details.get("revoked") else f"already {details.get('status_before', 'inactive')}"
        return f"Key {key} was reported leaked at {where} ({done})."
    if event_type == "api_key.created":
        return f"Key {key} was created with Full Access."
    if event_type == "org.settings_updated":
        change = details.get("api_key_creation_enabled") or {}
        return f"API key creation was switched {'on' if change.get('new') else 'off'}."
    if event_type == "api_key.auth_failure_burst":
        return (
            f"{details.get('failures', 'Many')} failed authentications against {details.get('key_prefix', 'a key')} "
            f"within {details.get('window_seconds', '?')} s."
        )
    if event_type == "api_key.used_from_new_ip":
        ip = details.get("ip") or details.get("ip_address") or ip_address
        return f"Key {key} was used from a new IP address{f' ({ip})' if ip else ''}."
    if event_type == "api_key.expiring_soon":
        return f"Key {key} expires within 7 days."
    return EVENT_TYPES.get(event_type, event_type)
