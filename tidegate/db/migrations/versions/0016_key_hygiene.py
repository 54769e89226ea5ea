"""key hygiene: the organization's unused-key threshold, the addresses each key was used from,
and when a key's expiry reminder was sent

Revision ID: 0016
Revises: 0013
Create Date: 2026-12-01 01:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unused_key_days', sa.Integer(), server_default='90', nullable=False))
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expiry_reminded_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'api_key_ips',
        sa.Column('key_id', sa.String(length=40), nullable=False),
        sa.Column('ip', sa.String(length=64), nullable=False),
        sa.Column('org_id', sa.String(length=40), nullable=False),
        sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
        sa.Column('requests', sa.Integer(), nullable=False),
        sa.Column('refused', sa.Integer(), nullable=False),
        sa.Column('new_for_key', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint('key_id', 'ip', name=op.f('pk_api_key_ips')),
    )
    with op.batch_alter_table('api_key_ips', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_key_ips_org_id_first_seen'), ['org_id', 'first_seen'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('api_key_ips', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_key_ips_org_id_first_seen'))
    op.drop_table('api_key_ips')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('expiry_reminded_at')
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.drop_column('unused_key_days')
