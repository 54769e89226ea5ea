"""People of an organization."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tidegate.db.base import isoformat
from tidegate.orgs.models import User


class UserOut(BaseModel):
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    role: str
    external_id: str | None
    created_at: str | None
    is_active: bool

    @classmethod
    def fields_of(cls, user: User) -> dict[str, Any]:
        return {
            "id": user.id,
            "email": user.email,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "role": user.role,
            "external_id": user.external_id,
            "created_at": isoformat(user.created_at),
            "is_active": user.is_active,
        }

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(**cls.fields_of(user))


class ExternalUserOut(UserOut):
    """PUT /users/external/{id}: the user, and whether this call created it."""

    created: bool

    @classmethod
    def of_external(cls, user: User, created: bool) -> ExternalUserOut:
        return cls(**cls.fields_of(user), created=created)


class ExternalIdUnlinked(BaseModel):
    external_id: str
    user_id: str
    deleted: bool
