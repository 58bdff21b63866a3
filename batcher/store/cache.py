"""Cache and chains: finished outputs reused by spec, and tasks that take another task's output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.engine import RowMapping

from batcher.models import parent_of
from batcher.store.base import Job, S, Task
from batcher.store.database import translated
from batcher.store.tables import jobs, tasks
from batcher.store.transitions import TransitionsPart

CACHE_CANDIDATES = 5  # finished outputs of one spec tried before giving up on the cache
_parent = tasks.alias("parent")


@dataclass(frozen=True, slots=True)
class CachedOutput:
    """A finished output that may satisfy a task of the same spec: its task id, file and recorded sha256."""

    task_id: int
    path: str
    sha256: str


def inputs_settled() -> Any:
    """A task without `from:`, or one whose parent is not still on its way: it succeeded (the input is ready),
    failed or is missing (the worker fails the task too). Uses the (job_id, key) unique index; only tasks with a
    parent evaluate the NOT EXISTS."""
    return or_(
        tasks.c.parent_key.is_(None),
        ~exists().where(
            _parent.c.job_id == tasks.c.job_id,
            _parent.c.key == tasks.c.parent_key,
            _parent.c.status.not_in([S.SUCCEEDED, S.FAILED]),
        ),
    )


class CachePart(TransitionsPart):
    async def cached_twins(self, job: Job) -> set[str]:
        """Keys of the job's tasks still to be created that a finished task (in any job) shares: the only ones
        worth a cache lookup. Outputs finished after this is read are not seen by this run."""
        twin = tasks.alias("twin")
        rows = await self._rows(
            select(tasks.c.key)
            .where(tasks.c.job_id == job.id, tasks.c.status.in_([S.PENDING, S.UNKNOWN]))
            .where(exists().where(twin.c.key == tasks.c.key, twin.c.status == S.SUCCEEDED, twin.c.id != tasks.c.id))
        )
        return {r[0] for r in rows}

    async def cache_candidates(self, key: str, exclude_id: int) -> list[CachedOutput]:
        """Finished outputs of the same spec in any job, newest first (the caller checks each file)."""
        rows = await self._read(
            select(tasks.c.id, tasks.c.output_path, tasks.c.sha256)
            .where(tasks.c.key == key, tasks.c.status == S.SUCCEEDED, tasks.c.id != exclude_id)
            .where(tasks.c.output_path.is_not(None), tasks.c.sha256.is_not(None))
            .order_by(tasks.c.finished_at.desc())
            .limit(CACHE_CANDIDATES)
        )
        return [CachedOutput(r["id"], r["output_path"], r["sha256"]) for r in rows]

    async def succeeded_from_cache(
        self, task: Task, *, origin: int, output_path: str, sha256: str, size: int, width: int, height: int, fmt: str,
        now: float,
    ) -> None:  # fmt: skip
        """The task is satisfied by another task's output, copied to its own path: no create, no cost."""
        await self._transition(
            task, (S.PENDING, S.UNKNOWN),
            {"status": S.SUCCEEDED, "output_path": output_path, "sha256": sha256, "bytes": size, "width": width,
             "height": height, "image_format": fmt, "cost_micros": 0, "cached_from": origin, "finished_at": now,
             "last_error": None},
            None, now, release=True,
        )  # fmt: skip

    async def parent_row(self, task: Task) -> RowMapping | None:
        """The row of a chained task's parent (same job): its status, output and name."""
        key = parent_of(task.images)
        if key is None:
            return None
        rows = await self._read(
            select(tasks.c.id, tasks.c.key, tasks.c.name, tasks.c.status, tasks.c.output_path, tasks.c.sha256,
                   tasks.c.last_error)
            .where(tasks.c.job_id == task.job_id, tasks.c.key == key)
        )  # fmt: skip
        return rows[0] if rows else None

    async def outputs_by_key(self, exclude_job_id: int | None) -> dict[str, list[tuple[str, int | None]]]:
        """Every finished output outside one job, by key: (path, bytes). For the estimate's cache forecast."""
        stmt = select(tasks.c.key, tasks.c.output_path, tasks.c.bytes).where(
            tasks.c.status == S.SUCCEEDED, tasks.c.output_path.is_not(None)
        )
        if exclude_job_id is not None:
            stmt = stmt.where(tasks.c.job_id != exclude_job_id)
        out: dict[str, list[tuple[str, int | None]]] = {}
        for key, path, size in await self._rows(stmt):
            out.setdefault(key, []).append((path, size))
        return out

    async def cache_origins(self, job: Job) -> dict[int, str]:
        """For the job's tasks satisfied from the cache: origin task id → "job:file" of the output reused."""
        origin = tasks.alias("origin")
        mine = select(tasks.c.cached_from).where(tasks.c.job_id == job.id, tasks.c.cached_from.is_not(None))
        rows = await self._rows(
            select(origin.c.id, jobs.c.name, origin.c.output_path)
            .select_from(origin.join(jobs, jobs.c.id == origin.c.job_id))
            .where(origin.c.id.in_(mine.scalar_subquery()))
        )
        return {int(r[0]): f"{r[1]}:{r[2]}" for r in rows}

    async def output_taken(self, path: str, exclude_id: int) -> bool:
        """Does a task other than `exclude_id` record `path` as its output?"""
        stmt = select(func.count()).where(tasks.c.output_path == path, tasks.c.id != exclude_id)
        return int((await self._rows(stmt))[0][0]) > 0

    async def cached_count(self, job: Job) -> int:
        rows = await self._rows(select(func.count()).where(tasks.c.job_id == job.id, tasks.c.cached_from.is_not(None)))
        return int(rows[0][0])

    async def listed_tasks(self, job: Job) -> AsyncIterator[RowMapping]:
        """The tasks the job's last import listed (name, filename, key, model, status), in manifest order."""
        with translated("reading the job store"):
            async with self.engine.connect() as conn:
                result = await conn.stream(
                    select(tasks.c.name, tasks.c.filename, tasks.c.key, tasks.c.model, tasks.c.status, tasks.c.source)
                    .where(tasks.c.job_id == job.id, tasks.c.import_gen == job.import_gen)
                    .order_by(tasks.c.seq)
                )
                async for row in result.mappings():
                    yield row
