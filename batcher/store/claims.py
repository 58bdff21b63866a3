"""Workers, leases and claims: who holds which task, and taking over from workers that died."""

from __future__ import annotations

import functools
import uuid
from typing import Any

from sqlalchemy import Float, Integer, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping

from batcher.catalog import DEFAULT_PROVIDER
from batcher.store.base import _TASK_COLUMNS, Job, S, StoreBase, Task, _task
from batcher.store.cache import inputs_settled
from batcher.store.changes import WriteConnection
from batcher.store.tables import jobs, strays, tasks, workers


class ClaimsPart(StoreBase):
    async def register_worker(self, worker_id: str, host: str, pid: int, job_names: str, now: float) -> None:
        async def op(conn: WriteConnection) -> None:
            await conn.execute(
                insert(workers).values(
                    id=worker_id, host=host, pid=pid, jobs=job_names, started_at=now, heartbeat_at=now
                )
            )

        await self.writer.run(op)

    async def live_workers(self) -> list[RowMapping]:
        """Workers not stopped, each with `holds`: how many tasks it has claimed."""
        holds = select(func.count()).where(tasks.c.claimed_by == workers.c.id).correlate(workers).scalar_subquery()
        return await self._read(
            select(workers, holds.label("holds")).where(workers.c.stopped_at.is_(None)).order_by(workers.c.started_at)
        )

    async def heartbeat(self, worker_id: str, now: float, lease_until: float) -> None:
        """Renew this worker's leases on everything it holds."""

        async def op(conn: WriteConnection) -> None:
            await conn.execute(update(workers).where(workers.c.id == worker_id).values(heartbeat_at=now))
            await conn.execute(update(tasks).where(tasks.c.claimed_by == worker_id).values(lease_until=lease_until))
            await conn.execute(update(strays).where(strays.c.claimed_by == worker_id).values(lease_until=lease_until))

        await self.writer.run(op)

    async def stop_worker(self, worker_id: str, now: float, *, dead: bool = False) -> None:
        """Mark a worker stopped and let go of what it holds (its leases end now)."""

        async def op(conn: WriteConnection) -> None:
            await conn.execute(update(workers).where(workers.c.id == worker_id).values(stopped_at=now))
            await conn.execute(
                update(tasks)
                .where(tasks.c.claimed_by == worker_id)
                .values(claim_token=None, claimed_by=None, lease_until=None)
            )
            await conn.execute(
                update(strays).where(strays.c.claimed_by == worker_id).values(claimed_by=None, lease_until=None)
            )
            if dead:  # its creates in flight may or may not have reached the API
                await _mark_stale_submissions_unknown(conn, now, worker_id)

        # alone: after every change queued before it has committed. In a group, ops run ahead of row changes, so
        # a graceful stop's release of its claims ran ahead of its own tasks' billing and success (fenced by the
        # claim tokens it cleared): both were lost while the image stood under the task's name
        await self.writer.run(op, alone=True)

    async def recover(self, job_id: int, now: float) -> int:
        """Tasks left `submitting` by a worker whose lease ran out become `unknown`; returns how many."""

        async def op(conn: WriteConnection) -> int:
            return await _mark_stale_submissions_unknown(conn, now, None, job_id)

        return await self.writer.run(op)

    async def claim(
        self,
        job: Job,
        worker_id: str,
        limit: int,
        now: float,
        lease_until: float,
        *,
        pending: int | None = None,
        provider: str = DEFAULT_PROVIDER,
        polls: bool = True,
    ) -> list[Task]:
        """Take up to `limit` tasks that are due: submitted ones first (finished work is collected first), then
        at most `pending` (default: `limit`) still to be created, so that other workers get their share. Only
        tasks never sent, or sent to `provider`, are taken: what one API may hold is driven through it alone."""
        to_create = limit if pending is None else min(pending, limit)

        async def op(conn: WriteConnection) -> list[Task]:
            params = {"c_job": job.id, "c_now": now, "c_token": uuid.uuid4().hex,
                      "c_worker": worker_id, "c_lease": lease_until, "c_provider": provider}  # fmt: skip
            got: list[Task] = []
            creates = 0
            for stmt, to_be_created in _claim_statements():
                if not to_be_created and not polls:  # the batch route polls shards, never a task sent online
                    continue
                room = limit - len(got)
                if to_be_created:
                    room = min(room, to_create - creates)
                if room <= 0:
                    continue
                rows = [_task(r) for r in (await conn.execute(stmt, {**params, "c_room": room})).mappings()]
                got += rows
                creates += len(rows) if to_be_created else 0
            got.sort(key=lambda t: t.seq)
            return got

        return await self.writer.run(op)

    async def held_elsewhere(self, job: Job, provider: str) -> dict[str, int]:
        """Open tasks of the job that another provider's API may hold, by provider: a run through `provider`
        leaves them to a run through theirs."""
        return {str(name): int(n) for name, n in await self._rows(_held_elsewhere_stmt(job.id, provider))}

    async def next_due(
        self, job: Job, now: float, provider: str | None = None, *, shards: bool = True, online: bool = True
    ) -> tuple[int, float | None]:
        """How many tasks of the job are not final, and when the earliest one not held by anyone is due.
        `provider`: count only the tasks a run through it can drive (the rest wait on the API that holds them);
        `shards` False: nor those riding in a batch shard (an online run leaves them to the batch route);
        `online` False: nor those sent online (the batch route leaves them to an online run)."""
        sent: Any = tasks.c.status.in_([S.SUBMITTING, S.SUBMITTED, S.UNKNOWN])
        if provider is not None:
            sent = and_(sent, _sent_to(provider))
        if not shards:
            sent = and_(sent, tasks.c.submission_id.is_(None))
        if not online:
            sent = and_(sent, tasks.c.submission_id.is_not(None))
        open_ = or_(sent, and_(tasks.c.status == S.PENDING, tasks.c.import_gen == _current_gen(job.id)))
        due_at = case(
            (~inputs_settled(), None),  # waits for its input task, not for a time
            (or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now), tasks.c.next_attempt_at),
            else_=tasks.c.lease_until,
        )
        row = (await self._rows(select(func.count(), func.min(due_at)).where(tasks.c.job_id == job.id, open_)))[0]
        return int(row[0]), row[1]


BATCH_HOLDER = "gemini batch"  # what `held_elsewhere` calls the batch route


def _held_elsewhere_stmt(job_id: int, provider: str) -> Any:
    sent = tasks.c.status.in_([S.SUBMITTING, S.SUBMITTED, S.UNKNOWN])
    # a task riding in a batch shard is held by the batch route, whatever runs online
    name = case(
        (tasks.c.submission_id.is_not(None), BATCH_HOLDER), else_=func.coalesce(tasks.c.provider, DEFAULT_PROVIDER)
    )
    return select(name, func.count()).where(tasks.c.job_id == job_id, sent, name != provider).group_by(name)


def _sent_to(provider: Any) -> Any:
    """The task was last sent to `provider` (tasks from before providers were recorded went to LinkModel)."""
    return func.coalesce(tasks.c.provider, DEFAULT_PROVIDER) == provider


def _current_gen(job_id: Any) -> Any:
    """The job's import generation as the store has it now: another process may have imported since this one
    read the job (a run must not take the tasks of a newer import for retired ones, nor miss them)."""
    return select(jobs.c.import_gen).where(jobs.c.id == job_id).scalar_subquery()


async def _mark_stale_submissions_unknown(
    conn: WriteConnection, now: float, worker_id: str | None, job_id: int | None = None
) -> int:
    # a shard's tasks are left to the shard: a restart finds its batch by display name, never task by task
    cond = [tasks.c.status == S.SUBMITTING, tasks.c.submission_id.is_(None)]
    if worker_id is not None:
        cond.append(tasks.c.claimed_by == worker_id)
    else:
        cond.append(or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now))
    if job_id is not None:
        cond.append(tasks.c.job_id == job_id)
    result = await conn.execute(
        update(tasks)
        .where(*cond)
        .values(
            status=S.UNKNOWN,
            unknown_count=tasks.c.unknown_count + 1,
            claim_token=None,
            claimed_by=None,
            lease_until=None,
            updated_at=now,
            last_error="interrupted between create and its reply: the API may have accepted it",
        )
    )
    return int(result.rowcount)


@functools.cache
def _claim_statements() -> list[tuple[Any, bool]]:
    """The claim's UPDATEs, built once: submitted tasks (to poll), unknown and pending ones (to be created)."""
    now = bindparam("c_now", type_=Float)
    statements = []
    # a shard's lines are driven through their shard (claim_shard), not one by one
    ours = and_(_sent_to(bindparam("c_provider")), tasks.c.submission_id.is_(None))
    for wanted, to_be_created in (
        (and_(tasks.c.status == S.SUBMITTED, ours), False),
        (and_(tasks.c.status == S.UNKNOWN, ours), True),
        (
            and_(tasks.c.status == S.PENDING, tasks.c.import_gen == _current_gen(bindparam("c_job")), inputs_settled()),
            True,
        ),
    ):
        due = (
            select(tasks.c.id)
            .where(
                tasks.c.job_id == bindparam("c_job"),
                wanted,
                tasks.c.next_attempt_at <= now,
                or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now),
            )
            .order_by(tasks.c.seq)
            .limit(bindparam("c_room", type_=Integer))
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite's BEGIN IMMEDIATE serialises
        )
        stmt = (
            update(tasks)
            .where(tasks.c.id.in_(due.scalar_subquery()))
            .values(
                claim_token=bindparam("c_token"), claimed_by=bindparam("c_worker"), lease_until=bindparam("c_lease")
            )
            .returning(*_TASK_COLUMNS)
        )
        statements.append((stmt, to_be_created))
    return statements


QUOTA_WAIT = "the daily quota was spent"  # how the last error of a task a per-day quota stopped begins


def quota_note(detail: str) -> str:
    """The last error of a task a per-day quota stopped: a new run knows it by this (see `quota_due`)."""
    return f"{QUOTA_WAIT} ({detail})"


class QuotaPart(StoreBase):
    """Tasks a per-day quota stopped wait for its reset; a new run tries them sooner (the quota may be raised)."""

    def _quota_held(self, job: Job, now: float) -> Any:
        return and_(tasks.c.job_id == job.id, tasks.c.status == S.PENDING, tasks.c.next_attempt_at > now,
                    tasks.c.last_error.like(f"{QUOTA_WAIT}%"))  # fmt: skip

    async def quota_due(self, job: Job, now: float, *, every: bool) -> int:
        """Make the job's tasks a per-day quota stopped due now: the first (`every` False: one request first,
        to learn whether the quota is back), or all of them. Returns how many were held."""

        async def op(conn: WriteConnection) -> int:
            held = await conn.execute(select(tasks.c.id).where(self._quota_held(job, now)).order_by(tasks.c.seq))
            ids = [row[0] for row in held]
            chosen = ids if every else ids[:1]
            if chosen:
                await conn.execute(update(tasks).where(tasks.c.id.in_(chosen)).values(next_attempt_at=now))
            return len(ids)

        result: int = await self.writer.run(op)
        return result

    async def next_wait(self, job: Job, now: float) -> tuple[float, str | None] | None:
        """When the job's earliest pending task not due yet is due, and its last error (why it waits)."""
        rows = await self._rows(
            select(tasks.c.next_attempt_at, tasks.c.last_error)
            .where(tasks.c.job_id == job.id, tasks.c.status == S.PENDING, tasks.c.next_attempt_at > now)
            .order_by(tasks.c.next_attempt_at)
            .limit(1)
        )
        return (float(rows[0][0]), rows[0][1]) if rows else None
