"""Batch Mode: a job's pending tasks as shards, one Gemini batch each, created exactly once and collected as
they end.

A shard's life is the store's (store/submissions.py): planned (its requests file written here, its tasks
`submitting`, its whole price reserved against the budget, all in one commit) → uploaded → creating (committed
just before the create request leaves) → created (the batch's name recorded) → the states the API reports →
collected, or abandoned (its unfinished tasks pending again, for a later shard). A restart carries every open
shard on from where it stood; one caught in `creating` is looked up by its display name in the account's
batches before anything is created again: found, it is adopted; absent from a complete listing, it was never
created and is sent again; an incomplete listing sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batcher import cache
from batcher.config import RunConfig
from batcher.errors import AuthError, BatcherError
from batcher.models import CallRecord, Failure, OnUnknown, TaskStatus
from batcher.outputs import AtomicFile, Finisher, target_path, with_real_extension
from batcher.providers.base import AuthRejected, RateLimited, Request, Transient
from batcher.providers.gemini_batch import (
    Absent,
    BatchState,
    Created,
    CreateUnknown,
    Found,
    GeminiBatchClient,
    Got,
    LineKind,
    NotCreated,
    Ok,
    ResultLine,
    ResultsCut,
    ResultStream,
    Uploaded,
    write_shard,
)
from batcher.retry import backoff_s
from batcher.runner.base import Progress, RunResult, StopReason, log
from batcher.runner.batch_bucket import bucket_line, rebuild_shard_file, shard_folder
from batcher.shards import display_name, next_check_in, plan_shards
from batcher.storage import is_remote
from batcher.store import BudgetRefused, ClaimLost, Job, Store, Task
from batcher.store.submissions import CREATING, PLANNED, UPLOADED, DuplicateShard, ShardMoved, Submission

GEMINI = "gemini"
SHARDS_DIR = ".batcher-shards"  # under the output directory: each shard's requests file until its batch exists
PLAN_AHEAD = 16  # shards planned but not yet created, at most
_UNSENT = (PLANNED, UPLOADED, CREATING)
IDLE_S = 10.0  # the longest sleep while batches run, between looks at the store and the clock, seconds
PROVIDER_FAULT_S = 10.0  # after a transient fault (503 on get or download, a failed listing), at least this


@dataclass(frozen=True)
class BatchSettings:
    max_requests: int = 100
    max_bytes: int = 100_000_000
    wait: bool = True  # `--no-wait`: exit once every shard is created
    deadline_at: float | None = None  # epoch seconds: cancel what is not done by then, to run online


@dataclass
class Shard:
    sub: Submission
    tasks: dict[str, Task]  # the shard's unsettled tasks this worker holds, by key
    checks: int = 0
    due: float = 0.0  # when to look at it next (epoch seconds)
    faults: int = 0
    stats: str = ""
    responses: str | None = None  # the results file, once the batch has SUCCEEDED
    done_at_api: int = 0  # its requests the API reports done (batchStats: succeeded + failed)
    anchor: Task | None = None  # the task its calls are logged under (the ledger's rows name a task)

    def __post_init__(self) -> None:
        self.anchor = next(iter(self.tasks.values()), None)


@dataclass
class BatchProgress(Progress):
    shards_open: int = 0
    shards_done: int = 0
    lines_done: int = 0
    lines_total: int = 0
    shard_states: dict[str, int] = field(default_factory=dict)


class BatchRunner:
    """Drains one job by Batch Mode. `await run()`; `request_stop()` stops it (the batches go on at Google)."""

    def __init__(
        self,
        store: Store,
        client: GeminiBatchClient,
        job: Job,
        config: RunConfig,
        batch: BatchSettings,
        prices: dict[str, int],
        *,
        worker_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.client, self.job, self.config, self.batch = store, client, job, config, batch
        self.prices = prices  # micro-dollars per image line at the batch price, by model
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        store.worker_id = self.worker_id
        self.clock = clock
        self.remote = is_remote(job.output_dir)  # a bucket job: see batch_bucket.py
        self.output_root = job.output_dir if self.remote else str(Path(job.output_dir).resolve())
        self.output_dir = Path(self.output_root)
        self.work_dir = shard_folder(job, SHARDS_DIR) if self.remote else self.output_dir / SHARDS_DIR
        self.progress = BatchProgress()
        self.shards: dict[int, Shard] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: BatcherError | None = None
        self._finisher = Finisher()
        self._budget_blocked = False
        self._more_to_plan = False  # the last planning pass claimed all it could: plan again before sleeping

    def _now(self) -> float:
        return self.clock() + self.store.clock_offset

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
            reason = await self._loop()
        except BatcherError as e:
            self._fatal, reason = e, StopReason.FATAL
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self.store.stop_worker(self.worker_id, self._now())
        left, _ = await self.store.next_due(self.job, self._now())
        return RunResult(reason, self._fatal, left, self.progress)

    async def _loop(self) -> str:
        await self._carry_on_open_shards()
        while True:
            if self._stopping:
                return StopReason.INTERRUPTED
            now = self._now()
            if self.batch.deadline_at is not None and now >= self.batch.deadline_at:
                await self._cancel_all("the --finish-online-after deadline passed")
                return StopReason.DEADLINE
            await self._plan_ahead(now)
            # shards to upload and create go first: a batch queues at the API while older ones are collected
            for shard in sorted(self.shards.values(), key=lambda sh: (sh.sub.state not in _UNSENT, sh.due)):
                if self._stopping:
                    break
                if shard.due <= self._now():
                    await self._advance(shard)
            self._tally()
            if not self.shards:
                await self._carry_on_open_shards()  # shards another worker left (it stopped, or its lease ran out)
            if not self.shards:
                left, due = await self.store.next_due(self.job, self._now(), GEMINI, online=False)
                if left == 0:
                    return StopReason.DONE
                if self._budget_blocked:
                    return StopReason.BUDGET
                wait = IDLE_S if due is None else min(IDLE_S, max(due - self._now(), 0.05))
            else:
                more = self._more_to_plan and not self._budget_blocked
                if not self.batch.wait and not more and all(s.sub.state not in (PLANNED, UPLOADED, CREATING)
                                                            for s in self.shards.values()):  # fmt: skip
                    return StopReason.SUBMITTED
                wait = 0.05 if more else max(0.05, min(s.due for s in self.shards.values()) - self._now())
                if self.batch.deadline_at is not None:
                    wait = min(wait, max(0.05, self.batch.deadline_at - self._now()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _plan_ahead(self, now: float) -> None:
        """Plan shards while tasks are due, keeping at most PLAN_AHEAD of them not yet created (each holds a
        requests file on disk and its tasks' claims)."""
        while not self._budget_blocked and not self._stopping:
            unsent = sum(1 for sh in self.shards.values() if sh.sub.state in _UNSENT)
            if unsent >= PLAN_AHEAD:
                return
            await self._plan_new_shards(now)
            if not self._more_to_plan:
                return
            now = self._now()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            now = self._now()
            try:
                await self.store.heartbeat(self.worker_id, now, now + self.config.lease_s)
            except BatcherError as e:
                log.warning("heartbeat failed: %s", e.message)

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

    # --- planning -----------------------------------------------------------------------------------

    async def _carry_on_open_shards(self) -> None:
        now = self._now()
        for sub in await self.store.shards_open(self.job):
            if sub.id in self.shards:
                continue
            held = await self.store.claim_shard(sub, self.worker_id, now, now + self.config.lease_s)
            if not held:
                continue  # another live worker carries it on (its tasks' leases are its own)
            self.shards[sub.id] = Shard(sub, {t.key: t for t in held})
            log.info("carrying on shard %s (%s, %d lines)", sub.display_name, sub.state, len(held))

    async def _plan_new_shards(self, now: float) -> None:
        """Claim the tasks due to be created and cut them into shards, each committed before anything leaves."""
        limit = self.batch.max_requests * 4
        claimed = await self.store.claim(self.job, self.worker_id, limit, now, now + self.config.lease_s,
                                         pending=limit, provider=GEMINI)  # fmt: skip
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
            plans = plan_shards(sizes, max_requests=self.batch.max_requests, max_bytes=self.batch.max_bytes)
            for plan in plans:
                await self._plan_one([same[i] for i in plan.task_ids], now)

    async def _plan_one(self, group: list[tuple[Task, Request]], now: float) -> None:
        name = display_name(self.job.name, self.job.id, int(now * 1000) % 10**10, uuid.uuid4().hex[:8])
        path = self.work_dir / f"{name}.jsonl"
        written = await asyncio.to_thread(write_shard, path, [(t.key, r) for t, r in group])
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
                                              request_bytes=written.bytes_written)  # fmt: skip
        except BudgetRefused:
            self._budget_blocked = True
            path.unlink(missing_ok=True)
            for t in tasks:
                await self.store.release(t, now)
            return
        except (ClaimLost, DuplicateShard) as e:
            log.warning("%s", e)
            path.unlink(missing_ok=True)
            return
        self.shards[sub.id] = Shard(sub, {t.key: t for t in tasks})
        self.progress.lines_total += len(tasks)
        log.info("planned shard %s: %d requests, %d bytes", name, len(tasks), written.bytes_written)

    # --- one shard, one step --------------------------------------------------------------------------

    async def _advance(self, shard: Shard) -> None:
        sub = shard.sub
        try:
            if sub.state == PLANNED:
                await self._upload(shard)
            elif sub.state == UPLOADED:
                await self._create(shard)
            elif sub.state == CREATING:
                await self._reconcile(shard)
            elif sub.state == BatchState.SUCCEEDED:
                await self._collect(shard)
            else:
                await self._check(shard)
        except ShardMoved as e:
            log.warning("%s", e)
            self.shards.pop(sub.id, None)
        except ClaimLost as e:
            log.warning("%s", e)

    def _later(self, shard: Shard, seconds: float) -> None:
        shard.due = self._now() + seconds

    def _fault(self, shard: Shard, what: str) -> None:
        """A transient fault of the API: try this step again later, with backoff; never anything more."""
        shard.faults += 1
        wait = max(PROVIDER_FAULT_S, backoff_s(shard.faults, self.config.retry, 0.5))
        log.warning("shard %s: %s; trying again in %.0f s", shard.sub.display_name, what, wait)
        self._later(shard, min(wait, 300.0))

    def _auth(self, message: str) -> None:
        raise AuthError.rejected(message, "GEMINI_API_KEY or GOOGLE_API_KEY")

    async def _upload(self, shard: Shard) -> None:
        sub = shard.sub
        path = self.work_dir / f"{sub.display_name}.jsonl"
        if not path.exists() and not (self.remote and await rebuild_shard_file(self.store, shard.tasks.values(), path)):
            # nothing was created from it yet: its tasks go back for a later shard
            await self._abandon(shard, "failed", "its requests file was lost before its batch was created")
            return
        got = await self.client.upload(path, sub.display_name)
        self._log_shard_call(shard, got.call)
        if isinstance(got, Uploaded):
            await self.store.shard_uploaded(sub, got.file_name, self._now())
            shard.faults = 0
            await self._create(shard)
        elif isinstance(got, AuthRejected):
            self._auth(got.message)
        elif isinstance(got, RateLimited):
            self._later(shard, got.wait_s or 5.0)
        else:
            self._fault(shard, f"upload failed: {got.message}")

    async def _create(self, shard: Shard) -> None:
        sub = shard.sub
        assert sub.input_file is not None
        model = next(iter(shard.tasks.values())).model if shard.tasks else "gemini-3.1-flash-lite-image"

        async def commit_intent() -> None:  # from here, a restart lists batches before creating again
            await self.store.shard_create_sending(sub, self._now())

        got = await self.client.create(model, sub.input_file, sub.display_name, before_send=commit_intent)
        self._log_shard_call(shard, got.call)
        self.progress.requests += 1
        if isinstance(got, Created):
            await self._created(shard, got.batch.name)
        elif isinstance(got, CreateUnknown):
            log.warning("shard %s: %s", sub.display_name, got.message)
            self._later(shard, 5.0)  # reconciled by listing, never created blind
        elif isinstance(got, NotCreated) and got.input_missing:
            log.warning("shard %s: %s; uploading its requests again", sub.display_name, got.message)
            await self.store.shard_upload_again(sub, self._now())
            self._later(shard, 0.0)
        elif isinstance(got, NotCreated) and not got.retryable:
            for task in list(shard.tasks.values()):
                await self.store.failed(task, f"the batch was refused: {got.message}", None, self._now(),
                                        failure=Failure.REFUSED, release_micros=sub.price_each)  # fmt: skip
                self.progress.failed += 1
            shard.tasks.clear()
            await self._abandon(shard, "failed", got.message)
        elif isinstance(got, AuthRejected):
            self._auth(got.message)
        elif isinstance(got, RateLimited):
            self._later(shard, got.wait_s or 5.0)
        else:
            self._fault(shard, f"create not sent: {got.message}")

    async def _reconcile(self, shard: Shard) -> None:
        """`creating` after a restart or an unknown reply: is there a batch of this display name?"""
        sub = shard.sub
        found = await self.client.find_by_display_name(sub.display_name)
        for call in found.calls:
            self._log_shard_call(shard, call)
        if isinstance(found, Found):
            if len(found.batches) > 1:
                log.error("shard %s: %d batches carry its name; adopting the newest", sub.display_name,
                          len(found.batches))  # fmt: skip
            await self._created(shard, found.batch.name)
        elif isinstance(found, Absent):
            log.info("shard %s: no batch of that name on a complete listing: never created; sending it again",
                     sub.display_name)  # fmt: skip
            sub.state = UPLOADED
            await self._create(shard)
        else:
            self._fault(shard, found.message)

    async def _created(self, shard: Shard, remote_name: str) -> None:
        sub = shard.sub
        await self.store.shard_created(sub, remote_name, self._now())
        for task in shard.tasks.values():
            task.status, task.remote_task_id = TaskStatus.SUBMITTED, remote_name
        shard.faults, shard.checks = 0, 0
        self._later(shard, next_check_in(0.0, 0))
        with contextlib.suppress(OSError):
            (self.work_dir / f"{sub.display_name}.jsonl").unlink()
        log.info("shard %s is batch %s", sub.display_name, remote_name)

    async def _check(self, shard: Shard) -> None:
        sub = shard.sub
        assert sub.remote_name is not None
        got = await self.client.get(sub.remote_name)
        self._log_shard_call(shard, got.call)
        self.progress.requests += 1
        shard.checks += 1
        if isinstance(got, Got):
            info = got.batch
            stats = json.dumps({"requests": info.stats.requests, "succeeded": info.stats.succeeded,
                                "failed": info.stats.failed, "pending": info.stats.pending})  # fmt: skip
            shard.done_at_api = info.stats.succeeded + info.stats.failed
            if info.state.value != sub.state or stats != shard.stats:
                await self.store.shard_state(sub, info.state.value, stats, self._now())
                shard.stats = stats
                log.info("shard %s: %s, %d of %d done", sub.display_name, info.state.value,
                         info.stats.succeeded + info.stats.failed, info.stats.requests)  # fmt: skip
            shard.faults = 0
            if info.state is BatchState.SUCCEEDED:
                shard.responses = info.responses_file
                await self._collect(shard)
            elif info.state in (BatchState.FAILED, BatchState.CANCELLED, BatchState.EXPIRED):
                reason = info.error or f"its batch ended {info.state}"
                if info.state is not BatchState.CANCELLED:
                    await self._fail_spent(shard, reason)
                await self._abandon(shard, info.state.value.lower(), reason)
            else:
                self._later(shard, next_check_in(self._now() - sub.created_at, shard.checks))
        elif isinstance(got, AuthRejected):
            self._auth(got.message)
        elif isinstance(got, RateLimited):
            self._later(shard, got.wait_s or 10.0)
        elif isinstance(got, Transient):
            self._fault(shard, f"batches.get answered {got.message}")
        else:  # Gone or Refused: the API no longer knows the batch; only the missing lines go again
            await self._abandon(shard, "expired", f"the API no longer knows batch {sub.remote_name}: {got.message}")

    # --- collecting ---------------------------------------------------------------------------------

    async def _collect(self, shard: Shard) -> None:
        sub = shard.sub
        responses = shard.responses
        if responses is None:
            assert sub.remote_name is not None
            got = await self.client.get(sub.remote_name)
            self._log_shard_call(shard, got.call)
            if not isinstance(got, Got) or got.batch.responses_file is None:
                self._fault(shard, "the succeeded batch names no results file yet")
                return
            responses = got.batch.responses_file
        async with self.client.results(responses) as opened:
            if not isinstance(opened, ResultStream):
                if isinstance(opened, AuthRejected):
                    self._auth(opened.message)
                self._fault(shard, f"the results download answered {opened.message}")
                return
            try:
                async for line in opened.lines():
                    await self._line(shard, line)
            except ResultsCut as e:
                self._log_shard_call(shard, opened.call)
                self._fault(shard, str(e))
                return
            self._log_shard_call(shard, opened.call)
        now = self._now()
        for task in list(shard.tasks.values()):  # keys the results lack: only those go again
            await self.store.shard_line_back_to_pending(sub, task, "missing from its batch's results",
                                                        generation_failed=False, now=now)  # fmt: skip
        shard.tasks.clear()
        for name in (sub.input_file, responses):
            if name:
                done = await self.client.delete_file(name)
                self._log_shard_call(shard, done.call)
        await self.store.shard_collected(sub, self._now())
        self.shards.pop(sub.id, None)
        self.progress.shards_done += 1
        log.info("shard %s collected", sub.display_name)

    async def _line(self, shard: Shard, line: ResultLine) -> None:
        task = shard.tasks.pop(line.key, None) if line.key is not None else None
        if task is None:
            return  # settled by an earlier collection (a restart), or no task of this shard
        sub, now = shard.sub, self._now()
        if line.kind is LineKind.IMAGE and line.image is not None and line.image.data is not None:
            if self.remote:  # a bucket job: stored by conditional create, never on this disk
                if await bucket_line(self.store, sub, task, line.image.data, self.output_root, now):
                    self.progress.succeeded += 1
                    self.progress.lines_done += 1
                    self.progress.spent_micros += sub.price_each
                else:
                    self.progress.failed += 1
                return
            target = target_path(self.output_dir, task.filename)
            sink = AtomicFile(target)
            try:
                sink.write(line.image.data)
                info = sink.image()
                if info is None:
                    sink.discard()
                    await self.store.shard_line_failed(sub, task, Failure.DOWNLOAD, "paid, but the line's bytes "
                                                       "are not an image; nothing was written", billed=True,
                                                       now=now)  # fmt: skip
                    self.progress.failed += 1
                    return
                final = with_real_extension(target, info)
                await self._finisher.finish(sink, final)
            except BaseException:
                sink.discard()
                raise
            await self.store.shard_line_succeeded(sub, task, output_path=str(final), sha256=sink.sha256,
                                                  size=sink.size, width=info.width, height=info.height,
                                                  fmt=info.format, cost_micros=sub.price_each, now=now)  # fmt: skip
            self.progress.succeeded += 1
            self.progress.lines_done += 1
            self.progress.spent_micros += sub.price_each
            return
        if line.kind is LineKind.REFUSED:
            await self.store.shard_line_failed(sub, task, Failure.BLOCKED, line.reason, billed=False, now=now,
                                               generation_failed=True)  # fmt: skip
            self.progress.failed += 1
            return
        if line.kind is LineKind.MALFORMED:  # an image may have been made and billed: counted as unusable
            await self.store.shard_line_failed(sub, task, Failure.DOWNLOAD, f"paid, unusable: {line.reason}",
                                               billed=True, now=now)  # fmt: skip
            self.progress.failed += 1
            return
        if task.attempts >= self.config.retry.max_attempts:  # a failed line, too often
            await self.store.shard_line_failed(sub, task, Failure.GENERATION, line.reason, billed=False, now=now,
                                               generation_failed=True)  # fmt: skip
            self.progress.failed += 1
            return
        await self.store.shard_line_back_to_pending(sub, task, line.reason, generation_failed=True, now=now)

    # --- ending shards --------------------------------------------------------------------------------

    async def _fail_spent(self, shard: Shard, reason: str) -> None:
        """A batch FAILED or EXPIRED: its tasks sent as often as --max-attempts allows fail for good, unbilled,
        instead of riding in batch after batch forever; the others go to a later shard."""
        now = self._now()
        for task in list(shard.tasks.values()):
            if task.attempts >= self.config.retry.max_attempts:
                await self.store.shard_line_failed(shard.sub, task, Failure.GENERATION, reason, billed=False,
                                                   now=now, generation_failed=True)  # fmt: skip
                shard.tasks.pop(task.key, None)
                self.progress.failed += 1

    async def _abandon(self, shard: Shard, state: str, reason: str) -> None:
        back = await self.store.shard_abandoned(shard.sub, state, self._now(), reason)
        log.warning("shard %s ended %s (%s): %d tasks go to a later shard", shard.sub.display_name, state,
                    reason, len(back))  # fmt: skip
        for name in (shard.sub.input_file,):
            if name:
                done = await self.client.delete_file(name)
                self._log_shard_call(shard, done.call)
        self.shards.pop(shard.sub.id, None)

    async def _cancel_all(self, why: str) -> None:
        """Collect what has succeeded (billed: never thrown away), cancel every other shard not collected yet;
        their unfinished tasks go back to pending, unbilled."""
        for shard in list(self.shards.values()):
            if shard.sub.state == BatchState.SUCCEEDED:
                await self._advance(shard)
        await cancel_shards(self.store, self.client, self.job, why, self._now())
        succeeded = {s.id for s in await self.store.shards_open(self.job) if s.state == BatchState.SUCCEEDED}
        for shard in list(self.shards.values()):  # done since their last check: their cancel was refused
            if shard.sub.id in succeeded:
                shard.sub.state = BatchState.SUCCEEDED.value
                await self._advance(shard)
        self.shards.clear()

    def _log_shard_call(self, shard: Shard, call: CallRecord) -> None:
        """A shard's call goes in the ledger under one of its tasks (the ledger's rows name a task)."""
        if shard.anchor is not None:
            self.store.log_call(shard.anchor, call)


async def cancel_shards(store: Store, client: GeminiBatchClient, job: Job, why: str, now: float) -> int:
    """`batcher cancel JOB` and the deadline: cancel the job's batches not collected; their unfinished tasks go
    back to pending, unbilled. A shard caught in `creating` is looked up by name first. Returns the count."""
    count = 0
    for sub in await store.shards_open(job):
        name = sub.remote_name
        if name is None and sub.state == CREATING:
            found = await client.find_by_display_name(sub.display_name)
            if isinstance(found, Found):
                name = found.batch.name
            elif not isinstance(found, Absent):
                raise BatcherError(f"cannot tell whether shard {sub.display_name} was created ({found.message}): "
                                   "nothing was cancelled for it; try again")  # fmt: skip
        if sub.state == BatchState.SUCCEEDED:
            continue  # its lines are billed: collected by the next run, never thrown away
        if name is not None:
            got = await client.cancel(name)
            if isinstance(got, AuthRejected):
                raise AuthError.rejected(got.message, "GEMINI_API_KEY or GOOGLE_API_KEY")
            if not isinstance(got, Ok) and await _ended_billed(store, client, sub, name, got.message, now):
                continue  # it succeeded since it was last looked at: billed, so collected, never sent again
        await store.shard_abandoned(sub, "cancelled", now, why)
        count += 1
    return count


async def _ended_billed(store: Store, client: GeminiBatchClient, sub: Submission, name: str, why: str,
                        now: float) -> bool:  # fmt: skip
    """A cancel was not accepted (the batch has ended, or a fault): whether the batch SUCCEEDED (recorded, to be
    collected). Only a batch seen to have ended without results may be abandoned; one still running, or one
    that cannot be looked at, would go on and bill while its tasks ran again elsewhere."""
    got = await client.get(name)
    if isinstance(got, Got) and got.batch.state is BatchState.SUCCEEDED:
        if sub.state != BatchState.SUCCEEDED and sub.remote_name is not None:
            await store.shard_state(sub, BatchState.SUCCEEDED.value, None, now)
        return True
    if isinstance(got, Got) and got.batch.state in (BatchState.FAILED, BatchState.CANCELLED, BatchState.EXPIRED):
        return False
    raise BatcherError(f"could not cancel batch {name} of shard {sub.display_name} ({why}): nothing was abandoned "
                       "for it; try again")  # fmt: skip


def _line_bytes(key: str, request: Request) -> int:
    """About what a request's line weighs in the JSONL (its base64 input images dominate)."""
    return 200 + len(key) + len(request.prompt.encode()) + sum(len(i) for i in request.images)
