"""`virtual_time.run_threaded`: work on a thread takes no virtual time, and no timer fires while a thread owes
the loop an answer (the thread is made slow in real time; the assertions are on the virtual clock alone)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from batcher.store import Store
from tests import virtual_time

SLOW_S = 0.05  # real seconds the thread's work takes


def test_work_on_a_thread_takes_no_virtual_time() -> None:
    async def elapsed() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.to_thread(time.sleep, SLOW_S)
        return loop.time() - start

    assert virtual_time.run_threaded(elapsed()) == 0.0


def test_a_timer_waits_for_the_thread_then_fires_at_its_own_instant() -> None:
    async def instants() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        timer = asyncio.ensure_future(asyncio.sleep(0.01))  # due long before the thread's real 50 ms are up
        await asyncio.to_thread(time.sleep, SLOW_S)
        fired_early = timer.done()
        await timer
        return fired_early, loop.time()

    assert virtual_time.run_threaded(instants()) == (False, 0.01)


def test_a_sqlite_store_through_aiosqlite_runs_in_no_virtual_time(tmp_path: Path) -> None:
    async def elapsed() -> float:
        loop = asyncio.get_running_loop()
        store = await Store.open(str(tmp_path / "batcher.db"))  # migrations: many trips to aiosqlite's thread
        try:
            await store.status_counts()
        finally:
            await store.close()
        return loop.time()

    assert virtual_time.run_threaded(elapsed()) == 0.0
