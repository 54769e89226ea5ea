"""live connector sources: sources.connector_mode, sources.sync_interval_minutes

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 22:20:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for every existing source: they are snapshots (or not connector sources at all).
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("connector_mode", sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column("sync_interval_minutes", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("sync_interval_minutes")
        batch_op.drop_column("connector_mode")
