"""Reading for status and reports: counts, the ledger, every task and call."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy import and_, func, select
from sqlalchemy.engine import RowMapping

from batcher.models import NOT_SENT, Failure
from batcher.store.base import Job, Ledger, S, StoreBase
from batcher.store.database import translated
from batcher.store.submissions import CLOSED
from batcher.store.tables import api_calls, jobs, strays, submissions, task_counts, tasks


class ReportsPart(StoreBase):
    async def status_counts(self) -> dict[str, dict[str, int]]:
        """Per job name: tasks per status (a pending task the manifest no longer lists counts as retired).

        On SQLite the counts are kept in `task_counts` (a few rows, whatever the store's size); on PostgreSQL
        they come from the (job_id, status, seq) index. Retired tasks are counted by each import."""
        job_rows = {r["id"]: r for r in await self._read(select(jobs.c.id, jobs.c.name, jobs.c.retired))}
        out: dict[str, dict[str, int]] = {r["name"]: {} for r in job_rows.values()}
        if self.dialect == "sqlite":
            counted = select(task_counts.c.job_id, task_counts.c.status, task_counts.c.n).where(task_counts.c.n > 0)
        else:
            counted = select(tasks.c.job_id, tasks.c.status, func.count()).group_by(tasks.c.job_id, tasks.c.status)
        for job_id, status, n in await self._rows(counted):
            out[job_rows[job_id]["name"]][status] = int(n)
        for job in job_rows.values():
            retired, counts = int(job["retired"]), out[job["name"]]
            if retired:
                counts["retired"] = retired
                counts[S.PENDING] -= retired
                if not counts[S.PENDING]:
                    del counts[S.PENDING]
        return out

    async def ledger(self, job: Job) -> Ledger:
        counts = (await self.status_counts()).get(job.name, {})
        ledger = Ledger(counts={k: v for k, v in counts.items() if k != "retired"}, retired=counts.get("retired", 0))
        # a billed line keeps the shard it rode in (a line sent back to pending leaves it): the batch route
        in_shard = tasks.c.submission_id.is_not(None)
        mismatch = and_(
            tasks.c.price_reported_micros.is_not(None), tasks.c.price_reported_micros != tasks.c.cost_micros
        )
        row = (
            await self._rows(
                select(
                    func.coalesce(func.sum(tasks.c.cost_micros), 0),
                    func.coalesce(func.sum(tasks.c.gen_failures), 0),
                    func.coalesce(func.sum(tasks.c.unknown_count), 0),
                    func.count().filter(and_(tasks.c.cost_micros > 0, mismatch)),
                    func.count().filter(tasks.c.cost_micros > 0),
                    func.count().filter(and_(tasks.c.status == S.FAILED, tasks.c.failure == Failure.DOWNLOAD)),
                    func.count().filter(and_(tasks.c.status == S.FAILED, tasks.c.failure == Failure.RESULT_LOST)),
                    func.count().filter(and_(tasks.c.status == S.FAILED, tasks.c.failure == Failure.LOST)),
                    func.coalesce(func.sum(tasks.c.reserved_micros), 0),
                    func.count().filter(and_(tasks.c.status == S.FAILED, tasks.c.failure == Failure.BLOCKED)),
                    func.coalesce(func.sum(tasks.c.cost_micros).filter(in_shard), 0),
                    func.count().filter(and_(tasks.c.cost_micros > 0, in_shard)),
                ).where(tasks.c.job_id == job.id)
            )
        )[0]
        ledger.cost_micros, ledger.gen_failures, ledger.unknown_submissions = int(row[0]), int(row[1]), int(row[2])
        # billed: generations that reached Success, including any whose file then proved unusable
        ledger.price_mismatches, ledger.billed_calls = int(row[3]), int(row[4])
        ledger.paid_unusable, ledger.result_lost, ledger.lost_at_api = int(row[5]), int(row[6]), int(row[7])
        ledger.held_micros, ledger.blocked = int(row[8]), int(row[9])
        ledger.batch_spent_micros, ledger.batch_billed = int(row[10]), int(row[11])
        open_shards = select(func.count()).where(
            submissions.c.job_id == job.id, submissions.c.state.not_in(sorted(CLOSED))
        )
        ledger.shards_open = int((await self._rows(open_shards))[0][0])
        stray = (
            await self._rows(
                select(
                    func.count().filter(strays.c.cost_micros > 0),
                    func.coalesce(func.sum(strays.c.cost_micros), 0),
                    func.count().filter(strays.c.status == "submitted"),
                ).where(strays.c.job_id == job.id)
            )
        )[0]
        # a stray reply is a known second charge for its task: billed, its image kept beside the task's
        ledger.known_duplicates, ledger.strays_open = int(stray[0]), int(stray[2])
        ledger.billed_calls += ledger.known_duplicates
        ledger.cost_micros += int(stray[1])
        for r in await self._rows(
            select(
                api_calls.c.kind,
                api_calls.c.outcome,
                func.count(),
                func.min(api_calls.c.at),
                # when the last reply came: a Gemini call lasts the whole generation
                func.max(api_calls.c.at + api_calls.c.latency_ms / 1000.0),
            )
            .where(api_calls.c.job_id == job.id, api_calls.c.kind != NOT_SENT)  # the API never saw those
            .group_by(api_calls.c.kind, api_calls.c.outcome)
        ):
            ledger.calls[r[0]] = ledger.calls.get(r[0], 0) + int(r[2])
            if r[1] == "rate_limited":
                ledger.rate_limited += int(r[2])
            ledger.first_call_at = min(x for x in (ledger.first_call_at, r[3]) if x is not None)
            ledger.last_call_at = max(x for x in (ledger.last_call_at, r[4]) if x is not None)
        return ledger

    async def task_rows(self, job: Job) -> AsyncIterator[RowMapping]:
        """Every task of the job in manifest order, streamed."""
        with translated("reading the job store"):
            async with self.engine.connect() as conn:
                result = await conn.stream(select(tasks).where(tasks.c.job_id == job.id).order_by(tasks.c.seq))
                async for row in result.mappings():
                    yield row

    async def committed_micros(self, job_id: int) -> int:
        """What the job has spent plus every reservation still held, by any worker: what a budget is held to."""
        rows = await self._rows(select(jobs.c.spent_micros + jobs.c.held_micros).where(jobs.c.id == job_id))
        return int(rows[0][0]) if rows else 0

    async def strays_of(self, job: Job) -> list[RowMapping]:
        return await self._read(select(strays).where(strays.c.job_id == job.id).order_by(strays.c.id))

    async def calls(self, job: Job) -> list[RowMapping]:
        return await self._read(select(api_calls).where(api_calls.c.job_id == job.id).order_by(api_calls.c.id))
