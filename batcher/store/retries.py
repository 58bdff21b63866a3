"""Putting failed tasks back to work (`batcher retry`): created again, or, when the image was paid for but not
saved, fetched again (a fresh query for its URL), never created again unless asked."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, and_, case, false, func, or_, select, update
from sqlalchemy.engine import RowMapping

from batcher.models import Failure
from batcher.store.base import Job, S, StoreBase
from batcher.store.changes import WriteConnection
from batcher.store.tables import jobs, strays, tasks


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """What a retry would put back: tasks to create again per model, tasks to fetch again, by cause."""

    create: dict[str, int] = field(default_factory=dict)  # model -> tasks created again (each a new charge)
    fetch: int = 0  # paid for, not saved: queried for a fresh URL and downloaded, at no charge
    by_cause: dict[str, int] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)  # failed tasks of causes not chosen
    # lines of open Batch Mode shards (a collection stopped by a bucket outage leaves its paid lines so): not
    # failed, so not retried; the next run collects them from the batch's results file, kept until they are stored
    in_shards: int = 0

    @property
    def tasks(self) -> int:
        return sum(self.create.values()) + self.fetch


class RetriesPart(StoreBase):
    async def retry_plan(self, job: Job, causes: Collection[Failure], *, recreate: bool) -> RetryPlan:
        """Reads only: what `retry_failed` would do."""
        rows = await self._rows(
            select(
                tasks.c.failure,
                tasks.c.model,
                case((_refetchable(recreate), 1), else_=0).label("fetch"),
                case((tasks.c.cost_micros > 0, 1), else_=0).label("paid"),
                func.count(),
            )
            .where(_listed_failed(job))
            .group_by(tasks.c.failure, tasks.c.model, "fetch", "paid")
        )
        create: dict[str, int] = {}
        by_cause: dict[str, int] = {}
        left: dict[str, int] = {}
        fetch = 0
        for failure, model, refetch, paid, n in rows:
            cause = failure or Failure.TRANSIENT  # failed before causes were kept (an older store)
            if cause not in causes or (paid and not refetch and not recreate):
                # a task paid for is never created again unasked
                what = cause if cause not in causes else f"{cause} (paid for: only with --recreate)"
                left[what] = left.get(what, 0) + int(n)
                continue
            by_cause[cause] = by_cause.get(cause, 0) + int(n)
            if refetch:
                fetch += int(n)
            else:
                create[model] = create.get(model, 0) + int(n)
        (in_shards,) = await self._rows(
            select(func.count()).where(
                tasks.c.job_id == job.id, tasks.c.status == S.SUBMITTED, tasks.c.submission_id.is_not(None)
            )
        )
        return RetryPlan(create, fetch, by_cause, left, int(in_shards[0]))

    async def retry_failed(self, job: Job, causes: Collection[Failure], *, recreate: bool, now: float) -> int:
        """Put the job's failed tasks of `causes` back, in one transaction; returns how many. A billed task created
        again keeps its first charge in the ledger, as a known second charge (a stray row)."""
        chosen = and_(_listed_failed(job), _of(causes))
        if not recreate:  # a task paid for is fetched again, or left alone: never created again unasked
            chosen = and_(chosen, or_(tasks.c.cost_micros == 0, _refetchable(recreate)))

        async def op(conn: WriteConnection) -> int:
            fetch = await conn.execute(
                update(tasks).where(chosen, _refetchable(recreate)).values(
                    status=S.SUBMITTED, failure=None, last_error=None, finished_at=None, next_attempt_at=0.0,
                    claim_token=None, claimed_by=None, lease_until=None, updated_at=now,
                )
            )  # fmt: skip
            found = await conn.execute(
                select(tasks.c.id, tasks.c.remote_task_id, tasks.c.cost_micros, tasks.c.submission_id).where(
                    chosen, tasks.c.cost_micros > 0
                )
            )
            paid = [(int(m["id"]), _charge_name(m), int(m["cost_micros"])) for m in found.mappings()]
            for task_id, remote_id, cost in paid:  # its first charge stays in the ledger (and the job's spend)
                await conn.execute(
                    self._insert(strays).values(
                        job_id=job.id, task_id=task_id, remote_task_id=remote_id or f"task-{task_id}-{now:.0f}",
                        status="failed", price_micros=0, cost_micros=cost, created_at=now, finished_at=now,
                        detail="paid, not saved; created again by batcher retry",
                    ).on_conflict_do_nothing(index_elements=[strays.c.remote_task_id])
                )  # fmt: skip
            again = await conn.execute(
                update(tasks).where(chosen).values(
                    status=S.PENDING, failure=None, last_error=None, finished_at=None, next_attempt_at=0.0,
                    attempts=0, gen_failures=0, remote_task_id=None, submitted_at=None, billed_at=None,
                    cost_micros=0, submission_id=None, claim_token=None, claimed_by=None, lease_until=None, updated_at=now,
                )
            )  # fmt: skip
            return int(fetch.rowcount) + int(again.rowcount)

        return await self.writer.run(op)


def _charge_name(row: RowMapping) -> str | None:
    """The name a first charge is kept under: a shard's lines share their batch's name, so each gets its own."""
    remote_id = row["remote_task_id"]
    if remote_id is not None and row["submission_id"] is not None:
        return f"{remote_id}/task-{row['id']}"
    return str(remote_id) if remote_id is not None else None


def _listed_failed(job: Job) -> ColumnElement[bool]:
    """The job's failed tasks that its last import listed (a task edited out of the manifest stays as it is)."""
    gen = select(jobs.c.import_gen).where(jobs.c.id == job.id).scalar_subquery()
    return and_(tasks.c.job_id == job.id, tasks.c.status == S.FAILED, tasks.c.import_gen == gen)


def _of(causes: Collection[Failure]) -> ColumnElement[bool]:
    wanted = [str(c) for c in causes]
    if Failure.TRANSIENT in causes:  # failed before causes were kept
        return or_(tasks.c.failure.in_(wanted), tasks.c.failure.is_(None))
    return tasks.c.failure.in_(wanted)


def _refetchable(recreate: bool) -> ColumnElement[bool]:
    """Paid for, not saved, and the API still has it: query it for a fresh URL instead of creating it again. Not
    a line of a Batch Mode shard: its remote id names the whole batch, which is never polled task by task."""
    if recreate:
        return false()  # nothing: every chosen task is created again
    return and_(
        tasks.c.failure == Failure.DOWNLOAD, tasks.c.remote_task_id.is_not(None), tasks.c.submission_id.is_(None)
    )
