"""access policies and groups

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 13:53:27.939168
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('access_groups',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('org_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.String(length=2000), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_access_groups_org_id_organizations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_access_groups')),
    sa.UniqueConstraint('org_id', 'name', name=op.f('uq_access_groups_org_id_name'))
    )
    with op.batch_alter_table('access_groups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_groups_org_id_id'), ['org_id', 'id'], unique=False)

    op.create_table('access_policies',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('org_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.String(length=2000), nullable=True),
    sa.Column('row_filters', sa.JSON(), nullable=False),
    sa.Column('source_ids', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=40), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_access_policies_org_id_organizations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_access_policies')),
    sa.UniqueConstraint('org_id', 'name', name=op.f('uq_access_policies_org_id_name'))
    )
    with op.batch_alter_table('access_policies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_policies_org_id_id'), ['org_id', 'id'], unique=False)

    op.create_table('access_group_members',
    sa.Column('group_id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['access_groups.id'], name=op.f('fk_access_group_members_group_id_access_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_access_group_members_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'user_id', name=op.f('pk_access_group_members'))
    )
    with op.batch_alter_table('access_group_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_group_members_user_id_group_id'), ['user_id', 'group_id'], unique=False)

    op.create_table('access_group_policies',
    sa.Column('group_id', sa.String(length=40), nullable=False),
    sa.Column('policy_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['access_groups.id'], name=op.f('fk_access_group_policies_group_id_access_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['policy_id'], ['access_policies.id'], name=op.f('fk_access_group_policies_policy_id_access_policies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'policy_id', name=op.f('pk_access_group_policies'))
    )
    with op.batch_alter_table('access_group_policies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_group_policies_policy_id_group_id'), ['policy_id', 'group_id'], unique=False)

    op.create_table('access_policy_assignments',
    sa.Column('policy_id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['policy_id'], ['access_policies.id'], name=op.f('fk_access_policy_assignments_policy_id_access_policies'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_access_policy_assignments_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('policy_id', 'user_id', name=op.f('pk_access_policy_assignments'))
    )
    with op.batch_alter_table('access_policy_assignments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_policy_assignments_user_id_policy_id'), ['user_id', 'policy_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('access_policy_assignments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_policy_assignments_user_id_policy_id'))

    op.drop_table('access_policy_assignments')
    with op.batch_alter_table('access_group_policies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_group_policies_policy_id_group_id'))

    op.drop_table('access_group_policies')
    with op.batch_alter_table('access_group_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_group_members_user_id_group_id'))

    op.drop_table('access_group_members')
    with op.batch_alter_table('access_policies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_policies_org_id_id'))

    op.drop_table('access_policies')
    with op.batch_alter_table('access_groups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_groups_org_id_id'))

    op.drop_table('access_groups')
