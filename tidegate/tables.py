"""Every table of every domain, imported so that `Base.metadata` (Alembic, tests) sees them all.

A module above the domain packages: `tidegate.db` sits below them and imports none.
"""

from tidegate.access.models import Group, GroupMember, GroupPolicy, Policy, PolicyAssignment  # noqa: F401
from tidegate.audit.models import AuditEvent  # noqa: F401
from tidegate.catalog.analysis import (  # noqa: F401
    Dashboard,
    Project,
    ProjectRun,
    ProjectSource,
    ResourceShare,
    ShareLink,
    Step,
    Widget,
)
from tidegate.catalog.models import File, Source, SourceShare, SourceVersion  # noqa: F401
from tidegate.credentials.models import ApiKey, EmbedSession, KeyAddress  # noqa: F401
from tidegate.db.base import Base  # noqa: F401
from tidegate.db.jobs import ClusterJob  # noqa: F401
from tidegate.notifications.models import (  # noqa: F401
    Notification,
    NotificationCursor,
    Webhook,
    WebhookDelivery,
)
from tidegate.orgs.models import EpochAck, EpochLease, Organization, User  # noqa: F401
from tidegate.web.models import WebSession  # noqa: F401
