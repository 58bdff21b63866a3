"""The real CLI through Google's Gemini API (online: one synchronous call per image), against the Gemini
emulator over loopback HTTP. Money is checked against what the emulator billed, never the ledger alone."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

from batcher.emulator import Latency
from batcher.emulator.gemini.server import GeminiEmulator
from batcher.imageinfo import sniff
from tests.acceptance.cli_kit import batcher, cli_env, finish, manifest, start
from tests.acceptance.test_money_truth import later, report_of, until
from tests.conftest import StartGemini

FAST = Latency("uniform", 0.05, 0.2)
PRICE = 0.067


def gemini_env(emu: GeminiEmulator | None, **extra: str) -> dict[str, str]:
    env = cli_env(None, **extra)
    for k in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"):
        env.pop(k, None)
    if emu is not None:
        env["GEMINI_BASE_URL"] = emu.origin
        env["GEMINI_API_KEY"] = emu.api_key
    env.update(extra)
    return env


def rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM tasks ORDER BY seq")]


def holds_against_the_api(head: dict[str, Any], emu: GeminiEmulator) -> None:
    """Billed calls are what the emulator billed, give or take only the submissions flagged as unknown."""
    billed, unknown = head["billed_calls"], head["unknown_submissions"]
    assert billed <= emu.stats.images_billed <= billed + unknown, (head, emu.stats)
    assert head["cost_usd"] == str(round(billed * PRICE, 6)).rstrip("0").rstrip("."), head


def billed_twice(emu: GeminiEmulator) -> dict[str, int]:
    return {p: n for p, n in emu.stats.billed_by_prompt.items() if n > 1}


async def run(m: Path, db: Path, emu: GeminiEmulator | None, cwd: Path, *more: str, **env: str) -> Any:
    return await batcher("run", str(m), "--db", str(db), "--provider", "gemini", "-q", "--json", *more,
                         env=gemini_env(emu, **env), cwd=cwd)  # fmt: skip


async def test_a_clean_run_makes_every_image_with_one_call_each(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(latency=FAST, image_bytes=200_000)
    m = manifest(tmp_path / "clean.yaml", 12)
    done = await run(m, tmp_path / "b.db", emu, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == 12 and head["billed_calls"] == 12 == emu.stats.images_billed
    assert head["api_calls"] == {"create": 12} and head["calls_per_image"] == 1.0, head
    assert head["cost_usd"] == str(round(12 * PRICE, 3))
    for r in rows(tmp_path / "b.db"):
        data = Path(r["output_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"] > 150_000
        assert sniff(data) is not None and r["image_format"] == "png" and r["provider"] == "gemini"
    assert emu.stats.billed_by_prompt == {f"Catalog photo number {i}": 1 for i in range(12)}


async def test_the_manifest_names_the_provider(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(latency=FAST)
    m = manifest(tmp_path / "named.yaml", 3, provider="gemini", size="16:9")
    done = await batcher("run", str(m), "--db", str(tmp_path / "b.db"), "-q", "--json", env=gemini_env(emu),
                         cwd=tmp_path)  # fmt: skip
    assert done.code == 0, done.err
    assert emu.stats.images_billed == 3
    assert {(r["size"], r["width"], r["height"]) for r in rows(tmp_path / "b.db")} == {("16x9", 1376, 768)}


async def test_server_faults_are_retried_and_lost_replies_are_counted_as_unknown(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(latency=FAST, error_500_rate=0.1, error_503_rate=0.1, error_504_rate=0.1,
                             drop_rate=0.05, lost_reply_rate=0.1, seed=3)  # fmt: skip
    m = manifest(tmp_path / "faults.yaml", 40)
    done = await run(m, tmp_path / "b.db", emu, tmp_path, "--max-attempts", "12")
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == 40
    assert emu.stats.lost_replies > 0 and head["unknown_submissions"] >= emu.stats.lost_replies
    holds_against_the_api(head, emu)
    # a prompt billed twice is one whose submission was flagged unknown, never one silently paid again
    unknown = {r["prompt"] for r in rows(tmp_path / "b.db") if r["unknown_count"]}
    assert set(billed_twice(emu)) <= unknown


async def test_a_refused_prompt_fails_for_good_unbilled_and_is_counted_apart(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(latency=FAST, refusal_rate=0.2, block_rate=0.1, seed=5)
    m = manifest(tmp_path / "refusals.yaml", 30)
    done = await run(m, tmp_path / "b.db", emu, tmp_path)
    assert done.code == 1, done.err
    head = json.loads(done.out)
    declined = emu.stats.refusals + emu.stats.blocked
    assert declined > 0 and head["blocked"] == declined == head["failed"]
    assert head["billed_calls"] == emu.stats.images_billed == 30 - declined
    failed = [r for r in rows(tmp_path / "b.db") if r["status"] == "failed"]
    assert all(r["failure"] == "blocked" and r["cost_micros"] == 0 and r["attempts"] == 1 for r in failed)
    assert all("blocked by the model" in r["last_error"] for r in failed), failed[0]["last_error"]


async def test_a_spent_daily_quota_stops_the_run_and_a_run_after_midnight_finishes(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(latency=FAST, daily_limit=5)
    m = manifest(tmp_path / "quota.yaml", 9)
    db = tmp_path / "b.db"
    stopped = await run(m, db, emu, tmp_path, "--max-in-flight", "1")
    assert stopped.code == 4, stopped.err
    assert "daily quota" in stopped.err and "midnight Pacific" in stopped.err, stopped.err
    assert [r["status"] for r in rows(db)].count("succeeded") == 5 == emu.stats.images_billed
    emu.clock.advance(emu.config.day_s)  # the API's day turns over
    resumed = await batcher("run", str(m), "--db", str(db), "--provider", "gemini", "-q", "--json",
                            env=gemini_env(emu), cwd=tmp_path, prefix=later(24 * 60))  # fmt: skip
    assert resumed.code == 0, resumed.err
    assert emu.stats.images_billed == 9 and not billed_twice(emu)


async def test_a_rejected_key_stops_the_run_in_one_line_without_the_key(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(latency=FAST)
    m = manifest(tmp_path / "key.yaml", 4)
    done = await run(m, tmp_path / "b.db", emu, tmp_path, GEMINI_API_KEY="AIza-wrong-key-123")
    assert done.code == 2, done.err
    assert "GEMINI_API_KEY" in done.err and "AIza-wrong-key-123" not in done.err + done.out
    said = [line for line in done.err.splitlines() if "GEMINI_API_KEY" in line]
    assert len(said) == 1 and said[0].count("GEMINI_API_KEY") == 1, done.err  # one line, said once
    assert "Traceback" not in done.err and emu.stats.images_billed == 0


async def test_the_spending_cap_reached_at_the_provider_exits_with_the_budgets_code_in_one_line(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(latency=FAST, spend_cap_images=3)
    m = manifest(tmp_path / "cap.yaml", 6)
    db = tmp_path / "b.db"
    done = await run(m, db, emu, tmp_path)
    assert done.code == 3, done.err
    said = [line for line in done.err.splitlines() if "spending cap" in line]
    assert len(said) == 1 and "reached at the provider" in said[0], done.err
    assert "Traceback" not in done.err and emu.stats.images_billed >= 3  # creates admitted before the cap finish
    statuses = [r["status"] for r in rows(db)]
    assert statuses.count("succeeded") == emu.stats.images_billed and statuses.count("failed") == 0, statuses
    assert statuses.count("pending") == 6 - emu.stats.images_billed, statuses  # kept for a run after the cap


async def test_a_missing_key_names_both_variables(tmp_path: Path) -> None:
    m = manifest(tmp_path / "nokey.yaml", 1)
    done = await run(m, tmp_path / "b.db", None, tmp_path)
    assert done.code == 2 and "GEMINI_API_KEY" in done.err and "GOOGLE_API_KEY" in done.err, done.err


async def test_a_chain_sends_the_parents_image_inline(start_gemini: StartGemini, tmp_path: Path) -> None:
    emu = await start_gemini(latency=FAST)
    m = tmp_path / "chain.yaml"
    m.write_text(
        "job: chain\noutput:\n  dir: out\n"
        "tasks:\n  - name: base\n    prompt: a red mug\n    filename: base.png\n"
        "  - from: base\n    prompt: the same mug, in blue\n    filename: blue.png\n",
        encoding="utf-8",
    )
    done = await run(m, tmp_path / "b.db", emu, tmp_path)
    assert done.code == 0, done.err
    assert emu.stats.images_billed == 2
    assert emu.stats.input_images == 1


async def test_a_kill_mid_call_then_resume_pays_twice_only_for_flagged_unknowns(
    start_gemini: StartGemini, tmp_path: Path
) -> None:
    emu = await start_gemini(latency=Latency("fixed", 1.5))
    m = manifest(tmp_path / "kill.yaml", 10)
    db = tmp_path / "b.db"
    proc = await start("run", str(m), "--db", str(db), "--provider", "gemini", "-q", env=gemini_env(emu),
                       cwd=tmp_path)  # fmt: skip
    await until(lambda: emu.stats.peak_concurrent_requests >= 10, "every call to be on the wire")
    proc.send_signal(signal.SIGKILL)
    await finish(proc)
    # the calls the kill cut finish at the API: billed, their replies lost (waited for, not timed: a loaded
    # machine may take longer than their 1.5 s)
    await until(lambda: emu.stats.images_billed == 10, "the ten cut calls to be billed at the API")
    emu.configure(latency=FAST)
    resumed = await run(m, db, emu, tmp_path)
    assert resumed.code == 0, resumed.err
    head = json.loads(resumed.out)
    assert head["succeeded"] == 10 and head["unknown_submissions"] == 10
    holds_against_the_api(head, emu)
    report = await report_of(db, tmp_path)
    assert report["summary"]["unknown_submissions"] == 10
