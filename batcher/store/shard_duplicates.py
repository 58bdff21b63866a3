"""A shard that was created twice (a create whose batch the listing showed only after the grace period): its
other batches' lines are known second charges, kept as strays of its tasks (one per task and batch, provider
`gemini-batch`) so that they are collected, billed in the ledger and counted as known duplicates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update

from batcher.store.base import Job, StoreBase
from batcher.store.changes import WriteConnection
from batcher.store.submissions import Submission
from batcher.store.tables import strays, tasks

DUPLICATE_BATCH = "gemini-batch"  # the strays' provider: no online route polls them
_SEP = "/task-"


def duplicate_line_name(batch_name: str, task_id: int) -> str:
    """A duplicate line's unique name (a stray's remote_task_id): its batch's name and its task's id."""
    return f"{batch_name}{_SEP}{task_id}"


def batch_of(line_name: str) -> str:
    return line_name.rsplit(_SEP, 1)[0]


class ShardDuplicatesPart(StoreBase):
    async def shard_duplicates(self, sub: Submission, batch_names: Sequence[str], now: float) -> int:
        """Record `batch_names` as more batches of `sub`: a stray for each of its tasks in each, held by nobody
        yet (`claim_strays` takes them), its price reserved on its task (it may bill), in one commit. Returns
        the strays recorded."""

        async def op(conn: WriteConnection) -> int:
            ids = [int(r[0]) for r in (await conn.execute(select(tasks.c.id).where(tasks.c.submission_id == sub.id)))]
            made = 0
            for name in batch_names:
                for task_id in ids:
                    got = await conn.execute(
                        self._insert(strays).values(
                            job_id=sub.job_id, task_id=task_id, remote_task_id=duplicate_line_name(name, task_id),
                            status="submitted", price_micros=sub.price_each, created_at=now, provider=DUPLICATE_BATCH,
                            detail=f"a second batch of shard {sub.display_name}",
                        ).on_conflict_do_nothing(index_elements=[strays.c.remote_task_id])
                    )  # fmt: skip
                    if got.rowcount == 1:
                        made += 1
                        await conn.execute(
                            update(tasks)
                            .where(tasks.c.id == task_id)
                            .values(reserved_micros=tasks.c.reserved_micros + sub.price_each)
                        )
            return made

        return int(await self.writer.run(op))

    async def task_keys(self, task_ids: Sequence[int]) -> dict[int, str]:
        """Task keys by id (a results line names its task by key)."""
        if not task_ids:
            return {}
        rows = await self._rows(select(tasks.c.id, tasks.c.key).where(tasks.c.id.in_(list(task_ids))))
        return {int(r[0]): str(r[1]) for r in rows}

    async def duplicate_batches_open(self, job: Job) -> list[str]:
        """The job's second batches with lines not collected yet (what `batcher cancel` cancels too)."""
        rows: list[Any] = await self._rows(
            select(strays.c.remote_task_id).where(
                strays.c.job_id == job.id, strays.c.provider == DUPLICATE_BATCH, strays.c.status == "submitted"
            )
        )
        return sorted({batch_of(str(r[0])) for r in rows})
