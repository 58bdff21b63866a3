"""A shard's local requests file outlives its shard only when a worker was killed between the store's commit and
the file's removal (or between writing the file and planning the shard): the next run sweeps such files, and never
one a live shard, or a worker planning right now, still needs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from batcher.runner.batch.sweep import ORPHAN_FILE_AGE_S, sweep_shard_files
from tests.conftest import OpenStore
from tests.integration.test_store_submissions import planned


def _file(folder: Path, name: str, age_s: float = 0.0) -> Path:
    path = folder / f"{name}.jsonl"
    path.write_text('{"key": "k", "request": {}}\n')
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


async def test_files_of_closed_or_unknown_old_shards_go_and_the_rest_stay(
    open_store: OpenStore, tmp_path: Path
) -> None:
    store = await open_store()
    open_sub, _ = await planned(store, 2, name="open-shard")
    folder = tmp_path / "shards"
    folder.mkdir()
    live = _file(folder, open_sub.display_name, age_s=ORPHAN_FILE_AGE_S * 2)  # an open shard's: kept, however old
    young = _file(folder, "being-planned")  # written a moment ago, its shard not committed yet: kept
    old = _file(folder, "never-planned", age_s=ORPHAN_FILE_AGE_S * 2)  # killed before its plan committed: swept
    other = folder / "notes.txt"  # not a shard file: never touched
    other.write_text("x")
    await store.shard_abandoned(open_sub, "cancelled", time.time(), "cancelled")
    closed = live  # the same shard, now closed: its file goes

    removed = await sweep_shard_files(store, folder, time.time())

    assert sorted(p.name for p in removed) == sorted([closed.name, old.name])
    assert not closed.exists() and not old.exists()
    assert young.exists() and other.exists()


async def test_an_open_shards_file_is_kept(open_store: OpenStore, tmp_path: Path) -> None:
    store = await open_store()
    sub, _ = await planned(store, 2, name="still-open")
    folder = tmp_path / "shards"
    folder.mkdir()
    path = _file(folder, sub.display_name, age_s=ORPHAN_FILE_AGE_S * 10)

    assert await sweep_shard_files(store, folder, time.time()) == []
    assert path.exists()


async def test_a_missing_folder_is_nothing_to_sweep(open_store: OpenStore, tmp_path: Path) -> None:
    store = await open_store()
    assert await sweep_shard_files(store, tmp_path / "absent", time.time()) == []
