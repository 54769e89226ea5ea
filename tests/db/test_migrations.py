"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tidegate.db.engine import get_engine, migrate
from tidegate.tables import Base


def test_migrations_match_models(database_url):
    migrate(database_url)  # idempotent: running again changes nothing
    with get_engine(database_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_upgrade_keeps_existing_data(tmp_path):
    """An installation created by the first release upgrades in place, rows intact."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from tidegate.db.engine import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0001")
    raw = create_engine(url)
    with raw.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO organizations (id, name, created_at, api_key_creation_enabled) "
                "VALUES ('org_1', 'Old', '2026-01-01 00:00:00', 1)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO users (id, org_id, email, role, is_active, created_at) "
                "VALUES ('user_1', 'org_1', 'a@example.com', 'admin', 1, '2026-01-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO api_keys (id, org_id, name, key_prefix, secret_hash, scopes, created_by, "
                "created_at, rate_limit_per_minute) VALUES ('key_1', 'org_1', 'k', 'qk_x', 'h', '[]', "
                "'user_1', '2026-01-01 00:00:00', 60)"
            )
        )
    raw.dispose()
    migrate(url)
    with get_engine(url).connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        row = connection.execute(text("SELECT name, deny_by_default, access_epoch FROM organizations")).one()
        assert tuple(row) == ("Old", 0, 0)
        assert connection.execute(text("SELECT count(*) FROM api_keys WHERE created_by = 'user_1'")).scalar() == 1
        # 0007: existing organizations get the default per-user bounds; existing keys have no parent.
        row = connection.execute(text("SELECT max_keys_per_user, user_rate_limit_per_minute FROM organizations")).one()
        assert tuple(row) == (100, 100_000)
        assert connection.execute(text("SELECT parent_key_id FROM api_keys")).scalar() is None
        leftovers = connection.execute(text("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'")).all()
        assert leftovers == []
