"""tamper-evident audit log: chain columns on audit_events, chain heads, signed checkpoints, retention

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-01 01:00:00.000000

Additive: events recorded before it have no chain position yet; the chainer gives them one,
in (timestamp, id) order, on its first round.
"""
from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chain_seq', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('chained_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_audit_events_org_id_chain_seq', 'audit_events', ['org_id', 'chain_seq'], unique=True)
    op.create_index(
        'ix_audit_events_unchained',
        'audit_events',
        ['org_id', 'timestamp', 'id'],
        unique=False,
        sqlite_where=sa.text('chain_seq IS NULL'),
        postgresql_where=sa.text('chain_seq IS NULL'),
    )
    op.create_table(
        'audit_chain_heads',
        sa.Column('org_id', sa.String(length=40), nullable=False),
        sa.Column('chain_seq', sa.BigInteger(), nullable=False),
        sa.Column('head_hash', sa.String(length=64), nullable=False),
        sa.Column('signed_seq', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('signed_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('org_id', name=op.f('pk_audit_chain_heads')),
    )
    op.create_table(
        'audit_checkpoints',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('org_id', sa.String(length=40), nullable=False),
        sa.Column('chain_seq', sa.BigInteger(), nullable=False),
        sa.Column('head_hash', sa.String(length=64), nullable=False),
        sa.Column('signed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('key_id', sa.String(length=32), nullable=False),
        sa.Column('signature', sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_checkpoints')),
    )
    op.create_index('ix_audit_checkpoints_org_id_chain_seq', 'audit_checkpoints', ['org_id', 'chain_seq'], unique=False)
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('audit_retention_days', sa.Integer(), server_default='365', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.drop_column('audit_retention_days')
    op.drop_index('ix_audit_checkpoints_org_id_chain_seq', table_name='audit_checkpoints')
    op.drop_table('audit_checkpoints')
    op.drop_table('audit_chain_heads')
    op.drop_index('ix_audit_events_unchained', table_name='audit_events')
    op.drop_index('ix_audit_events_org_id_chain_seq', table_name='audit_events')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_column('chained_at')
        batch_op.drop_column('hash')
        batch_op.drop_column('prev_hash')
        batch_op.drop_column('chain_seq')
