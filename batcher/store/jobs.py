"""Jobs and the import of their manifests: idempotent, streamed, in one transaction."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, func, select

from batcher.errors import JobNotFoundError
from batcher.models import JobSettings, TaskSpec
from batcher.store.base import ImportResult, Job, S, StoreBase, _job, dialect_insert
from batcher.store.tables import jobs, tasks
from batcher.store.writer import WriteConnection

IMPORT_BATCH = 5_000  # rows per executemany while importing a manifest


class JobsPart(StoreBase):
    async def import_manifest(
        self, settings: JobSettings, manifest: str, specs: Iterable[TaskSpec], *, extra: dict[str, Any], now: float
    ) -> ImportResult:
        """Add the manifest's new tasks to its job in one transaction: an error in any row rolls all back."""

        async def op(conn: WriteConnection) -> ImportResult:
            job = await self._upsert_job(conn, settings, manifest, extra, now)
            before = await self._count(conn, job.id)
            rows = 0
            batch: list[tuple[Any, ...]] = []
            for spec in specs:
                rows += 1
                batch.append(_task_row(job, spec, rows, now))
                if len(batch) >= IMPORT_BATCH:
                    await self._upsert_tasks(conn, batch)
                    batch = []
            if batch:
                await self._upsert_tasks(conn, batch)
            added = await self._count(conn, job.id) - before
            retired = (
                await conn.execute(
                    select(func.count()).where(
                        tasks.c.job_id == job.id, tasks.c.status == S.PENDING, tasks.c.import_gen < job.import_gen
                    )
                )
            ).scalar_one()
            return ImportResult(job, rows, added, retired)

        return await self.writer.run(op, alone=True)

    async def _upsert_job(
        self, conn: WriteConnection, settings: JobSettings, manifest: str, extra: dict[str, Any], now: float
    ) -> Job:
        values = {
            "manifest": manifest,
            "output_dir": settings.output_dir,
            "price_micros": _micros(settings.price_usd),
            "budget_micros": _micros(settings.budget_usd),
            "settings": json.dumps(extra, sort_keys=True),
            "updated_at": now,
        }
        stmt = self._insert(jobs).values(name=settings.name, created_at=now, import_gen=1, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[jobs.c.name], set_={**values, "import_gen": jobs.c.import_gen + 1}
        ).returning(*jobs.c)
        return _job((await conn.execute(stmt)).mappings().one())

    async def _upsert_tasks(self, conn: WriteConnection, batch: list[tuple[Any, ...]]) -> None:
        # The upsert is declared with SQLAlchemy and compiled once per dialect; the rows go to the driver's
        # executemany as plain tuples, skipping per-row parameter processing (a million rows per import).
        await conn.exec_driver_sql(_import_sql(conn.dialect), batch)

    @staticmethod
    async def _count(conn: WriteConnection, job_id: int) -> int:
        return int((await conn.execute(select(func.count()).where(tasks.c.job_id == job_id))).scalar_one())

    async def job(self, name: str) -> Job:
        rows = await self._read(select(jobs).where(jobs.c.name == name))
        if not rows:
            raise JobNotFoundError(f"no job named {name!r} in the store")
        return _job(rows[0])

    async def find_job(self, name: str) -> Job | None:
        rows = await self._read(select(jobs).where(jobs.c.name == name))
        return _job(rows[0]) if rows else None

    async def jobs(self) -> list[Job]:
        return [_job(r) for r in await self._read(select(jobs).order_by(jobs.c.id))]

    async def job_models(self, job: Job) -> list[str]:
        rows = await self._rows(select(tasks.c.model).where(tasks.c.job_id == job.id).distinct())
        return sorted(r[0] for r in rows)

    async def succeeded_keys(self, job_id: int) -> set[str]:
        rows = await self._read(select(tasks.c.key).where(tasks.c.job_id == job_id, tasks.c.status == S.SUCCEEDED))
        return {r["key"] for r in rows}


def _micros(usd: Any) -> int | None:
    return None if usd is None else round(usd * 1_000_000)


@functools.cache
def _import_sql(dialect: Any) -> str:
    insert_ = dialect_insert(dialect.name, tasks)
    stmt = insert_.values({k: bindparam(k) for k in _IMPORTED}).on_conflict_do_update(
        index_elements=[tasks.c.job_id, tasks.c.key],
        set_={c: insert_.excluded[c] for c in ("import_gen", "seq", "filename", "name", "source")},
        # identical rows later in the manifest keep the first row's place and file name
        where=tasks.c.import_gen < insert_.excluded.import_gen,
    )
    compiled = stmt.compile(dialect=dialect)
    assert compiled.positiontup is not None and tuple(compiled.positiontup) == _IMPORTED, compiled.positiontup
    return str(compiled)


_IMPORTED = (
    "job_id",
    "key",
    "seq",
    "import_gen",
    "name",
    "source",
    "model",
    "prompt",
    "quality",
    "size",
    "images",
    "seed",
    "filename",
    "status",
    "next_attempt_at",
    "updated_at",
    "parent_key",
)  # fmt: skip  (the table's column order, which the compiled statement follows)


def _task_row(job: Job, spec: TaskSpec, seq: int, now: float) -> tuple[Any, ...]:
    """One imported task, in the order of _IMPORTED (a tuple: a million of them are built per import)."""
    images = json.dumps(list(spec.images)) if spec.images else "[]"
    return (
        job.id, spec.key, seq, job.import_gen, spec.name, spec.source, spec.model, spec.prompt, spec.quality,
        spec.size, images, spec.seed, spec.filename, S.PENDING.value, 0.0, now, spec.parent_key,
    )  # fmt: skip
