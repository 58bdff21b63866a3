"""Sweeping shard requests files a killed worker left behind.

A shard's local JSONL is written before its plan commits and removed after its shard closes, so a `kill -9`
between the two steps of either leaves a file no shard will remove. A run sweeps them: a file whose shard is
closed goes at once; a file with no shard at all goes once it is older than any plan takes to commit (a worker may
be planning it right now); a file of an open shard always stays (its upload may still need it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from batcher.store import Store
from batcher.store.submissions import CLOSED

ORPHAN_FILE_AGE_S = 600.0  # a file with no shard this long after it was written was never planned, seconds


async def sweep_shard_files(store: Store, folder: Path, now: float) -> list[Path]:
    """Remove the requests files in `folder` no shard needs any more; the paths removed."""
    try:
        files = await asyncio.to_thread(lambda: sorted(folder.glob("*.jsonl")))
    except OSError:
        return []
    removed: list[Path] = []
    for path in files:
        sub = await store.shard_by_display_name(path.stem)
        if sub is None:
            try:
                stale = now - path.stat().st_mtime > ORPHAN_FILE_AGE_S
            except OSError:
                continue
            if not stale:
                continue
        elif sub.state not in CLOSED:
            continue
        await asyncio.to_thread(path.unlink, missing_ok=True)
        removed.append(path)
    return removed
