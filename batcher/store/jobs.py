"""Jobs and the import of their manifests: idempotent, streamed, in one transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, literal_column, select, update

from batcher.errors import JobNotFoundError
from batcher.models import ImportRow, JobSettings
from batcher.money import usd_to_micros
from batcher.store.base import ImportResult, Job, S, StoreBase, _job, dialect_insert
from batcher.store.changes import WriteConnection
from batcher.store.database import CACHE_KIB, IMPORT_CACHE_KIB
from batcher.store.tables import jobs, task_counts, tasks


class JobsPart(StoreBase):
    async def import_manifest(
        self,
        settings: JobSettings,
        manifest: str,
        batches: Iterable[Sequence[ImportRow]],
        *,
        extra: dict[str, Any],
        now: float,
    ) -> ImportResult:
        """Add the manifest's new tasks (`models.import_batches` of its specs) to its job in one transaction:
        an error in any row rolls all back."""

        async def op(conn: WriteConnection) -> ImportResult:
            if conn.dialect.name != "sqlite":
                return await insert_all(conn)
            await conn.exec_driver_sql(f"PRAGMA cache_size=-{IMPORT_CACHE_KIB}")
            try:
                return await insert_all(conn)
            finally:  # the connection stays the writer's: give the memory back
                await conn.exec_driver_sql(f"PRAGMA cache_size=-{CACHE_KIB}")

        async def insert_all(conn: WriteConnection) -> ImportResult:
            job = await self._upsert_job(conn, settings, manifest, extra, now)
            before = await self._count(conn, job.id)
            seen = 0
            sql = _import_sql(conn.dialect, job.id, job.import_gen, now)
            for batch in batches:
                # the rows go to the driver's executemany as they came: no per-row work in Python
                await conn.exec_driver_sql(sql, batch)
                seen += len(batch)
            added = await self._count(conn, job.id) - before
            retired = (
                await conn.execute(
                    select(func.count()).where(
                        tasks.c.job_id == job.id, tasks.c.status == S.PENDING, tasks.c.import_gen < job.import_gen
                    )
                )
            ).scalar_one()
            await conn.execute(update(jobs).where(jobs.c.id == job.id).values(retired=retired))
            if conn.dialect.name == "sqlite":  # the trigger counts status changes; new rows are counted here
                await conn.execute(delete(task_counts).where(task_counts.c.job_id == job.id))
                by_status = select(tasks.c.job_id, tasks.c.status, func.count()).where(tasks.c.job_id == job.id)
                await conn.execute(
                    insert(task_counts).from_select(["job_id", "status", "n"], by_status.group_by(tasks.c.status))
                )
            return ImportResult(job, seen, added, retired)

        return await self.writer.run(op, alone=True)

    async def _upsert_job(
        self, conn: WriteConnection, settings: JobSettings, manifest: str, extra: dict[str, Any], now: float
    ) -> Job:
        values = {
            "manifest": manifest,
            "output_dir": settings.output_dir,
            "price_micros": None if settings.price_usd is None else usd_to_micros(settings.price_usd),
            "budget_micros": None if settings.budget_usd is None else usd_to_micros(settings.budget_usd),
            "settings": json.dumps(extra, sort_keys=True),
            "updated_at": now,
        }
        stmt = self._insert(jobs).values(name=settings.name, created_at=now, import_gen=1, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[jobs.c.name], set_={**values, "import_gen": jobs.c.import_gen + 1}
        ).returning(*jobs.c)
        return _job((await conn.execute(stmt)).mappings().one())

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


def _import_sql(dialect: Any, job_id: int, import_gen: int, now: float) -> str:
    """The upsert of one import: declared with SQLAlchemy, compiled for the dialect, the import's own values
    (numbers) written into it, and a positional parameter for each field of an import row, in its order."""
    insert_ = dialect_insert(dialect.name, tasks)
    fixed = {"job_id": job_id, "import_gen": import_gen, "next_attempt_at": 0.0, "updated_at": float(now)}
    values: dict[str, Any] = {k: literal_column(repr(v)) for k, v in fixed.items()}
    values["status"] = literal_column(f"'{S.PENDING.value}'")
    values.update({k: bindparam(k) for k in _ROW_FIELDS})
    stmt = insert_.values(values).on_conflict_do_update(
        index_elements=[tasks.c.job_id, tasks.c.key],
        set_={c: insert_.excluded[c] for c in ("import_gen", "seq", "filename", "name", "source")},
        # identical rows later in the manifest keep the first row's place and file name
        where=tasks.c.import_gen < insert_.excluded.import_gen,
    )
    compiled = stmt.compile(dialect=dialect)
    assert compiled.positiontup is not None and tuple(compiled.positiontup) == _ROW_FIELDS, compiled.positiontup
    return str(compiled)


# the fields of a models.ImportRow, in its order (which is also the table's column order)
_ROW_FIELDS = ("key", "seq", "name", "source", "model", "prompt", "quality", "size", "images", "seed", "filename",
               "parent_key")  # fmt: skip
