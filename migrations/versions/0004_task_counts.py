"""task counts per status, retired tasks per job, claimed_by indexed only where set

Revision ID: 0004
Revises: 0003

`status` on a store of a million tasks counted a million index entries; now it reads a few rows. On SQLite a
trigger keeps `task_counts` in step with every change of a task's status (SQLite has one writer at a time, so
the counter rows cost nothing in concurrency); an import recounts its job once. On PostgreSQL, concurrent
workers would all queue on those few rows, so there the counts still come from the index and the table stays
empty. `jobs.retired` is counted by each import (only an import changes which tasks are retired).

`ix_tasks_claimed_by` held an entry for every task, all of them NULL at import; partial, an import never
touches it (and `claimed_by = :worker` still uses it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_CLAIMED = sa.text("claimed_by IS NOT NULL")
_TRIGGER = "tasks_status_counts"


def upgrade() -> None:
    op.create_table(
        "task_counts",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_task_counts_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "status", name=op.f("pk_task_counts")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retired", sa.BigInteger(), server_default="0", nullable=False))
    op.drop_index("ix_tasks_claimed_by", table_name="tasks")
    op.create_index(
        "ix_tasks_claimed_by", "tasks", ["claimed_by"], unique=False, sqlite_where=_CLAIMED, postgresql_where=_CLAIMED
    )
    op.execute(
        "UPDATE jobs SET retired = (SELECT count(*) FROM tasks WHERE tasks.job_id = jobs.id "
        "AND tasks.status = 'pending' AND tasks.import_gen < jobs.import_gen)"
    )
    if op.get_context().dialect.name == "sqlite":
        op.execute(
            "INSERT INTO task_counts (job_id, status, n) SELECT job_id, status, count(*) FROM tasks "
            "GROUP BY job_id, status"
        )
        op.execute(
            f"CREATE TRIGGER {_TRIGGER} AFTER UPDATE OF status ON tasks WHEN OLD.status <> NEW.status BEGIN "
            "UPDATE task_counts SET n = n - 1 WHERE job_id = OLD.job_id AND status = OLD.status; "
            "INSERT INTO task_counts (job_id, status, n) VALUES (NEW.job_id, NEW.status, 1) "
            "ON CONFLICT (job_id, status) DO UPDATE SET n = n + 1; "
            "END"
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {_TRIGGER}")
    op.drop_index("ix_tasks_claimed_by", table_name="tasks")
    op.create_index("ix_tasks_claimed_by", "tasks", ["claimed_by"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("retired")
    op.drop_table("task_counts")
