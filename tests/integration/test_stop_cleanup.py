"""A graceful stop in the middle of downloads leaves no partial file behind, and a resume finishes the job."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from batcher.emulator import Latency
from batcher.models import TaskStatus
from batcher.runner import Runner, StopReason
from tests.conftest import OpenStore, StartEmulator
from tests.integration.runner_kit import drive, fast_config, load, specs


async def test_a_stop_during_downloads_leaves_no_part_file(open_store: OpenStore, start_emu: StartEmulator,
                                                           tmp_path: Path) -> None:  # fmt: skip
    store = await open_store()
    # every download waits 5 s before its first byte, so the stop surely finds them on the wire
    emu = await start_emu(latency=Latency("fixed", 0.05), fault_kinds=["download"], slow_rate=1.0, slow_s=5.0)
    await load(store, specs(6), tmp_path / "out")
    runners: list[Runner] = []
    run = asyncio.create_task(drive(store, emu, fast_config(max_in_flight=6), runner_out=runners))
    for _ in range(200):
        if len(list((tmp_path / "out").glob(".*.part"))) == 6:
            break
        await asyncio.sleep(0.02)
    assert len(list((tmp_path / "out").glob(".*.part"))) == 6, "the downloads never started"
    runners[0].request_stop()
    result = await asyncio.wait_for(run, 10)
    assert result.reason == StopReason.INTERRUPTED
    assert list((tmp_path / "out").iterdir()) == []
    emu.configure(slow_rate=0.0)
    result = await drive(store, emu)
    assert result.reason == StopReason.DONE
    assert len(list((tmp_path / "out").iterdir())) == 6 and emu.stats.creates_accepted == 6


def test_a_later_run_sweeps_only_abandoned_part_files(tmp_path: Path) -> None:
    import os
    import time

    from batcher.outputs import sweep_stale_parts

    (tmp_path / "sub").mkdir()
    old = tmp_path / "sub" / ".a.png.1234abcd.part"
    fresh = tmp_path / ".b.png.5678abcd.part"
    kept = tmp_path / "c.png.part"  # not hidden: not ours
    for p in (old, fresh, kept):
        p.write_bytes(b"x")
    now = time.time()
    os.utime(old, (now - 3600, now - 3600))
    os.utime(kept, (now - 3600, now - 3600))
    assert sweep_stale_parts(tmp_path, 900.0, now) == 1
    assert not old.exists() and fresh.exists() and kept.exists()


async def test_a_stop_while_an_image_is_renamed_into_place_still_records_it(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The finisher's thread is held after the rename, before the folder's fsync: the stop comes in that window.
    # The task used to be cancelled there; the rename went through all the same and the success was never
    # committed, so the image stood under the task's name without a record.
    import threading

    from batcher import outputs

    store = await open_store()
    emu = await start_emu(latency=Latency("fixed", 0.05))
    await load(store, specs(1), tmp_path / "out")
    renamed, go_on = threading.Event(), threading.Event()
    real = outputs.fsync_folder

    def held(folder: Path) -> None:
        renamed.set()
        go_on.wait(30)
        real(folder)

    monkeypatch.setattr(outputs, "fsync_folder", held)
    runners: list[Runner] = []
    run = asyncio.create_task(drive(store, emu, fast_config(), runner_out=runners))
    assert await asyncio.to_thread(renamed.wait, 30), "the image was never renamed into place"
    runners[0].request_stop()
    await asyncio.sleep(0.1)  # the stop reaches the task while its image is in place and not yet recorded
    go_on.set()
    await asyncio.wait_for(run, 30)
    job = await store.job("job")
    ledger = await store.ledger(job)
    assert (ledger.counts.get(TaskStatus.SUCCEEDED), ledger.billed_calls) == (1, 1), ledger
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["prompt-0.png"]
