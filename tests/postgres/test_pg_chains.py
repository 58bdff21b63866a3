"""Chains and the cache on a real PostgreSQL store: two workers drain one chain in order, another job reuses it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from batcher.emulator import Latency
from batcher.store import Store
from tests.conftest import StartEmulator
from tests.integration.runner_kit import drive, load
from tests.integration.test_cache_and_chains import PARENT, chain_specs

pytestmark = pytest.mark.postgres


async def test_two_workers_run_a_chain_in_order_and_a_second_job_is_cached(
    pg_url: str, start_emu: StartEmulator, tmp_path: Path
) -> None:
    emu = await start_emu(latency=Latency("uniform", 0.05, 0.2))
    stores = [await Store.open(pg_url) for _ in range(2)]
    try:
        chain = list(chain_specs().values())
        await load(stores[0], chain, tmp_path / "a", name="a")
        await asyncio.gather(*(drive(s, emu, name="a") for s in stores))
        rows = {r["name"]: r async for r in stores[0].task_rows(await stores[0].job("a"))}
        assert {r["status"] for r in rows.values()} == {"succeeded"}
        for child, parent in PARENT.items():
            assert rows[child]["submitted_at"] >= rows[parent]["finished_at"]
        assert emu.stats.creates_accepted == 6
        await load(stores[1], chain, tmp_path / "b", name="b")
        await drive(stores[1], emu, name="b")
        again = [r async for r in stores[1].task_rows(await stores[1].job("b"))]
        assert all(r["status"] == "succeeded" and r["cached_from"] is not None for r in again)
        assert emu.stats.creates_accepted == 6
    finally:
        for s in stores:
            await s.close()
