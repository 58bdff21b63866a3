"""Batch Mode: a job's pending tasks as shards, one batch each (through the `BatchClient` protocol), created
exactly once and collected as they end, in whatever state they end.

A shard's life is the store's (store/submissions.py): planned (its requests file written, its tasks
`submitting`, its whole price reserved against the budget, all in one commit) → uploaded → creating (committed
just before the create request leaves) → created (the batch's name recorded) → the states the API reports →
collected, or closed as its batch ended (its unfinished tasks pending again, for a later shard). A restart
carries every open shard on from where it stood. No more of this worker's batches run at once than the provider
allows (`BatchLimits.max_concurrent`): the shards beyond wait, planned, until one ends. The parts: planning.py
(cutting shards), steps.py (one step of a shard), collect.py (an ended batch's lines), cancel.py (cancelling).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from batcher.config import RunConfig
from batcher.errors import BatcherError
from batcher.models import TaskStatus
from batcher.outputs import Finisher
from batcher.providers.base import BatchClient
from batcher.runner.base import RunResult, StopReason, log
from batcher.runner.batch.cancel import cancel_shards
from batcher.runner.batch.collect import CollectPart
from batcher.runner.batch.duplicates import DuplicatesPart
from batcher.runner.batch.planning import PlanningPart
from batcher.runner.batch.shard import (
    ENDED,
    IDLE_S,
    PLAN_AHEAD,
    SHARD_BYTES,
    SHARD_REQUESTS,
    UNSENT,
    BatchProgress,
    BatchSettings,
    Shard,
    shards_dir,
)
from batcher.runner.batch.steps import StepsPart
from batcher.runner.batch.sweep import sweep_shard_files
from batcher.storage import is_remote
from batcher.store import Job, Store
from batcher.store.claims import BATCH_HOLDER
from batcher.store.submissions import PLANNED, UPLOADED

CANCEL_FOLLOW_S = 60.0  # at the deadline, how long cancelled batches are followed to their ending


class BatchRunner(PlanningPart, StepsPart, CollectPart, DuplicatesPart):
    """Drains one job by Batch Mode. `await run()`; `request_stop()` stops it (the batches go on at Google)."""

    def __init__(
        self,
        store: Store,
        client: BatchClient,
        job: Job,
        config: RunConfig,
        batch: BatchSettings,
        prices: dict[str, int],
        *,
        worker_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.client, self.job, self.config, self.batch = store, client, job, config, batch
        limits = client.limits
        self.max_requests = min(batch.max_requests or SHARD_REQUESTS, limits.max_requests)
        self.max_bytes = min(batch.max_bytes or SHARD_BYTES, limits.max_bytes)
        self.prices = prices  # micro-dollars per image line at the batch price, by model
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        store.worker_id = self.worker_id
        self.clock = clock
        self.remote = is_remote(job.output_dir)  # a bucket job: see runner/batch_bucket.py
        self.output_root = job.output_dir if self.remote else str(Path(job.output_dir).resolve())
        self.output_dir = Path(self.output_root)
        self.work_dir = shards_dir(job)
        self.progress = BatchProgress()
        self.shards: dict[int, Shard] = {}
        self.duplicates = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: BatcherError | None = None
        self._finisher = Finisher()
        self._budget_blocked = False
        self._more_to_plan = False  # the last planning pass claimed all it could: plan again before sleeping

    def request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # --- the loop -----------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        await self.store.measure_clock(self.clock())
        now = self._now()
        await self.store.register_worker(self.worker_id, socket.gethostname(), os.getpid(), self.job.name, now)
        await self._count()
        heartbeat = asyncio.create_task(self._heartbeat(), name="batcher-batch-heartbeat")
        try:
            await self._sweep()
            reason = await self._loop()
            if reason == StopReason.DONE:
                await self._sweep()
        except BatcherError as e:
            self._fatal, reason = e, StopReason.FATAL
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self.store.stop_worker(self.worker_id, self._now())
        left, _ = await self.store.next_due(self.job, self._now())
        # tasks an online run (or another provider) holds: this route leaves them, and says so (exit 1)
        elsewhere = await self.store.held_elsewhere(self.job, BATCH_HOLDER)
        return RunResult(reason, self._fatal, left, self.progress, elsewhere)

    async def _sweep(self) -> None:
        """Remove the requests files killed workers left (file times are the wall clock's, not the store's)."""
        for path in await sweep_shard_files(self.store, self.work_dir, time.time()):
            log.info("removed %s: a requests file no shard needs any more", path.name)

    async def _loop(self) -> str:
        orphans_at = 0.0  # when to look next for shards whose holder's lease ran out
        while True:
            if self._stopping:
                return StopReason.INTERRUPTED
            now = self._now()
            if self.batch.deadline_at is not None and now >= self.batch.deadline_at:
                await self._cancel_all("the --finish-online-after deadline passed")
                return StopReason.DEADLINE
            if now >= orphans_at:  # whatever this worker's own load: a dead worker's batches bill all the same
                await self._carry_on_open_shards()
                await self._take_duplicates()
                orphans_at = now + self._orphan_poll_s()
            await self._plan_ahead(now)
            # shards to upload and create go first: a batch queues at the API while older ones are collected
            for shard in sorted(self.shards.values(), key=lambda sh: (sh.sub.state not in UNSENT, sh.due)):
                if self._stopping:
                    break
                if shard.due <= self._now():
                    if shard.sub.state in (PLANNED, UPLOADED) and self._provider_full():
                        self._hold(shard)
                        continue
                    await self._advance(shard)
            await self._advance_duplicates()
            self._tally()
            if not self.shards:
                await self._carry_on_open_shards()  # shards another worker left (it stopped, or its lease ran out)
                orphans_at = self._now() + self._orphan_poll_s()
            if not self.shards:
                left, due = await self.store.next_due(self.job, self._now(), self.client.name, online=False)
                if left == 0 and not self.duplicates:
                    return StopReason.DONE
                if self._budget_blocked:
                    return StopReason.BUDGET
                wait = IDLE_S if due is None else min(IDLE_S, max(due - self._now(), 0.05))
            else:
                more = self._more_to_plan and not self._budget_blocked
                if not self.batch.wait and not more and all(s.sub.state not in UNSENT
                                                            for s in self.shards.values()):  # fmt: skip
                    return StopReason.SUBMITTED
                wait = 0.05 if more else max(0.05, min(s.due for s in self.shards.values()) - self._now())
                if self.batch.deadline_at is not None:
                    wait = min(wait, max(0.05, self.batch.deadline_at - self._now()))
            wait = min(
                wait,
                max(0.05, orphans_at - self._now()),
                *(max(0.05, d.due - self._now()) for d in self.duplicates.values()),
            )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _provider_full(self) -> bool:
        """As many of this worker's batches run at the provider as it allows at once (`limits.max_concurrent`):
        shards created, or maybe created (`creating`), whose ending it has not seen, and second batches."""
        cap = self.client.limits.max_concurrent
        if cap is None:
            return False
        running = sum(1 for s in self.shards.values() if _at_provider(s)) + len(self.duplicates)
        return running >= cap

    def _hold(self, shard: Shard) -> None:
        """A shard not yet created waits, its requests file not uploaded (an upload the API may drop before the
        create), until a running batch may have ended: the next look at one."""
        now = self._now()
        looks = [s.due for s in self.shards.values() if _at_provider(s)] + [d.due for d in self.duplicates.values()]
        shard.due = max(now + 0.05, min(looks, default=now + IDLE_S))

    def _orphan_poll_s(self) -> float:
        """How often a worker looks for shards nobody holds: a dead worker's shard is taken over within its lease
        plus this."""
        return max(0.5, min(IDLE_S, self.config.lease_s / 2))

    async def _plan_ahead(self, now: float) -> None:
        """Plan shards while tasks are due, keeping at most PLAN_AHEAD of them not yet created (each holds a
        requests file on disk and its tasks' claims)."""
        while not self._budget_blocked and not self._stopping:
            unsent = sum(1 for sh in self.shards.values() if sh.sub.state in UNSENT)
            if unsent >= PLAN_AHEAD:
                return
            await self._plan_new_shards(now)
            if not self._more_to_plan:
                return
            now = self._now()

    async def _heartbeat(self) -> None:
        """Renew the leases of every task this worker holds. A worker that could not renew them before they ran
        out (cut off from the store, or frozen) lets go of its shards at once: another may have taken them over,
        and every shard change it would still try is fenced by those leases anyway."""
        renewed = self._now()
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            now = self._now()
            if now > renewed + self.config.lease_s and self.shards:
                log.warning("this worker's leases ran out (last renewed %.0f s ago): letting go of its %d shards",
                            now - renewed, len(self.shards))  # fmt: skip
                self.shards.clear()
            try:
                await self.store.heartbeat(self.worker_id, now, now + self.config.lease_s)
                renewed = now
            except BatcherError as e:
                log.warning("heartbeat failed: %s", e.message)

    async def _cancel_all(self, why: str) -> None:
        """Cancel every shard of the job not collected; follow each this worker holds to its batch's ending and
        collect the lines it finished (billed: never thrown away, never sent again). A shard whose batch has not
        ended within CANCEL_FOLLOW_S stays open, its tasks submitted: a later run collects it."""
        await cancel_shards(self.store, self.client, self.job, why, self._now())
        await self._carry_on_open_shards()  # a dead worker's shards too: what they finished is billed
        fresh = {s.id: s for s in await self.store.shards_open(self.job)}
        for sid, shard in list(self.shards.items()):
            if sid not in fresh or fresh[sid].state in UNSENT:
                self.shards.pop(sid, None)  # closed by the cancel: its tasks are pending again
            else:
                shard.sub, shard.due = fresh[sid], 0.0
        until = self._now() + CANCEL_FOLLOW_S
        while (self.shards or self.duplicates) and self._now() < until and not self._stopping:
            await self._advance_duplicates()
            for shard in list(self.shards.values()):
                if shard.due <= self._now():
                    await self._advance(shard)
                    shard.due = min(shard.due, self._now() + 1.0)  # a cancel takes hold within seconds
            await asyncio.sleep(0.2)
        self.shards.clear()

    async def _count(self) -> None:
        ledger = await self.store.ledger(self.job)
        self.progress.total = sum(ledger.counts.values())
        self.progress.done_before = ledger.counts.get(TaskStatus.SUCCEEDED, 0) + ledger.counts.get(TaskStatus.FAILED, 0)
        self.progress.spent_micros = ledger.cost_micros

    def _tally(self) -> None:
        p = self.progress
        p.shards_open = len(self.shards)
        states: dict[str, int] = {}
        for s in self.shards.values():
            states[s.sub.state] = states.get(s.sub.state, 0) + 1
        p.shard_states = states
        p.in_flight = sum(len(s.tasks) for s in self.shards.values())
        at_api = sum(s.done_at_api for s in self.shards.values())
        lines = sum(s.sub.requests for s in self.shards.values())
        shown = ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
        p.detail = (f"shards: {p.shards_open} open ({shown or 'none'}), {p.shards_done} collected; "
                    f"requests done at the API {at_api} of {lines}")  # fmt: skip


def _at_provider(shard: Shard) -> bool:
    """Its batch runs at the provider, as far as this worker knows (it may exist, and has not been seen ended)."""
    return shard.sub.state not in (PLANNED, UPLOADED) and shard.sub.state not in ENDED
