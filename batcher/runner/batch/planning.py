"""Planning shards: carrying on the open shards nobody holds, and cutting the tasks due into new ones, each
committed (its tasks `submitting`, its price reserved) before anything leaves."""

from __future__ import annotations

import asyncio
import uuid

from batcher import cache
from batcher.models import Failure, OnUnknown, TaskStatus
from batcher.providers.base import Request
from batcher.runner.base import log
from batcher.runner.batch.shard import Shard, ShardWork
from batcher.shards import display_name, plan_shards
from batcher.store import BudgetRefused, ClaimLost, Task
from batcher.store.submissions import PLANNED, UPLOADED, DuplicateShard


class PlanningPart(ShardWork):
    async def _carry_on_open_shards(self) -> None:
        now = self._now()
        for sub in await self.store.shards_open(self.job):
            if sub.id in self.shards:
                continue
            held = await self.store.claim_shard(sub, self.worker_id, now, now + self.config.lease_s)
            if not held:
                continue  # another live worker carries it on (its tasks' leases are its own)
            # it may have been created again past the grace period before the restart (or the take-over):
            # unknowable from here, so it looks for a late batch of its first create before it closes
            sent = sub.state not in (PLANNED, UPLOADED)
            self.shards[sub.id] = Shard(sub, {t.key: t for t in held}, recreated=sent)
            log.info("carrying on shard %s (%s, %d lines)", sub.display_name, sub.state, len(held))

    async def _plan_new_shards(self, now: float) -> None:
        """Claim the tasks due to be created and cut them into shards, each committed before anything leaves."""
        limit = self.max_requests * 4
        claimed = await self.store.claim(self.job, self.worker_id, limit, now, now + self.config.lease_s,
                                         pending=limit, provider=self.client.name, polls=False)  # fmt: skip
        self._more_to_plan = len(claimed) >= limit  # a full claim: more tasks may wait for the next pass
        fresh: list[tuple[Task, Request]] = []
        for task in claimed:
            if task.status not in (TaskStatus.PENDING, TaskStatus.UNKNOWN):
                await self.store.release(task, now)  # submitted online by an earlier run: not this route's
                continue
            if task.status is TaskStatus.UNKNOWN and self.config.on_unknown is OnUnknown.SKIP:
                await self.store.failed(task, "an online create's outcome is unknown; skipped (--on-unknown=skip) "
                                        "to avoid a second charge", None, now, failure=Failure.UNKNOWN)  # fmt: skip
                self.progress.failed += 1
                continue
            prepared = await cache.prepare(self.store, task, self.output_root, use_cache=self.config.use_cache)
            if prepared.outcome is cache.Outcome.CACHED:
                self.progress.succeeded += 1
                self.progress.cached += 1
            elif prepared.outcome is cache.Outcome.FAILED:
                self.progress.failed += 1
            elif prepared.outcome is cache.Outcome.READY:
                images = prepared.images if prepared.images is not None else task.images
                fresh.append((task, Request(task.model, task.prompt, task.quality, task.size, images)))
        if not fresh:  # a full claim of tasks this route leaves alone is no reason to plan again at once
            self._more_to_plan = False
            return
        await asyncio.to_thread(self.work_dir.mkdir, parents=True, exist_ok=True)
        by_model: dict[str, list[tuple[Task, Request]]] = {}
        for item in fresh:  # a batch runs on the one model its create names: one model a shard
            by_model.setdefault(item[0].model, []).append(item)
        for same in by_model.values():
            sizes = [(i, _line_bytes(t.key, r)) for i, (t, r) in enumerate(same)]
            plans = plan_shards(sizes, max_requests=self.max_requests, max_bytes=self.max_bytes)
            for plan in plans:
                await self._plan_one([same[i] for i in plan.task_ids], now)

    async def _plan_one(self, group: list[tuple[Task, Request]], now: float) -> None:
        name = display_name(self.job.name, self.job.id, int(now * 1000) % 10**10, uuid.uuid4().hex[:8])
        path = self.work_dir / f"{name}.jsonl"
        written = await asyncio.to_thread(self.client.write_shard, path, [(t.key, r) for t, r in group])
        bad = dict(written.invalid)
        for task, _ in group:
            if task.key in bad:
                await self.store.failed(task, f"rejected before sending: {bad[task.key]}", None, now,
                                        failure=Failure.REFUSED)  # fmt: skip
                self.progress.failed += 1
        tasks = [t for t, _ in group if t.key not in bad]
        if not tasks:
            path.unlink(missing_ok=True)
            return
        price = min(self.prices[t.model] for t in tasks)  # one batch price per shard (its lines share a model)
        try:
            sub = await self.store.plan_shard(self.job, tasks, name, price, self.config.budget_micros, now,
                                              request_bytes=written.bytes_written,
                                              provider=self.client.name)  # fmt: skip
        except BudgetRefused:
            self._budget_blocked = True
            path.unlink(missing_ok=True)
            fit = 0  # the budget's room may still hold a smaller shard: cut one, never stop at the first refusal
            if self.config.budget_micros is not None and price > 0:
                room = self.config.budget_micros - await self.store.committed_micros(self.job.id)
                fit = max(0, min(len(tasks) - 1, room // price))
            for t in tasks[fit:]:
                await self.store.release(t, now)
            if fit:
                await self._plan_one([(t, r) for t, r in group if t.key not in bad][:fit], now)
            return
        except (ClaimLost, DuplicateShard) as e:
            log.warning("%s", e)
            path.unlink(missing_ok=True)
            return
        self.shards[sub.id] = Shard(sub, {t.key: t for t in tasks})
        self.progress.lines_total += len(tasks)
        log.info("planned shard %s: %d requests, %d bytes", name, len(tasks), written.bytes_written)


def _line_bytes(key: str, request: Request) -> int:
    """About what a request's line weighs in the JSONL (its base64 input images dominate)."""
    return 200 + len(key) + len(request.prompt.encode()) + sum(len(i) for i in request.images)
