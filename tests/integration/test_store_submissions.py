"""Batch Mode shards in a real SQLite store: one transaction per plan, unique names, fenced transitions, money."""

from __future__ import annotations

import dataclasses
import time

import pytest
from sqlalchemy import select

from batcher.models import Failure, JobSettings, TaskSpec, TaskStatus, import_batches
from batcher.shards import batch_saving_micros, display_name
from batcher.store import BudgetRefused, ClaimLost, DuplicateShard, ShardMoved, Store, Submission, Task
from batcher.store.tables import jobs, submissions, tasks
from tests.conftest import OpenStore

MODEL = "gemini-3.1-flash-lite-image"
PRICE = 19_500  # a batch line's price, half the online one
ONLINE = 39_000


async def job_with(store: Store, n: int) -> tuple[int, list[Task]]:
    specs = [TaskSpec(MODEL, f"p {i}", "1K", "1x1", f"{i}.png") for i in range(n)]
    await store.import_manifest(JobSettings("j", "out"), "m.yaml", import_batches(specs), extra={}, now=time.time())
    job = await store.job("j")
    now = time.time()
    return job.id, await store.claim(job, "w1", n, now, now + 300, provider="gemini")


async def planned(
    store: Store, n: int = 5, *, name: str = "s1", budget: int | None = None
) -> tuple[Submission, list[Task]]:
    _, claimed = await job_with(store, n)
    sub = await store.plan_shard(
        await store.job("j"), claimed, name, PRICE, budget, time.time(), request_bytes=n * 10, provider="gemini"
    )
    return sub, claimed


async def money(store: Store) -> tuple[int, int]:
    row = (await store._rows(select(jobs.c.spent_micros, jobs.c.held_micros)))[0]
    return int(row[0]), int(row[1])


async def rows_of(store: Store) -> list[tuple[str, int | None, int, str | None]]:
    stmt = select(tasks.c.status, tasks.c.submission_id, tasks.c.reserved_micros, tasks.c.provider).order_by(
        tasks.c.seq
    )
    return [tuple(r) for r in await store._rows(stmt)]


async def created(store: Store, sub: Submission) -> None:
    now = time.time()
    await store.shard_uploaded(sub, "files/abc", now)
    await store.shard_create_sending(sub, now)
    await store.shard_created(sub, "batches/xyz", now)


async def saved(store: Store, sub: Submission, task: Task) -> None:
    await store.shard_line_succeeded(
        sub, task, output_path=f"out/{task.id}.png", sha256="0" * 64, size=10, width=1, height=1, fmt="png",
        cost_micros=PRICE, now=time.time(),
    )  # fmt: skip


async def test_a_plan_commits_the_shard_its_tasks_and_their_reservation_together(open_store: OpenStore) -> None:
    store = await open_store()
    sub, claimed = await planned(store, 5, budget=10 * PRICE)
    assert (sub.state, sub.requests, sub.reserved_micros, sub.price_each) == ("planned", 5, 5 * PRICE, PRICE)
    assert await rows_of(store) == [("submitting", sub.id, PRICE, "gemini")] * 5
    assert all(t.status is TaskStatus.SUBMITTING and t.attempts == 1 for t in claimed)
    assert await money(store) == (0, 5 * PRICE)
    assert await store.shard_by_display_name("s1") == sub
    assert [s.id for s in await store.shards_open(await store.job("j"))] == [sub.id]


async def test_a_budget_too_small_for_the_whole_shard_changes_nothing(open_store: OpenStore) -> None:
    store = await open_store()
    _, claimed = await job_with(store, 5)
    with pytest.raises(BudgetRefused):
        await store.plan_shard(
            await store.job("j"), claimed, "s1", PRICE, 5 * PRICE - 1, time.time(), provider="gemini"
        )
    assert await rows_of(store) == [("pending", None, 0, None)] * 5
    assert await store._rows(select(submissions)) == []
    assert await money(store) == (0, 0)
    assert all(t.status is TaskStatus.PENDING for t in claimed)
    sub = await store.plan_shard(await store.job("j"), claimed, "s1", PRICE, 5 * PRICE, time.time(), provider="gemini")
    assert sub.requests == 5  # exactly the room it needs is enough


async def test_a_task_taken_over_refuses_the_whole_plan(open_store: OpenStore) -> None:
    store = await open_store()
    _, claimed = await job_with(store, 3)
    claimed[1].claim_token = "someone-else"
    with pytest.raises(ClaimLost):
        await store.plan_shard(await store.job("j"), claimed, "s1", PRICE, None, time.time(), provider="gemini")
    assert await rows_of(store) == [("pending", None, 0, None)] * 3
    assert await store._rows(select(submissions)) == []


async def test_a_second_shard_of_the_same_name_fails_cleanly(open_store: OpenStore) -> None:
    store = await open_store()
    _, claimed = await job_with(store, 4)
    job = await store.job("j")
    first = await store.plan_shard(job, claimed[:2], "same", PRICE, None, time.time(), provider="gemini")
    with pytest.raises(DuplicateShard):
        await store.plan_shard(job, claimed[2:], "same", PRICE, None, time.time(), provider="gemini")
    assert [r[1] for r in await rows_of(store)] == [first.id, first.id, None, None]
    assert await money(store) == (0, 2 * PRICE)
    # the store is fine afterwards: another name goes through
    other = await store.plan_shard(job, claimed[2:], "other", PRICE, None, time.time(), provider="gemini")
    assert other.id != first.id


async def test_the_shard_moves_only_forward_and_each_step_is_fenced(open_store: OpenStore) -> None:
    store = await open_store()
    sub, _ = await planned(store, 2)
    now = time.time()
    with pytest.raises(ShardMoved):
        await store.shard_create_sending(sub, now)  # nothing uploaded yet
    with pytest.raises(ShardMoved):
        await store.shard_created(sub, "batches/x", now)
    await store.shard_uploaded(sub, "files/abc", now)
    await store.shard_create_sending(sub, now)
    await store.shard_create_sending(sub, now)  # a complete listing proved it absent: sent again
    stale = await store.shard_by_display_name("s1")
    assert stale is not None and stale.state == "creating"
    with pytest.raises(ShardMoved):
        await store.shard_uploaded(sub, "files/def", now)  # the create may be out: no new file now
    with pytest.raises(ShardMoved):
        await store.shard_state(sub, "running", None, now)  # not created yet
    await store.shard_created(sub, "batches/xyz", now)
    with pytest.raises(ShardMoved):
        await store.shard_created(stale, "batches/other", now)  # a second worker's late reply changes nothing
    assert await rows_of(store) == [("submitted", sub.id, PRICE, "gemini")] * 2
    await store.shard_state(sub, "running", '{"pending": 2}', now)
    got = await store.shard_by_display_name("s1")
    assert got is not None and (got.state, got.remote_name, got.detail) == ("running", "batches/xyz", '{"pending": 2}')
    with pytest.raises(ValueError):
        await store.shard_state(sub, "collected", None, now)
    with pytest.raises(ShardMoved):
        await store.shard_collected(sub, now)  # its lines are not settled yet


async def test_lines_settle_fenced_by_their_claim_and_the_books_follow(open_store: OpenStore) -> None:
    store = await open_store()
    sub, claimed = await planned(store, 4)
    await created(store, sub)
    a, b, c, d = claimed
    await saved(store, sub, a)
    await store.shard_line_failed(sub, b, Failure.DOWNLOAD, "not an image", billed=True, now=time.time())
    await store.shard_line_failed(
        sub, c, Failure.BLOCKED, "IMAGE_SAFETY", billed=False, generation_failed=True, now=time.time()
    )
    await store.shard_line_back_to_pending(sub, d, "missing from the results", generation_failed=False, now=time.time())
    with pytest.raises(ClaimLost):
        await saved(store, sub, a)  # settled already
    assert await rows_of(store) == [
        ("succeeded", sub.id, 0, "gemini"),
        ("failed", sub.id, 0, "gemini"),
        ("failed", sub.id, 0, "gemini"),
        ("pending", None, 0, "gemini"),
    ]
    assert await money(store) == (2 * PRICE, 0)
    ledger = await store.ledger(await store.job("j"))
    assert (ledger.batch_billed, ledger.batch_spent_micros) == (2, 2 * PRICE)
    assert ledger.batch_spent_micros == ledger.batch_billed * PRICE
    assert (ledger.billed_calls, ledger.cost_micros, ledger.held_micros) == (2, 2 * PRICE, 0)
    assert batch_saving_micros(ledger.batch_billed, ONLINE, ledger.batch_spent_micros) == 2 * (ONLINE - PRICE)
    assert ledger.shards_open == 1
    await store.shard_collected(sub, time.time())
    assert await store.shards_open(await store.job("j")) == []
    assert (await store.ledger(await store.job("j"))).shards_open == 0
    assert await store.shard_task_ids(sub) == [a.id, b.id, c.id]


async def test_a_line_outcome_needs_the_claim_and_the_shard(open_store: OpenStore) -> None:
    store = await open_store()
    sub, claimed = await planned(store, 2)
    await created(store, sub)
    stolen = dataclasses.replace(claimed[0], claim_token="nope")
    with pytest.raises(ClaimLost):
        await saved(store, sub, stolen)
    other = dataclasses.replace(sub, id=sub.id + 1)
    with pytest.raises(ClaimLost):
        await store.shard_line_back_to_pending(other, claimed[1], "x", generation_failed=False, now=time.time())
    assert await rows_of(store) == [("submitted", sub.id, PRICE, "gemini")] * 2


async def test_abandoning_a_shard_returns_exactly_its_unfinished_tasks(open_store: OpenStore) -> None:
    store = await open_store()
    _, claimed = await job_with(store, 6)
    job = await store.job("j")
    sub = await store.plan_shard(job, claimed[:4], "s1", PRICE, None, time.time(), provider="gemini")
    other = await store.plan_shard(job, claimed[4:], "s2", PRICE, None, time.time(), provider="gemini")
    await created(store, sub)
    await saved(store, sub, claimed[0])
    with pytest.raises(ValueError):
        await store.shard_abandoned(sub, "collected", time.time())
    back = await store.shard_abandoned(sub, "expired", time.time())
    assert back == sorted(t.id for t in claimed[1:4])
    rows = await rows_of(store)
    assert rows[:4] == [("succeeded", sub.id, 0, "gemini")] + [("pending", None, 0, "gemini")] * 3
    assert rows[4:] == [("submitting", other.id, PRICE, "gemini")] * 2  # the other shard is untouched
    assert await money(store) == (PRICE, 2 * PRICE)
    with pytest.raises(ShardMoved):
        await store.shard_abandoned(sub, "failed", time.time())  # closed: nothing twice
    assert [s.id for s in await store.shards_open(job)] == [other.id]
    # a planned shard whose upload is refused is abandoned the same way, before anything was created
    assert await store.shard_abandoned(other, "failed", time.time()) == sorted(t.id for t in claimed[4:])
    assert await money(store) == (PRICE, 0)
    # the tasks sent back are claimable again, one by one or in a new shard
    now = time.time()
    again = await store.claim(job, "w2", 10, now, now + 30, provider="gemini")
    assert sorted(t.id for t in again) == sorted(t.id for t in claimed[1:])


async def test_a_shards_tasks_are_left_to_it_by_claims_and_recovery(open_store: OpenStore) -> None:
    store = await open_store()
    sub, claimed = await planned(store, 3)
    job = await store.job("j")
    await store.stop_worker("w1", time.time(), dead=True)  # a dead worker's creates in flight: not its shard
    assert await store.recover(job.id, time.time() + 1000) == 0
    assert [r[0] for r in await rows_of(store)] == ["submitting"] * 3
    await created(store, sub)
    later = time.time() + 1000
    assert await store.claim(job, "w2", 10, later, later + 30, provider="gemini") == []
    taken = await store.claim_shard(sub, "w2", later, later + 30)
    assert [t.id for t in taken] == [t.id for t in claimed]
    with pytest.raises(ClaimLost):
        await saved(store, sub, claimed[0])  # the old claim no longer writes
    await saved(store, sub, taken[0])
    assert await store.claim_shard(sub, "w3", later, later + 30) == []  # held by w2 until its lease ends


def test_display_names_fit_the_column() -> None:
    assert len(display_name("x" * 500, 2**40, 10**6, "n" * 40)) <= submissions.c.display_name.type.length  # type: ignore[attr-defined]


async def test_a_failed_line_retried_leaves_its_shard_and_is_never_polled_by_the_batch_name(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    sub, claimed = await planned(store, 2)
    await created(store, sub)
    for t in claimed:  # billed, its image not saved: online it would be fetched again by its remote id
        await store.shard_line_failed(sub, t, Failure.DOWNLOAD, "not an image", billed=True, now=time.time())
    job = await store.job("j")
    assert await store.retry_failed(job, {Failure.DOWNLOAD}, recreate=False, now=time.time()) == 0  # paid: asked
    assert await store.retry_failed(job, {Failure.DOWNLOAD}, recreate=True, now=time.time()) == 2
    assert await rows_of(store) == [("pending", None, 0, "gemini")] * 2
    ledger = await store.ledger(job)
    # the first charges stay in the books (as known duplicates), no longer as lines of a shard
    assert (ledger.cost_micros, ledger.batch_billed, ledger.known_duplicates) == (2 * PRICE, 0, 2)
