"""Reading a job's shards, and taking over the ones nobody holds (their worker stopped, or its lease ran out)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, or_, select, update

from batcher.models import Failure
from batcher.store.base import _TASK_COLUMNS, Job, S, StoreBase, Task, _task
from batcher.store.changes import WriteConnection
from batcher.store.submissions import CLOSED, OPEN_TASK, Submission, _submission
from batcher.store.tables import jobs, submissions, tasks


class ShardReadsPart(StoreBase):
    async def shard_by_display_name(self, name: str) -> Submission | None:
        rows = await self._read(select(submissions).where(submissions.c.display_name == name))
        return _submission(rows[0]) if rows else None

    async def shard_lines_answered(self, sub: Submission) -> int:
        """Lines of the shard settled from its results file with a response (an image, a refusal, a line not
        usable): what `successfulRequestCount` counts of them. Lines that answered an error went back to pending
        (out of the shard) or failed as generation failures: not counted."""
        answered = or_(tasks.c.status == S.SUCCEEDED,
                       (tasks.c.status == S.FAILED) & (tasks.c.failure != Failure.GENERATION))  # fmt: skip
        rows = await self._read(select(func.count().label("n")).where(tasks.c.submission_id == sub.id, answered))
        return int(rows[0]["n"])

    async def shards_open(self, job: Job) -> list[Submission]:
        """The job's shards not collected nor closed, oldest first: what a restart reconciles and polls."""
        rows = await self._read(
            select(submissions)
            .where(submissions.c.job_id == job.id, submissions.c.state.not_in(list(CLOSED)))
            .order_by(submissions.c.id)
        )
        return [_submission(r) for r in rows]

    async def recent_shards(self, limit: int = 200) -> list[tuple[str, Submission]]:
        """Shards of every job, open ones first then the newest: what `batcher status` shows."""
        rows = await self._read(
            select(submissions, jobs.c.name.label("job_name"))
            .select_from(submissions.join(jobs, jobs.c.id == submissions.c.job_id))
            .order_by(submissions.c.state.in_(list(CLOSED)), submissions.c.id.desc())
            .limit(limit)
        )
        return [(str(r["job_name"]), _submission(r)) for r in rows]

    async def claim_shard(self, sub: Submission, worker_id: str, now: float, lease_until: float) -> list[Task]:
        """Take the shard's unsettled tasks that nobody holds (their worker stopped, or its lease ran out), under
        one new claim token, in manifest order: a restart or another worker carries the shard on."""
        free = or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now)
        stmt = (
            update(tasks)
            .where(tasks.c.submission_id == sub.id, tasks.c.status.in_(OPEN_TASK), free)
            .values(claim_token=uuid.uuid4().hex, claimed_by=worker_id, lease_until=lease_until)
            .returning(*_TASK_COLUMNS)
        )

        async def op(conn: WriteConnection) -> list[Task]:
            return sorted((_task(r) for r in (await conn.execute(stmt)).mappings()), key=lambda t: t.seq)

        return await self.writer.run(op)

    async def shard_task_ids(self, sub: Submission) -> list[int]:
        """The tasks riding in the shard now, in manifest order (lines sent back to pending have left it)."""
        rows = await self._rows(select(tasks.c.id).where(tasks.c.submission_id == sub.id).order_by(tasks.c.seq))
        return [int(r[0]) for r in rows]
