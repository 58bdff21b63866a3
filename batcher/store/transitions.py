"""Every change of a claimed task's state, fenced by its claim token, batched by the writer."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import bindparam, insert, literal, or_, update

from batcher.models import CallRecord, TaskStatus
from batcher.store.base import ClaimLost, S, StoreBase, Task
from batcher.store.changes import RowChange
from batcher.store.tables import api_calls, tasks


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
        patient: bool = True,
    ) -> None:
        """Change a claimed task's row, if it is still ours and in one of the states `frm`. `patient`: its commit
        may wait a little for others (see writer.py)."""
        if release:
            values = {**values, "claim_token": None, "claimed_by": None, "lease_until": None}
        incr = incr or {}
        stmt = _transition_stmt(frm, tuple(sorted(values)), tuple(sorted(incr)))
        params = {f"v_{k}": v for k, v in values.items()}
        params.update({f"inc_{k}": n for k, n in incr.items()})
        params.update(_id=task.id, _token=task.claim_token, _now=now)
        if call is not None:
            self.writer.post(RowChange(_INSERT_CALL, _call_values(task, call, self.worker_id)))
        if await self.writer.change(RowChange(stmt, params, fenced=True), patient=patient) != 1:
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
            patient=False,  # the window in which a crash leaves the create unknown ends with this commit
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
        await self.writer.change(RowChange(_RELEASE, params), patient=True)

    def log_call(self, task: Task, call: CallRecord) -> None:
        """Append a call record with the next commit (polls: not worth a commit of their own)."""
        self.writer.post(RowChange(_INSERT_CALL, _call_values(task, call, self.worker_id)))


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
