"""What a new user trips over, each against the emulators on loopback: errors said once, on one line."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import batcher
from batcher.results import Progress
from tests.conftest import StartEmulator, StartGemini


@pytest.fixture
def gemini_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("BATCHER_DB", "GEMINI_API_KEY", "GOOGLE_API_KEY", "GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tasks(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"a lighthouse at dusk, number {i}", "name": f"l{i}"} for i in range(n)]


@pytest.mark.parametrize("route", ["online", "batch"])
async def test_a_rejected_key_is_one_line_said_once(
    gemini_env: Path, start_gemini: StartGemini, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    emu = await start_gemini()
    monkeypatch.setenv("GEMINI_BASE_URL", emu.origin)
    monkeypatch.setenv("GEMINI_API_KEY", "not-the-key")
    with pytest.raises(batcher.AuthError) as caught:
        await batcher.arun(tasks(2), job="keys", db=str(gemini_env / "k.db"), output="out", provider="gemini",
                           route=route)  # fmt: skip
    message = caught.value.message
    assert "\n" not in message
    assert message.count("GEMINI_API_KEY") == 1 and message.count("key") <= 3, message
    assert message.count("(") == message.count(")") <= 2, message  # no message nested inside another
    assert "nothing was lost" in message and caught.value.exit_code == 2


async def test_quota_stopped_tasks_are_due_to_a_new_run_one_request_first(
    gemini_env: Path, start_gemini: StartGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a per-day quota stop, the same call again (the quota raised: a higher tier, a new project) sends the
    tasks the quota stopped at once, not at midnight Pacific; refused again, it stops at once with the reset."""
    emu = await start_gemini(daily_limit=2)
    monkeypatch.setenv("GEMINI_BASE_URL", emu.origin)
    monkeypatch.setenv("GEMINI_API_KEY", emu.api_key)
    call: dict[str, Any] = {"job": "q", "db": str(gemini_env / "q.db"), "output": "out", "provider": "gemini",
                            "rate_limit": {"requests_per_second": 100}}  # fmt: skip
    with pytest.raises(batcher.QuotaError) as first:
        await batcher.arun(tasks(8), **call)
    refused = emu.stats.daily_refusals
    assert emu.stats.images_billed == 2 and refused >= 1
    assert first.value.message.count("quota") == 1, first.value.message  # said once, not nested

    # the same day, the quota not raised: one request, refused, and the run stops at once with the reset time
    with pytest.raises(batcher.QuotaError) as again:
        await asyncio.wait_for(batcher.arun(tasks(8), **call), 15)
    assert emu.stats.daily_refusals == refused + 1 and emu.stats.images_billed == 2  # one create only
    assert "resets at midnight Pacific" in again.value.message and again.value.exit_code == 4

    emu.configure(daily_limit=100)  # the quota raised: the stopped tasks go now, one first, then the rest
    result = await asyncio.wait_for(batcher.arun(tasks(8), **call), 15)
    assert result.succeeded == 8 and emu.stats.images_billed == 8 and emu.stats.daily_refusals == refused + 1


async def test_a_run_with_nothing_in_flight_says_what_it_waits_for_and_until_when(
    gemini_env: Path, start_emu: StartEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = await start_emu()
    monkeypatch.setenv("LINKMODEL_BASE_URL", emu.base_url)
    monkeypatch.setenv("LINKMODEL_API_KEY", emu.api_key)
    db = gemini_env / "w.db"
    await batcher.arun(tasks(2), job="w", db=str(db), output="out")
    due = time.time() + 3600  # as a run that met an overloaded API leaves a task: pending, due in an hour
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tasks SET status = 'pending', next_attempt_at = ?, last_error = 'HTTP 503 overloaded', "
                     "output_path = NULL, cost_micros = 0 WHERE name = 'l1'", (due,))  # fmt: skip
    lines: list[str] = []
    said = asyncio.Event()

    def seen(p: Progress) -> None:
        lines.append(p.detail)
        if p.detail:
            said.set()

    run = asyncio.create_task(batcher.arun(tasks(2), job="w", db=str(db), output="out", on_progress=seen))
    await asyncio.wait_for(said.wait(), 10)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(due))
    assert any(d.startswith("nothing in flight: waiting until " + until) and "HTTP 503 overloaded" in d
               for d in lines), lines  # fmt: skip
    assert emu.stats.creates_accepted == 2  # it waited: the task due in an hour was not sent


async def test_a_429_naming_the_spending_cap_stops_creating_and_ends_as_a_budget_stop(
    gemini_env: Path, start_gemini: StartGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a rate limit to wait out: no wait brings it back. The run stops creating, keeps everything, and ends
    with the budget's exit code and a line saying the cap was reached at the provider."""
    emu = await start_gemini(spend_cap_images=2)
    monkeypatch.setenv("GEMINI_BASE_URL", emu.origin)
    monkeypatch.setenv("GEMINI_API_KEY", emu.api_key)
    call: dict[str, Any] = {"job": "cap", "db": str(gemini_env / "cap.db"), "output": "out", "provider": "gemini"}
    with pytest.raises(batcher.BudgetError) as caught:
        await asyncio.wait_for(batcher.arun(tasks(6), **call), 15)
    error = caught.value
    assert error.exit_code == 3 and "\n" not in error.message
    assert "spending cap" in error.message and "reached at the provider" in error.message, error.message
    billed = emu.stats.images_billed  # the cap, and any create admitted before it was reached
    assert billed >= 2 and emu.stats.rate_limited <= 6 - billed  # it stopped creating
    report = batcher.report("cap", db=call["db"])
    assert (report.succeeded, report.failed, report.pending) == (billed, 0, 6 - billed)  # kept, none failed

    emu.configure(spend_cap_images=None)  # the cap raised: the same call finishes the job
    result = await asyncio.wait_for(batcher.arun(tasks(6), **call), 15)
    assert result.succeeded == 6 and emu.stats.images_billed == 6
