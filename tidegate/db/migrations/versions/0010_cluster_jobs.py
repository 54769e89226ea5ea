"""cluster jobs: the latest round of each background job run once across nodes

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 22:20:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'cluster_jobs',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('node', sa.String(length=255), nullable=True),
        sa.Column('outcome', sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_cluster_jobs')),
    )


def downgrade() -> None:
    op.drop_table('cluster_jobs')
