"""Batch Mode shards on PostgreSQL: plans racing for one budget never overspend it, and a plan is one
transaction."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from batcher.models import JobSettings, TaskSpec, import_batches
from batcher.store import BudgetRefused, DuplicateShard, Store
from batcher.store.tables import jobs, submissions, tasks

pytestmark = pytest.mark.postgres
MODEL = "gemini-3.1-flash-lite-image"
PRICE = 19_500


async def test_shards_racing_for_one_budget_never_overspend_it(pg_url: str) -> None:
    stores = [await Store.open(pg_url) for _ in range(4)]
    try:
        specs = [TaskSpec(MODEL, f"p{i}", "1K", "1x1", f"{i}.png") for i in range(80)]
        await stores[0].import_manifest(JobSettings("j", "out"), "m", import_batches(specs), extra={}, now=time.time())
        job = await stores[0].job("j")
        budget = 25 * PRICE  # room for 2 shards of 10 (and not a third), whoever plans first

        async def worker(store: Store, wid: str) -> list[int]:
            now = time.time()
            claimed = await store.claim(job, wid, 10, now, now + 60, provider="gemini")
            try:
                sub = await store.plan_shard(
                    job, claimed, f"shard-{wid}", PRICE, budget, time.time(), provider="gemini"
                )
            except BudgetRefused:
                return []
            assert sub.requests == len(claimed)
            return [t.id for t in claimed]

        planned = await asyncio.gather(*(worker(s, f"w{i}-{k}") for i, s in enumerate(stores) for k in range(2)))
        winners = [p for p in planned if p]
        assert len(winners) == 2
        row = (await stores[0]._rows(select(jobs.c.spent_micros, jobs.c.held_micros)))[0]
        assert (int(row[0]), int(row[1])) == (0, 20 * PRICE)
        riding = await stores[0]._rows(select(tasks.c.id).where(tasks.c.submission_id.is_not(None)))
        assert sorted(int(r[0]) for r in riding) == sorted(t for w in winners for t in w)
        assert len(await stores[0]._rows(select(submissions))) == 2
    finally:
        for s in stores:
            await s.close()


async def test_a_taken_name_changes_nothing_on_postgresql(pg_url: str) -> None:
    store = await Store.open(pg_url)
    try:
        specs = [TaskSpec(MODEL, f"p{i}", "1K", "1x1", f"{i}.png") for i in range(4)]
        await store.import_manifest(JobSettings("j", "out"), "m", import_batches(specs), extra={}, now=time.time())
        job = await store.job("j")
        now = time.time()
        claimed = await store.claim(job, "w", 4, now, now + 60, provider="gemini")
        first = await store.plan_shard(job, claimed[:2], "same", PRICE, None, now, provider="gemini")
        with pytest.raises(DuplicateShard):
            await store.plan_shard(job, claimed[2:], "same", PRICE, None, now, provider="gemini")
        rows = await store._rows(select(tasks.c.submission_id, tasks.c.reserved_micros).order_by(tasks.c.seq))
        assert [tuple(r) for r in rows] == [(first.id, PRICE)] * 2 + [(None, 0)] * 2
        await store.shard_uploaded(first, "files/a", now)
        await store.shard_create_sending(first, now)
        await store.shard_created(first, "batches/a", now)
        assert await store.shard_abandoned(first, "cancelled", now) == sorted(t.id for t in claimed[:2])
        row = (await store._rows(select(jobs.c.spent_micros, jobs.c.held_micros)))[0]
        assert (int(row[0]), int(row[1])) == (0, 0)
    finally:
        await store.close()
