"""The runner over real loopback HTTP against the emulator: clean runs, faults, stops, budgets."""

from __future__ import annotations

import hashlib
from pathlib import Path

from batcher.emulator import Latency
from batcher.imageinfo import sniff
from batcher.money import fmt_usd
from batcher.runner import StopReason
from tests.conftest import OpenStore, StartEmulator
from tests.integration.runner_kit import PRICE, drive, fast_config, load, specs

FAST = Latency("uniform", 0.05, 0.2)


async def test_a_clean_run_downloads_every_image_once(open_store: OpenStore, start_emu: StartEmulator,
                                                      tmp_path: Path) -> None:  # fmt: skip
    store = await open_store()
    emu = await start_emu(latency=FAST, seed=1)
    await load(store, specs(20, size="16x9"), tmp_path / "out")
    result = await drive(store, emu)
    assert result.reason == StopReason.DONE and result.left == 0
    job = await store.job("job")
    ledger = await store.ledger(job)
    assert ledger.counts == {"succeeded": 20}
    assert ledger.cost_micros == 20 * PRICE and ledger.billed_calls == 20
    stats = emu.stats
    assert stats.creates_accepted == 20
    assert all(n == 1 for n in stats.accepted_by_prompt.values())
    async for row in store.task_rows(job):
        data = Path(row["output_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        info = sniff(data[:65536])
        assert info is not None and (info.width, info.height) == (1376, 768)
    assert not list((tmp_path / "out").glob(".*.part"))
    assert fmt_usd(ledger.cost_micros) == "$1.34"


async def test_a_rejected_key_stops_the_run_and_loses_nothing(open_store: OpenStore, start_emu: StartEmulator,
                                                              tmp_path: Path) -> None:  # fmt: skip
    store = await open_store()
    emu = await start_emu(latency=FAST)
    await load(store, specs(5), tmp_path / "out")
    result = await drive(store, emu, key="wrong-key")
    assert result.reason == StopReason.FATAL and result.error is not None
    assert "LINKMODEL_API_KEY" in result.error.message and "wrong-key" not in result.error.message
    counts = (await store.status_counts())["job"]
    assert counts == {"pending": 5}
    job = await store.job("job")
    assert all(row["attempts"] == 0 for row in [r async for r in store.task_rows(job)])
    # with the right key the same store finishes the job
    result = await drive(store, emu)
    assert result.reason == StopReason.DONE
    assert emu.stats.creates_accepted == 5


async def test_a_validation_rejection_fails_that_task_only(open_store: OpenStore, start_emu: StartEmulator,
                                                           tmp_path: Path) -> None:  # fmt: skip
    store = await open_store()
    emu = await start_emu(latency=FAST)
    bad = specs(1, prefix="bad", size="7x7")  # the emulator refuses the size with HTTP 400
    await load(store, specs(3) + bad, tmp_path / "out")
    result = await drive(store, emu)
    assert result.reason == StopReason.DONE
    job = await store.job("job")
    rows = {r["prompt"]: r async for r in store.task_rows(job)}
    assert rows["bad 0"]["status"] == "failed" and "7x7" in rows["bad 0"]["last_error"]
    assert rows["bad 0"]["attempts"] == 1
    assert sum(r["status"] == "succeeded" for r in rows.values()) == 3


async def test_failed_generations_are_retried_then_fail_with_their_reason(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path
) -> None:
    store = await open_store()
    emu = await start_emu(latency=FAST, fail_rate=1.0, fail_reason="content refused")
    await load(store, specs(2), tmp_path / "out")
    result = await drive(store, emu)
    assert result.reason == StopReason.DONE
    job = await store.job("job")
    ledger = await store.ledger(job)
    assert ledger.counts == {"failed": 2} and ledger.cost_micros == 0
    rows = [r async for r in store.task_rows(job)]
    # 1 try + max_generation_failures (2) retries
    assert all(r["gen_failures"] == 3 and "content refused" in r["last_error"] for r in rows)
    assert emu.stats.creates_accepted == 6


async def test_the_budget_stops_creates_before_it_is_passed(open_store: OpenStore, start_emu: StartEmulator,
                                                           tmp_path: Path) -> None:  # fmt: skip
    store = await open_store()
    emu = await start_emu(latency=FAST)
    await load(store, specs(10), tmp_path / "out")
    result = await drive(store, emu, fast_config(budget_micros=3 * PRICE + 1))
    assert result.reason == StopReason.BUDGET
    job = await store.job("job")
    ledger = await store.ledger(job)
    assert ledger.cost_micros <= 3 * PRICE + 1
    assert ledger.counts.get("succeeded") == 3 and ledger.counts.get("pending") == 7
    assert emu.stats.creates_accepted == 3


async def test_a_run_held_back_by_the_rate_claims_its_creates_in_batches(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path
) -> None:
    store = await open_store()
    emu = await start_emu(latency=FAST)
    await load(store, specs(60), tmp_path / "out")
    result = await drive(store, emu, fast_config(requests_per_second=40, max_in_flight=64))
    assert result.reason == StopReason.DONE and result.progress is not None
    # the gate sends a create at a time: claiming each one as the one before it goes out would cost a
    # transaction per task (it did: 0.7 claims per task at 150 requests/s)
    assert result.progress.claimed == 60 and result.progress.claims <= 12, result.worker_figures()
