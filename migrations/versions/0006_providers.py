"""providers: which API holds a task's submission, and the submission record of many tasks

Revision ID: 0006
Revises: 0005

`tasks.provider` names the API a task was last sent to (set with the intent to create). A task that API may
hold (`submitting`, `unknown`, `submitted`) is only ever driven through it, so switching a job's provider
moves only tasks never submitted; tasks from before this revision that were ever sent went to LinkModel.
`strays.provider` does the same for stray replies. `submissions` is the record of one request to the API that
carries many tasks (a Gemini Batch Mode shard): committed under a unique display name before anything is
uploaded or created, so a restart finds it again by name instead of creating it twice; `tasks.submission_id`
names the submission a task rides in.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "submissions",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("job_id", _ID, nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("route", sa.String(length=16), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("remote_name", sa.String(length=200), nullable=True),
        sa.Column("input_file", sa.String(length=200), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("request_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reserved_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_submissions_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submissions")),
        sa.UniqueConstraint("display_name", name=op.f("uq_submissions_display_name")),
    )
    op.create_index(op.f("ix_submissions_job_id_state"), "submissions", ["job_id", "state"], unique=False)
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("submission_id", _ID, nullable=True))
    with op.batch_alter_table("strays", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider", sa.String(length=32), server_default="linkmodel", nullable=False))
    op.execute("UPDATE tasks SET provider = 'linkmodel' WHERE status <> 'pending' OR remote_task_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("strays", schema=None) as batch_op:
        batch_op.drop_column("provider")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("submission_id")
        batch_op.drop_column("provider")
    op.drop_index(op.f("ix_submissions_job_id_state"), table_name="submissions")
    op.drop_table("submissions")
