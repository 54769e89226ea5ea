"""PostgreSQL: a change to a key, a user or an organization's limits bumps the access epoch

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 22:20:00

The key cache on PostgreSQL is validated by the organization's access epoch. tidegate bumps
it itself with every change (orgs.epoch); these triggers bump it too when a key, a user or the
organization's shared limit is changed by anything else (an operator's SQL, another tool), so
such a change is also seen by the next request. SQLite needs none: its cache follows every
commit (`PRAGMA data_version`).
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Only what authentication reads (credentials.authenticate.KeyState): `last_used_at`, written
# for every shipped batch of requests, must not empty the caches.
KEY_COLUMNS = (
    "org_id, created_by, secret_hash, scopes, expires_at, revoked_at, rate_limit_per_minute, "
    "ip_allowlist, source_scope, access_policy_ids, bound_user_id, parent_key_id"
)
USER_COLUMNS = "org_id, role, is_active"

UPGRADE = f"""
CREATE FUNCTION tidegate_bump_epoch_of_row() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        UPDATE organizations SET access_epoch = access_epoch + 1 WHERE id = OLD.org_id;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.org_id IS DISTINCT FROM OLD.org_id THEN
        UPDATE organizations SET access_epoch = access_epoch + 1 WHERE id = NEW.org_id;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION tidegate_bump_own_epoch() RETURNS trigger AS $$
BEGIN
    IF NEW.access_epoch = OLD.access_epoch THEN
        NEW.access_epoch := OLD.access_epoch + 1;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_bump_epoch AFTER UPDATE OF {KEY_COLUMNS} OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tidegate_bump_epoch_of_row();
CREATE TRIGGER users_bump_epoch AFTER UPDATE OF {USER_COLUMNS} OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION tidegate_bump_epoch_of_row();
CREATE TRIGGER organizations_bump_epoch BEFORE UPDATE OF user_rate_limit_per_minute ON organizations
    FOR EACH ROW EXECUTE FUNCTION tidegate_bump_own_epoch();
"""

DOWNGRADE = """
DROP TRIGGER IF EXISTS organizations_bump_epoch ON organizations;
DROP TRIGGER IF EXISTS users_bump_epoch ON users;
DROP TRIGGER IF EXISTS api_keys_bump_epoch ON api_keys;
DROP FUNCTION IF EXISTS tidegate_bump_own_epoch();
DROP FUNCTION IF EXISTS tidegate_bump_epoch_of_row();
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(UPGRADE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DOWNGRADE)
