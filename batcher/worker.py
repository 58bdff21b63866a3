"""The worker pool: claims tasks from the store and drives each one to a final state through the API.

The store is the truth. A create is preceded by a committed intent (`submitting`) and followed at once by the
committed remote id (`submitted`); a submitted task is only ever polled again, never created. Everything this
process holds is under a lease it renews; a task whose lease runs out may be taken over by another worker, and
the claim token on every write keeps the old holder from touching it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batcher import cache
from batcher.client import ApiClient, Generation, Outcome, QueryReply, Reply
from batcher.config import RunConfig
from batcher.errors import AuthError, BatcherError
from batcher.imageinfo import ImageInfo
from batcher.models import CallRecord, Failure, OnUnknown, TaskStatus
from batcher.outputs import AtomicFile, Finisher, sweep_stale_parts, target_path, with_real_extension
from batcher.polling import FirstPollTracker, RunningClock, next_poll_in
from batcher.retry import backoff_s
from batcher.store import BudgetRefused, ClaimLost, Job, Store, Stray, StrayReply, Task

log = logging.getLogger("batcher")

RATE_LIMIT_KEY = "rate_limit"  # learned: the account's requests per second, found from 429s
FIRST_POLL_PREFIX = "first_poll_s:"  # learned, per model: when most generations are done
MIN_OBSERVATIONS = 20  # first polls seen before the estimate is worth keeping
IDLE_WAIT_S = 1.0  # longest sleep of the claim loop when nothing is due, seconds
TAKEOVER_EVERY_S = 2.0  # an idle worker looks for dead peers this often, seconds
LOOK_AGAIN_S = 1.0  # a claim that came back short is tried again after this long (retries come due, others let go)
PREFETCH_MIN = 8  # tasks claimed ahead of their create, at least
CLAIM_BATCH = 16  # free slots worth a claim transaction while other tasks are in flight
PREFETCH_S = 1.0  # and about this many seconds of the request rate
STALE_PART_S = 900.0  # a .part file this old belongs to no live download (timeouts are far shorter), seconds
STOP_GRACE_S = 15.0  # after a stop, how long creates already on the wire may take to answer, seconds
POLL_GRID_S = 0.05  # polls wake on this grid, so that many share one wake-up of the loop, seconds
GATHER_S = 0.02  # a task's progress may wait this long for others to share its commit (writer.py), seconds


class StopReason:
    DONE = "done"
    BUDGET = "budget"
    INTERRUPTED = "interrupted"
    FATAL = "fatal"


@dataclass
class Progress:
    """Counters for the progress display (read by the CLI, written only here)."""

    total: int = 0
    done_before: int = 0  # finished before this run started
    succeeded: int = 0
    failed: int = 0
    in_flight: int = 0
    requests: int = 0
    spent_micros: int = 0
    started: float = field(default_factory=time.monotonic)
    claims: int = 0  # claim transactions, the tasks they took, and the seconds they took
    claimed: int = 0
    claim_s: float = 0.0
    cached: int = 0  # of `succeeded`: satisfied from the cache, no API call


@dataclass
class RunResult:
    reason: str
    error: BatcherError | None = None
    left: int = 0  # tasks not final when the run stopped
    progress: Progress | None = None  # this worker's own share of the work

    def worker_figures(self) -> dict[str, Any]:
        p = self.progress
        if p is None:
            return {}
        return {
            "succeeded": p.succeeded, "failed": p.failed, "requests": p.requests, "claims": p.claims,
            "claimed": p.claimed, "claim_ms_per_task": round(1000 * p.claim_s / p.claimed, 3) if p.claimed else None,
        }  # fmt: skip


class _Abort(Exception):
    """Raised from the create's before-send hook: the stop came while waiting for the rate gate."""


class _OverBudget(Exception):
    """Raised from the create's before-send hook: the store refused the create's reservation."""


class Runner:
    """Drains one job. `await run()`; `request_stop()` from a signal handler stops it gracefully."""

    def __init__(
        self,
        store: Store,
        client: ApiClient,
        job: Job,
        config: RunConfig,
        prices: dict[str, int],
        *,
        worker_id: str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.client, self.job, self.config = store, client, job, config
        self.prices = prices  # micro-dollars per successful call, by model
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        store.worker_id = self.worker_id
        self.rng = rng or random.Random()
        self.clock = clock  # this host's wall clock; leases are judged by the store's (`_now`)
        self.progress = Progress()
        self.first_polls: dict[str, FirstPollTracker] = {}  # per model; warm from the store's memory
        self.output_dir = Path(job.output_dir).resolve()
        self._active: dict[int, asyncio.Task[None]] = {}
        self._polling: set[int] = set()  # tasks past their create: safe to cancel on a stop
        self._strays: dict[int, asyncio.Task[None]] = {}  # stray replies this worker polls, by stray id
        self._wake = asyncio.Event()
        self._stopping = False
        self._budget_blocked = False
        self._draining = False  # nothing left to create: the last images are collected sooner
        self._last_takeover = 0.0
        self._next_look = 0.0  # when a claim that found nothing more to take is worth its transaction again
        self._to_create: set[int] = set()  # claimed, create not sent yet
        self._twins: set[str] = set()  # keys of this job's open tasks that some finished task shares
        self._fatal: BatcherError | None = None
        self._inline: dict[int, tuple[str, ...]] = {}  # input images as the next create sends them
        self._finisher = Finisher()

    # --- the loop -------------------------------------------------------------------------------------

    def _now(self) -> float:
        """The store's clock: every lease is judged by it, whatever the skew between the workers' hosts."""
        return self.clock() + self.store.clock_offset

    async def run(self) -> RunResult:
        self.store.writer.gather_s = GATHER_S
        await self.store.measure_clock(self.clock())
        now = self._now()
        await self.store.register_worker(self.worker_id, socket.gethostname(), os.getpid(), self.job.name, now)
        await self._take_over_dead_workers(now)
        await self._init_progress()
        self._warm_start(await self.store.learned())
        self._twins = await self.store.cached_twins(self.job) if self.config.use_cache else set()
        swept = await asyncio.to_thread(sweep_stale_parts, self.output_dir, STALE_PART_S, time.time())
        if swept:
            log.info("removed %d half-written downloads left by a killed run", swept)
        heartbeat = asyncio.create_task(self._heartbeat(), name="batcher-heartbeat")
        try:
            reason = await self._loop()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._wind_down()
            with contextlib.suppress(BatcherError):
                await self._remember(self._now())
            await self.store.stop_worker(self.worker_id, self._now())
        left, _ = await self.store.next_due(self.job, self._now())
        return RunResult(reason, self._fatal, left, self.progress)

    async def _loop(self) -> str:
        while True:
            if self._fatal is not None:
                return StopReason.FATAL
            if self._stopping:
                return StopReason.INTERRUPTED
            self._wake.clear()
            now = self._now()
            free = self.config.max_in_flight - len(self._active)
            claimed: list[Task] = []
            # creates are claimed only a little ahead of the rate, so other workers get their share
            ahead = 0 if self._budget_blocked else max(0, self._prefetch() - len(self._to_create))
            if self._claim_due(free, ahead, now):
                started = time.perf_counter()
                claimed = await self.store.claim(
                    self.job, self.worker_id, free, now, now + self.config.lease_s, pending=ahead
                )
                self.progress.claims += 1
                self.progress.claimed += len(claimed)
                self.progress.claim_s += time.perf_counter() - started
                # a claim that left slots free took every task that was due (submitted ones first)
                self._next_look = now + LOOK_AGAIN_S if len(claimed) < free else now
                to_create = [t for t in claimed if t.status in (TaskStatus.PENDING, TaskStatus.UNKNOWN)]
                if ahead:
                    self._draining = len(to_create) < min(ahead, free)
                self._to_create.update(t.id for t in to_create)
                for task in claimed:
                    self._active[task.id] = asyncio.create_task(self._drive(task), name=f"task-{task.key}")
                self.progress.in_flight = len(self._active)
            if claimed and (len(claimed) == free or not self._draining):
                await self._wake.wait()
                continue
            if not self._active:
                left, due = await self.store.next_due(self.job, now)
                if left == 0 and not self._strays:
                    return StopReason.DONE
                if now - self._last_takeover >= TAKEOVER_EVERY_S:  # idle while others hold work: are they alive?
                    self._last_takeover = now
                    await self._take_over_dead_workers(now)
                if self._budget_blocked and not await self._budget_has_room():
                    if not self._strays and not await self._others_in_flight():
                        return StopReason.BUDGET
                wait = IDLE_WAIT_S if due is None else min(IDLE_WAIT_S, max(due - now, 0.01))
            else:
                wait = IDLE_WAIT_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _worth_a_claim(self) -> bool:
        """Claim in batches: one transaction per finished task would cost more than the task's own writes."""
        return self.config.max_in_flight - len(self._active) >= min(CLAIM_BATCH, self.config.max_in_flight)

    def _claim_due(self, free: int, ahead: int, now: float) -> bool:
        """Is a claim worth its transaction? With work in hand, only for a batch: enough free slots, and either
        creates running low while the store has more (refilled by half the prefetch at a time, not one by one
        as each is sent), or time to look again after a claim that found nothing more."""
        if free <= 0:
            return False
        if not self._active:
            return True
        if not self._worth_a_claim():
            return False
        return (not self._draining and ahead >= max(1, self._prefetch() // 2)) or now >= self._next_look

    def _prefetch(self) -> int:
        """Tasks to hold claimed ahead of their create: about a second of the request rate."""
        return max(PREFETCH_MIN, min(int(self.client.gate.rate * PREFETCH_S), self.config.max_in_flight))

    def _create_sent(self, task: Task) -> None:
        self._to_create.discard(task.id)
        if len(self._to_create) < self._prefetch() // 2:
            self._wake.set()  # time to claim the next few

    async def _budget_has_room(self) -> bool:
        """Reads only: has a reservation been let go of (a generation that failed, a refused create) since the
        budget stopped this worker's creates? Then creating may go on."""
        budget = self.config.budget_micros
        unit = min(self.prices.values(), default=0)
        if budget is not None and await self.store.committed_micros(self.job.id) + unit <= budget:
            self._budget_blocked = False
            self._next_look = 0.0
            return True
        return False

    async def _others_in_flight(self) -> bool:
        """Submitted work held by nobody (or by others) still has to finish before a budget stop."""
        counts = (await self.store.status_counts()).get(self.job.name, {})
        return any(counts.get(s, 0) for s in (TaskStatus.SUBMITTED, TaskStatus.SUBMITTING))

    def request_stop(self) -> None:
        """Stop creating; let creates on the wire record their replies; leave submitted tasks to a resume."""
        self._stopping = True
        for t in self._strays.values():
            t.cancel()
        for task_id, t in self._active.items():
            if task_id in self._polling:
                t.cancel()
        self._wake.set()

    async def _wind_down(self) -> None:
        for t in self._strays.values():  # polled again by the next run that claims them
            t.cancel()
        await asyncio.gather(*self._strays.values(), return_exceptions=True)
        if not self._active:
            return
        self._stopping = True
        for task_id, t in list(self._active.items()):
            if task_id in self._polling:  # creates on the wire may record their replies, even after a fatal error
                t.cancel()
        _, pending = await asyncio.wait(list(self._active.values()), timeout=STOP_GRACE_S)
        for t in pending:  # a create still without a reply: it stays `submitting`, so resume treats it as unknown
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            now = self._now()
            try:
                await self.store.measure_clock(self.clock())
                now = self._now()
                await self.store.heartbeat(self.worker_id, now, now + self.config.lease_s)
                await self._take_over_dead_workers(now)  # a worker that died mid-run: its tasks come back
                await self._remember(now)
            except BatcherError as e:  # keep going: the next beat may succeed before the lease runs out
                log.warning("heartbeat failed: %s", e.message)

    def _warm_start(self, learned: dict[str, Any]) -> None:
        for name, value in learned.items():
            if name.startswith(FIRST_POLL_PREFIX) and isinstance(value, int | float) and value > 0:
                self.first_polls[name[len(FIRST_POLL_PREFIX) :]] = FirstPollTracker(float(value))

    async def _remember(self, now: float) -> None:
        """Keep what this run learned (the account's limit, when to poll) for the next run to start warm."""
        values: dict[str, Any] = {
            f"{FIRST_POLL_PREFIX}{model}": round(t.seconds, 3)
            for model, t in self.first_polls.items()
            if t.observations >= MIN_OBSERVATIONS
        }
        limit = self.client.gate.control.found_limit
        if limit is not None:
            values[RATE_LIMIT_KEY] = round(limit, 3)
        if values:
            await self.store.remember(values, now)

    async def _take_over_dead_workers(self, now: float) -> None:
        """A worker on this host whose process is gone, or any whose heartbeat stopped, lets go of its tasks."""
        host = socket.gethostname()
        for w in await self.store.live_workers():
            if w["id"] == self.worker_id:
                continue
            gone = w["host"] == host and not _pid_alive(int(w["pid"]))
            silent = w["heartbeat_at"] < now - self.config.lease_s
            if gone or silent:
                log.info("taking over from stopped worker %s", w["id"])
                await self.store.stop_worker(w["id"], now, dead=True)
                self._next_look = 0.0  # its tasks are free to take now
        await self.store.recover(self.job.id, now)
        # stray replies nobody polls any more (their worker stopped or died): finish them here
        for stray in await self.store.claim_strays(self.job.id, now, now + self.config.lease_s):
            self._poll_stray(stray)

    def _poll_stray(self, stray: Stray) -> None:
        if stray.id in self._strays:
            return
        t = asyncio.create_task(self._finish_stray(stray), name=f"stray-{stray.remote_task_id}")
        self._strays[stray.id] = t

        def finished(_: asyncio.Task[None]) -> None:
            self._strays.pop(stray.id, None)
            self._wake.set()

        t.add_done_callback(finished)

    async def _init_progress(self) -> None:
        ledger = await self.store.ledger(self.job)
        c = ledger.counts
        self.progress.total = sum(c.values())
        self.progress.done_before = c.get(TaskStatus.SUCCEEDED, 0) + c.get(TaskStatus.FAILED, 0)
        self.progress.spent_micros = ledger.cost_micros

    # --- one task -------------------------------------------------------------------------------------

    async def _drive(self, task: Task) -> None:
        try:
            if task.status is TaskStatus.UNKNOWN and self.config.on_unknown is OnUnknown.SKIP:
                await self.store.failed(
                    task,
                    "the create's outcome is unknown; skipped (--on-unknown=skip) to avoid a second charge",
                    None,
                    self._now(),
                    failure=Failure.UNKNOWN,
                )
                self.progress.failed += 1
                return
            fresh = task.status in (TaskStatus.PENDING, TaskStatus.UNKNOWN)
            if fresh and await self._settled_without_api(task):
                return
            stray: Stray | None = None
            try:
                created = fresh and await self._create(task)
            except StrayReply as e:  # no remote id the API returned is dropped: poll it to the end
                log.warning("%s", e)
                stray, created = e.stray, False
            if stray is not None:
                self._polling.add(task.id)
                await self._finish_stray(stray)
                return
            if fresh and not created:
                return
            self._polling.add(task.id)
            await self._finish(task, fresh=fresh)
        except ClaimLost as e:
            log.warning("%s", e)
        except BatcherError as e:  # a rejected key, an unwritable output, a failing store: stop; nothing is lost
            self._fail_run(e)
        except asyncio.CancelledError:
            pass
        finally:
            self._create_sent(task)
            self._polling.discard(task.id)
            self._active.pop(task.id, None)
            self.progress.in_flight = len(self._active)
            if self._worth_a_claim() or not self._active or self._stopping:
                self._wake.set()

    # --- cache and chains -----------------------------------------------------------------------------

    async def _settled_without_api(self, task: Task) -> bool:
        """True when the task needs no create: it succeeded from the cache, or failed because its input did (or
        was let go of, its input not finished). Else its input images are made ready for `_create`."""
        self._inline.pop(task.id, None)
        if self._stopping or self._fatal is not None:
            return False  # `_create` lets go of it
        # the cache is asked only for keys it may hold (one query per run, not one per task)
        use_cache = self.config.use_cache and task.key in self._twins
        prepared = await cache.prepare(self.store, task, self.output_dir, use_cache=use_cache)
        if prepared.outcome is cache.Outcome.CACHED:
            self.progress.succeeded += 1
            self.progress.cached += 1
        elif prepared.outcome is cache.Outcome.FAILED:
            self.progress.failed += 1
        elif prepared.images is not None:
            self._inline[task.id] = prepared.images
        return prepared.outcome is not cache.Outcome.READY

    def _fail_run(self, error: BatcherError) -> None:
        if self._fatal is None:
            self._fatal = error
            log.error("%s", error.message)
        self._wake.set()

    def _unit(self, task: Task) -> int:
        """What one create of the task is reserved at: the configured unit price."""
        return self.prices[task.model]

    async def _create(self, task: Task) -> bool:
        """Send the create. True when the API accepted it and the task is now `submitted`."""
        if self._stopping or self._fatal is not None or self._budget_blocked:
            await self.store.release(task, self._now())
            return False

        async def commit_intent() -> None:
            if self._stopping or self._fatal is not None:
                raise _Abort
            try:  # the intent and the create's reservation, in one commit; refused when the budget is full
                await self.store.begin_create(
                    task, self._now(), price_micros=self._unit(task), budget_micros=self.config.budget_micros
                )
            except BudgetRefused as e:
                raise _OverBudget from e
            self._create_sent(task)

        images = self._inline.pop(task.id, task.images)  # inputs inlined as data: URIs
        try:
            reply = await self.client.create(
                task.model, task.prompt, task.quality, task.size, images, before_send=commit_intent
            )
        except _OverBudget:
            self._budget_blocked = True
            await self.store.release(task, self._now())
            return False
        except _Abort:
            await self.store.release(task, self._now())
            return False
        self.progress.requests += 1
        now = self._now()
        if reply.outcome is Outcome.OK and reply.remote_id is not None:
            await self.store.created(task, reply.remote_id, reply.price_micros, reply.call, now,
                                     reserved_micros=self._unit(task),
                                     stray_lease_until=now + self.config.lease_s)  # fmt: skip
            return True
        await self._create_failed(task, reply.outcome, reply.message, reply.call, reply.retry_after_s, now)
        return False

    async def _create_failed(
        self, task: Task, outcome: Outcome, message: str, call: CallRecord, retry_after: float | None, now: float
    ) -> None:
        """A create the API did not accept (its reservation goes), or one whose outcome is unknown (its
        reservation stays: it may have been billed)."""
        retry, unit = self.config.retry, self._unit(task)
        if outcome is Outcome.AUTH:
            await self.store.retry_later(task, now, message, call, now, refund_attempt=True, release_micros=unit)
            raise AuthError.rejected(message)
        if outcome in (Outcome.PERMANENT, Outcome.NOT_FOUND):
            await self.store.failed(task, f"rejected by the API: {message}", call, now, failure=Failure.REFUSED,
                                    release_micros=unit)  # fmt: skip
            self.progress.failed += 1
            log.warning("task %s (%s) failed for good: %s", task.key, task.source, message)
            return
        if outcome is Outcome.RATE_LIMITED:
            wait = retry_after if retry_after is not None else 1.0
            await self.store.retry_later(task, now + wait, message, call, now, refund_attempt=True,
                                         release_micros=unit)  # fmt: skip
            return
        last = task.attempts >= retry.max_attempts
        if outcome is Outcome.AMBIGUOUS:
            log.warning("task %s: create outcome unknown (%s)", task.key, message)
            if self.config.on_unknown is OnUnknown.SKIP or last:
                await self.store.create_unknown(task, message, call, now)
                why = "skipped (--on-unknown=skip)" if not last else f"gave up after {task.attempts} attempts"
                await self.store.failed(task, f"create outcome unknown ({message}); {why}", None, now,
                                        failure=Failure.UNKNOWN if not last else Failure.TRANSIENT)  # fmt: skip
                self.progress.failed += 1
                return
            # it stays `unknown` until created again, so a resume with --on-unknown=skip still sees it
            delay = backoff_s(task.attempts, retry, self.rng.random())
            await self.store.create_unknown(task, message, call, now, retry_at=now + delay)
            return
        if last:
            await self.store.failed(task, f"gave up after {task.attempts} attempts: {message}", call, now,
                                    failure=Failure.TRANSIENT, release_micros=unit)  # fmt: skip
            self.progress.failed += 1
            log.warning("task %s failed for good after %d attempts: %s", task.key, task.attempts, message)
            return
        delay = backoff_s(task.attempts, retry, self.rng.random())
        await self.store.retry_later(task, now + delay, message, call, now, release_micros=unit)

    async def _finish(self, task: Task, *, fresh: bool) -> None:
        """Poll a submitted task until the API says its generation ended, then download it. `fresh`: created by
        this run (its first poll then teaches the run when to poll). The give-up limit counts only time its
        polls found it still running: time while no runner polled it never counts."""
        assert task.remote_task_id is not None
        tracker = self._first_poll(task.model)
        polls = download_failures = 0
        submitted_at = task.submitted_at or self._now()
        running = RunningClock()
        retry_in: float | None = None  # set after a broken download: query again soon for a fresh URL
        while True:
            age = self._now() - submitted_at
            delay = (
                retry_in
                if retry_in is not None
                else next_poll_in(
                    age, polls, tracker.seconds, self.config.poll, draining=self._draining, running_s=running.seconds
                )
            )
            retry_in = None
            if delay is None:
                await self.store.failed(
                    task, f"still running after {running.seconds:.0f} s of polls; given up (the API may still bill it)",
                    None, self._now(), failure=Failure.TRANSIENT,
                )  # fmt: skip
                self.progress.failed += 1
                return
            await _sleep_on_grid(delay)
            reply = await self.client.query(task.remote_task_id)
            polls += 1
            self.progress.requests += 1
            now = self._now()
            running.answered(now, reply.outcome is Outcome.OK and reply.generation is Generation.RUNNING)
            if fresh and polls == 1 and reply.outcome is Outcome.OK and reply.generation is not None:
                tracker.observe(reply.call.at - submitted_at, done=reply.generation is not Generation.RUNNING)
            if reply.outcome is Outcome.AUTH:
                self.store.log_call(task, reply.call)
                raise AuthError.rejected(reply.message)
            if reply.outcome is Outcome.OK and reply.generation is Generation.RUNNING:
                self.store.log_call(task, reply.call)
                continue
            if reply.outcome is Outcome.OK and reply.generation is Generation.SUCCESS:
                self.store.log_call(task, reply.call)
                if task.billed_at is None:  # billed from now on, whatever the download does
                    self.store.billed(task, self._cost(task), self._unit(task), now)
                if await self._download(task, reply):
                    return
                download_failures += 1
                if download_failures >= self.config.retry.max_download_failures:
                    await self.store.failed(
                        task, f"paid, but the image could not be downloaded after {download_failures} tries", None,
                        now, failure=Failure.DOWNLOAD,
                    )  # fmt: skip
                    self.progress.failed += 1
                    return
                retry_in = backoff_s(download_failures, self.config.retry, self.rng.random())
                continue
            if reply.outcome is Outcome.OK:  # Failed or Cancelled
                await self._generation_failed(task, reply, now)
                return
            if reply.outcome in (Outcome.NOT_FOUND, Outcome.PERMANENT):
                if task.billed_at is not None:
                    why, failure = "paid, result lost", Failure.RESULT_LOST
                else:  # it may have been billed: its reservation stays
                    why, failure = "lost at the API", Failure.LOST
                await self.store.failed(
                    task, f"{why}: the API no longer knows task {task.remote_task_id}: {reply.message}", reply.call,
                    now, failure=failure,
                )  # fmt: skip
                self.progress.failed += 1
                return
            self.store.log_call(task, reply.call)  # transient or 429: poll again later

    def _first_poll(self, model: str) -> FirstPollTracker:
        tracker = self.first_polls.get(model)
        if tracker is None:
            tracker = self.first_polls[model] = FirstPollTracker(self.config.poll.initial_s)
        return tracker

    async def _generation_failed(self, task: Task, reply: QueryReply, now: float) -> None:
        what = "cancelled" if reply.generation is Generation.CANCELLED else "failed"
        reason = f"generation {what}: {reply.message}"
        unit = self._unit(task)  # a failed generation is not billed: its reservation goes
        if task.gen_failures + 1 > self.config.retry.max_generation_failures:
            await self.store.failed(task, reason, reply.call, now, generation_failed=True,
                                    failure=Failure.GENERATION, release_micros=unit)  # fmt: skip
            self.progress.failed += 1
            log.warning("task %s (%s) failed for good: %s", task.key, task.source, reason)
            return
        delay = backoff_s(task.gen_failures + 1, self.config.retry, self.rng.random())
        await self.store.retry_later(task, now + delay, reason, reply.call, now, generation_failed=True,
                                     release_micros=unit)  # fmt: skip

    def _cost(self, task: Task) -> int:
        return task.price_reported_micros if task.price_reported_micros is not None else self.prices[task.model]

    async def _fetch(self, url: str, target: Path) -> tuple[Reply, AtomicFile, ImageInfo | None]:
        """Download `url` toward `target`: the reply, the sink holding the bytes, and the image they make."""
        sink = AtomicFile(target)
        try:
            result = await self.client.download(url, sink)
        except BaseException:  # a stop cancels downloads in progress: leave no partial file behind
            sink.discard()
            raise
        info = sink.image() if result.outcome is Outcome.OK else None
        if info is None:
            sink.discard()
        return result, sink, info

    async def _download(self, task: Task, reply: QueryReply) -> bool:
        """Fetch the image into place; True when the task is final (succeeded, or its file was unusable)."""
        target = target_path(self.output_dir, task.filename)
        result, sink, info = await self._fetch(reply.urls[0], target)
        now = self._now()
        if result.outcome is Outcome.OK:
            if info is None:
                await self.store.failed(task, "paid, but the file URL did not serve an image; nothing was written",
                                        result.call, now, failure=Failure.DOWNLOAD)  # fmt: skip
                self.progress.failed += 1
                return True
            final = with_real_extension(target, info)
            await self._finisher.finish(sink, final)  # a stop now leaves no .part behind: it is finished anyway
            cost = self._cost(task)
            await self.store.succeeded(
                task,
                output_path=str(final),
                sha256=sink.sha256,
                size=sink.size,
                width=info.width,
                height=info.height,
                fmt=info.format,
                cost_micros=cost,
                call=result.call,
                now=now,
            )
            self.progress.succeeded += 1
            self.progress.spent_micros += cost
            return True
        if result.outcome is Outcome.PERMANENT:
            await self.store.failed(task, f"paid, but the download was refused: {result.message}", result.call, now,
                                    failure=Failure.DOWNLOAD)  # fmt: skip
            self.progress.failed += 1
            return True
        self.store.log_call(task, result.call)
        return False

    # --- stray replies ----------------------------------------------------------------------------------

    async def _finish_stray(self, stray: Stray) -> None:
        """Poll a stray reply's remote task to its end and keep its image beside its task's, as a paid duplicate
        (`NAME.dup-REMOTE.png`): billed all the same, so neither it nor its charge may be lost."""
        first_poll_s = self.config.poll.initial_s  # its generation began about now: polled as a fresh one is
        started, polls, downloads = self._now(), 0, 0
        running = RunningClock()
        try:
            while True:
                delay = next_poll_in(self._now() - started, polls, first_poll_s, self.config.poll,
                                     running_s=running.seconds)  # fmt: skip
                if delay is None:
                    await self.store.stray_done(stray, "failed", self._now(), billed=False,
                                                detail="still running when given up; the API may bill it")  # fmt: skip
                    return
                await _sleep_on_grid(delay)
                reply = await self.client.query(stray.remote_task_id)
                polls += 1
                self.progress.requests += 1
                self.store.log_call(stray, reply.call)
                now = self._now()
                running.answered(now, reply.outcome is Outcome.OK and reply.generation is Generation.RUNNING)
                if reply.outcome is Outcome.AUTH:
                    raise AuthError.rejected(reply.message)
                if reply.outcome is Outcome.OK and reply.generation is Generation.SUCCESS:
                    stem = Path(stray.filename)
                    name = stem.with_name(f"{stem.stem}.dup-{_safe(stray.remote_task_id)}{stem.suffix or '.png'}")
                    target = target_path(self.output_dir, str(name))
                    result, sink, info = await self._fetch(reply.urls[0], target)
                    self.store.log_call(stray, result.call)
                    if info is not None:
                        final = with_real_extension(target, info)
                        await self._finisher.finish(sink, final)
                        await self.store.stray_done(stray, "succeeded", self._now(), billed=True,
                                                    output_path=str(final), sha256=sink.sha256)  # fmt: skip
                        return
                    downloads += 1
                    if result.outcome is Outcome.PERMANENT or downloads >= self.config.retry.max_download_failures:
                        await self.store.stray_done(stray, "failed", now, billed=True,
                                                    detail=f"paid duplicate, image not saved: {result.message}")  # fmt: skip
                        return
                    continue
                if reply.outcome is Outcome.OK and reply.generation is not Generation.RUNNING:  # Failed, Cancelled
                    await self.store.stray_done(stray, "failed", now, billed=False, detail=reply.message)
                    return
                if reply.outcome in (Outcome.NOT_FOUND, Outcome.PERMANENT):
                    await self.store.stray_done(stray, "failed", now, billed=False,
                                                detail=f"lost at the API: {reply.message}")  # fmt: skip
                    return
        except BatcherError as e:
            self._fail_run(e)


def _safe(remote_id: str) -> str:
    """A remote id as part of a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in remote_id)[:64]


async def _sleep_on_grid(delay: float) -> None:
    """Sleep at least `delay`, waking on the POLL_GRID_S grid of the loop's clock."""
    now = asyncio.get_running_loop().time()
    await asyncio.sleep(math.ceil((now + delay) / POLL_GRID_S) * POLL_GRID_S - now)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
