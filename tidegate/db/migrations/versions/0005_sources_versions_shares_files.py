"""sources, versions, shares, files

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 14:07:43.299141
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('files',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('org_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('content_type', sa.String(length=200), nullable=True),
    sa.Column('created_by', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('storage_path', sa.String(length=300), nullable=False),
    sa.Column('columns', sa.JSON(), nullable=True),
    sa.Column('row_count', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_files_created_by_users')),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_files_org_id_organizations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_files'))
    )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_files_org_id_id'), ['org_id', 'id'], unique=False)

    op.create_table('sources',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('org_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('service', sa.String(length=40), nullable=False),
    sa.Column('connector_id', sa.String(length=40), nullable=True),
    sa.Column('connector_config', sa.JSON(), nullable=True),
    sa.Column('connector_secret_encrypted', sa.Text(), nullable=True),
    sa.Column('sync_status', sa.String(length=20), nullable=True),
    sa.Column('last_synced_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_sync_error', sa.Text(), nullable=True),
    sa.Column('current_version_id', sa.String(length=40), nullable=True),
    sa.Column('org_share_permission', sa.String(length=10), nullable=True),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_sources_created_by_users')),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_sources_org_id_organizations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sources'))
    )
    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sources_created_by'), ['created_by'], unique=False)
        batch_op.create_index(batch_op.f('ix_sources_org_id_id'), ['org_id', 'id'], unique=False)

    op.create_table('source_shares',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('source_id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=40), nullable=False),
    sa.Column('permission', sa.String(length=10), nullable=False),
    sa.Column('granted_by', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['granted_by'], ['users.id'], name=op.f('fk_source_shares_granted_by_users')),
    sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_source_shares_source_id_sources')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_source_shares_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_source_shares')),
    sa.UniqueConstraint('source_id', 'user_id', name=op.f('uq_source_shares_source_id_user_id'))
    )
    with op.batch_alter_table('source_shares', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_source_shares_user_id'), ['user_id'], unique=False)

    op.create_table('source_versions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('source_id', sa.String(length=40), nullable=False),
    sa.Column('org_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('row_count', sa.BigInteger(), nullable=False),
    sa.Column('columns', sa.JSON(), nullable=False),
    sa.Column('parts', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_source_versions_source_id_sources')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_source_versions'))
    )
    with op.batch_alter_table('source_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_source_versions_source_id_id'), ['source_id', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('source_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_source_versions_source_id_id'))

    op.drop_table('source_versions')
    with op.batch_alter_table('source_shares', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_source_shares_user_id'))

    op.drop_table('source_shares')
    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sources_org_id_id'))
        batch_op.drop_index(batch_op.f('ix_sources_created_by'))

    op.drop_table('sources')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_files_org_id_id'))

    op.drop_table('files')
