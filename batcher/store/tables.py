"""The schema, declared once. Alembic's migrations must produce exactly this (tests/migration proves it).

Portable SQL only: the same tables run on SQLite and PostgreSQL. Money is integer micro-dollars
(1 USD = 1_000_000) so sums are exact on both engines; times are float epoch seconds.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
Id = BigInteger().with_variant(Integer(), "sqlite")

jobs = Table(
    "jobs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("manifest", Text, nullable=False),  # path the job was last imported from
    Column("output_dir", Text, nullable=False),
    Column("price_micros", BigInteger, nullable=True),  # manifest's price override, per call
    Column("budget_micros", BigInteger, nullable=True),
    Column("settings", Text, nullable=False, server_default="{}"),  # JSON: rate, in-flight, attempts
    Column("import_gen", Integer, nullable=False, server_default="0"),  # bumped by every import
    Column("retired", BigInteger, nullable=False, server_default="0"),  # pending tasks its last import dropped
    # --- money (migration 0005), kept by triggers on `tasks` as its rows change, so a budget check reads one row:
    Column("spent_micros", BigInteger, nullable=False, server_default="0"),  # billed: sum of tasks.cost_micros
    Column("held_micros", BigInteger, nullable=False, server_default="0"),  # sum of tasks.reserved_micros
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(32), nullable=False),  # models.spec_key: identity of what the API is asked
    Column("seq", BigInteger, nullable=False),  # order in the manifest
    # The job's import_gen when the manifest last listed this task: a pending task from an older
    # import was edited out of the manifest and is never created (tasks already paid for still finish).
    Column("import_gen", Integer, nullable=False, server_default="0"),
    Column("name", String(200), nullable=True),
    Column("source", Text, nullable=False),  # "file:line"
    Column("model", String(100), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("quality", String(8), nullable=False),
    Column("size", String(8), nullable=False),
    Column("images", Text, nullable=False, server_default="[]"),  # JSON list of input image refs
    Column("seed", String(200), nullable=True),
    Column("filename", Text, nullable=False),  # relative to the job's output_dir
    Column("status", String(16), nullable=False),  # models.TaskStatus
    Column("attempts", Integer, nullable=False, server_default="0"),  # creates sent
    Column("gen_failures", Integer, nullable=False, server_default="0"),  # Failed/Cancelled generations
    Column("unknown_count", Integer, nullable=False, server_default="0"),  # creates of unknown outcome
    Column("remote_task_id", String(200), nullable=True),
    Column("next_attempt_at", Float, nullable=False, server_default="0"),
    Column("claim_token", String(32), nullable=True),  # fencing token: every transition must present it
    Column("claimed_by", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("output_path", Text, nullable=True),
    Column("sha256", String(64), nullable=True),
    Column("bytes", BigInteger, nullable=True),
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("image_format", String(8), nullable=True),
    Column("cost_micros", BigInteger, nullable=False, server_default="0"),
    Column("price_reported_micros", BigInteger, nullable=True),  # data.price of the accepted create
    Column("submitted_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    # --- cache and chains (migration 0003)
    Column("parent_key", String(32), nullable=True),  # `from:`: the key of the job's task whose output is the input
    Column("cached_from", Id, nullable=True),  # the task (any job) whose output this one reused, at no cost
    # --- money truth (migration 0005)
    # what this task's creates may have cost beyond cost_micros: the price of each create in flight or of
    # unknown outcome; a reservation made (against the budget) before the create is sent
    Column("reserved_micros", BigInteger, nullable=False, server_default="0"),
    Column("billed_at", Float, nullable=True),  # when a Success was first seen: the call is billed from then on
    Column("failure", String(16), nullable=True),  # models.Failure: why a failed task failed
    # --- providers (migration 0006)
    # the API this task was last sent to: a task it may hold is only ever driven through it
    Column("provider", String(32), nullable=True),
    Column("submission_id", Id, nullable=True),  # the submission of many tasks it rides in (a batch shard)
    UniqueConstraint("job_id", "key"),
    Index(None, "job_id", "status", "seq"),  # claims scan one status in manifest order
    # partial: every task has an entry only while claimed, so an import never touches it
    Index(
        "ix_tasks_claimed_by",
        "claimed_by",
        sqlite_where=text("claimed_by IS NOT NULL"),
        postgresql_where=text("claimed_by IS NOT NULL"),
    ),
    # finished outputs by identity, for the cache; partial, so importing pending tasks never touches it
    Index(
        "ix_tasks_key_succeeded",
        "key",
        sqlite_where=text("status = 'succeeded'"),
        postgresql_where=text("status = 'succeeded'"),
    ),
)

# Tasks per status of each job. On SQLite a trigger (migration 0004) keeps it in step with every status change
# and each import recounts its job; on PostgreSQL it stays empty (concurrent workers would queue on its rows).
task_counts = Table(
    "task_counts",
    metadata,
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

# Append-only: one row per HTTP call made to the API, so a report can explain every cent.
api_calls = Table(
    "api_calls",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", Id, nullable=True),
    Column("worker_id", String(64), nullable=True),
    Column("kind", String(16), nullable=False),  # create | query | download
    Column("http_status", Integer, nullable=True),  # None: no reply (connection error, timeout)
    Column("outcome", String(24), nullable=False),  # client.Outcome
    Column("latency_ms", Float, nullable=False),
    Column("at", Float, nullable=False),
    Column("remote_task_id", String(200), nullable=True),
    Column("price_micros", BigInteger, nullable=True),
    Column("detail", Text, nullable=True),
    Index(None, "job_id", "kind"),
)

# An accepted create whose reply came after its task had been taken over by another worker (a lease that ran out
# mid-create): billed all the same, so it is polled to the end and its image kept beside the task's as a paid
# duplicate. No remote id the API returned is ever dropped.
strays = Table(
    "strays",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", Id, nullable=False),
    Column("remote_task_id", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # submitted | succeeded | failed
    Column("price_micros", BigInteger, nullable=False),  # what its task's reservation held for it
    Column("cost_micros", BigInteger, nullable=False, server_default="0"),
    Column("claimed_by", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("output_path", Text, nullable=True),
    Column("sha256", String(64), nullable=True),
    Column("detail", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("provider", String(32), nullable=False, server_default="linkmodel"),  # the API that holds it
    UniqueConstraint("remote_task_id"),
    Index(None, "job_id", "status"),
)

# One request to the API that carries many tasks (a Gemini Batch Mode shard). Committed under its unique
# display name before its file is uploaded or its batch created, so that a restart finds the batch again by
# that name (listing the account's batches) instead of creating it twice.
submissions = Table(
    "submissions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("route", String(16), nullable=False),  # batch
    Column("display_name", String(128), nullable=False),
    Column("remote_name", String(200), nullable=True),  # the API's name for it (batches/...), once known
    Column("input_file", String(200), nullable=True),  # the uploaded requests file (files/...), once known
    Column("state", String(16), nullable=False),
    Column("requests", Integer, nullable=False),
    Column("request_bytes", BigInteger, nullable=False, server_default="0"),
    Column("reserved_micros", BigInteger, nullable=False, server_default="0"),
    Column("detail", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("display_name"),
    Index(None, "job_id", "state"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("jobs", Text, nullable=False),  # names of the jobs it drains
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float, nullable=True),
)

# What a run learned about the API, so the next run starts warm: the account's rate limit, each model's
# generation latency (issue: throughput at the API's limit).
learned = Table(
    "learned",
    metadata,
    Column("name", String(200), primary_key=True),  # e.g. "rate_limit", "first_poll_s:<model>"
    Column("value", Text, nullable=False),  # JSON
    Column("updated_at", Float, nullable=False),
)

# One account-wide token bucket shared by every worker on the store (PostgreSQL, several machines).
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("rate", Float, nullable=False),  # tokens per second
    Column("capacity", Float, nullable=False),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Float, nullable=False),  # epoch seconds of the database clock
)
