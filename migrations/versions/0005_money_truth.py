"""money truth: reservations against the budget, billed-when-seen, failure causes, stray replies

Revision ID: 0005
Revises: 0004

`tasks.reserved_micros` holds the price of every create in flight or of unknown outcome, reserved before it is
sent; `tasks.billed_at` marks the first Success seen (the call is billed from then on, whatever the download
does); `tasks.failure` says why a failed task failed. `jobs.spent_micros` and `jobs.held_micros` are the sums of
the job's `cost_micros` and `reserved_micros`, kept by a trigger on both engines, so the budget check before a
create reads one row whatever the job's size. `strays` records an accepted create whose reply came after its
task had been taken over: billed, so it is polled to the end, never dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TRIGGER = "tasks_money"
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_DELTA = (
    "spent_micros = spent_micros + NEW.cost_micros - OLD.cost_micros, "
    "held_micros = held_micros + NEW.reserved_micros - OLD.reserved_micros"
)
_CHANGED = "NEW.cost_micros <> OLD.cost_micros OR NEW.reserved_micros <> OLD.reserved_micros"
# a stray's charge is the job's spend too: the same sums, kept by the same kind of trigger
_STRAYS = "strays_money"
_STRAY_DELTA = "UPDATE jobs SET spent_micros = spent_micros + NEW.cost_micros{old} WHERE id = NEW.job_id;"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spent_micros", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("held_micros", sa.BigInteger(), server_default="0", nullable=False))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reserved_micros", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("billed_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("failure", sa.String(length=16), nullable=True))
    op.create_table(
        "strays",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("job_id", _ID, nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("remote_task_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("price_micros", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("output_path", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_strays_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_strays")),
        sa.UniqueConstraint("remote_task_id", name=op.f("uq_strays_remote_task_id")),
    )
    op.create_index(op.f("ix_strays_job_id_status"), "strays", ["job_id", "status"], unique=False)
    # what finished tasks cost so far (tasks in flight at the upgrade hold no reservation: made before it)
    op.execute(
        "UPDATE jobs SET spent_micros = (SELECT coalesce(sum(cost_micros), 0) FROM tasks WHERE tasks.job_id = jobs.id)"
    )
    if op.get_context().dialect.name == "sqlite":
        op.execute(
            f"CREATE TRIGGER {_TRIGGER} AFTER UPDATE OF cost_micros, reserved_micros ON tasks WHEN {_CHANGED} "
            f"BEGIN UPDATE jobs SET {_DELTA} WHERE id = NEW.job_id; END"
        )
        op.execute(
            f"CREATE TRIGGER {_STRAYS}_insert AFTER INSERT ON strays WHEN NEW.cost_micros <> 0 "
            f"BEGIN {_STRAY_DELTA.format(old='')} END"
        )
        op.execute(
            f"CREATE TRIGGER {_STRAYS}_update AFTER UPDATE OF cost_micros ON strays "
            f"WHEN NEW.cost_micros <> OLD.cost_micros BEGIN {_STRAY_DELTA.format(old=' - OLD.cost_micros')} END"
        )
    else:
        op.execute(
            f"CREATE FUNCTION {_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"UPDATE jobs SET {_DELTA} WHERE id = NEW.job_id; RETURN NULL; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {_TRIGGER} AFTER UPDATE OF cost_micros, reserved_micros ON tasks "
            f"FOR EACH ROW WHEN ({_CHANGED}) EXECUTE FUNCTION {_TRIGGER}()"
        )
        op.execute(
            f"CREATE FUNCTION {_STRAYS}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP = 'INSERT' THEN {_STRAY_DELTA.format(old='')} "
            f"ELSE {_STRAY_DELTA.format(old=' - OLD.cost_micros')} END IF; RETURN NULL; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {_STRAYS} AFTER INSERT OR UPDATE OF cost_micros ON strays "
            f"FOR EACH ROW EXECUTE FUNCTION {_STRAYS}()"
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        for name in (_TRIGGER, f"{_STRAYS}_insert", f"{_STRAYS}_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {_TRIGGER} ON tasks")
        op.execute(f"DROP TRIGGER IF EXISTS {_STRAYS} ON strays")
        op.execute(f"DROP FUNCTION IF EXISTS {_TRIGGER}()")
        op.execute(f"DROP FUNCTION IF EXISTS {_STRAYS}()")
    op.drop_index(op.f("ix_strays_job_id_status"), table_name="strays")
    op.drop_table("strays")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("failure")
        batch_op.drop_column("billed_at")
        batch_op.drop_column("reserved_micros")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("held_micros")
        batch_op.drop_column("spent_micros")
