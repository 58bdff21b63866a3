"""The job store: every SQL statement batcher runs lives here (SQLite and PostgreSQL alike).

Every change of a task's state is fenced by the claim token its worker holds (`WHERE id = :id AND
claim_token = :token`): a worker whose lease expired and was taken over can no longer write (NOTES.md).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, case, exists, func, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from batcher import migrate
from batcher.database import RowChange, Writer, create_engine, database_url, redacted, translated
from batcher.errors import JobNotFoundError
from batcher.models import CallRecord, JobSettings, TaskSpec, TaskStatus, parent_of
from batcher.tables import api_calls, jobs, learned, rate_buckets, tasks, workers

IMPORT_BATCH = 5_000  # rows per INSERT while importing a manifest
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


_TASK_COLUMNS = (
    tasks.c.id,
    tasks.c.job_id,
    tasks.c.key,
    tasks.c.seq,
    tasks.c.model,
    tasks.c.prompt,
    tasks.c.quality,
    tasks.c.size,
    tasks.c.images,
    tasks.c.filename,
    tasks.c.status,
    tasks.c.attempts,
    tasks.c.gen_failures,
    tasks.c.unknown_count,
    tasks.c.remote_task_id,
    tasks.c.submitted_at,
    tasks.c.price_reported_micros,
    tasks.c.claim_token,
    tasks.c.source,
)


def _task(row: RowMapping) -> Task:
    return Task(
        id=row["id"],
        job_id=row["job_id"],
        key=row["key"],
        seq=row["seq"],
        model=row["model"],
        prompt=row["prompt"],
        quality=row["quality"],
        size=row["size"],
        images=tuple(json.loads(row["images"])),
        filename=row["filename"],
        status=TaskStatus(row["status"]),
        attempts=row["attempts"],
        gen_failures=row["gen_failures"],
        unknown_count=row["unknown_count"],
        remote_task_id=row["remote_task_id"],
        submitted_at=row["submitted_at"],
        price_reported_micros=row["price_reported_micros"],
        claim_token=row["claim_token"],
        source=row["source"],
    )


def _job(row: RowMapping) -> Job:
    return Job(
        id=row["id"],
        name=row["name"],
        manifest=row["manifest"],
        output_dir=row["output_dir"],
        price_micros=row["price_micros"],
        budget_micros=row["budget_micros"],
        settings=json.loads(row["settings"]),
        import_gen=row["import_gen"],
    )


class Store:
    """A job store on SQLite or PostgreSQL. Open with `await Store.open(db)`; close with `await close()`."""

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self.engine = engine
        self.url = url
        self.writer = Writer(engine)
        self.worker_id: str | None = None  # stamped on the call records this process writes

    @classmethod
    async def open(cls, db: str, *, upgrade: bool = True) -> Store:
        """Open (creating it if needed) and bring the schema to the newest migration."""
        url = database_url(db)
        engine = create_engine(url)
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
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    async def _read(self, stmt: Any) -> list[RowMapping]:
        return [r._mapping for r in await self._rows(stmt)]

    async def _rows(self, stmt: Any) -> list[Any]:
        with translated("reading the job store"):
            async with self.engine.connect() as conn:
                return list(await conn.execute(stmt))

    # --- jobs and import -------------------------------------------------------------------------------

    async def import_manifest(
        self, settings: JobSettings, manifest: str, specs: Iterable[TaskSpec], *, extra: dict[str, Any], now: float
    ) -> ImportResult:
        """Add the manifest's new tasks to its job in one transaction: an error in any row rolls all back."""

        async def op(conn: AsyncConnection) -> ImportResult:
            job = await self._upsert_job(conn, settings, manifest, extra, now)
            before = await self._count(conn, job.id)
            rows = 0
            batch: list[tuple[Any, ...]] = []
            # One batch is written (in the driver's thread, outside the GIL for most of it) while the next is
            # parsed: on two cores the manifest and SQLite then work side by side.
            writing: asyncio.Future[Any] | None = None
            try:
                for spec in specs:
                    rows += 1
                    batch.append(_task_row(job, spec, rows, now))
                    if len(batch) >= IMPORT_BATCH:
                        if writing is not None:
                            await writing
                        writing = asyncio.ensure_future(self._upsert_tasks(conn, batch))
                        for _ in range(3):  # let it reach the driver's thread before parsing on
                            await asyncio.sleep(0)
                        batch = []
            finally:
                if writing is not None:  # also before a manifest error rolls the transaction back
                    await writing
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
        self, conn: AsyncConnection, settings: JobSettings, manifest: str, extra: dict[str, Any], now: float
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

    async def _upsert_tasks(self, conn: AsyncConnection, batch: list[tuple[Any, ...]]) -> None:
        # The upsert is declared with SQLAlchemy and compiled once per dialect; the rows go to the driver's
        # executemany as plain tuples, skipping per-row parameter processing (a million rows per import).
        await conn.exec_driver_sql(_import_sql(conn.dialect), batch)

    @staticmethod
    async def _count(conn: AsyncConnection, job_id: int) -> int:
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

    # --- workers and claims ----------------------------------------------------------------------------

    async def register_worker(self, worker_id: str, host: str, pid: int, job_names: str, now: float) -> None:
        async def op(conn: AsyncConnection) -> None:
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

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(workers).where(workers.c.id == worker_id).values(heartbeat_at=now))
            await conn.execute(update(tasks).where(tasks.c.claimed_by == worker_id).values(lease_until=lease_until))

        await self.writer.run(op)

    async def stop_worker(self, worker_id: str, now: float, *, dead: bool = False) -> None:
        """Mark a worker stopped and let go of what it holds (its leases end now)."""

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(workers).where(workers.c.id == worker_id).values(stopped_at=now))
            await conn.execute(
                update(tasks)
                .where(tasks.c.claimed_by == worker_id)
                .values(claim_token=None, claimed_by=None, lease_until=None)
            )
            if dead:  # its creates in flight may or may not have reached the API
                await _mark_stale_submissions_unknown(conn, now, worker_id)

        await self.writer.run(op)

    async def recover(self, job_id: int, now: float) -> int:
        """Tasks left `submitting` by a worker whose lease ran out become `unknown`; returns how many."""

        async def op(conn: AsyncConnection) -> int:
            return await _mark_stale_submissions_unknown(conn, now, None, job_id)

        return await self.writer.run(op)

    async def claim(
        self, job: Job, worker_id: str, limit: int, now: float, lease_until: float, *, pending: int | None = None
    ) -> list[Task]:
        """Take up to `limit` tasks that are due: submitted ones first (finished work is collected first), then
        at most `pending` (default: `limit`) still to be created, so that other workers get their share."""
        to_create = limit if pending is None else min(pending, limit)

        async def op(conn: AsyncConnection) -> list[Task]:
            token = uuid.uuid4().hex
            got: list[Task] = []
            groups = [(tasks.c.status == S.SUBMITTED, False), (tasks.c.status == S.UNKNOWN, True)]
            groups.append(
                (and_(tasks.c.status == S.PENDING, tasks.c.import_gen == job.import_gen, _inputs_settled()), True)
            )
            creates = 0
            for wanted, to_be_created in groups:
                room = limit - len(got)
                if to_be_created:
                    room = min(room, to_create - creates)
                if room <= 0:
                    continue
                due = (
                    select(tasks.c.id)
                    .where(
                        tasks.c.job_id == job.id,
                        wanted,
                        tasks.c.next_attempt_at <= now,
                        or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now),
                    )
                    .order_by(tasks.c.seq)
                    .limit(room)
                    .with_for_update(skip_locked=True)  # PostgreSQL; SQLite's BEGIN IMMEDIATE serialises
                )
                stmt = (
                    update(tasks)
                    .where(tasks.c.id.in_(due.scalar_subquery()))
                    .values(claim_token=token, claimed_by=worker_id, lease_until=lease_until)
                    .returning(*_TASK_COLUMNS)
                )
                rows = [_task(r) for r in (await conn.execute(stmt)).mappings()]
                got += rows
                creates += len(rows) if to_be_created else 0
            got.sort(key=lambda t: t.seq)
            return got

        return await self.writer.run(op)

    async def next_due(self, job: Job, now: float) -> tuple[int, float | None]:
        """How many tasks of the job are not final, and when the earliest one not held by anyone is due."""
        open_ = or_(
            tasks.c.status.in_([S.SUBMITTING, S.SUBMITTED, S.UNKNOWN]),
            and_(tasks.c.status == S.PENDING, tasks.c.import_gen == job.import_gen),
        )
        due_at = case(
            (~_inputs_settled(), None),  # cache and chains: waits for its input task, not for a time
            (or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now), tasks.c.next_attempt_at),
            else_=tasks.c.lease_until,
        )
        row = (await self._rows(select(func.count(), func.min(due_at)).where(tasks.c.job_id == job.id, open_)))[0]
        return int(row[0]), row[1]

    # --- transitions (fenced by the claim) -------------------------------------------------------------

    async def _transition(
        self,
        task: Task,
        frm: tuple[TaskStatus, ...],
        values: dict[str, Any],
        call: CallRecord | None,
        now: float,
        *,
        incr: dict[str, int] | None = None,
        release: bool = False,
    ) -> None:
        """Change a claimed task's row, if it is still ours and in one of the states `frm`."""
        if release:
            values = {**values, "claim_token": None, "claimed_by": None, "lease_until": None}
        incr = incr or {}
        stmt = _transition_stmt(frm, tuple(sorted(values)), tuple(sorted(incr)))
        params = {f"v_{k}": v for k, v in values.items()}
        params.update({f"inc_{k}": n for k, n in incr.items()})
        params.update(_id=task.id, _token=task.claim_token, _now=now)
        if call is not None:
            self.writer.post(RowChange(_INSERT_CALL, _call_values(task, call, self.worker_id)))
        if await self.writer.change(RowChange(stmt, params, fenced=True)) != 1:
            raise ClaimLost(f"task {task.key} was taken over by another worker")
        if "status" in values:
            task.status = TaskStatus(values["status"])

    async def begin_create(self, task: Task, now: float) -> None:
        """Commit the intent to create (before the request is sent): a crash from here on is `unknown`."""
        await self._transition(
            task, (S.PENDING, S.UNKNOWN), {"status": S.SUBMITTING, "remote_task_id": None}, None, now,
            incr={"attempts": 1},
        )  # fmt: skip
        task.attempts += 1

    async def created(self, task: Task, remote_id: str, price_micros: int | None, call: CallRecord, now: float) -> None:
        """The API accepted the create: from now on the task is only ever polled."""
        await self._transition(
            task,
            (S.SUBMITTING,),
            {
                "status": S.SUBMITTED,
                "remote_task_id": remote_id,
                "submitted_at": now,
                "price_reported_micros": price_micros,
            },
            call,
            now,
        )
        task.remote_task_id, task.submitted_at = remote_id, now

    async def create_unknown(self, task: Task, error: str, call: CallRecord, now: float) -> None:
        """The create may or may not have been accepted (timeout or reset after sending it)."""
        await self._transition(
            task, (S.SUBMITTING,), {"status": S.UNKNOWN, "last_error": error}, call, now, incr={"unknown_count": 1}
        )
        task.unknown_count += 1

    async def retry_later(
        self,
        task: Task,
        next_at: float,
        error: str,
        call: CallRecord | None,
        now: float,
        *,
        generation_failed: bool = False,
        refund_attempt: bool = False,
    ) -> None:
        """Back to `pending` (to be created again at `next_at`), letting go of the claim. `refund_attempt`:
        the API answered that it did not take the create (429, rejected key), so it does not count."""
        values: dict[str, Any] = {"status": S.PENDING, "next_attempt_at": next_at, "last_error": error}
        incr: dict[str, int] = {}
        if refund_attempt:
            incr["attempts"] = -1
            task.attempts -= 1
        if generation_failed:
            incr["gen_failures"] = 1
            values["remote_task_id"] = None
        await self._transition(task, (S.SUBMITTING, S.SUBMITTED, S.UNKNOWN), values, call, now, incr=incr, release=True)

    async def poll_later(self, task: Task, next_at: float, call: CallRecord | None, now: float) -> None:
        """A submitted task goes back to the pool, to be polled at `next_at` (used when letting go of it)."""
        await self._transition(task, (S.SUBMITTED,), {"next_attempt_at": next_at}, call, now, release=True)

    async def failed(
        self,
        task: Task,
        error: str,
        call: CallRecord | None,
        now: float,
        *,
        generation_failed: bool = False,
        cost_micros: int = 0,
    ) -> None:
        """Final failure. `cost_micros`: the generation succeeded (and was billed) but its file was unusable."""
        values: dict[str, Any] = {
            "status": S.FAILED,
            "last_error": error,
            "finished_at": now,
            "cost_micros": cost_micros,
        }
        incr = {"gen_failures": 1} if generation_failed else {}
        await self._transition(
            task, (S.PENDING, S.SUBMITTING, S.SUBMITTED, S.UNKNOWN), values, call, now, incr=incr, release=True
        )

    async def succeeded(
        self,
        task: Task,
        *,
        output_path: str,
        sha256: str,
        size: int,
        width: int,
        height: int,
        fmt: str,
        cost_micros: int,
        call: CallRecord | None,
        now: float,
    ) -> None:
        await self._transition(
            task,
            (S.SUBMITTED,),
            {
                "status": S.SUCCEEDED,
                "output_path": output_path,
                "sha256": sha256,
                "bytes": size,
                "width": width,
                "height": height,
                "image_format": fmt,
                "cost_micros": cost_micros,
                "finished_at": now,
                "last_error": None,
            },
            call,
            now,
            release=True,
        )

    async def release(self, task: Task, now: float) -> None:
        """Let go of a task without changing its state (stopping): another run takes it at once."""

        params = {"_id": task.id, "_token": task.claim_token, "_now": now}
        await self.writer.change(RowChange(_RELEASE, params))

    def log_call(self, task: Task, call: CallRecord) -> None:
        """Append a call record with the next commit (polls: not worth a commit of their own)."""
        self.writer.post(RowChange(_INSERT_CALL, _call_values(task, call, self.worker_id)))

    # --- what runs learned --------------------------------------------------------------------------------

    async def learned(self) -> dict[str, Any]:
        return {r["name"]: json.loads(r["value"]) for r in await self._read(select(learned))}

    async def remember(self, values: dict[str, Any], now: float) -> None:
        async def op(conn: AsyncConnection) -> None:
            for name, value in values.items():
                stmt = self._insert(learned).values(name=name, value=json.dumps(value), updated_at=now)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[learned.c.name], set_={"value": stmt.excluded.value, "updated_at": now}
                )
                await conn.execute(stmt)

        await self.writer.run(op)

    # --- the account's shared rate (PostgreSQL: many workers, one limit) ---------------------------------

    async def bucket_setup(self, name: str, rate: float, capacity: float) -> None:
        """Create the bucket, or set its rate (the newest configuration wins; its tokens are kept)."""

        async def op(conn: AsyncConnection) -> None:
            now = await _db_now(conn)
            stmt = self._insert(rate_buckets).values(name=name, rate=rate, capacity=capacity, tokens=capacity,
                                                     updated_at=now)  # fmt: skip
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[rate_buckets.c.name], set_={"rate": rate, "capacity": capacity}
                )
            )

        await self.writer.run(op)

    async def bucket_take(self, name: str) -> float:
        """Take one token: 0 when granted, else the seconds until one will be there (by the database's clock,
        so workers on machines with skewed clocks still share one rate)."""

        async def op(conn: AsyncConnection) -> float:
            now = await _db_now(conn)
            elapsed = now - rate_buckets.c.updated_at
            refilled = rate_buckets.c.tokens + rate_buckets.c.rate * case((elapsed > 0, elapsed), else_=0.0)
            level = case((refilled > rate_buckets.c.capacity, rate_buckets.c.capacity), else_=refilled)
            got = await conn.execute(
                update(rate_buckets)
                .where(rate_buckets.c.name == name, level >= 1.0)
                .values(tokens=level - 1.0, updated_at=now)
                .returning(rate_buckets.c.tokens)
            )
            if got.first() is not None:
                return 0.0
            row = (await conn.execute(select(rate_buckets).where(rate_buckets.c.name == name))).mappings().first()
            if row is None:
                return 0.0
            have = min(row["capacity"], row["tokens"] + row["rate"] * max(now - row["updated_at"], 0.0))
            return max((1.0 - float(have)) / float(row["rate"]), 0.001)

        return await self.writer.run(op)

    async def bucket_hold(self, name: str, seconds: float, factor: float) -> None:
        """A 429 seen by one worker holds every worker: the bucket owes `seconds` of tokens, and its rate is cut."""

        async def op(conn: AsyncConnection) -> None:
            now = await _db_now(conn)
            await conn.execute(
                update(rate_buckets)
                .where(rate_buckets.c.name == name)
                .values(tokens=-rate_buckets.c.rate * seconds, rate=rate_buckets.c.rate * factor, updated_at=now)
            )

        await self.writer.run(op)

    # --- reading for status and reports ----------------------------------------------------------------

    async def status_counts(self) -> dict[str, dict[str, int]]:
        """Per job name: tasks per status (a pending task the manifest no longer lists counts as retired)."""
        status = case(
            (and_(tasks.c.status == S.PENDING, tasks.c.import_gen < jobs.c.import_gen), "retired"), else_=tasks.c.status
        )
        rows = await self._read(
            select(jobs.c.name, status.label("status"), func.count().label("n"))
            .select_from(jobs.outerjoin(tasks, tasks.c.job_id == jobs.c.id))
            .group_by(jobs.c.name, status)
        )
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            counts = out.setdefault(r["name"], {})
            if r["status"] is not None:
                counts[r["status"]] = int(r["n"])
        return out

    async def ledger(self, job: Job) -> Ledger:
        counts = (await self.status_counts()).get(job.name, {})
        ledger = Ledger(counts={k: v for k, v in counts.items() if k != "retired"}, retired=counts.get("retired", 0))
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
                ).where(tasks.c.job_id == job.id)
            )
        )[0]
        ledger.cost_micros, ledger.gen_failures, ledger.unknown_submissions = int(row[0]), int(row[1]), int(row[2])
        # billed: generations that reached Success, including any whose file then proved unusable
        ledger.price_mismatches, ledger.billed_calls = int(row[3]), int(row[4])
        for r in await self._rows(
            select(
                api_calls.c.kind, api_calls.c.outcome, func.count(), func.min(api_calls.c.at), func.max(api_calls.c.at)
            )
            .where(api_calls.c.job_id == job.id)
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

    async def calls(self, job: Job) -> list[RowMapping]:
        return await self._read(select(api_calls).where(api_calls.c.job_id == job.id).order_by(api_calls.c.id))

    # --- cache and chains ---------------------------------------------------------------------------------

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


_INSERT_CALL = insert(api_calls)
_RELEASE = (
    update(tasks)
    .where(tasks.c.id == bindparam("_id"), tasks.c.claim_token == bindparam("_token"))
    .values(claim_token=None, claimed_by=None, lease_until=None, updated_at=bindparam("_now"))
)


@functools.cache
def _transition_stmt(frm: tuple[TaskStatus, ...], keys: tuple[str, ...], incr: tuple[str, ...]) -> Any:
    """One prepared UPDATE per kind of transition, so SQLAlchemy compiles it once and the writer can batch it."""
    values: dict[str, Any] = {k: bindparam(f"v_{k}") for k in keys}
    values.update({k: tasks.c[k] + bindparam(f"inc_{k}") for k in incr})
    return (
        update(tasks)
        .where(
            tasks.c.id == bindparam("_id"),
            tasks.c.claim_token == bindparam("_token"),
            or_(*(tasks.c.status == literal(str(s)) for s in frm)),
        )
        .values(updated_at=bindparam("_now"), **values)
    )


async def _db_now(conn: AsyncConnection) -> float:
    """Epoch seconds by the database server's clock on PostgreSQL (one clock for all machines)."""
    if conn.dialect.name == "postgresql":
        return float((await conn.execute(select(func.extract("epoch", func.clock_timestamp())))).scalar_one())
    return time.time()


async def _mark_stale_submissions_unknown(
    conn: AsyncConnection, now: float, worker_id: str | None, job_id: int | None = None
) -> int:
    cond = [tasks.c.status == S.SUBMITTING]
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


def _micros(usd: Any) -> int | None:
    return None if usd is None else round(usd * 1_000_000)


@functools.cache
def _import_sql(dialect: Any) -> str:
    insert_ = (postgresql.insert if dialect.name == "postgresql" else sqlite.insert)(tasks)
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


def _call_values(task: Task, call: CallRecord, worker_id: str | None) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "job_id": task.job_id,
        "task_id": task.id,
        "kind": call.kind,
        "http_status": call.http_status,
        "outcome": call.outcome,
        "latency_ms": call.latency_ms,
        "at": call.at,
        "remote_task_id": call.remote_task_id,
        "price_micros": call.price_micros,
        "detail": call.detail,
    }


# --- cache and chains -----------------------------------------------------------------------------------

CACHE_CANDIDATES = 5  # finished outputs of one spec tried before giving up on the cache
_parent = tasks.alias("parent")


@dataclass(frozen=True, slots=True)
class CachedOutput:
    """A finished output that may satisfy a task of the same spec: its task id, file and recorded sha256."""

    task_id: int
    path: str
    sha256: str


def _inputs_settled() -> Any:
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
