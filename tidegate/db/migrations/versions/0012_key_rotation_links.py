"""key rotation links: rotated_from on a replacement, rotated_at/rotated_to on the key it replaced

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 22:50:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rotated_from_key_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('rotated_to_key_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('rotated_to_prefix', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('rotated_at')
        batch_op.drop_column('rotated_to_prefix')
        batch_op.drop_column('rotated_to_key_id')
        batch_op.drop_column('rotated_from_key_id')
