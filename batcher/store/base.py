"""The store's foundation: the records it hands out, and the engine, writer and reads its parts share."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Self

from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from batcher.errors import StoreMissingError
from batcher.models import TaskStatus
from batcher.store import migrate
from batcher.store.database import create_engine, database_url, redacted, sqlite_file, translated
from batcher.store.tables import tasks
from batcher.store.writer import Writer

S = TaskStatus


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    name: str
    manifest: str
    output_dir: str
    price_micros: int | None
    budget_micros: int | None
    settings: dict[str, Any]
    import_gen: int


@dataclass(slots=True)
class Task:
    """A claimed task as a worker holds it; `claim_token` proves the claim on every change."""

    id: int
    job_id: int
    key: str
    seq: int
    model: str
    prompt: str
    quality: str
    size: str
    images: tuple[str, ...]
    filename: str
    status: TaskStatus
    attempts: int
    gen_failures: int
    unknown_count: int
    remote_task_id: str | None
    submitted_at: float | None
    price_reported_micros: int | None
    claim_token: str
    source: str = ""
    billed_at: float | None = None  # a Success was seen: the call is billed whatever happens next


@dataclass(frozen=True, slots=True)
class ImportResult:
    job: Job
    rows: int  # tasks the manifest lists (duplicates included)
    added: int  # new tasks
    retired: int  # pending tasks that the manifest no longer lists


@dataclass(slots=True)
class Ledger:
    """What a job has cost and done so far."""

    counts: dict[str, int] = field(default_factory=dict)
    retired: int = 0
    cost_micros: int = 0
    billed_calls: int = 0
    gen_failures: int = 0
    unknown_submissions: int = 0
    paid_unusable: int = 0  # billed calls whose image could not be saved (a failed or refused download, not an image)
    result_lost: int = 0  # billed, then the API forgot the task before its image was saved
    lost_at_api: int = 0  # the API forgot the task before any Success was seen: possibly billed
    blocked: int = 0  # the model gave no image on purpose (IMAGE_SAFETY and the like): failed, not billed
    known_duplicates: int = 0  # stray replies: billed a second time for a task, their images kept beside it
    strays_open: int = 0  # stray replies not polled to the end yet
    held_micros: int = 0  # reserved for creates in flight or of unknown outcome (possibly billed)
    price_mismatches: int = 0
    calls: dict[str, int] = field(default_factory=dict)  # by kind
    rate_limited: int = 0
    first_call_at: float | None = None
    last_call_at: float | None = None
    # the part of billed_calls and cost_micros the batch route billed (the totals above include them)
    batch_billed: int = 0
    batch_spent_micros: int = 0


class ClaimLost(Exception):
    """The task's claim was taken over (our lease expired): this worker must drop it."""


class BudgetRefused(Exception):
    """The job's spend plus every reservation in flight leaves no room for this create: it was not sent."""


@dataclass(frozen=True, slots=True)
class Stray:
    """An accepted create whose task another worker held by the time its reply came: polled to the end."""

    id: int
    job_id: int
    task_id: int
    remote_task_id: str
    price_micros: int
    filename: str  # its task's, relative to the job's output directory: the duplicate is kept beside it


class StrayReply(ClaimLost):
    """The create was accepted after the task had been taken over: its remote id is kept as `stray`."""

    def __init__(self, message: str, stray: Stray) -> None:
        super().__init__(message)
        self.stray = stray


_TASK_FIELDS = tuple(f.name for f in dataclasses.fields(Task))
_TASK_COLUMNS = tuple(tasks.c[name] for name in _TASK_FIELDS)  # what a claim returns: exactly a Task's fields


def _task(row: RowMapping) -> Task:
    values = {name: row[name] for name in _TASK_FIELDS}
    values["images"] = tuple(json.loads(row["images"]))
    values["status"] = TaskStatus(row["status"])
    return Task(**values)


def _job(row: RowMapping) -> Job:
    values = {f.name: row[f.name] for f in dataclasses.fields(Job)}
    values["settings"] = json.loads(row["settings"])
    return Job(**values)


def dialect_insert(dialect: str, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (loaded on use: PostgreSQL's brings asyncpg along)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


class StoreBase:
    """What every part of the store shares: the engine, the one writer, plain reads."""

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self.engine = engine
        self.url = url
        self.writer = Writer(engine)
        self.worker_id: str | None = None  # stamped on the call records this process writes
        # the database's clock less this host's (PostgreSQL; SQLite's clock is this host's): leases are judged
        # by one clock, whatever the skew between the hosts of the workers
        self.clock_offset = 0.0

    async def measure_clock(self, local: float) -> float:
        """Measure `clock_offset` against the database (PostgreSQL), `local` being this host's time now."""
        if self.dialect == "postgresql":
            with translated("reading the job store's clock"):
                async with self.engine.connect() as conn:
                    db_now = (await conn.exec_driver_sql("SELECT extract(epoch from clock_timestamp())")).scalar()
            self.clock_offset = float(str(db_now)) - local
        return self.clock_offset

    @classmethod
    async def open(cls, db: str, *, upgrade: bool = True, create: bool = True) -> Self:
        """Open (creating it if needed) and bring the schema to the newest migration. `create=False`: a SQLite
        store that is not there is StoreMissingError, and nothing is created (commands that only read)."""
        url = database_url(db)
        if not create and (file := sqlite_file(url)) is not None and not file.is_file():
            raise StoreMissingError(f"no job store at {file} (point --db or BATCHER_DB at one, or create it with "
                                    "`batcher import` or `batcher run`)")  # fmt: skip
        engine = create_engine(url, create=create)
        with translated(f"opening the job store {redacted(url)}"):
            if upgrade:
                async with engine.begin() as conn:
                    await migrate.upgrade(conn)
        return cls(engine, url)

    async def close(self) -> None:
        await self.writer.close()
        await self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _insert(self, table: Any) -> Any:
        return dialect_insert(self.dialect, table)

    async def _read(self, stmt: Any) -> list[RowMapping]:
        return [r._mapping for r in await self._rows(stmt)]

    async def _rows(self, stmt: Any) -> list[Any]:
        with translated("reading the job store"):
            async with self.engine.connect() as conn:
                return list(await conn.execute(stmt))
