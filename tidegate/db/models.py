"""Import every domain's models so that metadata (and Alembic) sees all tables."""

from tidegate.audit.models import AuditEvent  # noqa: F401
from tidegate.credentials.models import ApiKey  # noqa: F401
from tidegate.db.base import Base  # noqa: F401
from tidegate.orgs.models import Organization, User  # noqa: F401
