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

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, select, true, update
from sqlalchemy.engine import RowMapping

from batcher.models import Failure
from batcher.store.base import BudgetRefused, ClaimLost, Job, S, Task
from batcher.store.changes import WriteConnection
from batcher.store.tables import jobs, submissions, tasks
from batcher.store.transitions import TransitionsPart, _freed

BATCH = "batch"

PLANNED = "planned"
UPLOADED = "uploaded"
CREATING = "creating"
# `batcher cancel` met the shard in `creating`: its create may be on its way. The worker that sent it cancels
# the batch as soon as its name is known; a batch never found is not created again
CANCEL_CREATING = "cancel-creating"
CREATED = "created"
COLLECTED = "collected"
ABANDONED = frozenset({"failed", "cancelled", "expired"})
CLOSED = frozenset({COLLECTED, "closed", *ABANDONED})  # nothing more happens to these
_UNCREATED = (PLANNED, UPLOADED, CREATING, CANCEL_CREATING)
OPEN_TASK = (S.PENDING, S.SUBMITTING, S.SUBMITTED, S.UNKNOWN)
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
        provider: str,
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
        stmt = (
            update(submissions)
            .where(submissions.c.id == sub.id, frm, self._held(sub, now))
            .values(updated_at=now, **values)
        )

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

    async def shard_created(self, sub: Submission, remote_name: str, now: float) -> bool:
        """The batch's name is known (from the create's reply, or adopted from the listing): its tasks are the
        API's now, polled through the shard and never created again. Returns whether `batcher cancel` asked
        meanwhile for the shard to be cancelled (`cancel-creating`): then its batch is to be cancelled at once."""
        lines = (
            update(tasks)
            .where(tasks.c.submission_id == sub.id, tasks.c.status == S.SUBMITTING)
            .values(status=S.SUBMITTED, remote_task_id=remote_name, submitted_at=now, updated_at=now)
        )

        async def op(conn: WriteConnection) -> bool | None:
            for state in (CREATING, CANCEL_CREATING):
                shard = (
                    update(submissions)
                    .where(submissions.c.id == sub.id, submissions.c.state == state, self._held(sub, now))
                    .values(state=CREATED, remote_name=remote_name, updated_at=now)
                )
                if (await conn.execute(shard)).rowcount == 1:
                    await conn.execute(lines)
                    return state == CANCEL_CREATING
            return None

        cancel = await self.writer.run(op)
        if cancel is None:
            raise ShardMoved(f"shard {sub.display_name} is no longer {CREATING}")
        sub.state, sub.remote_name, sub.updated_at = CREATED, remote_name, now
        return cancel

    async def shard_cancel_unsent(self, sub: Submission, now: float, reason: str) -> bool:
        """`batcher cancel`: a shard whose create was not committed is closed, its tasks pending again, in one
        commit that its create's own commit (`shard_create_sending`) cannot pass. False: it had moved on."""
        return await self._abandon(sub, "cancelled", now, reason, submissions.c.state.in_([PLANNED, UPLOADED]))

    async def shard_cancel_creating(self, sub: Submission, now: float) -> bool:
        """`batcher cancel` met the shard in `creating` (a create may be on its way): mark it, so that whoever
        learns its batch's name cancels that batch. False: it had moved on."""
        try:
            await self._move_shard(sub, submissions.c.state == CREATING, CREATING, {"state": CANCEL_CREATING}, now)
        except ShardMoved:
            return False
        return True

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
            .where(submissions.c.id == sub.id, submissions.c.state.not_in(list(CLOSED)), self._held(sub, now))
            .values(state=COLLECTED, updated_at=now)
        )
        unsettled = select(tasks.c.id).where(tasks.c.submission_id == sub.id, tasks.c.status.in_(OPEN_TASK))

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

    async def shard_abandoned(
        self, sub: Submission, state: str, now: float, reason: str | None = None, *, maybe_billed: bool = False
    ) -> list[int]:
        """The batch ended without results for its unfinished lines (FAILED, CANCELLED, EXPIRED), or was never
        made: every one of its tasks not final goes back to pending, unbilled, its reservation let go and its
        claim released. Returns those tasks' ids; lines already settled keep what they have. `maybe_billed`:
        the batch may have billed them (the API no longer answers for it): each is counted as an unknown
        submission, a possible double charge once sent again."""
        if state not in ABANDONED:
            raise ValueError(f"a shard is abandoned as one of {sorted(ABANDONED)}, not {state!r}")
        back: list[int] = []
        error = reason or f"its batch ended {state}"
        if not await self._abandon(sub, state, now, error, None, back, maybe_billed=maybe_billed):
            raise ShardMoved(f"shard {sub.display_name} is closed already")
        return back

    async def _abandon(
        self,
        sub: Submission,
        state: str,
        now: float,
        error: str,
        frm: Any,
        back: list[int] | None = None,
        *,
        maybe_billed: bool = False,
    ) -> bool:
        """Close the shard as `state` if it is open (and `frm` holds), its open tasks pending again."""
        shard = (
            update(submissions)
            .where(submissions.c.id == sub.id, submissions.c.state.not_in(list(CLOSED)), self._held(sub, now))
            .values(state=state, updated_at=now)
        )
        if frm is not None:
            shard = shard.where(frm)
        mine = and_(tasks.c.submission_id == sub.id, tasks.c.status.in_(OPEN_TASK))
        unknown = tasks.c.unknown_count + (1 if maybe_billed else 0)
        pending = (
            update(tasks)
            .where(mine)
            .values(status=S.PENDING, submission_id=None, remote_task_id=None, next_attempt_at=now, last_error=error,
                    reserved_micros=_freed(sub.price_each), claim_token=None, claimed_by=None, lease_until=None,
                    unknown_count=unknown, updated_at=now)
            .returning(tasks.c.id)
        )  # fmt: skip

        async def op(conn: WriteConnection) -> list[int] | None:
            if (await conn.execute(shard)).rowcount != 1:
                return None
            return sorted(int(r[0]) for r in (await conn.execute(pending)).all())

        returned = await self.writer.run(op)
        if returned is None:
            return False
        if back is not None:
            back += returned
        sub.state, sub.updated_at = state, now
        return True

    def _held(self, sub: Submission, now: float) -> ColumnElement[bool]:
        """The fence of a shard's every change by a worker: none of its open tasks is held by another worker
        whose lease runs, so a worker that lost its lease (frozen, or cut off) changes nothing of a shard that
        another took over. The `batcher cancel` command holds no lease and passes."""
        if self.worker_id is None:
            return true()
        other = select(tasks.c.id).where(
            tasks.c.submission_id == sub.id,
            tasks.c.status.in_(OPEN_TASK),
            tasks.c.claimed_by.is_not(None),
            tasks.c.claimed_by != self.worker_id,
            tasks.c.lease_until >= now,
        )
        return ~exists(other)

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
        self,
        sub: Submission,
        task: Task,
        reason: str,
        *,
        generation_failed: bool,
        now: float,
        maybe_billed: bool = False,
    ) -> None:
        """A line that failed without a charge, or that the results lack: pending again, out of the shard,
        unbilled, its reservation let go, to ride in a later shard. `maybe_billed`: its batch billed some of
        its lines without saying which; counted as an unknown submission (a possible double charge)."""
        values = {"status": S.PENDING, "submission_id": None, "remote_task_id": None, "next_attempt_at": now,
                  "last_error": reason}  # fmt: skip
        incr = {"gen_failures": 1} if generation_failed else {}
        if maybe_billed:
            incr["unknown_count"] = 1
        await self._line(sub, task, values, now, incr=incr or None)
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


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]
