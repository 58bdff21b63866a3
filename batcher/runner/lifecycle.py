"""A task's lifecycle through the provider: settle it without the API where it can (cache, chains), submit it
behind a committed intent, check it until it ends, and save its image. Also the stray replies: accepted
submissions whose task another worker held by then, driven to their end and kept as paid duplicates."""

from __future__ import annotations

import asyncio
import math
import uuid
from pathlib import Path

from batcher import cache
from batcher.errors import AuthError, BatcherError, QuotaError, SpendCapError
from batcher.imageinfo import ImageInfo
from batcher.models import CallRecord, Failure, OnUnknown, TaskStatus
from batcher.outputs import AtomicFile, MemorySink, target_path, with_real_extension
from batcher.polling import FirstPollTracker, RunningClock, next_poll_in
from batcher.providers.base import (
    Accepted,
    AuthRejected,
    Done,
    Failed,
    FailureKind,
    Fetched,
    Gone,
    Image,
    QuotaExhausted,
    RateLimited,
    Request,
    Running,
    SpendCapReached,
    SubmitOutcome,
    Unknown,
)
from batcher.retry import backoff_s
from batcher.runner.base import log, to_the_end
from batcher.runner.remote import RemotePart
from batcher.store import BudgetRefused, ClaimLost, Stray, StrayReply, Task, quota_note

POLL_GRID_S = 0.05  # polls wake on this grid, so that many share one wake-up of the loop, seconds

_FAILURES = {FailureKind.INVALID: Failure.REFUSED, FailureKind.BLOCKED: Failure.BLOCKED}


class _Abort(Exception):
    """Raised from the submit's before-send hook: the stop came while waiting for the rate gate."""


class _OverBudget(Exception):
    """Raised from the submit's before-send hook: the store refused the submit's reservation."""


class LifecyclePart(RemotePart):
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
                submitted = fresh and await self._submit(task)
            except StrayReply as e:  # no handle the API returned is dropped: drive it to the end
                log.warning("%s", e)
                stray, submitted = e.stray, False
            if stray is not None:
                self._polling.add(task.id)
                await self._finish_stray(stray)
                return
            if fresh and not submitted:
                return
            self._polling.add(task.id)
            await self._finish(task, fresh=fresh)
        except ClaimLost as e:
            log.warning("%s", e)
        except BatcherError as e:  # a rejected key, a spent quota, an unwritable output, a failing store: stop
            self._fail_run(e)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # a bug: stop the run (a submit it cut is found `unknown` by the next one)
            log.debug("task %s", task.key, exc_info=True)
            self._fail_run(BatcherError(f"internal error on task {task.key}: {type(e).__name__}: {e}"))
        finally:
            self._probe_busy = False  # this task's create, if it was the probe, has its answer
            self._create_sent(task)
            self._polling.discard(task.id)
            self._active.pop(task.id, None)
            self.progress.in_flight = len(self._active)
            if self._worth_a_claim() or not self._active or self._stopping:
                self._wake.set()

    # --- cache and chains -----------------------------------------------------------------------------

    async def _settled_without_api(self, task: Task) -> bool:
        """True when the task needs no submit: it succeeded from the cache, or failed because its input did (or
        was let go of, its input not finished). Else its input images are made ready for `_submit`."""
        self._inline.pop(task.id, None)
        if self._stopping or self._fatal is not None:
            return False  # `_submit` lets go of it
        # the cache is asked only for keys it may hold (one query per run, not one per task)
        use_cache = self.config.use_cache and task.key in self._twins
        prepared = await cache.prepare(self.store, task, self.output_root, use_cache=use_cache)
        if prepared.outcome is cache.Outcome.CACHED:
            self.progress.succeeded += 1
            self.progress.cached += 1
        elif prepared.outcome is cache.Outcome.FAILED:
            self.progress.failed += 1
        elif prepared.images is not None:
            self._inline[task.id] = prepared.images
        return prepared.outcome is not cache.Outcome.READY

    # --- submitting -----------------------------------------------------------------------------------

    async def _submit(self, task: Task) -> bool:
        """Send the request. True when the API holds it and the task is now `submitted`, to be checked."""
        if self._stopping or self._fatal is not None or self._budget_blocked:
            await self.store.release(task, self._now())
            return False

        sent = False

        async def commit_intent() -> None:
            nonlocal sent
            if self._stopping or self._fatal is not None:
                raise _Abort
            try:  # the intent and the submit's reservation, in one commit; refused when the budget is full
                await self.store.begin_create(task, self._now(), price_micros=self._unit(task),
                                              budget_micros=self.config.budget_micros,
                                              provider=self.provider.name)  # fmt: skip
            except BudgetRefused as e:
                raise _OverBudget from e
            sent = True
            self._create_sent(task)

        images = self._inline.pop(task.id, task.images)  # inputs inlined as data: URIs
        request = Request(task.model, task.prompt, task.quality, task.size, images)
        try:
            outcome = await self.provider.submit(request, before_send=commit_intent)
        except _OverBudget:
            self._budget_blocked = True
            await self.store.release(task, self._now())
            return False
        except _Abort:
            await self.store.release(task, self._now())
            return False
        now = self._now()
        if not sent:  # refused before anything left (a request the provider cannot put on the wire)
            assert isinstance(outcome, Failed), outcome
            await self.store.failed(task, outcome.reason, outcome.call, now, failure=Failure.REFUSED)
            self.progress.failed += 1
            return False
        self.progress.requests += 1
        lease_until = now + self.config.lease_s
        if self._quota_probe and isinstance(outcome, Accepted | Done):  # the quota is back: the rest go too
            self._quota_probe = self._probe_busy = False
            await self.store.quota_due(self.job, now, every=True)
            self._wake.set()
        if isinstance(outcome, Accepted):
            await self.store.created(task, outcome.handle, outcome.price_micros, outcome.call, now,
                                     reserved_micros=self._unit(task), stray_lease_until=lease_until,
                                     provider=self.provider.name)  # fmt: skip
            return True
        if isinstance(outcome, Done):  # the reply held the image: nothing to check, nothing to fetch again
            handle = outcome.handle or f"{self.provider.name}-{uuid.uuid4().hex}"
            try:
                await self.store.created(task, handle, outcome.price_micros, outcome.call, now,
                                         reserved_micros=self._unit(task), stray_lease_until=lease_until,
                                         adopt=False, provider=self.provider.name)  # fmt: skip
            except StrayReply as e:
                log.warning("%s", e)
                await self._keep_duplicate(e.stray, outcome.image, last_try=True)
                return False
            self.store.billed(task, self._cost(task), self._unit(task), now)
            await self._save(task, outcome.image)  # a failure is final: the image cannot be fetched again
            return False
        await self._submit_failed(task, outcome, now)
        return False

    async def _submit_failed(self, task: Task, outcome: SubmitOutcome, now: float) -> None:
        """A submit the API did not take (its reservation goes), or one whose outcome is unknown (its
        reservation stays: it may have been billed)."""
        retry, unit, call = self.config.retry, self._unit(task), outcome.call
        if isinstance(outcome, AuthRejected):
            await self.store.retry_later(task, now, outcome.message, call, now, refund_attempt=True,
                                         release_micros=unit)  # fmt: skip
            raise AuthError.rejected(outcome.message, self.provider.key_env)
        if isinstance(outcome, SpendCapReached):  # not a rate to wait out: stop creating, as a budget does
            await self.store.retry_later(task, now, outcome.message, call, now, refund_attempt=True,
                                         release_micros=unit)  # fmt: skip
            raise SpendCapError.reached(self.provider.name, outcome.message)
        if isinstance(outcome, QuotaExhausted):
            await self.store.retry_later(task, outcome.until, quota_note(outcome.message), call, now,
                                         refund_attempt=True, release_micros=unit)  # fmt: skip
            raise QuotaError.spent(self.provider.name, outcome.until, outcome.message)
        if isinstance(outcome, Failed):
            if outcome.kind is FailureKind.GENERATION:
                await self._generation_failed(task, outcome, now)
            else:
                await self._refused(task, outcome, now)
            return
        if isinstance(outcome, RateLimited):
            wait = outcome.wait_s if outcome.wait_s is not None else 1.0
            await self.store.retry_later(task, now + wait, outcome.message, call, now, refund_attempt=True,
                                         release_micros=unit)  # fmt: skip
            return
        assert not isinstance(outcome, Accepted | Done)
        message = outcome.message
        last = task.attempts >= retry.max_attempts
        if isinstance(outcome, Unknown):
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

    async def _refused(self, task: Task, outcome: Failed, now: float) -> None:
        """The API refused the request (invalid), or the model gave no image on purpose (blocked): not billed.
        A blocked prompt is blocked again, so it is tried again only as often as the settings allow."""
        unit = self._unit(task)
        if outcome.kind is FailureKind.BLOCKED and task.gen_failures < self.config.retry.max_blocked_retries:
            delay = backoff_s(task.gen_failures + 1, self.config.retry, self.rng.random())
            await self.store.retry_later(task, now + delay, outcome.reason, outcome.call, now, generation_failed=True,
                                         release_micros=unit)  # fmt: skip
            return
        await self.store.failed(task, outcome.reason, outcome.call, now, failure=_FAILURES[outcome.kind],
                                generation_failed=outcome.kind is FailureKind.BLOCKED,
                                release_micros=unit)  # fmt: skip
        self.progress.failed += 1
        log.warning("task %s (%s) failed for good: %s", task.key, task.source, outcome.reason)

    async def _generation_failed(self, task: Task, outcome: Failed, now: float) -> None:
        unit = self._unit(task)  # a failed generation is not billed: its reservation goes
        if task.gen_failures + 1 > self.config.retry.max_generation_failures:
            await self.store.failed(task, outcome.reason, outcome.call, now, generation_failed=True,
                                    failure=Failure.GENERATION, release_micros=unit)  # fmt: skip
            self.progress.failed += 1
            log.warning("task %s (%s) failed for good: %s", task.key, task.source, outcome.reason)
            return
        delay = backoff_s(task.gen_failures + 1, self.config.retry, self.rng.random())
        await self.store.retry_later(task, now + delay, outcome.reason, outcome.call, now, generation_failed=True,
                                     release_micros=unit)  # fmt: skip

    # --- checking -------------------------------------------------------------------------------------

    async def _finish(self, task: Task, *, fresh: bool) -> None:
        """Check a submitted task until the API says it ended, then save its image. `fresh`: submitted by this
        run (its first check then teaches the run when to check). The give-up limit counts only time its
        checks found it still running: time while no runner checked it never counts."""
        assert task.remote_task_id is not None
        billed_before = task.billed_at is not None  # a Success seen by an earlier run: its image may be in place
        if billed_before and self.remote and await self._store_kept(task):
            return  # the bucket refused it earlier and the API cannot serve it again: stored from this disk
        # submitted by an earlier run: a kill between renaming its image into place and committing that (the
        # billing included) left the image under its name. A bucket needs no adoption: the conditional create
        # knows this task's own bytes (same sha256)
        look_for_saved = not fresh and not self.remote
        tracker = self._first_poll(task.model)
        polls = fetch_failures = 0
        submitted_at = task.submitted_at or self._now()
        running = RunningClock()
        retry_in: float | None = None  # set after a broken fetch, or by the API's hint
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
            r = await self.provider.check(task.remote_task_id)
            polls += 1
            self.progress.requests += 1
            now = self._now()
            running.answered(now, isinstance(r, Running))
            if fresh and polls == 1 and isinstance(r, Running | Done | Failed):
                tracker.observe(r.call.at - submitted_at, done=not isinstance(r, Running))
            if isinstance(r, AuthRejected):
                self.store.log_call(task, r.call)
                raise AuthError.rejected(r.message, self.provider.key_env)
            if isinstance(r, Running):
                self.store.log_call(task, r.call)
                retry_in = r.hint_s
                continue
            if isinstance(r, Done):
                self.store.log_call(task, r.call)
                if task.billed_at is None:  # billed from now on, whatever the fetch does
                    self.store.billed(task, self._cost(task), self._unit(task), now)
                if look_for_saved:
                    look_for_saved = False
                    if await self._adopt_saved(task, now):
                        return
                if await self._save(task, r.image, last_try=False):
                    return
                fetch_failures += 1
                if fetch_failures >= self.config.retry.max_download_failures:
                    await self.store.failed(
                        task, f"paid, but the image could not be downloaded after {fetch_failures} tries", None,
                        now, failure=Failure.DOWNLOAD,
                    )  # fmt: skip
                    self.progress.failed += 1
                    return
                retry_in = backoff_s(fetch_failures, self.config.retry, self.rng.random())
                continue
            if isinstance(r, Failed):
                if r.kind is FailureKind.GENERATION:
                    await self._generation_failed(task, r, now)
                else:
                    await self._refused(task, r, now)
                return
            if isinstance(r, Gone):
                if task.billed_at is not None:
                    why, failure = "paid, result lost", Failure.RESULT_LOST
                else:  # it may have been billed: its reservation stays
                    why, failure = "lost at the API", Failure.LOST
                await self.store.failed(
                    task, f"{why}: the API no longer knows task {task.remote_task_id}: {r.message}", r.call,
                    now, failure=failure,
                )  # fmt: skip
                self.progress.failed += 1
                return
            self.store.log_call(task, r.call)  # transient or 429: check again later

    async def _adopt_saved(self, task: Task, now: float) -> bool:
        """Take the image an earlier run left under the task's name as its output (see `cache.adopt_saved`)."""
        submitted = None if task.submitted_at is None else task.submitted_at - self.store.clock_offset
        if not await cache.adopt_saved(self.store, task, self.output_dir, self._cost(task), now, not_before=submitted):
            return False
        self.progress.succeeded += 1
        self.progress.spent_micros += self._cost(task)
        return True

    def _first_poll(self, model: str) -> FirstPollTracker:
        tracker = self.first_polls.get(model)
        if tracker is None:
            tracker = self.first_polls[model] = FirstPollTracker(self.config.poll.initial_s)
        return tracker

    # --- saving ---------------------------------------------------------------------------------------

    async def _fetch(self, image: Image, target: Path) -> tuple[Fetched, AtomicFile, ImageInfo | None]:
        """Fetch `image` toward `target`: what became of it, the sink holding the bytes, the image they make."""
        sink = AtomicFile(target, whole=image.data is not None)
        try:
            result = await self.provider.fetch(image, sink)
        except BaseException:  # a stop cancels downloads in progress: leave no partial file behind
            sink.discard()
            raise
        info = sink.image() if result.ok else None
        if info is None:
            sink.discard()
        return result, sink, info

    async def _save(self, task: Task, image: Image, *, last_try: bool = True) -> bool:
        """Fetch the image into place; True when the task is final (succeeded, or its file was unusable).
        `last_try`: a fetch that could work later fails the task all the same (nothing can fetch it again)."""
        target = None if self.remote else target_path(self.output_dir, task.filename)
        result, sink, info = await (self._fetch_to_memory(image) if target is None else self._fetch(image, target))
        now = self._now()
        if result.ok:
            if info is None:
                what = "the file URL did not serve an image" if image.url else "the reply's bytes are not an image"
                await self.store.failed(task, f"paid, but {what}; nothing was written", result.call, now,
                                        failure=Failure.DOWNLOAD)  # fmt: skip
                self.progress.failed += 1
                return True
            if isinstance(sink, MemorySink):  # a bucket: one conditional create, and its record
                await to_the_end(self._store_remote(task, sink, info, result.call, only_copy=image.url is None))
                return True
            assert target is not None
            await to_the_end(self._place(task, sink, with_real_extension(target, info), info, result.call, now))
            return True
        if not result.retryable or last_try:
            await self.store.failed(task, f"paid, but the download was refused: {result.message}", result.call, now,
                                    failure=Failure.DOWNLOAD)  # fmt: skip
            self.progress.failed += 1
            return True
        if result.call is not None:
            self.store.log_call(task, result.call)
        return False

    async def _place(
        self, task: Task, sink: AtomicFile, final: Path, info: ImageInfo, call: CallRecord | None, now: float
    ) -> None:
        """Rename the image into place and record it: run `to_the_end`, so that a stop never leaves an image
        under a task's name without its record."""
        await self._finisher.finish(sink, final)
        cost = self._cost(task)
        await self.store.succeeded(task, output_path=str(final), sha256=sink.sha256, size=sink.size, width=info.width,
                                   height=info.height, fmt=info.format, cost_micros=cost, call=call, now=now)  # fmt: skip
        self.progress.succeeded += 1
        self.progress.spent_micros += cost

    # --- stray replies ----------------------------------------------------------------------------------

    async def _finish_stray(self, stray: Stray) -> None:
        """Check a stray reply's submission to its end and keep its image beside its task's, as a paid
        duplicate (`NAME.dup-HANDLE.png`): billed all the same, so neither it nor its charge may be lost."""
        first_poll_s = self.config.poll.initial_s  # its generation began about now: checked as a fresh one is
        started, polls, fetches = self._now(), 0, 0
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
                r = await self.provider.check(stray.remote_task_id)
                polls += 1
                self.progress.requests += 1
                self.store.log_call(stray, r.call)
                now = self._now()
                running.answered(now, isinstance(r, Running))
                if isinstance(r, AuthRejected):
                    raise AuthError.rejected(r.message, self.provider.key_env)
                if isinstance(r, Done):
                    fetches += 1
                    last = fetches >= self.config.retry.max_download_failures
                    if await self._keep_duplicate(stray, r.image, last_try=last):
                        return
                    continue
                if isinstance(r, Failed):
                    await self.store.stray_done(stray, "failed", now, billed=False, detail=r.reason)
                    return
                if isinstance(r, Gone):
                    await self.store.stray_done(stray, "failed", now, billed=False,
                                                detail=f"lost at the API: {r.message}")  # fmt: skip
                    return
        except BatcherError as e:
            self._fail_run(e)

    async def _place_duplicate(self, stray: Stray, sink: AtomicFile, final: Path) -> None:
        await self._finisher.finish(sink, final)
        await self.store.stray_done(stray, "succeeded", self._now(), billed=True, output_path=str(final),
                                    sha256=sink.sha256)  # fmt: skip

    async def _keep_duplicate(self, stray: Stray, image: Image, *, last_try: bool) -> bool:
        """Save a stray's image as `NAME.dup-HANDLE.png`; True when the stray is final (saved, or given up)."""
        stem = Path(stray.filename)
        name = stem.with_name(f"{stem.stem}.dup-{_safe(stray.remote_task_id)}{stem.suffix or '.png'}")
        target = None if self.remote else target_path(self.output_dir, str(name))
        result, sink, info = await (self._fetch_to_memory(image) if target is None else self._fetch(image, target))
        if result.call is not None:
            self.store.log_call(stray, result.call)
        if info is not None:
            if isinstance(sink, MemorySink):  # a bucket: one conditional create
                await to_the_end(self._stray_to_bucket(stray, str(name), sink, info))
                return True
            assert target is not None
            await to_the_end(self._place_duplicate(stray, sink, with_real_extension(target, info)))
            return True
        if result.ok or not result.retryable or last_try:
            await self.store.stray_done(stray, "failed", self._now(), billed=True,
                                        detail=f"paid duplicate, image not saved: {result.message or 'not an image'}")  # fmt: skip
            return True
        return False


def _safe(handle: str) -> str:
    """A handle as part of a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in handle)[:64]


async def _sleep_on_grid(delay: float) -> None:
    """Sleep at least `delay`, waking on the POLL_GRID_S grid of the loop's clock."""
    now = asyncio.get_running_loop().time()
    await asyncio.sleep(math.ceil((now + delay) / POLL_GRID_S) * POLL_GRID_S - now)
