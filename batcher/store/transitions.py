"""Every change of a claimed task's state, fenced by its claim token, batched by the writer."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import and_, bindparam, case, insert, literal, or_, select, update

from batcher.catalog import DEFAULT_PROVIDER
from batcher.models import CallRecord, Failure, TaskStatus
from batcher.store.base import BudgetRefused, ClaimLost, S, StoreBase, Stray, StrayReply, Task
from batcher.store.changes import RowChange, WriteConnection
from batcher.store.tables import api_calls, jobs, strays, tasks


class TransitionsPart(StoreBase):
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
        release_micros: int = 0,
        patient: bool = True,
    ) -> None:
        """Change a claimed task's row, if it is still ours and in one of the states `frm`. `patient`: its commit
        may wait a little for others (see writer.py). `release_micros`: a reservation its outcome lets go of."""
        stmt, params = self._transition_change(task, frm, values, now, incr=incr, release=release,
                                               release_micros=release_micros)  # fmt: skip
        if call is not None:
            self.writer.post(RowChange(_INSERT_CALL, _call_values(task, call, self.worker_id)))
        if await self.writer.change(RowChange(stmt, params, fenced=True), patient=patient) != 1:
            raise ClaimLost(f"task {task.key} was taken over by another worker")
        if "status" in values:
            task.status = TaskStatus(values["status"])

    @staticmethod
    def _transition_change(
        task: Task,
        frm: tuple[TaskStatus, ...],
        values: dict[str, Any],
        now: float,
        *,
        incr: dict[str, int] | None = None,
        release: bool = False,
        release_micros: int = 0,
        budget: bool = False,
        unset: str | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """The statement and parameters of a transition; `unset`: only while that column is still NULL."""
        if release:
            values = {**values, "claim_token": None, "claimed_by": None, "lease_until": None}
        incr = incr or {}
        stmt = _transition_stmt(frm, tuple(sorted(values)), tuple(sorted(incr)), release_micros > 0, budget, unset)
        params = {f"v_{k}": v for k, v in values.items()}
        params.update({f"inc_{k}": n for k, n in incr.items()})
        params.update(_id=task.id, _token=task.claim_token, _now=now)
        if release_micros > 0:
            params["_free"] = release_micros
        return stmt, params

    async def begin_create(
        self,
        task: Task,
        now: float,
        *,
        price_micros: int = 0,
        budget_micros: int | None = None,
        provider: str = DEFAULT_PROVIDER,
    ) -> None:
        """Commit the intent to create (before the request is sent): a crash from here on is `unknown`. The
        create's price is reserved in the same commit; with a budget, only if the job's spend plus every
        reservation (of any worker) leaves room for it, else `BudgetRefused` and nothing changed. `provider`:
        the API it goes to, the only one that drives it from now on until it is final or pending again."""
        frm = (S.PENDING, S.UNKNOWN)
        values = {"status": S.SUBMITTING, "remote_task_id": None, "provider": provider}
        incr = {"attempts": 1, "reserved_micros": price_micros}
        if budget_micros is None:
            await self._transition(task, frm, values, None, now, incr=incr)
        else:
            stmt, params = self._transition_change(task, frm, values, now, incr=incr, budget=True)
            params.update(_job=task.job_id, _price=price_micros, _budget=budget_micros)

            async def op(conn: WriteConnection) -> int:
                if conn.dialect.name == "postgresql":
                    # one reservation of the job at a time across workers: the check below then sees every
                    # reservation committed before it (SQLite's writers are serialised already)
                    await conn.execute(select(jobs.c.id).where(jobs.c.id == task.job_id).with_for_update())
                return int((await conn.execute(stmt, params)).rowcount)

            if await self.writer.run(op) != 1:
                if await self._still_ours(task):
                    raise BudgetRefused(f"task {task.key}: the budget has no room for another create")
                raise ClaimLost(f"task {task.key} was taken over by another worker")
            task.status = S.SUBMITTING
        task.attempts += 1

    async def _still_ours(self, task: Task) -> bool:
        rows = await self._rows(select(tasks.c.claim_token).where(tasks.c.id == task.id))
        return bool(rows) and rows[0][0] == task.claim_token

    async def created(
        self,
        task: Task,
        remote_id: str,
        price_micros: int | None,
        call: CallRecord,
        now: float,
        *,
        reserved_micros: int = 0,
        stray_lease_until: float | None = None,
        adopt: bool = True,
        provider: str = DEFAULT_PROVIDER,
    ) -> None:
        """The API accepted the create: from now on the task is only ever polled. If the task was taken over
        meanwhile, the remote id is kept all the same, as a stray this worker holds (`StrayReply`). `adopt`:
        may a task taken over but not created again take the id as its own (not when the reply held the image
        itself: nobody could fetch it again, so it is kept as a stray by the worker that holds it)."""
        try:
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
                patient=False,  # the window in which a crash leaves the create unknown ends with this commit
            )
        except ClaimLost:
            if adopt and await self._adopt(task, remote_id, price_micros, now):
                raise ClaimLost(f"task {task.key}: its create was accepted after another worker took it over, "
                                f"before it was created again: {remote_id} is the task's now") from None  # fmt: skip
            cost = price_micros if price_micros is not None else reserved_micros
            stray = await self._record_stray(task, remote_id, cost, now, stray_lease_until or now + 60.0, provider)
            raise StrayReply(f"task {task.key}: its create was accepted after another worker took it over; "
                             f"polling {remote_id} to keep its image as a paid duplicate", stray) from None  # fmt: skip
        task.remote_task_id, task.submitted_at = remote_id, now

    async def _adopt(self, task: Task, remote_id: str, price_micros: int | None, now: float) -> bool:
        """A late reply for a task taken over but not yet created again (`unknown`, its create not sent): the
        task takes the remote id as its own, to be polled by whoever claims it, and is not created twice. The
        unknown submission it was counted as is known now."""
        stmt = (
            update(tasks)
            .where(tasks.c.id == task.id, tasks.c.status == S.UNKNOWN)
            .values(status=S.SUBMITTED, remote_task_id=remote_id, submitted_at=now, price_reported_micros=price_micros,
                    next_attempt_at=0.0, claim_token=None, claimed_by=None, lease_until=None, updated_at=now,
                    unknown_count=case((tasks.c.unknown_count > 0, tasks.c.unknown_count - 1), else_=0))
        )  # fmt: skip

        async def op(conn: WriteConnection) -> int:
            return int((await conn.execute(stmt)).rowcount)

        return await self.writer.run(op) == 1

    async def _record_stray(
        self, task: Task, remote_id: str, price: int, now: float, lease_until: float, provider: str
    ) -> Stray:
        async def op(conn: WriteConnection) -> int:
            stmt = self._insert(strays).values(
                job_id=task.job_id, task_id=task.id, remote_task_id=remote_id, status="submitted", price_micros=price,
                claimed_by=self.worker_id, lease_until=lease_until, created_at=now, provider=provider,
            ).on_conflict_do_nothing(index_elements=[strays.c.remote_task_id])  # fmt: skip
            await conn.execute(stmt)
            row = await conn.execute(select(strays.c.id).where(strays.c.remote_task_id == remote_id))
            return int(row.scalar_one())

        return Stray(await self.writer.run(op), task.job_id, task.id, remote_id, price, task.filename)

    async def create_unknown(
        self, task: Task, error: str, call: CallRecord, now: float, *, retry_at: float | None = None
    ) -> None:
        """The create may or may not have been accepted (timeout or reset after sending it, or a reply that
        proves nothing). Its reservation stays: it may have been billed. `retry_at`: let go of the task, to be
        created again from then on (it stays `unknown`, so `--on-unknown=skip` still sees it)."""
        values: dict[str, Any] = {"status": S.UNKNOWN, "last_error": error}
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        await self._transition(
            task, (S.SUBMITTING,), values, call, now, incr={"unknown_count": 1}, release=retry_at is not None
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
        release_micros: int = 0,
    ) -> None:
        """Back to `pending` (to be created again at `next_at`), letting go of the claim. `refund_attempt`:
        the API answered that it did not take the create (429, rejected key), so it does not count.
        `release_micros`: the create that ended so cost nothing; its reservation goes."""
        values: dict[str, Any] = {"status": S.PENDING, "next_attempt_at": next_at, "last_error": error}
        incr: dict[str, int] = {}
        if refund_attempt:
            incr["attempts"] = -1
            task.attempts -= 1
        if generation_failed:
            incr["gen_failures"] = 1
            values["remote_task_id"] = None
        await self._transition(task, (S.SUBMITTING, S.SUBMITTED, S.UNKNOWN), values, call, now, incr=incr,
                               release=True, release_micros=release_micros)  # fmt: skip

    def billed(self, task: Task, cost_micros: int, release_micros: int, now: float) -> None:
        """A Success was seen: the call is billed from now on, whatever its download does. Posted with the next
        commit, ahead of the download's own outcome."""
        stmt, params = self._transition_change(task, (S.SUBMITTED,), {"billed_at": now, "cost_micros": cost_micros},
                                               now, release_micros=release_micros, unset="billed_at")  # fmt: skip
        self.writer.post(RowChange(stmt, params, fenced=True))
        task.billed_at = now

    async def failed(
        self,
        task: Task,
        error: str,
        call: CallRecord | None,
        now: float,
        *,
        failure: Failure,
        generation_failed: bool = False,
        release_micros: int = 0,
    ) -> None:
        """Final failure, and why. A billed call keeps its cost (`billed`); `release_micros`: the create that
        ended so cost nothing."""
        values: dict[str, Any] = {"status": S.FAILED, "last_error": error, "finished_at": now, "failure": failure}
        incr = {"gen_failures": 1} if generation_failed else {}
        await self._transition(task, (S.PENDING, S.SUBMITTING, S.SUBMITTED, S.UNKNOWN), values, call, now,
                               incr=incr, release=True, release_micros=release_micros)  # fmt: skip

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
        note: str | None = None,
    ) -> None:
        """`note`: why the image is not under its own name (kept in `last_error`; the report shows it)."""
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
                "last_error": note,
                "failure": None,
            },
            call,
            now,
            release=True,
        )

    async def release(self, task: Task, now: float) -> None:
        """Let go of a task without changing its state (stopping): another run takes it at once."""

        params = {"_id": task.id, "_token": task.claim_token, "_now": now}
        await self.writer.change(RowChange(_RELEASE, params), patient=True)

    def log_call(self, task: Task | Stray, call: CallRecord) -> None:
        """Append a call record with the next commit (polls: not worth a commit of their own)."""
        self.writer.post(RowChange(_INSERT_CALL, _call_values(task, call, self.worker_id)))

    # --- stray replies --------------------------------------------------------------------------------

    async def claim_strays(
        self, job_id: int, now: float, lease_until: float, provider: str = DEFAULT_PROVIDER
    ) -> list[Stray]:
        """Take the job's strays nobody polls (their worker stopped, or its lease ran out) that `provider` holds."""

        async def op(conn: WriteConnection) -> list[Stray]:
            free = and_(strays.c.job_id == job_id, strays.c.status == "submitted", strays.c.provider == provider,
                        or_(strays.c.lease_until.is_(None), strays.c.lease_until < now))  # fmt: skip
            stmt = (
                update(strays)
                .where(free)
                .values(claimed_by=self.worker_id, lease_until=lease_until)
                .returning(strays.c.id, strays.c.job_id, strays.c.task_id, strays.c.remote_task_id,
                           strays.c.price_micros)
            )  # fmt: skip
            rows: list[tuple[Any, ...]] = [tuple(r) for r in (await conn.execute(stmt)).all()]
            names: dict[int, str] = {}
            if rows:
                found = await conn.execute(
                    select(tasks.c.id, tasks.c.filename).where(tasks.c.id.in_([r[2] for r in rows]))
                )
                names = {int(m["id"]): str(m["filename"]) for m in found.mappings()}
            return [
                Stray(int(r[0]), int(r[1]), int(r[2]), str(r[3]), int(r[4]), names.get(int(r[2]), f"task-{r[2]}.png"))
                for r in rows
            ]

        return await self.writer.run(op)

    async def stray_done(
        self,
        stray: Stray,
        status: str,
        now: float,
        *,
        billed: bool,
        output_path: str | None = None,
        sha256: str | None = None,
        detail: str | None = None,
    ) -> None:
        """A stray's end: billed (its image kept as a paid duplicate, or lost), or not (its generation failed).
        Its task's reservation for it goes either way; a billed one's cost becomes the job's spend."""
        cost = stray.price_micros if billed else 0

        async def op(conn: WriteConnection) -> None:
            changed = await conn.execute(
                update(strays).where(strays.c.id == stray.id, strays.c.status == "submitted").values(
                    status=status, cost_micros=cost, output_path=output_path, sha256=sha256, detail=detail,
                    finished_at=now, claimed_by=None, lease_until=None,
                )
            )  # fmt: skip
            if changed.rowcount != 1:
                return  # finished already by another worker
            await conn.execute(  # its cost is the job's spend by the strays' trigger (migration 0005)
                update(tasks).where(tasks.c.id == stray.task_id).values(reserved_micros=_freed(stray.price_micros))
            )

        await self.writer.run(op)


def _freed(amount: Any) -> Any:
    """`reserved_micros` less `amount`, never below zero (a store upgraded mid-run holds no reservation)."""
    return case((tasks.c.reserved_micros > amount, tasks.c.reserved_micros - amount), else_=0)


_INSERT_CALL = insert(api_calls)
_RELEASE = (
    update(tasks)
    .where(tasks.c.id == bindparam("_id"), tasks.c.claim_token == bindparam("_token"))
    .values(claim_token=None, claimed_by=None, lease_until=None, updated_at=bindparam("_now"))
)


@functools.cache
def _transition_stmt(
    frm: tuple[TaskStatus, ...],
    keys: tuple[str, ...],
    incr: tuple[str, ...],
    free: bool,
    budget: bool,
    unset: str | None,
) -> Any:
    """One prepared UPDATE per kind of transition, so SQLAlchemy compiles it once and the writer can batch it.
    `free`: lets go of `_free` of the reservation; `budget`: only if the job's spend plus every reservation plus
    `_price` stays within `_budget` (the counters are kept by a trigger, migration 0005); `unset`: only while
    that column is still NULL (a change made once, by whichever worker comes first)."""
    values: dict[str, Any] = {k: bindparam(f"v_{k}") for k in keys}
    values.update({k: tasks.c[k] + bindparam(f"inc_{k}") for k in incr})
    if free:
        values["reserved_micros"] = _freed(bindparam("_free"))
    where = [
        tasks.c.id == bindparam("_id"),
        tasks.c.claim_token == bindparam("_token"),
        or_(*(tasks.c.status == literal(str(s)) for s in frm)),
    ]
    if unset is not None:
        where.append(tasks.c[unset].is_(None))
    if budget:
        committed = select(jobs.c.spent_micros + jobs.c.held_micros).where(jobs.c.id == bindparam("_job"))
        where.append(committed.scalar_subquery() + bindparam("_price") <= bindparam("_budget"))
    return update(tasks).where(*where).values(updated_at=bindparam("_now"), **values)


def _call_values(task: Task | Stray, call: CallRecord, worker_id: str | None) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "job_id": task.job_id,
        "task_id": task.task_id if isinstance(task, Stray) else task.id,
        "kind": call.kind,
        "http_status": call.http_status,
        "outcome": call.outcome,
        "latency_ms": call.latency_ms,
        "at": call.at,
        "remote_task_id": call.remote_task_id,
        "price_micros": call.price_micros,
        "detail": call.detail,
    }
