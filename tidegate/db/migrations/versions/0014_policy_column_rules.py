"""access policies: column rules (hide or mask columns)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 01:00:00

Additive: existing policies get no column rules (`[]`), so they behave as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("access_policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("column_rules", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("access_policies", schema=None) as batch_op:
        batch_op.drop_column("column_rules")
