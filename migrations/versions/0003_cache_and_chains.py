"""cache and chains: tasks.parent_key, tasks.cached_from, finished outputs by key

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SUCCEEDED = sa.text("status = 'succeeded'")


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_key", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("cached_from", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True)
        )
    op.create_index(
        "ix_tasks_key_succeeded", "tasks", ["key"], unique=False, sqlite_where=_SUCCEEDED, postgresql_where=_SUCCEEDED
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_key_succeeded", table_name="tasks")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("cached_from")
        batch_op.drop_column("parent_key")
