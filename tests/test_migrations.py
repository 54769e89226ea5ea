"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tidegate.db.engine import get_engine, migrate
from tidegate.db.models import Base


def test_migrations_match_models(database_url):
    migrate(database_url)  # idempotent: running again changes nothing
    with get_engine(database_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
