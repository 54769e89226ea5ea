"""PostgreSQL: access epoch bumps are announced (NOTIFY tidegate_epoch), and serving processes
that answer from their own copy of the epochs hold leases and acknowledge each bump

Revision ID: 0018
Revises: 0013
Create Date: 2026-12-01 01:00:00

See `tidegate.orgs.epochwatch`. The trigger announces every change of an organization's
epoch, made by tidegate or by any other SQL (the triggers of 0013 bump it too); the
notification is delivered at commit. The two tables are UNLOGGED on PostgreSQL (leases and
acknowledgements mean nothing after a crash of the server); on SQLite they are created empty
and unused (one node, `PRAGMA data_version`).
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE FUNCTION tidegate_notify_epoch() RETURNS trigger AS $$
DECLARE
    bumped text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- A vanished organization: no cached entry of it may be used again.
        PERFORM pg_notify('tidegate_epoch', OLD.id || ':' || 9223372036854775807);
        RETURN NULL;
    END IF;
    PERFORM pg_notify('tidegate_epoch', NEW.id || ':' || NEW.access_epoch);
    -- What this transaction bumped (by tidegate or by the triggers of 0013), read by
    -- tidegate's writer before it commits so that it waits for it (orgs.epoch). One epoch
    -- per organization is enough: any epoch it wrote is newer than every one cached before.
    bumped := coalesce(current_setting('tidegate.bumped', true), '');
    IF position(',' || NEW.id || ':' IN ',' || bumped) = 0 THEN
        PERFORM set_config('tidegate.bumped', bumped || NEW.id || ':' || NEW.access_epoch || ',', true);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER organizations_notify_epoch AFTER UPDATE ON organizations
    FOR EACH ROW WHEN (NEW.access_epoch IS DISTINCT FROM OLD.access_epoch)
    EXECUTE FUNCTION tidegate_notify_epoch();
CREATE TRIGGER organizations_notify_deleted AFTER DELETE ON organizations
    FOR EACH ROW EXECUTE FUNCTION tidegate_notify_epoch();
"""

DOWNGRADE = """
DROP TRIGGER IF EXISTS organizations_notify_deleted ON organizations;
DROP TRIGGER IF EXISTS organizations_notify_epoch ON organizations;
DROP FUNCTION IF EXISTS tidegate_notify_epoch();
"""


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    unlogged = ["UNLOGGED"] if postgresql else []
    op.create_table(
        "epoch_leases",
        sa.Column("process_id", sa.String(length=100), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("process_id", name=op.f("pk_epoch_leases")),
        prefixes=unlogged,
    )
    op.create_table(
        "epoch_acks",
        sa.Column("process_id", sa.String(length=100), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("process_id", "org_id", name=op.f("pk_epoch_acks")),
        prefixes=unlogged,
    )
    if postgresql:
        op.execute(UPGRADE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DOWNGRADE)
    op.drop_table("epoch_acks")
    op.drop_table("epoch_leases")
