"""audit streams: an organization's SIEM endpoint, its encrypted secret and its delivery cursor

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 02:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_streams',
    sa.Column('org_id', sa.String(length=40), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('secret_encrypted', sa.Text(), nullable=True),
    sa.Column('secret_prefix', sa.String(length=20), nullable=True),
    sa.Column('delivered_seq', sa.BigInteger(), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_audit_streams_org_id_organizations')),
    sa.PrimaryKeyConstraint('org_id', name=op.f('pk_audit_streams'))
    )


def downgrade() -> None:
    op.drop_table('audit_streams')
