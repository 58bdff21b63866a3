"""One step of one shard: upload its requests, create its batch (exactly once), find it again after an
unknown create reply, and look at it until it ends.

A create whose reply is unknown (a 5xx, a timeout, a lost connection) may have made a batch: the shard waits in
`creating` and lists the account's batches by its display name. Found, the batch is adopted. Absent is proof
that it was never made only after `create_grace_s` (the listing lags behind a create) and GRACE_LISTINGS
complete listings: until then the shard waits, and is never created again.
"""

from __future__ import annotations

import contextlib
import json

from batcher.models import Failure, TaskStatus
from batcher.providers.base import (
    Absent,
    AuthRejected,
    Created,
    CreateUnknown,
    Found,
    Gone,
    Got,
    NotCreated,
    RateLimited,
    Transient,
    Uploaded,
)
from batcher.retry import backoff_s
from batcher.runner.base import log
from batcher.runner.batch.shard import ENDED, GRACE_LISTINGS, MAX_REUPLOADS, Shard, ShardWork
from batcher.runner.batch_bucket import rebuild_shard_file
from batcher.shards import next_check_in
from batcher.store import ClaimLost
from batcher.store.submissions import CANCEL_CREATING, CLOSED, CREATING, PLANNED, UPLOADED, ShardMoved


class StepsPart(ShardWork):
    async def _advance(self, shard: Shard) -> None:
        sub = shard.sub
        try:
            if sub.state == PLANNED:
                await self._upload(shard)
            elif sub.state == UPLOADED:
                await self._create(shard)
            elif sub.state in (CREATING, CANCEL_CREATING):
                await self._reconcile(shard)
            elif sub.state in ENDED:
                await self._collect(shard)
            else:
                await self._check(shard)
        except ShardMoved as e:
            await self._moved(shard, str(e))
        except ClaimLost as e:  # a line's task was taken over: the shard is another worker's now
            await self._moved(shard, str(e))

    async def _upload(self, shard: Shard) -> None:
        sub = shard.sub
        path = self.work_dir / f"{sub.display_name}.jsonl"
        if not path.exists() and not (
            self.remote and await rebuild_shard_file(self.store, self.client, shard.tasks.values(), path)
        ):
            # nothing was created from it yet (and, for a bucket job, it cannot be written again from the store):
            # its tasks go back for a later shard
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
        elif isinstance(got, NotCreated) and got.input_missing and shard.reuploads >= MAX_REUPLOADS:
            why = f"the API dropped the shard's requests file {shard.reuploads + 1} times before its create"
            for task in list(shard.tasks.values()):
                await self.store.failed(task, f"{why}: {got.message}", None, self._now(),
                                        failure=Failure.TRANSIENT, release_micros=sub.price_each)  # fmt: skip
                self.progress.failed += 1
            shard.tasks.clear()
            await self._abandon(shard, "failed", why)
        elif isinstance(got, NotCreated) and got.input_missing:
            shard.reuploads += 1
            wait = backoff_s(shard.reuploads, self.config.retry, 0.5)
            log.warning("shard %s: %s; uploading its requests again in %.1f s", sub.display_name, got.message, wait)
            await self.store.shard_upload_again(sub, self._now())
            self._later(shard, wait)
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
            # proof that nothing was made: sent again after the wait, with no listing and no grace period (the
            # store keeps `creating`, which only makes a restart list first: safe)
            sub.state = UPLOADED
            self._later(shard, got.wait_s or 5.0)
        else:  # NotCreated, retryable: the same proof
            sub.state = UPLOADED
            self._fault(shard, f"create not sent: {got.message}")

    async def _reconcile(self, shard: Shard) -> None:
        """`creating` after a restart or an unknown reply: is there a batch of this display name?"""
        sub = shard.sub
        found = await self.client.find_by_display_name(sub.display_name)
        for call in found.calls:
            self._log_shard_call(shard, call)
        if isinstance(found, Found):
            if len(found.batches) > 1:  # created twice: the oldest is the shard's, the others known duplicates
                log.error("shard %s: %d batches carry its name; the others' lines are known duplicates",
                          sub.display_name, len(found.batches))  # fmt: skip
                await self._record_duplicates(shard, [b.name for b in found.batches[:-1]])
            await self._created(shard, found.batches[-1].name)
        elif isinstance(found, Absent):
            # a listing lags behind a create: absence is proof only on several listings past the grace period
            shard.absent_listings += 1
            grace = self.batch.create_grace_s
            left = sub.updated_at + grace - self._now()  # updated when `creating` was committed
            if sub.state == CANCEL_CREATING and left <= 0 and shard.absent_listings >= GRACE_LISTINGS:
                # a listing may lag past the grace period: a batch of it that shows up late bills, and no later
                # listing looks for it under this shard's name, so its tasks go again counted as unknown
                await self._abandon(shard, "cancelled", "cancelled while its create was on its way; no batch of it "
                                    "on the listing", maybe_billed=True)  # fmt: skip
                return
            if left > 0 or shard.absent_listings < GRACE_LISTINGS:
                log.info("shard %s: no batch of that name on the listing yet (%d of %d listings; %.0f s of the "
                         "%.0f s grace left): waiting, not creating again", sub.display_name,
                         shard.absent_listings, GRACE_LISTINGS, max(left, 0.0), grace)  # fmt: skip
                self._later(shard, max(0.2, min(grace / GRACE_LISTINGS, left) if left > 0 else grace / GRACE_LISTINGS))
                return
            log.warning("shard %s: no batch of that name on %d complete listings over %.0f s: never created; sending "
                     "it again", sub.display_name, shard.absent_listings, grace)  # fmt: skip
            shard.absent_listings, shard.recreated = 0, True
            sub.state = UPLOADED
            await self._create(shard)
        else:
            self._fault(shard, found.message)

    async def _moved(self, shard: Shard, why: str) -> None:
        """A change of the shard was refused: another process moved it (`batcher cancel`, or a worker that took
        it over). Carried on from where the store has it, if it is still open and ours; else let go."""
        sub = shard.sub
        fresh = await self.store.shard_by_display_name(sub.display_name)
        if fresh is None or fresh.state in CLOSED or fresh.state == sub.state:
            log.warning("%s: let go", why)
            self.shards.pop(sub.id, None)
            return
        log.info("%s: it is %s now", why, fresh.state)
        shard.sub, shard.due = fresh, 0.0

    async def _created(self, shard: Shard, remote_name: str) -> None:
        sub = shard.sub
        cancelled = await self.store.shard_created(sub, remote_name, self._now())
        if cancelled:
            got = await self.client.cancel(remote_name)  # `batcher cancel` asked while its create was on its way
            self._log_shard_call(shard, got.call)
            log.warning("shard %s: cancelled while its create was on its way: batch %s cancelled; what it "
                        "finished is collected", sub.display_name, remote_name)  # fmt: skip
        for task in shard.tasks.values():
            task.status, task.remote_task_id = TaskStatus.SUBMITTED, remote_name
        shard.faults, shard.checks = 0, 0
        self._later(shard, 1.0 if cancelled else next_check_in(0.0, 0))  # a cancel takes hold within seconds
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
            if info.state.is_done:  # any ending: what it finished is billed, so collected
                await self._ended(shard, info)
            else:
                self._later(shard, next_check_in(self._now() - sub.created_at, shard.checks))
        elif isinstance(got, AuthRejected):
            self._auth(got.message)
        elif isinstance(got, RateLimited):
            self._later(shard, got.wait_s or 10.0)
        elif isinstance(got, Transient):
            self._fault(shard, f"batches.get answered {got.message}")
        else:  # Gone or Refused: the API no longer answers for the batch (deleted, which does not cancel it):
            # collected where its results outlive it; else it may run on and bill, so its lines go again each
            # counted as a possible double charge
            if isinstance(got, Gone) and await self._ended_outliving(shard, got.message):
                return
            await self._abandon(shard, "expired", f"the API no longer knows batch {sub.remote_name}: {got.message}",
                                maybe_billed=True)  # fmt: skip
