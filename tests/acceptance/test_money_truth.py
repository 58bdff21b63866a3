"""The real CLI against the emulator, one test per way a run could pay twice, lose what it paid for or pass its
budget. Money is always checked against the emulator's own accounting (what the API billed), never against the
ledger's own columns alone."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batcher.emulator import Emulator, Latency
from tests.acceptance.cli_kit import batcher, cli_env, finish, manifest, start
from tests.conftest import StartEmulator

FAST = Latency("uniform", 0.05, 0.2)
PRICE = 0.067
IN_CI = os.environ.get("CI") == "true"
FAKETIME = shutil.which("faketime")


def later(minutes: int) -> tuple[str, ...]:
    """Run the CLI `minutes` later by its own clock (Debian's faketime): a resume after a long stop."""
    if FAKETIME is None:
        if IN_CI:
            pytest.fail("faketime is missing (apt-get install faketime): .ci/run installs it")
        pytest.skip("needs faketime (apt-get install faketime)")
    return (FAKETIME, "-f", f"+{minutes}m")


async def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait for a condition the test cannot schedule (another process's progress), bounded."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def report_of(db: Path, cwd: Path) -> dict[str, Any]:
    done = await batcher("report", "--db", str(db), "--format", "json", env=cli_env(None), cwd=cwd)
    assert done.code == 0, done.err
    doc: dict[str, Any] = json.loads(done.out)
    return doc


def billed_by_the_api(emu: Emulator) -> int:
    """Generations the API billed: every one that reached Success."""
    return emu.stats.successes


def holds_against_the_api(head: dict[str, Any], emu: Emulator) -> None:
    """The ledger's billed calls are what the API billed, give or take only what the ledger flags as unknown."""
    billed, unknown, lost = head["billed_calls"], head["unknown_submissions"], head["lost_at_api"]
    assert billed <= billed_by_the_api(emu) <= billed + unknown + lost, (head, emu.stats.successes)
    assert head["cost_usd"] == str(round(billed * PRICE, 6)).rstrip("0").rstrip("."), head


def created_twice(emu: Emulator) -> int:
    return sum(n - 1 for n in emu.stats.accepted_by_prompt.values() if n > 1)


# --- 1. a late resume ---------------------------------------------------------------------------------------


async def _stop_with_everything_submitted(tmp_path: Path, emu: Emulator, n: int) -> tuple[Path, Path]:
    m = manifest(tmp_path / "late.yaml", n)
    db = tmp_path / "b.db"
    proc = await start("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.creates_accepted == n, "every create to be accepted")
    await asyncio.sleep(0.3)  # the last replies are committed (a stop would record them anyway)
    proc.send_signal(signal.SIGINT)
    assert (await finish(proc)).code == 130
    return m, db


async def test_a_resume_twenty_minutes_later_polls_what_was_paid_for(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=Latency("fixed", 30.0))  # no generation is done before the stop
    m, db = await _stop_with_everything_submitted(tmp_path, emu, 12)
    emu.advance(20 * 60)  # twenty minutes pass for the API, and for the resumed client (faketime)
    done = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path, prefix=later(20))
    assert done.code == 0, done.err
    head = (await report_of(db, tmp_path))["summary"]
    assert head["succeeded"] == 12, head
    assert emu.stats.creates_accepted == 12  # polled, never created again
    holds_against_the_api(head, emu)
    assert head["billed_calls"] == billed_by_the_api(emu) == 12


async def test_a_task_the_api_forgot_during_a_long_stop_is_lost_at_the_api(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=Latency("fixed", 30.0), task_ttl_s=600.0)
    m, db = await _stop_with_everything_submitted(tmp_path, emu, 6)
    emu.advance(20 * 60)  # every result was kept ten minutes, and twenty have passed
    done = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path, prefix=later(20))
    assert done.code == 1, done.err
    report = await report_of(db, tmp_path)
    head = report["summary"]
    assert (head["failed"], head["lost_at_api"], head["billed_calls"]) == (6, 6, 0), head
    assert all(r["failure"] == "lost" and "lost at the API" in r["error"] for r in report["tasks"])
    assert "lost at the API" in done.err  # named in the run's summary
    holds_against_the_api(head, emu)  # the API billed 6 that the ledger flags as possibly billed


# --- 2. a gateway error after an accepted create ------------------------------------------------------------


async def test_a_gateway_error_after_an_accepted_create_is_an_unknown_submission(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=FAST, accepted_error_rate=0.25, seed=11)
    m = manifest(tmp_path / "gateway.yaml", 40)
    db = tmp_path / "b.db"
    done = await batcher("run", str(m), "--db", str(db), "-q", "--max-attempts", "12", env=cli_env(emu), cwd=tmp_path)
    assert done.code == 0, done.err
    head = (await report_of(db, tmp_path))["summary"]
    assert emu.stats.accepted_errors > 0
    assert head["unknown_submissions"] >= emu.stats.accepted_errors, head
    assert created_twice(emu) <= head["unknown_submissions"]  # every second charge is flagged
    holds_against_the_api(head, emu)


async def test_with_on_unknown_skip_a_gateway_error_never_creates_twice(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=FAST, accepted_error_rate=0.3, seed=5)
    m = manifest(tmp_path / "skip.yaml", 30)
    db = tmp_path / "b.db"
    done = await batcher("run", str(m), "--db", str(db), "-q", "--on-unknown", "skip", env=cli_env(emu), cwd=tmp_path)
    assert done.code == 1, done.err
    assert created_twice(emu) == 0
    report = await report_of(db, tmp_path)
    skipped = [r for r in report["tasks"] if r["failure"] == "unknown"]
    assert len(skipped) == emu.stats.accepted_errors > 0
    holds_against_the_api(report["summary"], emu)


# --- 3. the budget: every billed call, every create in flight, every worker ------------------------------------


async def test_billed_calls_whose_file_was_unusable_count_against_the_budget(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=FAST, not_image_rate=1.0)
    m = manifest(tmp_path / "unusable.yaml", 10)
    db = tmp_path / "b.db"
    done = await batcher("run", str(m), "--db", str(db), "-q", "--json", "--max-cost", "0.2", env=cli_env(emu),
                         cwd=tmp_path)  # fmt: skip
    assert done.code == 3, done.err
    assert billed_by_the_api(emu) * PRICE <= 0.2  # two; a third would pass $0.20
    head = (await report_of(db, tmp_path))["summary"]
    assert head["paid_unusable"] == head["billed_calls"] == billed_by_the_api(emu) == 2, head
    assert json.loads(done.out)["budget_usd"] == "0.2"  # the run's summary shows the budget it was given


async def test_three_workers_never_pass_one_budget_and_each_exits_3(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=Latency("uniform", 0.3, 0.8))
    m = manifest(tmp_path / "shared.yaml", 20)
    db = tmp_path / "b.db"
    assert (await batcher("import", str(m), "--db", str(db), env=cli_env(None), cwd=tmp_path)).code == 0
    workers = [
        await start("work", "--db", str(db), "-q", "--max-cost", "0.335", env=cli_env(emu), cwd=tmp_path)
        for _ in range(3)
    ]
    results = await asyncio.gather(*(finish(w) for w in workers))
    assert [r.code for r in results] == [3, 3, 3], [r.err for r in results]
    assert emu.stats.creates_accepted <= 5  # 5 x $0.067 = $0.335: the API never billed more than the budget
    assert billed_by_the_api(emu) * PRICE <= 0.335 + 1e-9
    with sqlite3.connect(db) as conn:  # a budget stop is not a turn that writes a worker row again and again
        assert conn.execute("SELECT count(*) FROM workers").fetchone()[0] == 3


# --- 4. a reply that arrives after the lease was lost -------------------------------------------------------


async def test_a_reply_after_a_takeover_is_kept_as_a_paid_duplicate(tmp_path: Path, start_emu: StartEmulator) -> None:
    # every create is held 3 s before the API takes it: long enough for the first worker to be paused mid-create
    emu = await start_emu(latency=FAST, slow_rate=1.0, slow_s=3.0, fault_kinds=["create"])
    n = 4
    m = manifest(tmp_path / "stray.yaml", n)
    db = tmp_path / "b.db"
    env = cli_env(emu, BATCHER_LEASE_S="1.5")
    first = await start("run", str(m), "--db", str(db), "-q", env=env, cwd=tmp_path)
    await until(lambda: emu.state.in_flight >= n, "the first worker's creates to reach the API")
    first.send_signal(signal.SIGSTOP)  # a paused VM: its lease runs out while its creates are accepted
    try:
        second = await batcher("run", str(m), "--db", str(db), "-q", env=env, cwd=tmp_path)
        assert second.code == 0, second.err  # it took the tasks over and created them again
    finally:
        first.send_signal(signal.SIGCONT)
    resumed = await finish(first)  # its replies come in now: none may be dropped
    assert resumed.code == 0, resumed.err
    assert emu.stats.creates_accepted == 2 * n
    report = await report_of(db, tmp_path)
    head = report["summary"]
    assert head["succeeded"] == n
    assert head["known_duplicates"] == n, head
    assert head["billed_calls"] == billed_by_the_api(emu) == 2 * n  # the ledger holds every charge
    with sqlite3.connect(db) as conn:  # what the next budget check reads holds both charges of every task
        assert conn.execute("SELECT spent_micros FROM jobs").fetchone()[0] == 2 * n * 67_000
    duplicates = sorted((tmp_path / "out" / "stray").glob("*.dup-*.png"))
    assert len(duplicates) == n and all(p.stat().st_size > 0 for p in duplicates)


# --- 5. a Success seen, then a failed download ------------------------------------------------------------------


async def test_a_success_whose_result_is_then_lost_stays_billed(tmp_path: Path, start_emu: StartEmulator) -> None:
    # every download is cut short, and the API forgets a task once it has said Success
    emu = await start_emu(latency=FAST, truncate_rate=1.0, forget_rate=1.0)
    m = manifest(tmp_path / "forgot.yaml", 6)
    db = tmp_path / "b.db"
    done = await batcher("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
    assert done.code == 1, done.err
    report = await report_of(db, tmp_path)
    head = report["summary"]
    assert head["billed_calls"] == billed_by_the_api(emu) == 6, head
    assert head["paid_result_lost"] == 6
    assert all(r["failure"] == "result_lost" and r["error"].startswith("paid, result lost") for r in report["tasks"])
    assert "paid, result lost 6" in done.err


# --- 6. a concurrent import ----------------------------------------------------------------------------------


async def test_an_import_during_a_run_does_not_end_it_early(tmp_path: Path, start_emu: StartEmulator) -> None:
    emu = await start_emu(latency=FAST)
    n = 30
    m = manifest(tmp_path / "again.yaml", n)
    db = tmp_path / "b.db"
    run = await start("run", str(m), "--db", str(db), "-q", "--rate", "4", env=cli_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.creates_accepted >= 2, "the run to be under way")  # most tasks not yet claimed
    assert (await batcher("import", str(m), "--db", str(db), env=cli_env(None), cwd=tmp_path)).code == 0
    done = await finish(run)
    assert done.code == 0, done.err
    assert f"{n} succeeded" in done.err
    assert emu.stats.creates_accepted == n


async def test_two_runs_started_together_both_end_with_every_task_done(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=FAST)
    m = manifest(tmp_path / "together.yaml", 30)
    db = tmp_path / "b.db"
    runs = [await start("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path) for _ in range(2)]
    done = await asyncio.gather(*(finish(r) for r in runs))
    assert [d.code for d in done] == [0, 0], [d.err for d in done]
    assert all("30 succeeded" in d.err for d in done), [d.err for d in done]
    assert emu.stats.creates_accepted == 30


# --- 7. an unknown create stays unknown until it is created again ---------------------------------------------


async def test_a_resume_with_on_unknown_skip_never_creates_an_unknown_task(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=FAST, lost_create_rate=1.0)  # every create is accepted, its reply lost
    n = 5
    m = manifest(tmp_path / "unknown.yaml", n)
    db = tmp_path / "b.db"
    proc = await start("run", str(m), "--db", str(db), "-q", env=cli_env(emu), cwd=tmp_path)
    await until(lambda: emu.stats.lost_creates >= n, "every task's create to be lost once")
    proc.send_signal(signal.SIGINT)
    assert (await finish(proc)).code == 130
    accepted = emu.stats.creates_accepted
    emu.configure(lost_create_rate=0.0)
    done = await batcher("run", str(m), "--db", str(db), "-q", "--on-unknown", "skip", env=cli_env(emu), cwd=tmp_path)
    assert done.code == 1, done.err
    assert emu.stats.creates_accepted == accepted  # nothing created again
    report = await report_of(db, tmp_path)
    assert all(r["failure"] == "unknown" for r in report["tasks"]), [r["error"] for r in report["tasks"]]
    holds_against_the_api(report["summary"], emu)


async def test_a_forever_worker_whose_budget_is_spent_idles_writing_nothing(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=FAST)
    m = manifest(tmp_path / "idle.yaml", 6)
    db = tmp_path / "b.db"
    assert (await batcher("import", str(m), "--db", str(db), env=cli_env(None), cwd=tmp_path)).code == 0
    proc = await start(
        "work", "--db", str(db), "-q", "--forever", "--max-cost", "0.134", env=cli_env(emu), cwd=tmp_path
    )

    def worker_rows() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM workers").fetchone()[0])

    await until(lambda: emu.stats.successes == 2 and worker_rows() >= 1, "the budget to be spent")
    await asyncio.sleep(2.0)  # a budget stop in a loop wrote a worker row per turn: thousands a minute
    assert worker_rows() == 1
    assert emu.stats.creates_accepted == 2
    proc.send_signal(signal.SIGINT)
    assert (await finish(proc)).code == 130
