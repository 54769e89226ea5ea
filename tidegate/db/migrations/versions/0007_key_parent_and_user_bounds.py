"""key parent, per-user key bounds

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 11:55:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_key_id', sa.String(length=40), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_api_keys_parent_key_id_api_keys'), 'api_keys',
                                    ['parent_key_id'], ['id'])
        batch_op.create_index(batch_op.f('ix_api_keys_parent_key_id'), ['parent_key_id'], unique=False)

    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_keys_per_user', sa.Integer(), server_default='100', nullable=False))
        batch_op.add_column(sa.Column('user_rate_limit_per_minute', sa.Integer(), server_default='100000',
                                      nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.drop_column('user_rate_limit_per_minute')
        batch_op.drop_column('max_keys_per_user')

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_parent_key_id'))
        batch_op.drop_constraint(batch_op.f('fk_api_keys_parent_key_id_api_keys'), type_='foreignkey')
        batch_op.drop_column('parent_key_id')
