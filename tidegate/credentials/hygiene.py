"""What the API Keys page flags about a key: unused for the organization's threshold, about to
expire, used from a new address, or being retired by a rotation."""

from __future__ import annotations

from datetime import datetime, timedelta

from tidegate.credentials.models import ApiKey

DEFAULT_UNUSED_KEY_DAYS = 90
NEW_IP_WINDOW = timedelta(days=7)  # how long a new address stays flagged


def idle_since(key: ApiKey) -> datetime:
    """Its last accepted request, or its creation if it never made one."""
    return key.last_used_at or key.created_at


def unused_days(key: ApiKey, threshold_days: int, now: datetime) -> int | None:
    """Whole days an active key has gone unused, if that is `threshold_days` or more; else None."""
    if key.status_at(now) != "active":
        return None
    days = (now - idle_since(key)) // timedelta(days=1)
    return days if days >= threshold_days else None


def retiring(key: ApiKey, now: datetime) -> bool:
    """Rotated, and still working until its grace period ends."""
    return key.rotated_to_key_id is not None and key.status_at(now) == "active" and key.expires_at is not None
