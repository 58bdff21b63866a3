"""A graceful stop in the middle of downloads leaves no partial file behind, and a resume finishes the job."""

from __future__ import annotations

import asyncio
from pathlib import Path

from batcher.emulator import Latency
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
