"""`batcher status`: what the store holds, read without loading the run's machinery (aiohttp, the emulator)."""

from __future__ import annotations

from typing import Any

from batcher.store import Store


async def store_status(db: str) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]], list[dict[str, Any]]]:
    """`batcher status`: tasks per status of every job, the live workers, and the recent batch shards. Reads
    only: an absent store is not created."""
    store = await Store.open(db, create=False)
    try:
        shards = [{"job": job, "display_name": s.display_name, "state": s.state, "requests": s.requests,
                   "remote_name": s.remote_name, "detail": s.detail or ""}
                  for job, s in await store.recent_shards()]  # fmt: skip
        return await store.status_counts(), [dict(w) for w in await store.live_workers()], shards
    finally:
        await store.close()
