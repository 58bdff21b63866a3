"""The store on a real PostgreSQL server: the same migrations, disjoint claims under contention, the shared
rate bucket."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.engine import Connection

from batcher.models import JobSettings, TaskSpec, import_batches
from batcher.store import Store
from batcher.store.tables import metadata, rate_buckets

pytestmark = pytest.mark.postgres
MODEL = "gemini-3.1-flash-lite-image"
RATE, TAKES = 20.0, 40  # the shared bucket's tokens a second, and the takes the test waits for


async def last_grant(store: Store) -> float:
    """When the bucket last granted a token, by the database's clock (a refused take leaves the row alone)."""
    rows = await store._rows(select(rate_buckets.c.updated_at).where(rate_buckets.c.name == "account"))
    return float(rows[0][0])


def _diff(conn: Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
    return list(compare_metadata(ctx, metadata))


async def test_the_migrations_produce_the_declared_schema_on_postgresql(pg_url: str) -> None:
    store = await Store.open(pg_url)
    try:
        assert store.dialect == "postgresql"
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await store.close()


async def test_many_workers_claiming_at_once_never_share_a_task(pg_url: str) -> None:
    stores = [await Store.open(pg_url) for _ in range(4)]
    try:
        specs = [TaskSpec(MODEL, f"p{i}", "1K", "1x1", f"{i}.png") for i in range(400)]
        await stores[0].import_manifest(JobSettings("j", "out"), "m", import_batches(specs), extra={}, now=time.time())
        job = await stores[0].job("j")

        async def worker(store: Store, wid: str) -> list[int]:
            got: list[int] = []
            while True:
                now = time.time()
                batch = await store.claim(job, wid, 7, now, now + 30)
                if not batch:
                    return got
                got += [t.id for t in batch]

        results = await asyncio.gather(*(worker(s, f"w{i}") for i, s in enumerate(stores) for _ in range(2)))
        claimed = [t for r in results for t in r]
        assert len(claimed) == 400 and len(set(claimed)) == 400
    finally:
        for s in stores:
            await s.close()


async def test_the_shared_bucket_keeps_every_worker_to_one_rate(pg_url: str) -> None:
    # Judged by the bucket's own clock (the server's, kept in the row), not by how many takes the test's
    # processes manage in a wall-clock window: a loaded machine slows the takers, never the bucket's arithmetic.
    stores = [await Store.open(pg_url) for _ in range(3)]
    try:
        await stores[0].bucket_setup("account", RATE, capacity=1.0)
        assert await stores[0].bucket_take("account") == 0  # the one token it starts with
        first = await last_grant(stores[0])
        granted, waits = 0, []

        async def taker(store: Store) -> None:
            nonlocal granted
            while granted < TAKES:
                wait = await store.bucket_take("account")
                if wait == 0:
                    granted += 1
                else:
                    waits.append(wait)
                    await asyncio.sleep(wait / 4)  # back early: the bucket, not its advice, sets the pace

        await asyncio.wait_for(asyncio.gather(*(taker(s) for s in stores)), 60)
        # every token after the first was refilled at RATE: n of them took n / RATE s, however fast the workers
        assert granted >= TAKES and await last_grant(stores[0]) - first >= granted / RATE - 1e-6
        # and nobody is told to wait longer than one token takes to come back: the rate gets through
        assert waits and max(waits) <= 1 / RATE + 1e-6
        # a 429 anywhere holds everyone: the bucket owes ten seconds of tokens
        await stores[1].bucket_hold("account", 10.0, 0.9)
        assert await stores[2].bucket_take("account") > 5.0
    finally:
        for s in stores:
            await s.close()
