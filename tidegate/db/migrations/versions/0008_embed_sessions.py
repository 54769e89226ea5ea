"""embed sessions, org embed settings

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 16:40:00.000000
"""
from alembic import op
import sqlalchemy as sa



revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'embed_sessions',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('org_id', sa.String(length=40), nullable=False),
        sa.Column('user_id', sa.String(length=40), nullable=False),
        sa.Column('created_by_key_id', sa.String(length=40), nullable=False),
        sa.Column('token_prefix', sa.String(length=24), nullable=False),
        sa.Column('secret_hash', sa.String(length=64), nullable=False),
        sa.Column('origin', sa.String(length=300), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('refreshed_from_id', sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(['created_by_key_id'], ['api_keys.id'],
                                name=op.f('fk_embed_sessions_created_by_key_id_api_keys')),
        sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_embed_sessions_org_id_organizations')),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_embed_sessions_user_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_embed_sessions')),
        sa.UniqueConstraint('secret_hash', name=op.f('uq_embed_sessions_secret_hash')),
        sa.UniqueConstraint('token_prefix', name=op.f('uq_embed_sessions_token_prefix')),
    )
    with op.batch_alter_table('embed_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_embed_sessions_org_id_id'), ['org_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_embed_sessions_user_id'), ['user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_embed_sessions_created_by_key_id'), ['created_by_key_id'], unique=False)

    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('embeds_enabled', sa.Boolean(), server_default=sa.true(), nullable=False))
        batch_op.add_column(sa.Column('embed_allowed_origins', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('embed_ui_config', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.drop_column('embed_ui_config')
        batch_op.drop_column('embed_allowed_origins')
        batch_op.drop_column('embeds_enabled')

    with op.batch_alter_table('embed_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_embed_sessions_created_by_key_id'))
        batch_op.drop_index(batch_op.f('ix_embed_sessions_user_id'))
        batch_op.drop_index(batch_op.f('ix_embed_sessions_org_id_id'))

    op.drop_table('embed_sessions')
