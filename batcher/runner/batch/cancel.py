"""Cancelling a job's shards (`batcher cancel JOB`, and the `--finish-online-after` deadline), shard by shard.

A cancelled batch keeps and bills the lines it finished before the cancel took hold: a shard whose batch
finished any line stays open, its ending recorded, so that a run collects those lines at the batch price and
sends only the unfinished ones again. A shard whose batch finished nothing is closed at once, its tasks pending
again, unbilled. A shard never created is closed at once; one caught in `creating` is looked up by its display
name first, and every batch found of it is cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batcher.errors import AuthError, BatcherError
from batcher.providers.base import Absent, AuthRejected, BatchClient, BatchInfo, Found, Got, Ok
from batcher.runner.base import log
from batcher.runner.batch.shard import ENDED, shards_dir
from batcher.store import Job, Store
from batcher.store.submissions import CANCEL_CREATING, CLOSED, CREATING, PLANNED, UPLOADED, ShardMoved, Submission


@dataclass(frozen=True)
class ShardCancel:
    """What cancelling one shard did. `closed`: its unfinished tasks are pending again now."""

    shard: str
    outcome: str
    closed: bool = False


async def cancel_shards(store: Store, client: BatchClient, job: Job, why: str, now: float) -> list[ShardCancel]:
    """Cancel the job's shards not collected; what happened to each, in the order they were planned."""
    done: list[ShardCancel] = []
    for sub in await store.shards_open(job):
        if sub.provider != client.name:  # another provider's batch: cancelled through its own client
            continue
        try:
            did = await cancel_shard(store, client, sub, why, now)
            if did.closed:  # nothing of it is left to collect: its uploaded and local requests files go
                await _clean(client, shards_dir(job) / f"{sub.display_name}.jsonl", sub)
            done.append(did)
        except ShardMoved as e:  # another process closed or moved it meanwhile: nothing of ours to cancel
            done.append(ShardCancel(sub.display_name, f"left alone: {e}"))
    for name in await store.duplicate_batches_open(job):  # a shard's second batch: cancelled too
        got = await client.cancel(name)
        if isinstance(got, AuthRejected):
            raise AuthError.rejected(got.message, client.key_env)
        what = "cancelled" if isinstance(got, Ok) else f"not cancelled ({got.message})"
        done.append(ShardCancel(name, f"a shard's second batch, {what}: a run collects what it finished"))
    for c in done:
        log.info("shard %s: %s", c.shard, c.outcome)
    return done


async def cancel_shard(store: Store, client: BatchClient, sub: Submission, why: str, now: float) -> ShardCancel:
    """Cancel one shard's batch (every batch of it, if a create was doubled) and record what it left."""
    if sub.state in (PLANNED, UPLOADED):
        if await store.shard_cancel_unsent(sub, now, why):
            return ShardCancel(sub.display_name, "never created: its tasks are pending again", closed=True)
        sub = await _fresh(store, sub)  # its create was committed meanwhile
    if sub.state == CREATING and not await store.shard_cancel_creating(sub, now):
        sub = await _fresh(store, sub)
    names = [sub.remote_name] if sub.remote_name is not None else []
    if sub.state in (CREATING, CANCEL_CREATING) and sub.remote_name is None:
        found = await client.find_by_display_name(sub.display_name)
        if not isinstance(found, Found):
            # in flight, or a listing that lags: marked, the worker that sent it cancels the batch once it
            # knows its name, and a run that finds none after the grace period closes the shard
            what = "no batch of it on the listing yet" if isinstance(found, Absent) else found.message
            return ShardCancel(sub.display_name, f"its create may be on its way ({what}): marked; its batch is "
                               "cancelled as soon as it is known, and what it finished is collected")  # fmt: skip
        names = [b.name for b in found.batches]
        try:
            await store.shard_created(sub, names[-1], now)  # the oldest: the one its lines are billed by
        except ShardMoved:
            sub = await _fresh(store, sub)  # the worker learnt the name meanwhile
            names = sorted({*names, *([sub.remote_name] if sub.remote_name else [])})
    if sub.state in ENDED:
        return ShardCancel(sub.display_name, f"its batch ended {sub.state}: a run collects its lines")
    ended: BatchInfo | None = None
    for name in names:
        got = await client.cancel(name)
        if isinstance(got, AuthRejected):
            raise AuthError.rejected(got.message, client.key_env)
        info = await _look(client, name, sub, "" if isinstance(got, Ok) else got.message)
        if name == sub.remote_name:
            ended = info
    if ended is None or not ended.state.is_done:
        return ShardCancel(sub.display_name, "cancel sent; its batch has not ended yet: a run collects what it "
                           "finished and sends the rest again")  # fmt: skip
    stats = ended.stats
    finished = stats.succeeded + stats.failed
    if finished == 0 and ended.responses_file is None and len(names) == 1:
        await store.shard_abandoned(sub, "cancelled", now, why)
        return ShardCancel(sub.display_name, "cancelled before any line finished: its tasks are pending again",
                           closed=True)  # fmt: skip
    await store.shard_state(sub, ended.state.value, None, now)
    return ShardCancel(sub.display_name, f"its batch ended {ended.state} with {stats.succeeded} lines succeeded "
                       f"and {stats.failed} failed: a run collects them and sends the rest again")  # fmt: skip


async def _clean(client: BatchClient, local: Path, sub: Submission) -> None:
    if sub.input_file:
        await client.delete_file(sub.input_file)
    local.unlink(missing_ok=True)


async def _fresh(store: Store, sub: Submission) -> Submission:
    fresh = await store.shard_by_display_name(sub.display_name)
    if fresh is None or fresh.state in CLOSED:
        raise ShardMoved(f"shard {sub.display_name} was closed meanwhile")
    return fresh


async def _look(client: BatchClient, name: str, sub: Submission, why: str) -> BatchInfo:
    """The batch after its cancel (accepted, or refused because it had ended). One that cannot be looked at is
    never taken to have ended: it may run on and bill while its tasks ran again elsewhere."""
    got = await client.get(name)
    if isinstance(got, Got):
        return got.batch
    if isinstance(got, AuthRejected):
        raise AuthError.rejected(got.message, client.key_env)
    raise BatcherError(f"could not look at batch {name} of shard {sub.display_name} after cancelling it"
                       f"{f' ({why})' if why else ''}: {got.message}; nothing was closed for it, try again")  # fmt: skip
