"""Batch Mode shards: one submission of many tasks, committed before anything leaves, and its lines' outcomes.

A shard's life: `planned` (its tasks `submitting`, their price reserved) -> `uploaded` (its requests file is at
the API) -> `creating` (committed before the create request leaves: from here a restart must list the account's
batches by display name before creating again) -> `created` (the batch's name is known; its tasks `submitted`)
-> the remote states it reports -> `collected` (every line settled), or abandoned (`failed`, `cancelled`,
`expired`: its unfinished tasks back to pending). Each change is fenced: a shard by the states it may leave, a
task by its claim token, so a second worker (or a stale one) changes nothing.

Money follows migration 0005's triggers: a line's reservation and cost live on its task's row
(`reserved_micros`, `cost_micros`), so jobs.held_micros/spent_micros and every budget check see shards too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import RowMapping

from batcher.models import Failure
from batcher.store.base import _TASK_COLUMNS, BudgetRefused, ClaimLost, Job, S, Task, _task
from batcher.store.changes import WriteConnection
from batcher.store.tables import jobs, submissions, tasks
from batcher.store.transitions import TransitionsPart, _freed

GEMINI = "gemini"
BATCH = "batch"

PLANNED = "planned"
UPLOADED = "uploaded"
CREATING = "creating"
CREATED = "created"
COLLECTED = "collected"
ABANDONED = frozenset({"failed", "cancelled", "expired"})
CLOSED = frozenset({COLLECTED, "closed", *ABANDONED})  # nothing more happens to these
_UNCREATED = (PLANNED, UPLOADED, CREATING)
_OPEN_TASK = (S.PENDING, S.SUBMITTING, S.SUBMITTED, S.UNKNOWN)
_CHUNK = 500  # ids per IN (...): far below either engine's limit on bound parameters


@dataclass(slots=True)
class Submission:
    id: int
    job_id: int
    provider: str
    route: str
    display_name: str
    remote_name: str | None
    input_file: str | None
    state: str
    requests: int
    request_bytes: int
    reserved_micros: int
    detail: str | None
    created_at: float
    updated_at: float

    @property
    def price_each(self) -> int:
        """What each line reserved when the shard was planned (every line of a shard has the one batch price)."""
        return self.reserved_micros // self.requests if self.requests else 0


_FIELDS = tuple(f.name for f in fields(Submission))


def _submission(row: RowMapping) -> Submission:
    return Submission(**{name: row[name] for name in _FIELDS})


class DuplicateShard(Exception):
    """A submission of that display name exists already: nothing was changed."""


class ShardMoved(ClaimLost):
    """The shard is no longer in a state this change may leave (another worker moved it, or it is closed)."""


class SubmissionsPart(TransitionsPart):
    async def plan_shard(
        self,
        job: Job,
        claimed: Sequence[Task],
        display_name: str,
        price_micros_each: int,
        budget_micros: int | None,
        now: float,
        *,
        request_bytes: int = 0,
        provider: str = GEMINI,
    ) -> Submission:
        """Commit a shard in ONE transaction: its submission (`planned`), and its tasks `submitting` with
        `provider`, `submission_id`, one more attempt and `price_micros_each` reserved each, as `begin_create`
        does per task. Nothing is changed when any task is no longer ours (`ClaimLost`), when the job's spend
        plus every reservation leaves no room for the whole shard (`BudgetRefused`), or when the display name
        is taken (`DuplicateShard`); each is decided inside the transaction, so a group commit it shares is
        never rolled back by it."""
        if not claimed:
            raise ValueError("a shard holds at least one task")
        ids = [t.id for t in claimed]
        tokens = {t.id: t.claim_token for t in claimed}
        total = price_micros_each * len(claimed)

        async def op(conn: WriteConnection) -> tuple[str, int]:
            if conn.dialect.name == "postgresql":
                # one reservation of the job at a time across workers, as begin_create; then the tasks, so
                # nobody takes one over between the check below and the update
                await conn.execute(select(jobs.c.id).where(jobs.c.id == job.id).with_for_update())
            for chunk in _chunks(ids):
                found = select(tasks.c.id, tasks.c.claim_token, tasks.c.status).where(tasks.c.id.in_(chunk))
                if conn.dialect.name == "postgresql":
                    found = found.with_for_update()
                rows: list[tuple[Any, ...]] = [tuple(r) for r in (await conn.execute(found)).all()]
                ours = [r for r in rows if r[1] == tokens[r[0]] and r[2] in (S.PENDING, S.UNKNOWN)]
                if len(ours) != len(chunk):
                    return "lost", 0
            if budget_micros is not None:
                committed = (
                    await conn.execute(select(jobs.c.spent_micros + jobs.c.held_micros).where(jobs.c.id == job.id))
                ).scalar_one()
                if int(committed) + total > budget_micros:
                    return "budget", 0
            inserted = await conn.execute(
                self._insert(submissions)
                .values(job_id=job.id, provider=provider, route=BATCH, display_name=display_name, state=PLANNED,
                        requests=len(claimed), request_bytes=request_bytes, reserved_micros=total, created_at=now,
                        updated_at=now)
                .on_conflict_do_nothing(index_elements=[submissions.c.display_name])
                .returning(submissions.c.id)
            )  # fmt: skip
            sub_id = inserted.scalar()
            if sub_id is None:
                return "duplicate", 0
            changed = 0
            for chunk in _chunks(ids):
                result = await conn.execute(
                    update(tasks)
                    .where(tasks.c.id.in_(chunk))
                    .values(status=S.SUBMITTING, provider=provider, submission_id=sub_id, remote_task_id=None,
                            attempts=tasks.c.attempts + 1, reserved_micros=tasks.c.reserved_micros + price_micros_each,
                            updated_at=now)
                )  # fmt: skip
                changed += int(result.rowcount)
            if changed != len(ids):  # checked and locked above: only a bug gets here; the group rolls back
                raise RuntimeError(f"shard {display_name}: {changed} of {len(ids)} tasks changed")
            return "ok", int(sub_id)

        outcome, sub_id = await self.writer.run(op)
        if outcome == "lost":
            raise ClaimLost(f"shard {display_name}: a task was taken over by another worker")
        if outcome == "budget":
            raise BudgetRefused(f"shard {display_name}: the budget has no room for {len(claimed)} more requests")
        if outcome == "duplicate":
            raise DuplicateShard(f"a shard named {display_name} exists already")
        for t in claimed:
            t.status = S.SUBMITTING
            t.attempts += 1
            t.remote_task_id = None
        return Submission(sub_id, job.id, provider, BATCH, display_name, None, None, PLANNED, len(claimed),
                          request_bytes, total, None, now, now)  # fmt: skip

    # --- the shard's own states -----------------------------------------------------------------------

    async def _move_shard(self, sub: Submission, frm: Any, told: str, values: dict[str, Any], now: float) -> None:
        """Change the shard's row if `frm` (a condition on it) still holds; else `ShardMoved`, saying `told`."""
        stmt = update(submissions).where(submissions.c.id == sub.id, frm).values(updated_at=now, **values)

        async def op(conn: WriteConnection) -> int:
            return int((await conn.execute(stmt)).rowcount)

        if await self.writer.run(op) != 1:
            raise ShardMoved(f"shard {sub.display_name} is no longer {told}")
        for k, v in values.items():
            setattr(sub, k, v)
        sub.updated_at = now

    async def shard_uploaded(self, sub: Submission, input_file: str, now: float) -> None:
        """Its requests file is at the API (uploading again, after a restart, just names the newer file)."""
        frm = submissions.c.state.in_([PLANNED, UPLOADED])
        await self._move_shard(sub, frm, "planned", {"state": UPLOADED, "input_file": input_file}, now)

    async def shard_upload_again(self, sub: Submission, now: float) -> None:
        """The API answered a create (proving no batch was made) that its input file is gone: back to
        `planned`, to be uploaded again from the shard's requests file."""
        frm = submissions.c.state.in_([UPLOADED, CREATING])
        await self._move_shard(sub, frm, "uploaded", {"state": PLANNED, "input_file": None}, now)

    async def shard_create_sending(self, sub: Submission, now: float) -> None:
        """Committed before the create request leaves: a restart from here lists the account's batches by the
        display name before it sends again. From `creating` too: a complete listing proved it never created."""
        frm = and_(submissions.c.state.in_([UPLOADED, CREATING]), submissions.c.input_file.is_not(None))
        await self._move_shard(sub, frm, "uploaded", {"state": CREATING}, now)

    async def shard_created(self, sub: Submission, remote_name: str, now: float) -> None:
        """The batch's name is known (from the create's reply, or adopted from the listing): its tasks are the
        API's now, polled through the shard and never created again."""
        shard = (
            update(submissions)
            .where(submissions.c.id == sub.id, submissions.c.state == CREATING)
            .values(state=CREATED, remote_name=remote_name, updated_at=now)
        )
        lines = (
            update(tasks)
            .where(tasks.c.submission_id == sub.id, tasks.c.status == S.SUBMITTING)
            .values(status=S.SUBMITTED, remote_task_id=remote_name, submitted_at=now, updated_at=now)
        )

        async def op(conn: WriteConnection) -> bool:
            if (await conn.execute(shard)).rowcount != 1:
                return False
            await conn.execute(lines)
            return True

        if not await self.writer.run(op):
            raise ShardMoved(f"shard {sub.display_name} is no longer {CREATING}")
        sub.state, sub.remote_name, sub.updated_at = CREATED, remote_name, now

    async def shard_state(self, sub: Submission, state: str, stats_json: str | None, now: float) -> None:
        """What the API reports of a created batch (its state, and its counts as JSON in `detail`)."""
        if state in CLOSED or state in _UNCREATED:
            raise ValueError(f"{state!r} is not a remote state (closing a shard: shard_collected, shard_abandoned)")
        values = {"state": state} if stats_json is None else {"state": state, "detail": stats_json}
        # any state once created and before closing: the API's reports may come in any order after a restart
        frm = and_(submissions.c.state.not_in([*CLOSED, *_UNCREATED]), submissions.c.remote_name.is_not(None))
        await self._move_shard(sub, frm, "created and open", values, now)

    async def shard_collected(self, sub: Submission, now: float) -> None:
        """Every line has settled (succeeded, failed, or back to pending): the shard is done with."""
        shard = (
            update(submissions)
            .where(submissions.c.id == sub.id, submissions.c.state.not_in(list(CLOSED)))
            .values(state=COLLECTED, updated_at=now)
        )
        unsettled = select(tasks.c.id).where(tasks.c.submission_id == sub.id, tasks.c.status.in_(_OPEN_TASK))

        async def op(conn: WriteConnection) -> str:
            if (await conn.execute(unsettled.limit(1))).first() is not None:
                return "open"
            return "ok" if (await conn.execute(shard)).rowcount == 1 else "moved"

        outcome = await self.writer.run(op)
        if outcome == "open":
            raise ShardMoved(f"shard {sub.display_name} still has lines to settle")
        if outcome == "moved":
            raise ShardMoved(f"shard {sub.display_name} is closed already")
        sub.state, sub.updated_at = COLLECTED, now

    async def shard_abandoned(self, sub: Submission, state: str, now: float, reason: str | None = None) -> list[int]:
        """The batch ended without results for its unfinished lines (FAILED, CANCELLED, EXPIRED): every one of
        its tasks not final goes back to pending, unbilled, its reservation let go and its claim released.
        Returns those tasks' ids; lines already settled keep what they have."""
        if state not in ABANDONED:
            raise ValueError(f"a shard is abandoned as one of {sorted(ABANDONED)}, not {state!r}")
        error = reason or f"its batch ended {state}"
        shard = (
            update(submissions)
            .where(submissions.c.id == sub.id, submissions.c.state.not_in(list(CLOSED)))
            .values(state=state, updated_at=now)
        )
        mine = and_(tasks.c.submission_id == sub.id, tasks.c.status.in_(_OPEN_TASK))
        back = (
            update(tasks)
            .where(mine)
            .values(status=S.PENDING, submission_id=None, remote_task_id=None, next_attempt_at=now, last_error=error,
                    reserved_micros=_freed(sub.price_each), claim_token=None, claimed_by=None, lease_until=None,
                    updated_at=now)
            .returning(tasks.c.id)
        )  # fmt: skip

        async def op(conn: WriteConnection) -> list[int] | None:
            if (await conn.execute(shard)).rowcount != 1:
                return None
            return sorted(int(r[0]) for r in (await conn.execute(back)).all())

        returned = await self.writer.run(op)
        if returned is None:
            raise ShardMoved(f"shard {sub.display_name} is closed already")
        sub.state, sub.updated_at = state, now
        return returned

    # --- its lines ----------------------------------------------------------------------------------------

    async def shard_line_succeeded(
        self,
        sub: Submission,
        task: Task,
        *,
        output_path: str,
        sha256: str,
        size: int,
        width: int,
        height: int,
        fmt: str,
        cost_micros: int,
        now: float,
    ) -> None:
        """A line's image is saved: billed at the batch price (`cost_micros`), its reservation let go."""
        values = {"status": S.SUCCEEDED, "output_path": output_path, "sha256": sha256, "bytes": size,
                  "width": width, "height": height, "image_format": fmt, "cost_micros": cost_micros,
                  "billed_at": now, "finished_at": now, "last_error": None, "failure": None}  # fmt: skip
        await self._line(sub, task, values, now)

    async def shard_line_failed(
        self,
        sub: Submission,
        task: Task,
        failure: Failure,
        reason: str,
        *,
        billed: bool,
        now: float,
        generation_failed: bool = False,
    ) -> None:
        """A line failed for good. `billed`: the API charged it all the same (its image could not be saved),
        at the price its line reserved."""
        values: dict[str, Any] = {"status": S.FAILED, "failure": failure, "last_error": reason, "finished_at": now}
        if billed:
            values.update(cost_micros=sub.price_each, billed_at=now)
        await self._line(sub, task, values, now, incr={"gen_failures": 1} if generation_failed else None)

    async def shard_line_back_to_pending(
        self, sub: Submission, task: Task, reason: str, *, generation_failed: bool, now: float
    ) -> None:
        """A line that failed without a charge, or that the results lack: pending again, out of the shard,
        unbilled, its reservation let go, to ride in a later shard."""
        values = {"status": S.PENDING, "submission_id": None, "remote_task_id": None, "next_attempt_at": now,
                  "last_error": reason}  # fmt: skip
        await self._line(sub, task, values, now, incr={"gen_failures": 1} if generation_failed else None)
        task.remote_task_id = None

    async def _line(
        self, sub: Submission, task: Task, values: dict[str, Any], now: float, *, incr: dict[str, int] | None = None
    ) -> None:
        """A line's outcome, fenced by its task's claim token and by its still riding in `sub`."""
        stmt, params = self._transition_change(task, (S.SUBMITTED,), values, now, incr=incr, release=True,
                                               release_micros=sub.price_each)  # fmt: skip
        stmt = stmt.where(tasks.c.submission_id == sub.id)

        async def op(conn: WriteConnection) -> int:
            return int((await conn.execute(stmt, params)).rowcount)

        if await self.writer.run(op) != 1:
            raise ClaimLost(f"task {task.key} is no longer ours in shard {sub.display_name}")
        task.status = S(values["status"])

    # --- reads and claims ---------------------------------------------------------------------------------

    async def shard_by_display_name(self, name: str) -> Submission | None:
        rows = await self._read(select(submissions).where(submissions.c.display_name == name))
        return _submission(rows[0]) if rows else None

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
            .where(tasks.c.submission_id == sub.id, tasks.c.status.in_(_OPEN_TASK), free)
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


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]
