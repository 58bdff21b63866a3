"""Every fault knob of the emulator at a high rate: each run ends with every task final, no unhandled error,
nothing created twice outside the unknown window, and the ledger equal to the emulator's accounting."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from batcher.emulator import Emulator, Latency
from batcher.runner import StopReason
from batcher.store import Store
from tests.conftest import OpenStore, StartEmulator
from tests.integration.runner_kit import FAST_RETRY, PRICE, drive, fast_config, load, specs

FAST = Latency("uniform", 0.05, 0.2)
TASKS = 16
# all faults at once: enough requests that the run surely meets most kinds (the draws follow the requests' order)
TASKS_FOR = {"everything-at-once": 48}

FAULTS: dict[str, dict[str, Any]] = {
    "http-500": {"error_500_rate": 0.5},
    "http-503": {"error_503_rate": 0.5},
    "dropped-connections": {"drop_rate": 0.3},
    "malformed-bodies": {"malformed_rate": 0.3},
    "slow-replies": {"slow_rate": 0.3, "slow_s": 0.3},
    "lost-creates": {"lost_create_rate": 0.3},
    "failed-generations": {"fail_rate": 0.3},
    "cancelled-generations": {"cancel_rate": 0.3},
    "truncated-downloads": {"truncate_rate": 0.5},
    "expired-urls": {"url_ttl_s": 0.0005},  # every URL has expired by the time it is fetched
    "429-storm": {"rate_limit": 10.0, "burst": 2},  # under the runner's starting rate: it must find it
    "429-http-date": {"rate_limit": 10.0, "burst": 2, "retry_after_format": "http-date"},
    "field-variant": {"variant": "field", "cancel_rate": 0.2},
    "errors-under-http-200": {"errors_http_200": True, "error_503_rate": 0.4},
    "no-price-reported": {"report_price": False, "error_500_rate": 0.2},
    "download-faults": {
        "fault_kinds": ["download"],
        "error_503_rate": 0.4,
        "drop_rate": 0.3,
        "slow_rate": 0.2,
        "slow_s": 0.2,
    },
    "everything-at-once": {
        "fault_kinds": ["create", "query", "download"],
        "error_500_rate": 0.05,
        "error_503_rate": 0.1,
        "drop_rate": 0.05,
        "malformed_rate": 0.05,
        "slow_rate": 0.05,
        "slow_s": 0.2,
        "lost_create_rate": 0.1,
        "fail_rate": 0.1,
        "cancel_rate": 0.05,
        "truncate_rate": 0.1,
        "url_ttl_s": 5.0,
        "rate_limit": 30.0,
        "burst": 4,
    },
}


def _errors(stats: Any, status: int) -> int:
    return int(stats.count("create", status) + stats.count("query", status))


def _kinds_seen(stats: Any) -> int:
    """How many kinds of fault a run met (all at once: whichever the draws of the run picked)."""
    kinds = (stats.dropped, stats.lost_creates, stats.truncated_downloads, stats.failures, stats.malformed,
             _errors(stats, 503), stats.cancels)  # fmt: skip
    return sum(map(bool, kinds))


# proof that the fault really happened in the run (a knob that did nothing would prove nothing)
EVIDENCE: dict[str, Any] = {
    "http-500": lambda s: _errors(s, 500),
    "http-503": lambda s: _errors(s, 503),
    "dropped-connections": lambda s: s.dropped,
    "malformed-bodies": lambda s: s.malformed,
    "lost-creates": lambda s: s.lost_creates,
    "failed-generations": lambda s: s.failures,
    "cancelled-generations": lambda s: s.cancels,
    "truncated-downloads": lambda s: s.truncated_downloads,
    "expired-urls": lambda s: s.expired_downloads,
    "429-storm": lambda s: s.rate_limited,
    "429-http-date": lambda s: s.rate_limited,
    "download-faults": lambda s: s.count("download", 503) and s.dropped,
    "everything-at-once": lambda s: _kinds_seen(s) >= 4,
}


async def check_accounting(store: Store, emu: Emulator) -> None:
    job = await store.job("job")
    rows = [r async for r in store.task_rows(job)]
    assert all(r["status"] in ("succeeded", "failed") for r in rows), [r["status"] for r in rows]
    for r in rows:
        if r["status"] == "failed":
            assert r["last_error"], r
        else:
            assert Path(r["output_path"]).is_file()
    stats = emu.stats
    for r in rows:
        created = stats.accepted_by_prompt.get(r["prompt"], 0)
        # a second create is only ever sent after a failed generation or an unknown outcome
        assert created <= 1 + r["gen_failures"] + r["unknown_count"], r
    ledger = await store.ledger(job)
    assert ledger.billed_calls >= ledger.counts.get("succeeded", 0)
    assert ledger.cost_micros == ledger.billed_calls * PRICE
    # the emulator billed what we recorded, plus at most the creates whose outcome we could not know
    assert ledger.billed_calls <= stats.successes <= ledger.billed_calls + ledger.unknown_submissions
    assert ledger.calls.get("create", 0) >= stats.creates_accepted - stats.lost_creates
    assert ledger.rate_limited == stats.rate_limited


@pytest.mark.parametrize("fault", FAULTS.keys())
async def test_every_task_ends_final_and_accounted(open_store: OpenStore, start_emu: StartEmulator,
                                                   tmp_path: Path, fault: str) -> None:  # fmt: skip
    knobs = FAULTS[fault]
    store = await open_store()
    emu = await start_emu(latency=FAST, seed=7, **knobs)
    await load(store, specs(TASKS_FOR.get(fault, TASKS)), tmp_path / "out")
    # 12 attempts: at a 50% fault rate a task fails for good with odds of 1 in 4096, not 1 in 64
    result = await drive(store, emu, fast_config(max_in_flight=8, retry=replace(FAST_RETRY, max_attempts=12)))
    assert result.reason == StopReason.DONE, result
    await check_accounting(store, emu)
    if fault in EVIDENCE:
        assert EVIDENCE[fault](emu.stats), f"the {fault} fault never happened"
    if knobs.keys() <= {"error_500_rate", "error_503_rate", "drop_rate", "malformed_rate", "slow_rate", "slow_s",
                        "truncate_rate", "rate_limit", "burst", "retry_after_format",
                        "errors_http_200", "report_price", "lost_create_rate", "fault_kinds"}:  # fmt: skip
        # transient faults only: everything gets done in the end
        job = await store.job("job")
        assert (await store.ledger(job)).counts == {"succeeded": TASKS}
