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
    price_mismatches: int = 0
    calls: dict[str, int] = field(default_factory=dict)  # by kind
    rate_limited: int = 0
    first_call_at: float | None = None
    last_call_at: float | None = None


class ClaimLost(Exception):
    """The task's claim was taken over (our lease expired): this worker must drop it."""


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
